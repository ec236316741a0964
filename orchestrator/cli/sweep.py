"""``ambient sweep``: validate, run, resume, status and best of Ray Tune sweeps."""

from __future__ import annotations

import json
from typing import Any

import click

from ambient_platform.config import ConfigError
from orchestrator.cli._app import common, fail, main, print_json


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


def _load_sweep_orfail(spec: str, overrides: tuple[str, ...], **kw: Any) -> Any:
    from ambient_platform.sweep_config import load_sweep

    try:
        return load_sweep(spec, list(overrides), **kw)
    except ConfigError as exc:
        fail(exc)


@sweep.command("validate")
@common
@click.argument("spec", type=click.Path(dir_okay=False))
@_SWEEP_SET
def sweep_validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC (schema, space and constraint paths, values, metric) without running it."""
    s = _load_sweep_orfail(spec, overrides)
    print_json({"valid": True, **s.summary(), "notes": [*s.notes, *s.missing_inputs()]})


def _sweep_run(spec: str, overrides: tuple[str, ...], resume: bool, **kw: Any) -> None:
    from orchestrator.sweep import SweepError, run_sweep

    _load_sweep_orfail(spec, overrides, storage_path=kw["storage_path"], name=kw["name"])
    try:
        res = run_sweep(spec, list(overrides), resume=resume, **kw)
    except SweepError as exc:
        fail(exc)
        return
    print_json({k: v for k, v in res.items() if k not in ("trials", "configs")})


@sweep.command("run")
@common
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
@common
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
@common
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

    s = _load_sweep_orfail(spec, overrides, storage_path=storage_path, name=name)
    try:
        res = sweep_status(spec, list(overrides), storage_path=storage_path, name=name)
    except SweepError as exc:
        fail(exc)
        return
    if as_json:
        print_json(res)
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
@common
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

    _load_sweep_orfail(spec, overrides, storage_path=storage_path, name=name)
    try:
        best = sweep_best(spec, list(overrides), storage_path=storage_path, name=name)
    except SweepError as exc:
        fail(exc)
        return
    if as_json:
        print_json(best)
        return
    std = best.get("std") or 0.0
    click.echo(
        f"# best of {len(best.get('seeds', []))} seed(s): {best['metric']} = "
        f"{best['mean']:.4g} +- {std:.4g} ({best['mode']}); params "
        f"{json.dumps(best['params'])}\n# runs: {', '.join(map(str, best['run_ids']))}\n"
        f"# from {best['source']}"
    )
    click.echo(yaml.safe_dump(best["config"], sort_keys=False), nl=False)
