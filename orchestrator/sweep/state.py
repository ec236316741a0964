"""Where a sweep lives and what it records about itself, readable without Ray or MLflow.

Layout of a sweep named NAME under ``storage_path`` (local or s3://, default AMBIENT_HOME/sweeps):

    NAME/                   Ray Tune's experiment directory (tuner.pkl, experiment state, trials)
    NAME/ambient_sweep.json ``SweepInfo``: parent run, tracking URI, spec, what was swept
    NAME/ambient_index.json ``SweepIndex``: trial states and metrics, written by the driver as
                            trials start and end (what ``sweep status`` reads, in well under 2 s)
    NAME/summary/           results.csv, results_by_config.csv, best_config.yaml, best.json
    NAME/report/            index.html + figures (also logged to the parent run)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ambient_core.envs.registry import get_task
from ambient_core.errors import SweepError
from ambient_platform.config.naming import short_keys
from ambient_platform.config.sweep import Sweep
from ambient_platform.settings import ambient_home
from ambient_platform.storage import StorageRoot

STATE_FILE = "ambient_sweep.json"
INDEX_FILE = "ambient_index.json"
SUMMARY_DIR = "summary"
REPORT_DIR = "report"
#: Trial fields of the index beyond params and metrics.
SMOOTHNESS = ("mean_sq_accel", "mean_sq_jerk")


@dataclass
class SweepInfo:
    """What a sweep is (written once at its start; a report needs nothing else)."""

    name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    spec: str
    spec_digest: str
    created: float
    task: str = ""
    metric: str = ""
    mode: str = "max"
    paths: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    n_trials: int | None = None
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)
    storage_uri: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def describe_space(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Each swept path's kind, finite values or bounds, and whether it reads on a log axis."""
    out: dict[str, dict[str, Any]] = {}
    for p, e in sweep.spec.space.items():
        out[p] = {
            "kind": e.kind,
            "values": list(e.values) if e.values is not None else None,
            "bounds": list(e.bounds) if e.bounds is not None else None,
            "log": e.loguniform is not None,
        }
    return out


def sweep_info(sweep: Sweep, parent_run_id: str, uri: str, spec: str) -> SweepInfo:
    return SweepInfo(
        name=sweep.name,
        parent_run_id=parent_run_id,
        tracking_uri=uri,
        experiment=sweep.experiment,
        spec=spec,
        spec_digest=spec_digest(sweep),
        created=time.time(),
        task=sweep.task,
        metric=sweep.metric,
        mode=sweep.spec.mode,
        paths=list(sweep.paths),
        labels=short_keys(sweep.paths),
        seeds=list(sweep.spec.seeds),
        n_trials=sweep.trial_count(),
        space=describe_space(sweep),
        metrics=[*get_task(sweep.task).metrics, "train_loss"],
        base=sweep.base,
        storage_uri=experiment_root(sweep).uri,
    )


def spec_digest(sweep: Sweep) -> str:
    """What a resumed sweep must share with the one that started (not concurrency, budget)."""
    s = sweep.spec
    what = {
        "base": _without_nones(sweep.base),
        "space": {p: e.model_dump() for p, e in s.space.items()},
        "constraints": [c.text for c in sweep.constraints],
        "seeds": s.seeds,
        "searcher": s.searcher.model_dump(),
        "scheduler": s.scheduler.model_dump(),
        "metric": sweep.metric,
        "mode": s.mode,
        "num_samples": s.num_samples,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _without_nones(value: Any) -> Any:
    """Unset optional fields left out, so a field added to the schema later (default None)
    does not make a sweep started before the upgrade unresumable."""
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def experiment_root(sweep: Sweep) -> StorageRoot:
    return StorageRoot(sweep.storage_path.rstrip("/") + "/" + sweep.name)


def report_dir(root: StorageRoot, name: str) -> Path:
    """Local home of a sweep's report: inside its experiment directory, or under AMBIENT_HOME
    when the sweep lives on s3://."""
    if root.local_path is not None:
        return root.local_path / REPORT_DIR
    return ambient_home() / "sweep-reports" / name


def read_info(root: StorageRoot) -> SweepInfo | None:
    data = root.read_json(STATE_FILE) if root.exists(STATE_FILE) else None
    return SweepInfo.from_json(data) if data else None


def sweep_started(sweep: Sweep) -> bool:
    """True once a sweep of this name has state at its storage path (resume it, do not rerun)."""
    return read_info(experiment_root(sweep)) is not None


def sweeps_of_spec(storage_path: str, spec: str) -> list[SweepInfo]:
    """Every sweep under ``storage_path`` started from the spec file ``spec``, newest first."""
    store = StorageRoot(storage_path)
    want = str(Path(spec).resolve())
    local = store.local_path
    if local is not None:  # one directory level, not the trials' checkpoint trees
        keys = [str(p.relative_to(local)) for p in local.glob(f"*/{STATE_FILE}")]
    else:
        keys = [f.key for f in store.list("", suffix=STATE_FILE) if f.key.count("/") == 1]
    found = []
    for key in keys:
        try:
            info = SweepInfo.from_json(store.read_json(key))
        except (OSError, ValueError, TypeError):
            continue
        if info.spec == want:
            found.append(info)
    return sorted(found, key=lambda i: i.created, reverse=True)


@dataclass
class SweepIndex:
    """The driver's live view of a sweep: state, segments (for wall time) and every trial."""

    state: str = "RUNNING"  # RUNNING | FINISHED | FAILED | INTERRUPTED
    updated: float = 0.0
    n_trials: int | None = None
    segments: list[list[float]] = field(default_factory=list)  # [start, end] per run/resume
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    retries: int = 0  # trial starts after the first, by Tune's retry or by a resume
    lost_nodes: list[str] = field(default_factory=list)  # ids of nodes that died under a trial

    @classmethod
    def read(cls, root: StorageRoot) -> SweepIndex | None:
        if not root.exists(INDEX_FILE):
            return None
        data = root.read_json(INDEX_FILE) or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, root: StorageRoot) -> None:
        """Compact JSON from the C encoder, the fields as they are (no deep copy): the index
        holds every trial and the driver rewrites it while the sweep runs (``asdict`` plus an
        indented dump took ~15 ms a write at 200 trials). A non-finite number (a diverged loss)
        is written as null instead of failing the write."""
        self.updated = time.time()
        if self.segments:
            self.segments[-1][1] = self.updated
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        try:
            text = json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(data), sort_keys=True, separators=(",", ":"))
        root.write_bytes(INDEX_FILE, (text + "\n").encode())

    @property
    def wall_s(self) -> float:
        """Wall time over every segment (run and each resume)."""
        return float(sum(max(0.0, b - a) for a, b in self.segments))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t["outcome"]] = out.get(t["outcome"], 0) + 1
        return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def require_info(root: StorageRoot, name: str) -> SweepInfo:
    info = read_info(root)
    if info is None:
        raise SweepError(f"no sweep {name!r} at {root.uri}: nothing has run yet")
    return info
