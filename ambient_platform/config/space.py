"""The search-space language of sweep specs: space entries, constraints, Optuna's view of them.

Space entries (one key each)::

    data.corrupt.0.sigma_min: {grid: [0.0251, 0.0737]}   # every value (grid searcher: product)
    mixing.alpha: {choice: [0.3, 0.5]}                   # one of, sampled (grid: like grid)
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}             # log-uniform in [lo, hi]
    mixing.buffer_mult: {uniform: [1.0, 1.5]}            # uniform in [lo, hi]
    policy.kernel_size: {randint: [3, 6]}                # integer in [lo, hi) (hi excluded)

Constraints are ``a OP b`` (OP one of < <= > >= == !=; a, b dotted paths of the trial's run
config or finite numbers), parsed without ``eval``. Paths are walked by the same helper as
``--set`` overrides (``ambient_platform.config.base``).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from ambient_platform.config.base import PathError, StrictModel, get_path

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_CONSTRAINT_RE = re.compile(r"^\s*(\S+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _scalar(values: list[Any]) -> bool:
    """Optuna's categorical suggestions hold scalars only; others are suggested by index."""
    return all(v is None or isinstance(v, bool | int | float | str) for v in values)


class SpaceEntry(StrictModel):
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
        for v in (self.uniform, self.loguniform, self.randint):
            if v is not None:
                return (v[0], v[1])
        return None

    def _bounds(self) -> tuple[float, float]:
        b = self.bounds
        if b is None:
            raise TypeError(f"a {self.kind} entry has values, not bounds")
        return b

    def edge_values(self) -> list[Any]:
        """Values worth checking against the schema: all finite values, or both bounds."""
        if self.values is not None:
            return list(self.values)
        lo, hi = self._bounds()
        return [lo, hi - 1] if self.randint is not None else [lo, hi]

    def sample(self, rng: np.random.Generator) -> Any:
        if self.values is not None:
            return copy.deepcopy(self.values[int(rng.integers(len(self.values)))])
        lo, hi = self._bounds()
        if self.uniform is not None:
            return float(rng.uniform(lo, hi))
        if self.loguniform is not None:
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return int(rng.integers(int(lo), int(hi)))

    def describe(self) -> str:
        shown = list(self.values) if self.values is not None else list(self._bounds())
        return f"{self.kind} {shown}"


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
            value = float(tok)
        except ValueError:
            value = None
        if value is not None:
            if not math.isfinite(value):
                raise ValueError(f"{text!r}: {tok!r} is not a finite number")
            return value
        if not PATH_RE.match(tok):
            raise ValueError(f"{text!r}: {tok!r} is neither a number nor a dotted config path")
        return tok

    @property
    def paths(self) -> list[str]:
        return [x for x in (self.left, self.right) if isinstance(x, str)]

    def holds(self, config: Mapping[str, Any]) -> bool:
        """True when the constraint is satisfied by the (nested) run config ``config``."""
        try:
            a = get_path(config, self.left) if isinstance(self.left, str) else self.left
            b = get_path(config, self.right) if isinstance(self.right, str) else self.right
        except PathError:
            return False
        if a is None or b is None:
            return False
        try:
            return bool(_OPS[self.op](a, b))
        except TypeError:
            return False


class OptunaSpace:
    """Define-by-run space for OptunaSearch (picklable, no closures).

    grid/choice -> suggest_categorical (lists and mappings by index), uniform/loguniform ->
    suggest_float, randint [lo, hi) -> suggest_int(lo, hi - 1). Constraints are not checked
    here: the sweep's searcher rejects and resamples.
    """

    def __init__(self, space: Mapping[str, SpaceEntry]) -> None:
        self.space = dict(space)

    def __call__(self, trial: Any) -> None:
        for path, e in self.space.items():
            if e.values is not None:
                vals = list(e.values)
                trial.suggest_categorical(path, vals if _scalar(vals) else list(range(len(vals))))
            elif e.uniform is not None:
                trial.suggest_float(path, *e.uniform)
            elif e.loguniform is not None:
                trial.suggest_float(path, *e.loguniform, log=True)
            elif e.randint is not None:
                lo, hi = e.randint
                trial.suggest_int(path, int(lo), int(hi) - 1)

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Map index-encoded categorical suggestions back to their values."""
        out = {}
        for path, e in self.space.items():
            v = params[path]
            if e.values is not None and not _scalar(list(e.values)):
                v = copy.deepcopy(e.values[int(v)])
            out[path] = v
        return out
