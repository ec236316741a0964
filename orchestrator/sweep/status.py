"""``sweep status``, ``sweep best`` and finding a sweep: from the files the driver writes, so
they answer in well under 2 s and never start Ray or import MLflow.

Given a spec without ``--name`` they pick that spec's most recent sweep (the demo names its
sweeps ``demo-<timestamp>``); given a NAME they look under the storage path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ambient_core.errors import SweepError
from ambient_platform.config.base import apply_overrides, load_yaml
from ambient_platform.settings import configure_environment, resolve_location
from ambient_platform.storage import StorageRoot
from orchestrator.sweep.state import (
    REPORT_DIR,
    SUMMARY_DIR,
    SweepIndex,
    SweepInfo,
    read_info,
    sweeps_of_spec,
)

#: A RUNNING sweep whose driver has not written its index for this long is probably dead.
STALE_S = 120.0


def locate(
    target: str,
    overrides: Iterable[str] = (),
    *,
    storage_path: str | None = None,
    name: str | None = None,
) -> tuple[StorageRoot, SweepInfo]:
    """The directory and info of a sweep given by spec file (its most recent sweep unless
    ``name``) or by name (under ``storage_path``, default AMBIENT_STORAGE/sweeps)."""
    if Path(target).is_file():
        store, default = _spec_location(target, overrides, storage_path)
        explicit = name is not None or any(o.startswith("name=") for o in overrides)
        found = [] if explicit else sweeps_of_spec(store, target)
        own = read_info(StorageRoot(f"{store.rstrip('/')}/{name or default}"))
        if own is not None:
            found.append(own)
        if not found:
            raise SweepError(
                f"no sweep of {target} under {store}"
                + (f" named {name or default!r}" if explicit else "")
                + f": nothing has run yet (start one with `ambient sweep run {target}`)"
            )
        info = max(found, key=lambda i: i.created)
        return StorageRoot(f"{store.rstrip('/')}/{info.name}"), info
    if name is not None:
        raise SweepError(f"{target} is not a spec file; give either a spec (+ --name) or a NAME")
    base = storage_path or resolve_location("sweeps")
    root = StorageRoot(f"{base.rstrip('/')}/{target}")
    named = read_info(root)
    if named is None:
        raise SweepError(
            f"no sweep named {target!r} under {base} (and no spec file {target!r}); "
            "pass the spec file or --storage-path"
        )
    return root, named


def _spec_location(
    spec: str, overrides: Iterable[str], storage_path: str | None
) -> tuple[str, str]:
    """(storage path, default name) of a spec, read from its YAML alone: validating the whole
    spec (base run config included) costs seconds and ``status`` must answer at once."""
    data = apply_overrides(load_yaml(spec), list(overrides))
    store = storage_path or data.get("storage_path") or "sweeps"
    return resolve_location(str(store)), str(data.get("name") or Path(spec).stem)


def _trial_rows(info: SweepInfo, index: SweepIndex) -> list[dict[str, Any]]:
    rows = []
    for t in index.trials.values():
        rows.append(
            {
                "trial_id": t["trial_id"],
                "label": t.get("label", ""),
                "status": t["status"],
                "outcome": t["outcome"],
                "seed": t.get("seed"),
                "round": t.get("round"),
                info.metric: t.get("value"),
                **{p: (t.get("params") or {}).get(p) for p in info.paths},
                "duration_s": t.get("duration_s"),
            }
        )
    return rows


def sweep_status(
    target: str,
    overrides: Iterable[str] = (),
    *,
    storage_path: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """State (RUNNING, FINISHED, ...), k of N trials done, trials RUNNING vs PENDING."""
    configure_environment()
    root, info = locate(target, overrides, storage_path=storage_path, name=name)
    index = SweepIndex.read(root) or SweepIndex(state="UNKNOWN", n_trials=info.n_trials)
    state = index.state
    age = time.time() - index.updated if index.updated else None
    if state == "RUNNING" and age is not None and age > STALE_S:
        state = f"RUNNING? (driver silent for {age:.0f} s; `ambient sweep resume` if it died)"
    counts = index.counts()
    done = sum(counts.get(k, 0) for k in ("finished", "stopped_early", "errored"))
    out: dict[str, Any] = {
        "name": info.name,
        "spec": info.spec,
        "experiment_dir": root.uri,
        "parent_run_id": info.parent_run_id,
        "tracking_uri": info.tracking_uri,
        "experiment": info.experiment,
        "state": state,
        "metric": info.metric,
        "mode": info.mode,
        "paths": info.paths,
        "n_trials": index.n_trials or info.n_trials,
        "done": done,
        "counts": counts,
        "wall_s": index.wall_s,
        "retries": index.retries,
        "lost_nodes": index.lost_nodes,
        "trials": _trial_rows(info, index),
    }
    report = root.child(REPORT_DIR)
    if root.local_path is not None and report.exists("index.html"):
        out["report"] = str(root.local_path / REPORT_DIR / "index.html")
    best = _read_best(root)
    if best is not None:
        out["best"] = best
    return out


def _read_best(root: StorageRoot) -> dict[str, Any] | None:
    summary = root.child(SUMMARY_DIR)
    if not summary.exists("best.json"):
        return None
    best = summary.read_json("best.json")
    return dict(best) if best else None


def sweep_best(
    target: str,
    overrides: Iterable[str] = (),
    *,
    storage_path: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The best configuration so far (written whenever the report is refreshed)."""
    configure_environment()
    root, info = locate(target, overrides, storage_path=storage_path, name=name)
    best = _read_best(root)
    if best is None:
        raise SweepError(
            f"no trial of sweep {info.name!r} has reported {info.metric} yet "
            f"(`ambient sweep status {target}` shows its trials)"
        )
    index = SweepIndex.read(root)
    finished = index is not None and index.state == "FINISHED"
    source = root.child(SUMMARY_DIR).uri_for("best.json")
    return {**best, "source": source if finished else f"{source} (trials so far; still running)"}
