"""The ``ambient`` command line: data, training, evaluation, annotation, sweeps, re-annotation
watch, cluster submission, reproduction, demo, UI."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ambient_platform.config import ConfigError
from ambient_platform.settings import configure_environment


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _apply_common(ray_address: str | None, tracking_uri: str | None, storage: str | None) -> None:
    """Export the three location settings so every layer (and every Ray worker started from
    here) sees them: RAY_ADDRESS, MLFLOW_TRACKING_URI, AMBIENT_STORAGE."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        os.environ["AMBIENT_STORAGE"] = storage if "://" in storage else os.path.abspath(storage)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray-address``, ``--tracking-uri`` and ``--storage`` on a command, so the same YAML
    runs on a laptop and on a cluster by changing flags only."""
    wanted = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        ray_address: str | None,
        tracking_uri: str | None,
        storage: str | None,
        **kw: Any,
    ) -> Any:
        _apply_common(ray_address, tracking_uri, storage)
        if "tracking_uri" in wanted:
            kw["tracking_uri"] = tracking_uri
        if "ray_address" in wanted:
            kw["ray_address"] = ray_address
        return fn(*args, **kw)

    for opt in reversed(_COMMON_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper


_COMMON_OPTIONS = [
    click.option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Join this Ray cluster (ray://HOST:10001 or HOST:6379; env RAY_ADDRESS). "
        "Default: start a local one on 127.0.0.1.",
    ),
    click.option(
        "--tracking-uri",
        help="MLflow tracking URI, e.g. http://mlflow:5000 (env MLFLOW_TRACKING_URI). "
        "Default: SQLite under AMBIENT_HOME.",
    ),
    click.option(
        "--storage",
        help="Root of relative data locations (datasets, annotations, classifiers, sweeps): a "
        "directory or s3://bucket/prefix (env AMBIENT_STORAGE). Default: AMBIENT_HOME.",
    ),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Ambient Diffusion Policy research platform.

    Generate or import data, train policies that use corrupt data only where it is
    indistinguishable from clean data (sigma >= sigma_min) or only local (sigma <= sigma_max),
    evaluate them, and reproduce the paper's tables. Runs are tracked in MLflow (a local SQLite
    store under ./.ambient unless --tracking-uri or MLFLOW_TRACKING_URI says otherwise).
    """
    configure_environment()


@main.group()
def data() -> None:
    """Create datasets (Parquet shards + meta.json, local directory or s3:// prefix)."""


@data.command("generate")
@_common
@click.argument("task", type=click.Choice(["maze", "bin-sorting"]))
@click.option(
    "--clean",
    "n_clean",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Clean demonstrations (GCS-like plans / correct sorting logic).",
)
@click.option(
    "--corrupt",
    "n_corrupt",
    type=click.IntRange(0),
    default=5000,
    show_default=True,
    help="Corrupt demonstrations (RRT plans / opposite sorting logic).",
)
@click.option("--out", required=True, help="Output directory or s3://bucket/prefix.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_generate(task: str, n_clean: int, n_corrupt: int, out: str, seed: int) -> None:
    """Write OUT/clean and OUT/corrupt datasets for TASK and print timings and digests."""
    from jobs.generate import generate

    try:
        _print_json(generate(task.replace("-", "_"), n_clean, n_corrupt, out, seed))
    except (ValueError, OSError) as exc:
        _fail(exc)


@data.command("import")
@_common
@click.argument("fmt", type=click.Choice(["lerobot", "zarr"]))
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", required=True, help="Output directory or s3://bucket/prefix.")
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="OURS=THEIRS",
    help="Feature mapping, e.g. --map observation.goal=target; 'action=' drops one.",
)
@click.option("--source", help="Dataset name (default: from PATH).")
@click.option("--task", default="imported", show_default=True)
@click.option("--fps", type=float, help="Frame rate (zarr stores none; LeRobot's info.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
def data_import(
    fmt: str,
    path: str,
    out: str,
    mapping: tuple[str, ...],
    source: str | None,
    task: str,
    fps: float | None,
    overwrite: bool,
) -> None:
    """Import a LeRobot v2/v3 dataset or a diffusion_policy zarr replay buffer from PATH."""
    from ambient_core.data import DataError
    from jobs.importers import import_lerobot, import_zarr, parse_mapping

    try:
        feats = parse_mapping(list(mapping))
        if fmt == "lerobot":
            res = import_lerobot(path, out, feats, source, task, fps, overwrite)
        else:
            res = import_zarr(path, out, feats, source, task, fps or 10.0, overwrite)
    except (DataError, ValueError, OSError) as exc:
        _fail(exc)
        return
    _print_json(res)


@main.command()
@_common
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Run config YAML (see sweeps/train/).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, e.g. --set train.steps=500 --set data.corrupt.0.sigma_min=0.1",
)
@click.option("--no-track", is_flag=True, help="Do not log to MLflow.")
def train(
    config_path: str, overrides: tuple[str, ...], tracking_uri: str | None, no_track: bool
) -> None:
    """Train, evaluate and log one run from a config file."""
    from ambient_platform.config import load_run_config
    from jobs.train import run_training

    try:
        cfg = load_run_config(config_path, list(overrides))
    except ConfigError as exc:
        _fail(exc)
        return
    res = run_training(cfg, tracking_uri, track=not no_track, verbose=True)
    _print_json({k: v for k, v in res.items() if k != "history"})


