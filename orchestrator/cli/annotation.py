"""``ambient classifier|annotate|watch``: the classifier, score-curve annotation, re-annotation.

Each command turns its flags into the one settings object its job takes
(``ClassifierTrainConfig``, ``AnnotateConfig``, ``WatchConfig``), so flags, watch files and
Python callers are validated by the same schema (``ambient_platform.config.annotation``).
Errors are not caught here: the group's handler prints them.
"""

from __future__ import annotations

from typing import Any

import click

from orchestrator.cli._app import common, main, print_json

#: ``ambient watch --once`` exit codes (cron and Kubernetes tell the outcomes apart by them).
EXIT_COMMITTED = 0
EXIT_UP_TO_DATE = 3
EXIT_BUSY = 4
_ONCE_EXIT = {"committed": EXIT_COMMITTED, "up-to-date": EXIT_UP_TO_DATE, "busy": EXIT_BUSY}


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
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--steps-per-epoch", type=int, default=300, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--horizon", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def classifier_train(tracking_uri: str | None, **flags: Any) -> None:
    """Train c(x_s, s) on balanced clean/corrupt batches; saves every epoch (OUT/epoch_E)."""
    from ambient_platform.config.annotation import ClassifierTrainConfig
    from ambient_platform.config.base import validate
    from jobs.train_classifier import run_classifier_training

    cfg = validate(ClassifierTrainConfig, _given(flags), "ambient classifier train")
    res = run_classifier_training(cfg, tracking_uri=tracking_uri)
    print_json({k: v for k, v in res.items() if k != "history"})


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags as config fields: repeatable options as lists, unset ones left to the schema."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v is not None}


@main.command()
@common
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="Dataset to annotate (directory or s3:// prefix); repeatable.",
)
@click.option(
    "--classifier",
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
@click.option(
    "--grid",
    help="Comma-separated DDPM levels (default every 3rd level + 99: 34 levels).",
)
@click.option("--num-draws", type=int, default=4, show_default=True)
@click.option(
    "--obs-key",
    "obs_keys",
    multiple=True,
    help="Observation keys the classifier was trained with.",
)
@click.option(
    "--actors", type=int, default=1, show_default=True, help="Scoring tasks run at once."
)
@click.option(
    "--cpus-per-actor",
    type=float,
    default=0.5,
    show_default=True,
    help="CPUs Ray reserves for each scoring task (torch threads: the whole part, at least 1).",
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
    grid: str | None,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    ray_address: str | None,
    tracking_uri: str | None,
    **flags: Any,
) -> None:
    """Score every shard the latest manifest lacks with classifier tasks on Ray, one per
    shard (--actors of them at once, on reused workers that keep the classifier loaded)."""
    from ambient_core.errors import ConfigError
    from ambient_platform.config.annotation import AnnotateConfig
    from ambient_platform.config.base import validate
    from jobs.annotate import annotate as run

    fields = _given(flags)
    if grid:
        try:
            fields["grid_levels"] = [int(x) for x in grid.split(",")]
        except ValueError:
            raise ConfigError(f"--grid {grid!r}: give comma-separated integers") from None
    fields["resources"] = {
        "actors": actors,
        "cpus_per_actor": cpus_per_actor,
        "gpus_per_actor": gpus_per_actor,
    }
    cfg = validate(AnnotateConfig, fields, "ambient annotate")
    print_json(run(cfg, ray_address=ray_address, tracking_uri=tracking_uri))


@main.command(
    epilog=(
        "\b\nExit codes with --once:\n"
        f"  {EXIT_COMMITTED}  a new manifest version was committed\n"
        f"  {EXIT_UP_TO_DATE}  nothing new: the annotation was up to date\n"
        f"  {EXIT_BUSY}  busy: another watcher holds the lease; nothing done\n"
        "  (with --idle-ok, 3 and 4 become 0: for schedulers that count non-zero as failure)\n"
        "  2  a user error (bad watch file, sources, classifier, ...)\n"
        "  1  an internal error (a bug; the traceback is printed)"
    )
)
@common
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Watch file (see sweeps/watch/): sources, classifier, schedule, follow-up sweep.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted override.")
@click.option(
    "--once",
    is_flag=True,
    help="One pass, then exit with a code that tells its outcome (cron, a RayCronJob).",
)
@click.option(
    "--max-passes", type=click.IntRange(1), help="Stop after this many passes (default: never)."
)
@click.option("--no-track", is_flag=True, help="Do not log annotation runs to MLflow.")
@click.option(
    "--idle-ok",
    is_flag=True,
    help="With --once, exit 0 also when nothing was new or another watcher was busy "
    "(Kubernetes CronJobs and RayCronJobs count any other code as a failed run).",
)
def watch(
    config_path: str,
    overrides: tuple[str, ...],
    once: bool,
    max_passes: int | None,
    no_track: bool,
    idle_ok: bool,
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
    from ambient_platform.config.watch import WatchConfig, load_watch_config
    from jobs.reannotate import run_pass
    from orchestrator.watch import follow_up_sweep
    from orchestrator.watch import watch as loop

    cfg = load_watch_config(config_path, list(overrides))

    def one(c: WatchConfig) -> dict[str, Any]:
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
        click.echo("[watch] stopped", err=True)
        return
    if once:
        print_json(results[-1])
        status = str(results[-1].get("status"))
        if status == "busy":
            click.echo("[watch] another watcher holds the lease; nothing done", err=True)
        code = _ONCE_EXIT.get(status, EXIT_COMMITTED)
        raise click.exceptions.Exit(EXIT_COMMITTED if idle_ok else code)
