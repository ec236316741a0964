"""``ambient train|eval|reproduce|demo|ui``: single runs, the paper tables, the demo, the UI."""

from __future__ import annotations

import click

from ambient_core.errors import ServiceError
from orchestrator.cli._app import common, main, print_json
from orchestrator.cli._proc import port_free, run_in_own_group


@main.command()
@common
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

    cfg = load_run_config(config_path, list(overrides))
    res = run_training(cfg, tracking_uri, track=not no_track)
    print_json({k: v for k, v in res.items() if k != "history"})


@main.command("eval")
@common
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

    print_json(run_eval(checkpoint, episodes, seed, tracking_uri, not no_track, plot))


@main.command()
@common
@click.argument("benchmark", type=click.Choice(["maze", "bin-sorting", "bin-sorting-pixels"]))
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

    res = run(
        benchmark.replace("-", "_"), seeds, full, out, workers, list(overrides), tracking_uri
    )
    click.echo(res["markdown"])
    click.echo(f"\nwritten: {res['dir']}")


@main.command()
@common
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Data seed.")
def demo(seed: int, tracking_uri: str | None) -> None:
    """The main job end to end: bin-sorting data, classifier, annotation on Ray tasks, a Ray
    Tune sweep of co-training vs ambient (3 seeds each), the answer (about 5 minutes on 2
    cores)."""
    from orchestrator.demo import run_demo

    click.echo(run_demo(tracking_uri, seed).text)


@main.command()
@common
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(port: int, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 for the local store and print its URL.

    The server runs in its own process group, which ends with this command (Ctrl-C, SIGTERM,
    SIGHUP or exit), so no server is left serving behind it.
    """
    import sys

    from ambient_platform.tracking import resolve_tracking_uri

    if not port_free(port):
        raise ServiceError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    uri = resolve_tracking_uri(tracking_uri)
    click.echo(f"MLflow UI for {uri}: http://127.0.0.1:{port}  (Ctrl-C to stop)")
    # One worker: a UI for one person needs no pool, and each worker is a Python process.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--workers", "1"]
    code = run_in_own_group([*cmd, "--host", "127.0.0.1", "--port", str(port)])
    if code:
        raise ServiceError(f"the MLflow UI server exited with status {code}")
