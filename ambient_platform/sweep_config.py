"""Sweep specs (``sweeps/*.yaml``): a base run config, a dotted-path search space, constraints.

A spec is validated by pydantic like run configs; every error names the file and the dotted
path, e.g. ``sweeps/x.yaml: space.data.corrupt.0.sigma_min: ...``. Space and constraint paths
must exist in the resolved base run config (``base_config`` + ``overrides``), and every value a
space can produce is checked against the run-config schema before anything runs.

Space entries (one key each)::

    space:
      data.corrupt.0.sigma_min: {grid: [0.0251, 0.0737]}   # every value (grid searcher: product)
      mixing.alpha: {choice: [0.3, 0.5]}                   # one of, sampled (grid: like grid)
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}             # log-uniform in [lo, hi]
      mixing.buffer_mult: {uniform: [1.0, 1.5]}            # uniform in [lo, hi]
      policy.kernel_size: {randint: [3, 6]}                # integer in [lo, hi) (hi excluded)

Constraints are ``a OP b`` (OP one of < <= > >= == !=; a, b dotted paths of the trial's run
config or numbers), parsed without ``eval``. They must hold for a config to run: grid and random
searchers drop violating points before the sweep starts (random redraws); Optuna resamples: the
rejected suggestion is never run, it is told to the study as PRUNED with an infeasible
constraint value (``Trial.set_constraint``), so TPE steers away from it. A point the run-config
schema rejects as a whole (a cross-field rule) is an error for grid/random and a rejected
suggestion for Optuna.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ambient_core.envs.registry import get_task, task_names
from ambient_platform.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    format_validation_error,
    load_yaml,
)
from ambient_platform.settings import resolve_location

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEED_KEY = "seed"
#: Metrics a trial reports each round (the task's evaluation metrics, see each env's
#: ``as_dict``) plus the last logged training loss.
TASK_METRICS: dict[str, tuple[str, ...]] = {name: get_task(name).metrics for name in task_names()}
EXTRA_METRICS = ("train_loss",)
PRIMARY_METRIC = {"maze": "success_rate", "bin_sorting": "success"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_CONSTRAINT_RE = re.compile(r"^\s*(\S+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
MAX_RESAMPLES = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpaceEntry(_Strict):
    """One dimension of the search space: exactly one of the five kinds."""

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SpaceEntry:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {given or 'none'})")
        if self.bounds is not None:
            lo, hi = self.bounds
            if not lo < hi:
                raise ValueError(f"{self.kind}: the lower bound {lo} must be below {hi}")
            if self.loguniform is not None and lo <= 0:
                raise ValueError("loguniform: bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any] | None:
        """The finite values of grid / choice entries (None for continuous ones)."""
        return self.grid if self.grid is not None else self.choice

    @property
    def bounds(self) -> tuple[float, float] | None:
        for k in ("uniform", "loguniform", "randint"):
            v = getattr(self, k)
            if v is not None:
                return v
        return None

    def edge_values(self) -> list[Any]:
        """Values worth checking against the schema: all finite values, or both bounds."""
        if self.values is not None:
            return list(self.values)
        lo, hi = self.bounds  # type: ignore[misc]
        return [lo, hi - 1] if self.randint is not None else [lo, hi]

    def sample(self, rng: np.random.Generator) -> Any:
        if self.values is not None:
            return copy.deepcopy(self.values[int(rng.integers(len(self.values)))])
        lo, hi = self.bounds  # type: ignore[misc]
        if self.uniform is not None:
            return float(rng.uniform(lo, hi))
        if self.loguniform is not None:
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return int(rng.integers(int(lo), int(hi)))

    def describe(self) -> str:
        return f"{self.kind} {list(self.values) if self.values is not None else list(self.bounds)}"  # type: ignore[arg-type]


class SearcherConfig(_Strict):
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


class SchedulerConfig(_Strict):
    """Early stopping over evaluation rounds (t = round, 1..train.rounds; the last is final)."""

    kind: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)


class ResourcesConfig(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SweepSpec(_Strict):
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
    time_budget_s: float | None = Field(None, gt=0)
    experiment: str | None = None
    reuse_actors: bool = True
    keep_checkpoints: int = Field(1, ge=1)
    checkpoint_train_state: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 100 characters)")
        return v

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
            if not _PATH_RE.match(path):
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


@dataclass(frozen=True)
class Constraint:
    """``left OP right`` over dotted config paths and numbers; evaluated without eval()."""

    text: str
    left: str | float
    op: str
    right: str | float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT_RE.match(text)
        if not m:
            raise ValueError(
                f"cannot parse {text!r}: expected `a OP b`, OP one of < <= > >= == !=, "
                "a and b dotted config paths or numbers"
            )
        left, op, right = (
            cls._operand(m.group(1), text),
            m.group(2),
            cls._operand(m.group(3), text),
        )
        if isinstance(left, float) and isinstance(right, float):
            raise ValueError(f"{text!r} compares two numbers: name at least one config path")
        return cls(text, left, op, right)

    @staticmethod
    def _operand(tok: str, text: str) -> str | float:
        try:
            return float(tok)
        except ValueError:
            pass
        if not _PATH_RE.match(tok):
            raise ValueError(f"{text!r}: {tok!r} is neither a number nor a dotted config path")
        return tok

    @property
    def paths(self) -> list[str]:
        return [x for x in (self.left, self.right) if isinstance(x, str)]

    def holds(self, config: Mapping[str, Any]) -> bool:
        """True when the constraint is satisfied by the (nested) run config ``config``."""
        a = get_path(config, self.left) if isinstance(self.left, str) else self.left
        b = get_path(config, self.right) if isinstance(self.right, str) else self.right
        if a is None or b is None:
            return False
        try:
            return bool(_OPS[self.op](a, b))
        except TypeError:
            return False


class _Missing(KeyError):
    pass


def get_path(data: Any, path: str) -> Any:
    """Value at a dotted path of nested dicts/lists (list items by index); KeyError if absent."""
    node = data
    parts = path.split(".")
    for i, p in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, dict):
            if p not in node:
                raise _Missing(f"{where} does not exist")
            node = node[p]
        elif isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise _Missing(f"{where}: {p} is not an index of the list (length {len(node)})")
            node = node[int(p)]
        elif node is None:
            raise _Missing(f"{'.'.join(parts[:i])} is null (set it in `overrides` first)")
        else:
            raise _Missing(f"{'.'.join(parts[:i])} is a {type(node).__name__}, not a mapping")
    return node


def set_path(data: Any, path: str, value: Any) -> None:
    """Set an existing dotted path (``get_path`` of its parent must succeed)."""
    head, _, last = path.rpartition(".")
    node = get_path(data, head) if head else data
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise _Missing(f"{head} is not a mapping")


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
        data = self.trial_dict(params, seed)
        try:
            return RunConfig.model_validate(data)
        except ValidationError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(format_validation_error(exc, f"{self.source} [{shown}]")) from None

    def violation(self, params: Mapping[str, Any]) -> str | None:
        """Why this point must not run (a failed constraint or schema error), or None."""
        data = self.trial_dict(params)
        for c in self.constraints:
            if not c.holds(data):
                return f"constraint {c.text!r} does not hold"
        return self.schema_error(params)

    def schema_error(self, params: Mapping[str, Any]) -> str | None:
        """The run-config schema's objection to this point, or None."""
        try:
            RunConfig.model_validate(self.trial_dict(params))
        except ValidationError as exc:
            return format_validation_error(exc, "run config").replace("\n", "; ")
        return None

    def _check_point(self, p: Mapping[str, Any]) -> str | None:
        """Constraint violation (the point is dropped) or ConfigError (a broken space)."""
        data = self.trial_dict(p)
        for c in self.constraints:
            if not c.holds(data):
                return f"constraint {c.text!r} does not hold"
        err = self.schema_error(p)
        if err:
            shown = ", ".join(f"{k}={v!r}" for k, v in p.items())
            raise ConfigError(f"{self.source}: space: the point [{shown}] is invalid: {err}")
        return None

    def grid_points(self) -> list[dict[str, Any]]:
        """Cartesian product of grid entries (grid searcher: all entries; random: grid ones)."""
        axes = [(p, e.values) for p, e in self.spec.space.items() if e.grid is not None]
        if self.spec.searcher.kind == "grid":
            axes = [(p, e.values) for p, e in self.spec.space.items()]
        names = [p for p, _ in axes]
        return [
            dict(zip(names, copy.deepcopy(combo), strict=True))
            for combo in itertools.product(*[v for _, v in axes])  # type: ignore[misc]
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
        sampled = [(p, e) for p, e in self.spec.space.items() if e.grid is None]
        for _ in range(self.spec.num_samples):
            for g in self.grid_points():
                for _attempt in range(MAX_RESAMPLES):
                    p = {**g, **{path: e.sample(rng) for path, e in sampled}}
                    p = {path: p[path] for path in self.spec.space}  # spec order
                    why = self._check_point(p)
                    if why is None:
                        out.append(p)
                        break
                    rejected.append((p, why))
                else:
                    raise ConfigError(
                        f"{self.source}: no draw out of {MAX_RESAMPLES} satisfies the "
                        f"constraints for grid point {g}"
                    )
        return out, rejected

    def trial_count(self) -> int | None:
        if self.spec.searcher.kind == "optuna":
            return self.spec.num_samples * len(self.spec.seeds)
        return len(self.points()[0]) * len(self.spec.seeds)

    def feasible_fraction(self, draws: int = 500) -> float:
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
        for kind in ("clean", "corrupt"):
            for i, ref in enumerate(data[kind]):
                loc = resolve_location(ref["path"])
                generated = data.get("generate") is not None
                if "://" not in loc and not generated and not (Path(loc) / "meta.json").exists():
                    out.append(f"data.{kind}.{i}.path: no dataset at {loc}")
                ann = ref.get("annotation")
                if ann:
                    aloc = resolve_location(ann["path"])
                    if "://" not in aloc and not (Path(aloc) / "manifests").is_dir():
                        out.append(
                            f"data.{kind}.{i}.annotation.path: no annotation at {aloc}; create "
                            f"it first (ambient annotate --name {Path(aloc).name} ...)"
                        )
        return out

    def summary(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {
            "name": self.name,
            "file": self.source,
            "base": self.base_source,
            "task": self.task,
            "searcher": s.searcher.model_dump(),
            "scheduler": {**s.scheduler.model_dump(), "max_t": self.max_t}
            if s.scheduler.kind == "asha"
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


class OptunaSpace:
    """Define-by-run space for OptunaSearch (picklable, no closures).

    grid/choice -> suggest_categorical (lists and mappings by index), uniform/loguniform ->
    suggest_float, randint [lo, hi) -> suggest_int(lo, hi - 1). Constraints are not checked
    here: the sweep's searcher rejects and resamples (see orchestrator/sweep.py).
    """

    def __init__(self, space: Mapping[str, SpaceEntry]) -> None:
        self.space = dict(space)

    def __call__(self, trial: Any) -> None:
        for path, e in self.space.items():
            if e.values is not None:
                vals = list(e.values)
                if all(v is None or isinstance(v, bool | int | float | str) for v in vals):
                    trial.suggest_categorical(path, vals)
                else:
                    trial.suggest_categorical(path, list(range(len(vals))))
            elif e.uniform is not None:
                trial.suggest_float(path, *e.uniform)
            elif e.loguniform is not None:
                trial.suggest_float(path, *e.loguniform, log=True)
            else:
                lo, hi = e.randint  # type: ignore[misc]
                trial.suggest_int(path, int(lo), int(hi) - 1)
        return None

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Map index-encoded categorical suggestions back to their values."""
        out = {}
        for path, e in self.space.items():
            v = params[path]
            if e.values is not None and not all(
                x is None or isinstance(x, bool | int | float | str) for x in e.values
            ):
                v = copy.deepcopy(e.values[int(v)])
            out[path] = v
        return out


def _fail(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {msg}")


def _resolve_base(spec: SweepSpec, src: Path) -> tuple[dict[str, Any], str]:
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
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{base_source} + overrides of {src}" if spec.overrides else base_source
        raise ConfigError(format_validation_error(exc, where)) from None
    return cfg.model_dump(mode="json"), base_source


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
    data = load_yaml(src)
    try:
        spec_text = src.read_text()
    except OSError:
        spec_text = ""
    source = str(src)
    try:
        apply_overrides(data, list(overrides))
    except ConfigError as exc:
        raise _fail(source, "--set", str(exc)) from None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    base, base_source = _resolve_base(spec, src)
    # Trials run one torch thread per requested CPU unless the run config pins it.
    if base["train"].get("threads") is None:
        base["train"]["threads"] = max(1, int(spec.resources.cpu))
    for p, entry in spec.space.items():
        try:
            get_path(base, p)
        except KeyError as exc:
            raise _fail(
                source, f"space.{p}", f"not a path of the base run config ({exc.args[0]})"
            ) from None
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
    constraints = []
    for i, text in enumerate(spec.constraints):
        try:
            c = Constraint.parse(text)
        except ValueError as exc:
            raise _fail(source, f"constraints.{i}", str(exc)) from None
        for p in c.paths:
            try:
                get_path(base, p)
            except KeyError as exc:
                raise _fail(
                    source,
                    f"constraints.{i}",
                    f"{p} is not a path of the base run config ({exc.args[0]})",
                ) from None
        constraints.append(c)
    task = str(base["task"])
    metric = spec.metric or PRIMARY_METRIC[task]
    known = (*TASK_METRICS[task], *EXTRA_METRICS)
    if metric not in known:
        raise _fail(source, "metric", f"{metric!r} is not reported by task {task}: one of {known}")
    rounds = int(base["train"]["rounds"])
    max_t = spec.scheduler.max_t or rounds
    if spec.scheduler.kind == "asha":
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
    notes = []
    if spec.scheduler.kind == "asha" and rounds < 2:
        notes.append(
            "train.rounds is 1: ASHA has a single rung and cannot stop anything early; set "
            "train.rounds >= 2 in overrides"
        )
    sweep_name = name or spec.name or src.stem
    if not _NAME_RE.match(sweep_name):
        raise _fail(source, "name", f"{sweep_name!r}: use letters, digits, '.', '_' or '-'")
    sp = storage_path or spec.storage_path
    sp = resolve_location(sp or "sweeps")
    sweep = Sweep(
        spec=spec,
        source=source,
        name=sweep_name,
        base=base,
        constraints=constraints,
        metric=metric,
        max_t=max_t,
        storage_path=sp,
        experiment=spec.experiment or str(base["tracking"]["experiment"]),
        base_source=base_source,
        spec_text=spec_text,
        notes=notes,
    )
    if constraints and sweep.feasible_fraction() == 0.0:
        if spec.searcher.kind == "grid":
            if not sweep.points()[0]:
                raise _fail(source, "constraints", "no grid point satisfies every constraint")
        else:
            raise _fail(source, "constraints", "no draw of 500 satisfies every constraint")
    if spec.searcher.kind != "optuna":
        sweep.points()  # raises when a random point cannot be drawn; grid may be empty
        if not sweep.points()[0]:
            raise _fail(source, "constraints", "no point of the space satisfies every constraint")
    return sweep


def optuna_storage_path(sweep: Sweep) -> str | None:
    s = sweep.spec.searcher.storage
    return resolve_location(s) if s else None
