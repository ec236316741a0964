"""Sweep specs (``sweeps/*.yaml``): a base run config, a dotted-path search space, constraints.

A spec is validated by pydantic like run configs; every error names the file and the dotted
path, e.g. ``sweeps/x.yaml: space.data.corrupt.0.sigma_min: ...``. Space and constraint paths
must exist in the resolved base run config (``base_config`` + ``overrides``), and every value a
space can produce is checked against the run-config schema before anything runs. The space
language (entry kinds, constraint syntax) is described in ``ambient_platform.config.space``.

Constraints must hold for a config to run: grid and random searchers drop violating points
before the sweep starts (random redraws); Optuna resamples: the rejected suggestion is never
run, it is told to the study as PRUNED with an infeasible constraint value
(``Trial.set_constraint``), so TPE steers away from it. A point the run-config schema rejects as
a whole (a cross-field rule) is an error for grid/random and a rejected suggestion for Optuna.
The metrics a trial reports and the default metric come from the task registry.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from ambient_core.envs.registry import get_task
from ambient_platform.config.base import (
    ConfigError,
    PathError,
    PositiveFloat,
    StrictModel,
    apply_overrides,
    format_validation_error,
    get_path,
    load_yaml,
    set_path,
    validate,
)
from ambient_platform.config.naming import SEED_KEY, format_value
from ambient_platform.config.run import RunConfig
from ambient_platform.config.space import PATH_RE, Constraint, OptunaSpace, SpaceEntry
from ambient_platform.settings import resolve_location
from ambient_platform.storage import validate_name

__all__ = [
    "EXTRA_METRICS",
    "MAX_RESAMPLES",
    "SEED_KEY",
    "Constraint",
    "OptunaSpace",
    "SpaceEntry",
    "Sweep",
    "SweepSpec",
    "get_path",
    "load_sweep",
    "optuna_storage_path",
    "set_path",
]

#: Reported by every trial besides its task's evaluation metrics: the last training loss.
EXTRA_METRICS = ("train_loss",)
MAX_RESAMPLES = 1000
FEASIBILITY_DRAWS = 500


class SearcherConfig(StrictModel):
    """``optuna`` (TPE, define-by-run), ``grid`` (every point) or ``random`` (seeded draws)."""

    kind: Literal["optuna", "grid", "random"] = "grid"
    seed: int | None = 0
    storage: str | None = None  # Optuna JournalFileBackend file (local path)
    n_startup_trials: int | None = Field(None, ge=1)  # TPE's random warm-up trials

    @model_validator(mode="after")
    def _storage_only_for_optuna(self) -> SearcherConfig:
        if self.storage is not None and self.kind != "optuna":
            raise ValueError("storage is the Optuna study's journal file: only for kind optuna")
        if self.storage is not None and "://" in self.storage:
            raise ValueError("storage must be a local file path (Optuna JournalFileBackend)")
        return self


class SchedulerConfig(StrictModel):
    """Early stopping over evaluation rounds (t = round, 1..train.rounds; the last is final)."""

    kind: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)


#: Ray node-label syntax (Ray 2.60 label selectors): an optional ``prefix/`` then a name, and a
#: value that may be negated (``!spot``) or a set (``in(a,b)``, ``!in(a,b)``).
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_SELECTOR = re.compile(rf"!?({_LABEL_VALUE}|in\({_LABEL_VALUE}(,{_LABEL_VALUE})*\))")
#: The node label Ray sets from a node's accelerator (e.g. ``H100``, ``A100``).
ACCELERATOR_LABEL = "ray.io/accelerator-type"


class ResourcesConfig(StrictModel):
    """What one trial asks Ray for. ``gpu`` may be a fraction (``0.25``: four trials share a
    GPU; each trial's torch device is the GPU Ray assigned). ``accelerator_type`` and
    ``node_labels`` restrict trials to matching nodes (Ray label selectors)."""

    cpu: PositiveFloat = 1.0
    gpu: float = Field(0.0, ge=0)
    accelerator_type: str | None = None
    node_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("node_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a Ray node label name")
            if not _LABEL_SELECTOR.fullmatch(value):
                raise ValueError(
                    f"{key}: {value!r} is not a label selector (a value, !value, in(a,b) or "
                    "!in(a,b))"
                )
        return v

    @field_validator("accelerator_type")
    @classmethod
    def _accelerator(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(_LABEL_VALUE, v):
            raise ValueError(f"{v!r} is not an accelerator type (e.g. H100, A100, L4)")
        return v

    def label_selector(self) -> dict[str, str]:
        """The Ray label selector of a trial's placement (empty: any node)."""
        out = dict(self.node_labels)
        if self.accelerator_type:
            out[ACCELERATOR_LABEL] = self.accelerator_type
        return out

    def bundle(self) -> dict[str, float]:
        """One trial's resources in Ray's placement-group form."""
        return {"CPU": float(self.cpu), **({"GPU": float(self.gpu)} if self.gpu > 0 else {})}


class SweepSpec(StrictModel):
    """The file format of ``sweeps/*.yaml``."""

    name: str | None = None
    description: str | None = None
    base_config: str | None = None
    run: dict[str, Any] | None = None
    overrides: list[str] = Field(default_factory=list)
    space: dict[str, SpaceEntry] = Field(..., min_length=1)
    constraints: list[str] = Field(default_factory=list)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    max_concurrent: int = Field(1, ge=1)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_failures: int = Field(1, ge=-1)
    storage_path: str | None = None
    time_budget_s: PositiveFloat | None = None
    experiment: str | None = None
    reuse_actors: bool = True
    checkpoint_train_state: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else validate_name(v, "sweep name")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("space")
    @classmethod
    def _paths(cls, v: dict[str, SpaceEntry]) -> dict[str, SpaceEntry]:
        for path in v:
            if not PATH_RE.match(path):
                raise ValueError(f"{path!r} is not a dotted config path like data.corrupt.0.x")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if (self.base_config is None) == (self.run is None):
            raise ValueError("give exactly one of base_config (a run-config file) or run")
        if self.searcher.kind == "grid":
            bad = [p for p, e in self.space.items() if e.values is None]
            if bad:
                raise ValueError(
                    f"searcher grid enumerates finite values only; space {bad[0]} is "
                    f"{self.space[bad[0]].kind}: use grid/choice values or searcher random/optuna"
                )
            if self.num_samples != 1:
                raise ValueError(
                    "searcher grid runs every point once per seed: leave num_samples at 1 "
                    "(repeat with seeds: [...])"
                )
        if "train.seed" in self.space:
            raise ValueError("train.seed is set per trial from `seeds`; do not put it in space")
        return self


def _missing_annotation(location: str) -> bool:
    """A local annotation root without manifests (s3:// locations are not probed)."""
    return "://" not in location and not (Path(location) / "manifests").is_dir()


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


@dataclass
class Sweep:
    """A validated spec plus its resolved base run config; compiles points and checks configs."""

    spec: SweepSpec
    source: str
    name: str
    base: dict[str, Any]  # resolved base run config (model_dump, JSON types)
    constraints: list[Constraint]
    metric: str
    max_t: int
    storage_path: str
    experiment: str
    base_source: str
    spec_text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str(self.base["task"])

    @property
    def rounds(self) -> int:
        return int(self.base["train"]["rounds"])

    @property
    def paths(self) -> list[str]:
        return list(self.spec.space)

    def trial_dict(self, params: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        data = copy.deepcopy(self.base)
        for path, value in params.items():
            set_path(data, path, copy.deepcopy(value))
        if seed is not None:
            data["train"]["seed"] = int(seed)
        return data

    def trial_config(self, params: Mapping[str, Any], seed: int | None = None) -> RunConfig:
        """The run config of one trial: base + sampled params (+ ``train.seed``), validated."""
        return validate(
            RunConfig, self.trial_dict(params, seed), f"{self.source} [{_shown(params)}]"
        )

    def violation(self, params: Mapping[str, Any]) -> str | None:
        """Why this point must not run (a failed constraint or schema error), or None."""
        return self._failed_constraint(params) or self.schema_error(params)

    def _failed_constraint(self, params: Mapping[str, Any]) -> str | None:
        data = self.trial_dict(params)
        for c in self.constraints:
            if not c.holds(data):
                return f"constraint {c.text!r} does not hold"
        return None

    def schema_error(self, params: Mapping[str, Any]) -> str | None:
        """The run-config schema's objection to this point, or None."""
        try:
            RunConfig.model_validate(self.trial_dict(params))
        except ValidationError as exc:
            return format_validation_error(exc, "run config").replace("\n", "; ")
        return None

    def _check_point(self, p: Mapping[str, Any]) -> str | None:
        """Constraint violation (the point is dropped) or ConfigError (a broken space)."""
        why = self._failed_constraint(p)
        if why:
            return why
        err = self.schema_error(p)
        if err:
            raise ConfigError(f"{self.source}: space: the point [{_shown(p)}] is invalid: {err}")
        return None

    def grid_points(self) -> list[dict[str, Any]]:
        """Cartesian product of grid entries (grid searcher: all entries; random: grid ones)."""
        every = self.spec.searcher.kind == "grid"
        axes = [
            (p, e.values or [])
            for p, e in self.spec.space.items()
            if e.grid is not None or (every and e.values is not None)
        ]
        names = [p for p, _ in axes]
        return [
            dict(zip(names, copy.deepcopy(combo), strict=True))
            for combo in itertools.product(*[v for _, v in axes])
        ]

    def points(self) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
        """Grid/random searchers: the points that will run (before seeds) and the rejected ones.

        grid: every grid/choice combination. random: ``num_samples`` draws (seeded), each crossed
        with the grid entries (Tune's semantics); a draw that violates a constraint is redrawn.
        """
        kind = self.spec.searcher.kind
        if kind == "optuna":
            raise ValueError("optuna suggests points while the sweep runs")
        rejected: list[tuple[dict[str, Any], str]] = []
        out: list[dict[str, Any]] = []
        if kind == "grid":
            for p in self.grid_points():
                why = self._check_point(p)
                (rejected.append((p, why)) if why else out.append(p))
            return out, rejected
        rng = np.random.default_rng(self.spec.searcher.seed)
        for _ in range(self.spec.num_samples):
            for g in self.grid_points():
                out.append(self._draw(g, rng, rejected))
        return out, rejected

    def _draw(
        self,
        grid_point: dict[str, Any],
        rng: np.random.Generator,
        rejected: list[tuple[dict[str, Any], str]],
    ) -> dict[str, Any]:
        """One random draw of the non-grid entries that satisfies every constraint."""
        sampled = [(p, e) for p, e in self.spec.space.items() if e.grid is None]
        for _attempt in range(MAX_RESAMPLES):
            p = {**grid_point, **{path: e.sample(rng) for path, e in sampled}}
            p = {path: p[path] for path in self.spec.space}  # spec order
            why = self._check_point(p)
            if why is None:
                return p
            rejected.append((p, why))
        raise ConfigError(
            f"{self.source}: no draw out of {MAX_RESAMPLES} satisfies the constraints for grid "
            f"point {grid_point}"
        )

    def trial_count(self) -> int | None:
        if self.spec.searcher.kind == "optuna":
            return self.spec.num_samples * len(self.spec.seeds)
        return len(self.points()[0]) * len(self.spec.seeds)

    def feasible_fraction(self, draws: int = FEASIBILITY_DRAWS) -> float:
        """Share of random draws of the whole space that satisfy every constraint."""
        rng = np.random.default_rng(0)
        ok = 0
        for _ in range(draws):
            p = {path: e.sample(rng) for path, e in self.spec.space.items()}
            ok += self.violation(p) is None
        return ok / draws

    def missing_inputs(self) -> list[str]:
        """Local datasets and annotations the base config names that do not exist yet (s3://
        locations are not probed). Datasets are fine when ``data.generate`` will create them."""
        out = []
        data = self.base["data"]
        generated = data.get("generate") is not None
        for kind in ("clean", "corrupt"):
            for i, ref in enumerate(data[kind]):
                loc = resolve_location(ref["path"])
                if "://" not in loc and not generated and not (Path(loc) / "meta.json").exists():
                    out.append(f"data.{kind}.{i}.path: no dataset at {loc}")
                ann = ref.get("annotation")
                if ann and _missing_annotation(resolve_location(ann["path"])):
                    aloc = resolve_location(ann["path"])
                    out.append(
                        f"data.{kind}.{i}.annotation.path: no annotation at {aloc}; create "
                        f"it first (ambient annotate --name {Path(aloc).name} ...)"
                    )
        return out

    def summary(self) -> dict[str, Any]:
        s = self.spec
        asha = s.scheduler.kind == "asha"
        out: dict[str, Any] = {
            "name": self.name,
            "file": self.source,
            "base": self.base_source,
            "task": self.task,
            "searcher": s.searcher.model_dump(),
            "scheduler": {**s.scheduler.model_dump(), "max_t": self.max_t}
            if asha
            else {"kind": "none"},
            "metric": self.metric,
            "mode": s.mode,
            "space": {p: e.describe() for p, e in s.space.items()},
            "constraints": [c.text for c in self.constraints],
            "seeds": s.seeds,
            "num_samples": s.num_samples,
            "max_concurrent": s.max_concurrent,
            "resources": s.resources.model_dump(),
            "rounds": self.rounds,
            "storage_path": self.storage_path,
            "experiment": self.experiment,
            "trials": self.trial_count(),
        }
        if s.searcher.kind != "optuna":
            pts, rej = self.points()
            out["points"] = len(pts)
            out["rejected_points"] = len(rej)
        return out


# ------------------------------------------------------------------------------ loading


def _fail(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {msg}")


def _read_spec(src: Path, overrides: Iterable[str]) -> tuple[SweepSpec, str]:
    """The validated spec (with ``--set`` overrides applied) and its text."""
    data = load_yaml(src)
    try:
        spec_text = src.read_text()
    except OSError:
        spec_text = ""
    try:
        apply_overrides(data, list(overrides))
    except ConfigError as exc:
        raise _fail(str(src), "--set", str(exc)) from None
    return validate(SweepSpec, data, str(src)), spec_text


def _resolve_base(spec: SweepSpec, src: Path) -> tuple[dict[str, Any], str]:
    """The base run config (file or inline ``run``) with the spec's overrides, validated;
    trials run one torch thread per requested CPU unless the run config pins it."""
    if spec.base_config is not None:
        base_path = Path(spec.base_config)
        if not base_path.is_absolute():
            base_path = src.parent / base_path
        data = load_yaml(base_path)
        base_source = str(base_path)
    else:
        data = copy.deepcopy(spec.run or {})
        base_source = f"{src} (run)"
    try:
        apply_overrides(data, list(spec.overrides))
    except ConfigError as exc:
        raise _fail(str(src), "overrides", str(exc)) from None
    where = f"{base_source} + overrides of {src}" if spec.overrides else base_source
    base = validate(RunConfig, data, where).model_dump(mode="json")
    if base["train"].get("threads") is None:
        base["train"]["threads"] = max(1, int(spec.resources.cpu))
    return base, base_source


def _check_space(spec: SweepSpec, base: dict[str, Any], source: str) -> None:
    """Every space path exists in the base config and every edge value passes its field."""
    for p, entry in spec.space.items():
        try:
            get_path(base, p)
        except PathError as exc:
            raise _fail(
                source, f"space.{p}", f"not a path of the base run config ({exc})"
            ) from None
        _check_labels(entry, p, source)
        for v in entry.edge_values():
            probe = copy.deepcopy(base)
            set_path(probe, p, v)
            try:
                RunConfig.model_validate(probe)
            except ValidationError as exc:
                # Field-level errors of this path only: cross-field rules (e.g. pool 'fixed'
                # needs alpha) may be satisfied by other space entries; points are checked whole.
                own = [e for e in exc.errors() if ".".join(str(x) for x in e["loc"]) == p]
                if own:
                    raise _fail(
                        source, f"space.{p}", f"value {v!r} is invalid: {own[0]['msg']}"
                    ) from None


def _check_labels(entry: SpaceEntry, path: str, source: str) -> None:
    """Two values shown alike would merge in run names, tables and figures (a whole dataset
    entry is shown by its ``name``)."""
    seen: dict[str, int] = {}
    for i, v in enumerate(entry.values or []):
        label = format_value(v)
        if label in seen:
            raise _fail(
                source,
                f"space.{path}.{entry.kind}",
                f"values {seen[label]} and {i} both read {label!r} in run names and the report; "
                "drop the duplicate or give each entry its own 'name'",
            )
        seen[label] = i


def _parse_constraints(spec: SweepSpec, base: dict[str, Any], source: str) -> list[Constraint]:
    out = []
    for i, text in enumerate(spec.constraints):
        try:
            c = Constraint.parse(text)
        except ValueError as exc:
            raise _fail(source, f"constraints.{i}", str(exc)) from None
        for p in c.paths:
            try:
                get_path(base, p)
            except PathError as exc:
                raise _fail(
                    source,
                    f"constraints.{i}",
                    f"{p} is not a path of the base run config ({exc})",
                ) from None
        out.append(c)
    return out


def _metric(spec: SweepSpec, task: str, source: str) -> str:
    """The spec's metric, or the task's primary one; it must be one a trial reports."""
    t = get_task(task)
    metric = spec.metric or t.primary_metric
    known = (*t.metrics, *EXTRA_METRICS)
    if metric not in known:
        raise _fail(source, "metric", f"{metric!r} is not reported by task {task}: one of {known}")
    return metric


def _schedule(spec: SweepSpec, rounds: int, source: str) -> tuple[int, list[str]]:
    """(ASHA's max_t, notes): t counts evaluation rounds, so it must match train.rounds."""
    max_t = spec.scheduler.max_t or rounds
    if spec.scheduler.kind != "asha":
        return max_t, []
    if max_t != rounds:
        raise _fail(
            source,
            "scheduler.max_t",
            f"t counts evaluation rounds: max_t must equal train.rounds = {rounds}",
        )
    if spec.scheduler.grace_period > rounds:
        raise _fail(
            source,
            "scheduler.grace_period",
            f"{spec.scheduler.grace_period} exceeds train.rounds = {rounds}",
        )
    if rounds < 2:
        return max_t, [
            "train.rounds is 1: ASHA has a single rung and cannot stop anything early; set "
            "train.rounds >= 2 in overrides"
        ]
    return max_t, []


def _check_feasible(sweep: Sweep) -> None:
    """Refuse a space no point of which may run (grid/random compile their points here)."""
    kind, source = sweep.spec.searcher.kind, sweep.source
    if kind == "grid":
        if not sweep.points()[0]:
            raise _fail(source, "constraints", "no grid point satisfies every constraint")
        return
    if sweep.constraints and sweep.feasible_fraction() == 0.0:
        raise _fail(
            source, "constraints", f"no draw of {FEASIBILITY_DRAWS} satisfies every constraint"
        )
    if kind == "random" and not sweep.points()[0]:
        raise _fail(source, "constraints", "no point of the space satisfies every constraint")


def load_sweep(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    storage_path: str | None = None,
    name: str | None = None,
) -> Sweep:
    """Load, validate and resolve a sweep spec; ``overrides`` are dotted ``key=value`` on the
    spec itself (e.g. ``num_samples=8``, ``scheduler.kind=none``)."""
    src = Path(path)
    source = str(src)
    spec, spec_text = _read_spec(src, overrides)
    base, base_source = _resolve_base(spec, src)
    _check_space(spec, base, source)
    constraints = _parse_constraints(spec, base, source)
    metric = _metric(spec, str(base["task"]), source)
    max_t, notes = _schedule(spec, int(base["train"]["rounds"]), source)
    sweep_name = name or spec.name or src.stem
    try:
        validate_name(sweep_name, "sweep name")
    except ValueError as exc:
        raise _fail(source, "name", str(exc)) from None
    sweep = Sweep(
        spec=spec,
        source=source,
        name=sweep_name,
        base=base,
        constraints=constraints,
        metric=metric,
        max_t=max_t,
        storage_path=resolve_location(storage_path or spec.storage_path or "sweeps"),
        experiment=spec.experiment or str(base["tracking"]["experiment"]),
        base_source=base_source,
        spec_text=spec_text,
        notes=notes,
    )
    _check_feasible(sweep)
    return sweep


def optuna_storage_path(sweep: Sweep) -> str | None:
    s = sweep.spec.searcher.storage
    return resolve_location(s) if s else None
