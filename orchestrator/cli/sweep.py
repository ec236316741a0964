"""``ambient sweep``: validate, run, resume, status, best and report of Ray Tune sweeps.

Errors are ``AmbientError``s (``SweepError``, ``ConfigError``) raised to the one CLI handler.
``status``, ``best`` and ``report`` take a spec (its most recent sweep unless ``--name``) or a
sweep NAME; ``status`` and ``best`` read the files the driver writes and never start Ray.
"""

from __future__ import annotations

import json
from typing import Any

import click

from orchestrator.cli._app import common, main, print_json


@main.group()
def sweep() -> None:
    """Sweeps over run configs on Ray Tune (Optuna/grid/random, ASHA), tracked in MLflow.

    A spec (sweeps/*.yaml) names a base run config, dotted-path overrides, a search space,
    constraints, searcher, scheduler, seeds and resources. The sweep is an MLflow parent run,
    every trial a child run; the report (report/index.html: ranking with 95% intervals over
    seeds, figures, parameter importance), the tables and the best config land in the parent
    run and under STORAGE_PATH/NAME/.
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
_SWEEP_NAME = click.option(
    "--name", help="Sweep name (run: default spec name; status/best/report: default newest)."
)


def _verbosity() -> int:
    ctx = click.get_current_context()
    return 2 if ctx.find_root().params.get("verbose") else 0


@sweep.command("validate")
@common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
def sweep_validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC (schema, space and constraint paths, values, metric) without running it."""
    from ambient_platform.config.sweep import load_sweep

    s = load_sweep(spec, list(overrides))
    print_json({"valid": True, **s.summary(), "notes": [*s.notes, *s.missing_inputs()]})


def _sweep_run(
    spec: str, overrides: tuple[str, ...], resume: bool, as_json: bool, **kw: Any
) -> None:
    from orchestrator.sweep import run_sweep

    res = run_sweep(spec, list(overrides), resume=resume, verbose=_verbosity(), **kw)
    if as_json:
        print_json({k: v for k, v in res.items() if k not in ("trials", "configs", "files")})
        return
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(res["counts"].items()))
    click.echo(f"sweep {res['name']}: {counts} in {res['wall_s'] / 60:.1f} min")
    click.echo(res["headline"])
    click.echo(f"report: {res['report']}")
    click.echo(f"MLflow parent run {res['parent_run_id']} ({res['tracking_uri']})")


_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@sweep.command("run")
@common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@_JSON
def sweep_run(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
    tracking_uri: str | None,
) -> None:
    """Run the sweep of SPEC (refuses to overwrite an existing sweep of the same name).

    Prints a line per finished trial and a progress bar while it runs, then the ranking."""
    _sweep_run(
        spec,
        overrides,
        False,
        as_json,
        storage_path=storage_path,
        name=name,
        tracking_uri=tracking_uri,
    )


@sweep.command("resume")
@common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@_JSON
def sweep_resume(
    spec: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
    tracking_uri: str | None,
) -> None:
    """Continue a crashed or killed sweep: finished trials are kept, the others resume from
    their last checkpoint and reopen their MLflow runs."""
    _sweep_run(
        spec,
        overrides,
        True,
        as_json,
        storage_path=storage_path,
        name=name,
        tracking_uri=tracking_uri,
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _table(rows: list[list[str]], cols: list[str]) -> list[str]:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return lines


@sweep.command("status")
@common
@click.argument("target", metavar="SPEC|NAME")
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@_JSON
def sweep_status_cmd(
    target: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Trials of a sweep (RUNNING, PENDING, finished, ...), also while it runs: the spec's
    most recent sweep, the one named --name, or the sweep NAME."""
    from orchestrator.sweep.status import sweep_status

    res = sweep_status(target, list(overrides), storage_path=storage_path, name=name)
    if as_json:
        print_json(res)
        return
    counts = res["counts"]
    by = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    total = res["n_trials"] if res["n_trials"] is not None else "?"
    click.echo(f"sweep {res['name']}  {res['state']}  {res['done']} of {total} trials done ({by})")
    click.echo(f"  parent run {res['parent_run_id']}  {res['experiment_dir']}")
    if res.get("retries") or res.get("lost_nodes"):
        lost = len(res.get("lost_nodes") or [])
        click.echo(f"  {res['retries']} trial retries, {lost} nodes lost under a trial")
    if res.get("report"):
        click.echo(f"  report {res['report']}")
    cols = ["trial", "status", "outcome", "round", res["metric"], "duration_s", "trial_id"]
    keys = ["label", "status", "outcome", "round", res["metric"], "duration_s", "trial_id"]
    rows = [[_cell(t.get(k)) for k in keys] for t in res["trials"]]
    for line in _table(rows, cols):
        click.echo(line)
    best = res.get("best")
    if best:
        click.echo(f"verdict: {best.get('verdict')}")


@sweep.command("best")
@common
@click.argument("target", metavar="SPEC|NAME")
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@_JSON
def sweep_best_cmd(
    target: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Print the best configuration (mean over seeds) as a run config for `ambient train`,
    with the verdict on whether it is separable from the runners-up."""
    import yaml

    from orchestrator.sweep.results import interval_text
    from orchestrator.sweep.stats import Interval
    from orchestrator.sweep.status import sweep_best

    best = sweep_best(target, list(overrides), storage_path=storage_path, name=name)
    if as_json:
        print_json(best)
        return
    ci = best.get("ci")
    half = None if not ci else (ci[1] - ci[0]) / 2
    interval = Interval(int(best.get("n") or 0), best.get("mean"), best.get("std"), half)
    click.echo(
        f"# best of sweep: {best['label']}: {best['metric']} {interval_text(interval)} "
        f"({best['mode']}); params {json.dumps(best['params'])}\n"
        f"# verdict: {best.get('verdict')}\n"
        f"# runs: {', '.join(map(str, best['run_ids']))}\n# from {best['source']}"
    )
    click.echo(yaml.safe_dump(best["config"], sort_keys=False), nl=False)


@sweep.command("report")
@common
@click.argument("target", metavar="SPEC|NAME")
@_SWEEP_SET
@_SWEEP_STORAGE
@_SWEEP_NAME
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write the report here (default: the sweep's report/ directory, also logged to its "
    "parent run).",
)
def sweep_report_cmd(
    target: str,
    overrides: tuple[str, ...],
    storage_path: str | None,
    name: str | None,
    out: str | None,
    tracking_uri: str | None,
) -> None:
    """(Re)build the HTML report of a sweep from the tracking store, finished or not.

    A NAME this machine's storage does not hold is looked up in the tracking store (give
    --out)."""
    from pathlib import Path

    from ambient_platform.tracking import RunTracker
    from orchestrator.sweep import SweepError
    from orchestrator.sweep.report import build_report, info_from_tracking, publish
    from orchestrator.sweep.state import SweepIndex, report_dir
    from orchestrator.sweep.status import locate

    try:
        root, info = locate(target, list(overrides), storage_path=storage_path, name=name)
    except SweepError:
        if Path(target).is_file() or out is None:
            raise
        # Not in this machine's storage: rebuild from the tracking store alone.
        info = info_from_tracking(target, tracking_uri)
        report = build_report(info, Path(out))
        click.echo(report.headline)
        click.echo(f"report: {report.index}")
        return
    dest = Path(out) if out else report_dir(root, info.name)
    report = build_report(info, dest, SweepIndex.read(root))
    if out is None:
        store = root.child("report") if root.local_path is None else None
        publish(report, RunTracker(info.tracking_uri, info.parent_run_id), store)
    click.echo(report.headline)
    click.echo(f"report: {report.index}")
