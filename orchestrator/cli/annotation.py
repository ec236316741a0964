"""``ambient classifier|annotate|watch``: the classifier, score-curve annotation, re-annotation."""

from __future__ import annotations

from typing import Any

import click

from ambient_platform.config import ConfigError
from orchestrator.cli._app import common, fail, main, print_json


@main.group()
def classifier() -> None:
    """Noise-conditioned clean-vs-corrupt classifier (for sigma_min annotation)."""


@classifier.command("train")
@common
@click.option(
    "--data",
    "clean",
    multiple=True,
    required=True,
    help="Clean dataset (directory or s3:// prefix); repeatable.",
)
@click.option("--corrupt", multiple=True, required=True, help="Corrupt dataset; repeatable.")
@click.option("--name", default="classifier", show_default=True)
@click.option("--out", help="Output directory (default .ambient/classifiers/NAME-RUN).")
@click.option(
    "--obs-key",
    "obs_keys",
    multiple=True,
    help="Also condition on this observation history (default: actions only, as ADP).",
)
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--horizon", type=click.IntRange(1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def classifier_train(
    clean: tuple[str, ...],
    corrupt: tuple[str, ...],
    name: str,
    out: str | None,
    obs_keys: tuple[str, ...],
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    horizon: int,
    seed: int,
    tracking_uri: str | None,
) -> None:
    """Train c(x_s, s) on balanced clean/corrupt batches; saves every epoch (OUT/epoch_E)."""
    from ambient_core.data import DataError
    from jobs.train_classifier import run_classifier_training

    try:
        res = run_classifier_training(
            clean,
            corrupt,
            name=name,
            out=out,
            obs_keys=obs_keys,
            horizon=horizon,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            tracking_uri=tracking_uri,
            verbose=True,
        )
    except (DataError, ValueError, OSError) as exc:
        fail(exc)
        return
    print_json({k: v for k, v in res.items() if k != "history"})


@main.command()
@common
@click.option(
    "--data",
    "datasets",
    multiple=True,
    required=True,
    help="Dataset to annotate (directory or s3:// prefix); repeatable.",
)
@click.option(
    "--classifier",
    "classifier_dir",
    required=True,
    help="Classifier run directory (holds epoch_E/ subdirectories).",
)
@click.option(
    "--epoch",
    "epochs",
    type=int,
    multiple=True,
    required=True,
    help="Classifier epoch(s) to score with; repeatable.",
)
@click.option("--name", default="annotation", show_default=True)
@click.option("--out", help="Annotation root (default .ambient/annotations/NAME); s3:// works.")
@click.option("--grid", help="Comma-separated DDPM levels (default every 3rd level + 99).")
@click.option("--num-draws", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--obs-key",
    "obs_keys",
    multiple=True,
    help="Observation keys the classifier was trained with.",
)
@click.option("--actors", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--cpus-per-actor",
    type=float,
    default=0.5,
    show_default=True,
    help="Fractional, so read tasks always find a CPU (no starvation).",
)
@click.option("--gpus-per-actor", type=float, default=0.0, show_default=True)
@click.option(
    "--skip-bad-shards",
    is_flag=True,
    help="Annotate the rest and list unreadable/bad shards in the manifest.",
)
@click.option(
    "--tau",
    type=float,
    default=0.45,
    show_default=True,
    help="Threshold used for the logged sigma_min histograms only.",
)
def annotate(
    datasets: tuple[str, ...],
    classifier_dir: str,
    epochs: tuple[int, ...],
    name: str,
    out: str | None,
    grid: str | None,
    num_draws: int,
    obs_keys: tuple[str, ...],
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    skip_bad_shards: bool,
    tau: float,
    ray_address: str | None,
    tracking_uri: str | None,
) -> None:
    """Score every shard the latest manifest lacks with classifier actors on Ray Data."""
    from ambient_core.data import DataError
    from jobs.annotate import DEFAULT_GRID
    from jobs.annotate import annotate as run

    try:
        levels = [int(x) for x in grid.split(",")] if grid else list(DEFAULT_GRID)
        res = run(
            datasets,
            classifier_dir,
            epochs,
            out=out,
            name=name,
            grid_levels=levels,
            num_draws=num_draws,
            obs_keys=obs_keys,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            skip_bad_shards=skip_bad_shards,
            tau=tau,
            ray_address=ray_address,
            tracking_uri=tracking_uri,
            verbose=True,
        )
    except (DataError, ValueError, OSError) as exc:
        fail(exc)
        return
    print_json(res)


@main.command()
@common
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Watch file (see sweeps/watch/): sources, classifier, schedule, follow-up sweep.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted override.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron or a RayCronJob).")
@click.option(
    "--max-passes", type=click.IntRange(1), help="Stop after this many passes (default: never)."
)
@click.option("--no-track", is_flag=True, help="Do not log annotation runs to MLflow.")
def watch(
    config_path: str,
    overrides: tuple[str, ...],
    once: bool,
    max_passes: int | None,
    no_track: bool,
    tracking_uri: str | None,
    ray_address: str | None,
) -> None:
    """Keep an annotation current while new corrupt shards land in its sources.

    Each pass lists SOURCE/data/*.parquet (local or s3://), annotates only new or changed shards
    under a lease (two watchers never annotate the same shards), commits manifest v+1 with
    lineage, logs an MLflow annotation run and optionally runs the follow-up sweep. Shards still
    being written are retried on later passes; permanently bad ones are quarantined and listed.
    Runs every schedule.interval_s seconds or at schedule.cron times (UTC) until Ctrl-C.
    """
    from ambient_core.data import DataError
    from ambient_platform.watch_config import load_watch_config
    from jobs.reannotate import run_pass
    from orchestrator.watch import follow_up_sweep
    from orchestrator.watch import watch as loop

    try:
        cfg = load_watch_config(config_path, list(overrides))
    except ConfigError as exc:
        fail(exc)
        return

    def one(c: Any) -> dict[str, Any]:
        return run_pass(
            c,
            tracking_uri=tracking_uri,
            ray_address=ray_address,
            track=not no_track,
            run_follow_up=follow_up_sweep,
        )

    try:
        results = loop(cfg, one, once=once, max_passes=max_passes, echo=click.echo)
    except KeyboardInterrupt:
        click.echo("[watch] stopped")
        return
    except (DataError, ValueError, OSError, RuntimeError) as exc:
        fail(exc)
        return
    if once:
        print_json(results[-1])
        if results[-1].get("status") == "busy":
            click.echo("[watch] another watcher holds the lease; nothing done", err=True)