@main.command("eval")
@_common
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Checkpoint directory written by `ambient train`.",
)
@click.option("--episodes", type=click.IntRange(1), help="Evaluation episodes (default: config).")
@click.option("--seed", type=int, help="Evaluation seed (default: the config's).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a rollout PNG here.")
@click.option("--no-track", is_flag=True)
def eval_cmd(
    checkpoint: str,
    episodes: int | None,
    seed: int | None,
    plot: str | None,
    tracking_uri: str | None,
    no_track: bool,
) -> None:
    """Re-evaluate a saved checkpoint in its environment."""
    from jobs.train import run_eval

    _print_json(run_eval(checkpoint, episodes, seed, tracking_uri, not no_track, plot))


@main.group()
def classifier() -> None:
    """Noise-conditioned clean-vs-corrupt classifier (for sigma_min annotation)."""


@classifier.command("train")
@_common
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
        _fail(exc)
        return
    _print_json({k: v for k, v in res.items() if k != "history"})


@main.command()
@_common
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
        _fail(exc)
        return
    _print_json(res)


@main.command()
@_common
@click.argument("benchmark", type=click.Choice(["maze", "bin-sorting"]))
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--full", is_flag=True, help="The paper's sizes (for a GPU or a cluster).")
@click.option("--out", default=None, help="Output directory (default .ambient/reproduce/NAME).")
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Runs trained in parallel (one torch thread each).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override applied to every row, e.g. --set train.steps=1000",
)
def reproduce(
    benchmark: str,
    seeds: int,
    full: bool,
    out: str | None,
    workers: int,
    overrides: tuple[str, ...],
    tracking_uri: str | None,
) -> None:
    """Run the paper's table for BENCHMARK and write a markdown + CSV table and a figure."""
    from jobs.reproduce import reproduce as run

    try:
        res = run(
            benchmark.replace("-", "_"), seeds, full, out, workers, list(overrides), tracking_uri
        )
    except ConfigError as exc:
        _fail(exc)
        return
    click.echo(res["markdown"])
    click.echo(f"\nwritten: {res['dir']}")


@main.group()
def sweep() -> None:
    """Sweeps over run configs on Ray Tune (Optuna/grid/random, ASHA), tracked in MLflow.

    A spec (sweeps/*.yaml) names a base run config, dotted-path overrides, a search space,
    constraints, searcher, scheduler, seeds and resources. The sweep is an MLflow parent run,
    every trial a child run; results, plots and the best config land in the parent run and
    under STORAGE_PATH/NAME/summary/.
    """


_SWEEP_SET = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override of the sweep spec itself, e.g. --set num_samples=8",
)
_SWEEP_STORAGE = click.option(
    "--storage-path", help="Where Tune keeps the sweep (default: spec, else .ambient/sweeps)."
)
_SWEEP_NAME = click.option("--name", help="Sweep name (default: spec name, else file stem).")


def _load_sweep_or_fail(spec: str, overrides: tuple[str, ...], **kw: Any) -> Any:
    from ambient_platform.sweep_config import load_sweep

    try:
        return load_sweep(spec, list(overrides), **kw)
    except ConfigError as exc:
        _fail(exc)


@sweep.command("validate")
@_common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
def sweep_validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC (schema, space and constraint paths, values, metric) without running it."""
    s = _load_sweep_or_fail(spec, overrides)
    _print_json({"valid": True, **s.summary(), "notes": [*s.notes, *s.missing_inputs()]})


def _sweep_run(spec: str, overrides: tuple[str, ...], resume: bool, **kw: Any) -> None:
    from orchestrator.sweep import SweepError, run_sweep

    _load_sweep_or_fail(spec, overrides, storage_path=kw["storage_path"], name=kw["name"])
    try:
        res = run_sweep(spec, list(overrides), resume=resume, **kw)
    except SweepError as exc:
        _fail(exc)
        return
    _print_json({k: v for k, v in res.items() if k not in ("trials", "configs")})


@sweep.command("run")
@_common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
def sweep_run(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    tracking_uri: str | None,
    ray_address: str | None,
) -> None:
    """Run the sweep of SPEC (refuses to overwrite an existing sweep of the same name)."""
    _sweep_run(
        spec,
        overrides,
        False,
        storage_path=storage_path,
        name=name,
        tracking_uri=tracking_uri,
        ray_address=ray_address,
    )


@sweep.command("resume")
@_common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
def sweep_resume(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    tracking_uri: str | None,
    ray_address: str | None,
) -> None:
    """Continue a crashed or killed sweep: finished trials are kept, the others resume from
    their last checkpoint and reopen their MLflow runs."""
    _sweep_run(
        spec,
        overrides,
        True,
        storage_path=storage_path,
        name=name,
        tracking_uri=tracking_uri,
        ray_address=ray_address,
    )


@sweep.command("status")
@_common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sweep_status_cmd(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Trial states of the sweep of SPEC (also while it runs) and its parent run's status."""
    from orchestrator.sweep import SweepError, sweep_status

    s = _load_sweep_or_fail(spec, overrides, storage_path=storage_path, name=name)
    try:
        res = sweep_status(spec, list(overrides), storage_path=storage_path, name=name)
    except SweepError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(res)
        return
    click.echo(
        f"sweep {res['name']}  parent run {res.get('parent_run_id')} "
        f"({res.get('parent_status', '?')})  {res['experiment_dir']}"
    )
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(res.get("counts", {}).items()))
    click.echo(f"trials: {len(res.get('trials', []))}  {counts or res.get('note', '')}")
    cols = ["trial_id", "status", "outcome", "seed", "round", s.metric, *s.paths]
    rows = [[_cell(t.get(c)) for c in cols] for t in res.get("trials", [])]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


@sweep.command("best")
@_common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def sweep_best_cmd(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Print the best configuration (mean over seeds) as a run config for `ambient train`."""
    import yaml

    from orchestrator.sweep import SweepError, sweep_best

    _load_sweep_or_fail(spec, overrides, storage_path=storage_path, name=name)
    try:
        best = sweep_best(spec, list(overrides), storage_path=storage_path, name=name)
    except SweepError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(best)
        return
    std = best.get("std") or 0.0
    click.echo(
        f"# best of {len(best.get('seeds', []))} seed(s): {best['metric']} = "
        f"{best['mean']:.4g} +- {std:.4g} ({best['mode']}); params "
        f"{json.dumps(best['params'])}\n# runs: {', '.join(map(str, best['run_ids']))}\n"
        f"# from {best['source']}"
    )
    click.echo(yaml.safe_dump(best["config"], sort_keys=False), nl=False)


@main.command()
@_common
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
        _fail(exc)
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
        _fail(exc)
        return
    if once:
        _print_json(results[-1])
        if results[-1].get("status") == "busy":
            click.echo("[watch] another watcher holds the lease; nothing done", err=True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="Dashboard URL of the cluster head, e.g. http://HEAD:8265 (env RAY_API_SERVER_ADDRESS).",
)
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI the job logs to (forwarded as MLFLOW_TRACKING_URI).",
)
@click.option(
    "--storage", help="Storage root for the job (forwarded as AMBIENT_STORAGE), e.g. s3://b/p."
)
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Forward a variable.")
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    default=".",
    show_default=True,
    help="Uploaded as the job's working directory (.gitignore'd files stay behind).",
)
@click.option("--submission-id", help="Job id (default: digest of command, settings and code).")
@click.option("--retry", is_flag=True, help="Run again if the same job already failed/stopped.")
@click.option("--no-wait", is_flag=True, help="Print the id and return; do not stream logs.")
@click.option("--timeout", type=float, help="Stop following after this many seconds.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def submit(
    address: str,
    tracking_uri: str | None,
    storage: str | None,
    env_items: tuple[str, ...],
    working_dir: str,
    submission_id: str | None,
    retry: bool,
    no_wait: bool,
    timeout: float | None,
    command: tuple[str, ...],
) -> None:
    """Run an ambient COMMAND on a Ray cluster through the Ray Jobs API.

    \b
    ambient submit --address http://HEAD:8265 --tracking-uri http://mlflow:5000 \\
        --storage s3://lab/ambient -- sweep run sweeps/maze_sigma_min.yaml

    The same command (and settings and code) gets the same submission id, so submitting it
    twice follows the first job instead of starting a second. Exits 0 when the job succeeds.
    """
    from pathlib import Path

    from orchestrator.submit import JobClient, Submission, SubmitError

    env = {}
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(ValueError(f"--env {item!r} must look like KEY=VALUE"))
        env[key] = value
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        env["AMBIENT_STORAGE"] = storage
    try:
        sub = Submission.build(list(command), Path(working_dir).resolve(), env, submission_id)
        client = JobClient(address)
        sid, created = client.submit(sub, retry=retry)
    except (SubmitError, RuntimeError, ConnectionError) as exc:
        _fail(exc)
        return
    verb = "submitted" if created else f"already submitted ({client.status(sid)}); following"
    click.echo(f"[submit] {verb}: {sid}  ({sub.entrypoint})", err=True)
    if no_wait:
        click.echo(sid)
        return
    try:
        status = client.follow(sid, click.echo, timeout_s=timeout)
    except KeyboardInterrupt:
        click.echo(f"\n[submit] still running: ambient job logs {sid} --address {address}")
        sys.exit(130)
    click.echo(f"[submit] {sid}: {status}", err=True)
    sys.exit(0 if status == "SUCCEEDED" else 1)


@main.group()
def job() -> None:
    """Status, logs and stopping of jobs started with `ambient submit`."""


_ADDRESS = click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="Dashboard URL of the cluster head (env RAY_API_SERVER_ADDRESS).",
)


@job.command("status")
@_ADDRESS
@click.argument("submission_id")
def job_status(address: str, submission_id: str) -> None:
    """Print the status of SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    click.echo(JobClient(address).status(submission_id) or "no such job")


@job.command("logs")
@_ADDRESS
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.argument("submission_id")
def job_logs(address: str, follow: bool, submission_id: str) -> None:
    """Print the log of SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    client = JobClient(address)
    if follow:
        click.echo(f"[job] {client.follow(submission_id, click.echo)}", err=True)
    else:
        click.echo(client.logs(submission_id), nl=False)


@job.command("stop")
@_ADDRESS
@click.argument("submission_id")
def job_stop(address: str, submission_id: str) -> None:
    """Ask the cluster to stop SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    click.echo("stopping" if JobClient(address).stop(submission_id) else "not running")


@main.command()
@_common
def demo(tracking_uri: str | None) -> None:
    """The main job end to end on embedded defaults: maze data, classifier, Ray Data annotation,
    a small Ray Tune sweep over tau x granularity, results table (about 5 minutes on 2 cores)."""
    from orchestrator.demo import run_demo

    run_demo(tracking_uri)


@main.command()
@_common
@click.option("--port", type=int, default=5000, show_default=True)
def ui(port: int, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 for the local store and print its URL."""
    import subprocess

    from ambient_platform.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    click.echo(f"MLflow UI for {uri}: http://127.0.0.1:{port}  (Ctrl-C to stop)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        check=False,
    )


if __name__ == "__main__":
    main()
