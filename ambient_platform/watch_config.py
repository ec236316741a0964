"""The ``ambient watch`` file format: what to re-annotate, with what, how often, then what.

Loaded like every other config (``yaml.safe_load``, ``base:`` inheritance, dotted ``--set``
overrides, errors naming file and dotted path). The schedule is either a fixed interval or a
standard five-field cron expression (minute hour day-of-month month day-of-week, UTC), parsed
here so no cron daemon is needed on a laptop.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ambient_platform.config import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    load_yaml,
)
from ambient_platform.storage import validate_name

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_DOW = ("day of week", 0, 7)  # 0 and 7 are both Sunday
_NAMES = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
    "sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
}  # fmt: skip
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        try:
            step = int(step_s) if step_s else 1
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a_s, b_s = rng.split("-", 1)
                a, b = _number(a_s), _number(b_s)
            else:
                a = _number(rng)
                b = hi if step_s else a
        except ValueError:
            raise ValueError(
                f"{name} field {text!r}: {part!r} is not a number, range or */N"
            ) from None
        if step < 1 or not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise ValueError(f"{name} field {text!r}: {part!r} is outside {lo}-{hi}")
        values.update(range(a, b + 1, step))
    return frozenset(values)


def _number(text: str) -> int:
    t = text.strip().lower()
    return _NAMES[t] if t in _NAMES else int(t)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression; ``next_after`` gives the next firing time (UTC)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Monday = 0 (Python's convention)
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = _MACROS.get(expr.strip(), expr.strip())
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron {expr!r} needs 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}"
            )
        mins, hours, days, months = (
            _parse_field(p, *f) for p, f in zip(parts[:4], _FIELDS, strict=True)
        )
        dow = _parse_field(parts[4], *_DOW)
        weekdays = frozenset((d - 1) % 7 for d in dow)  # cron Sunday=0/7 -> Python Sunday=6
        return cls(expr, mins, hours, days, months, weekdays, parts[2] == "*", parts[4] == "*")

    def _day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, day.weekday() in self.weekdays
        if self.any_day or self.any_weekday:  # cron: both restricted -> either may match
            return dom and dow
        return dom or dow

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``t`` (aware or naive UTC)."""
        start = (t + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        day = start.date()
        for _ in range(366 * 8):  # leap-day-only schedules still fire within 8 years
            if self._day_matches(day):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        cand = dt.datetime.combine(day, dt.time(h, m), start.tzinfo)
                        if cand >= start:
                            return cand
            day += dt.timedelta(days=1)
        raise ValueError(f"cron {self.expr!r} never fires")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScheduleConfig(_Strict):
    """Run a pass every ``interval_s`` seconds, or at the minutes a cron expression names."""

    interval_s: float | None = Field(None, gt=0)
    cron: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ScheduleConfig:
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("give exactly one of interval_s or cron")
        if self.cron is not None:
            Cron.parse(self.cron)
        return self

    def next_after(self, last_start: dt.datetime) -> dt.datetime:
        if self.cron is not None:
            return Cron.parse(self.cron).next_after(last_start)
        assert self.interval_s is not None
        return last_start + dt.timedelta(seconds=self.interval_s)


class WatchResources(_Strict):
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)


class FollowUp(_Strict):
    """A sweep to run after a pass that committed new or changed shards.

    The sweep's run configs that read this annotation are pinned to the new manifest version,
    so every trial of it sees the same data even if the next pass commits meanwhile.
    """

    sweep: str
    set: list[str] = Field(default_factory=list)


class WatchConfig(_Strict):
    """The file format of ``ambient watch --config``."""

    name: str
    sources: list[str] = Field(..., min_length=1)
    out: str | None = None
    classifier: str
    epochs: list[int] = Field(..., min_length=1)
    grid_levels: list[int] | None = None
    num_draws: int = Field(4, ge=1)
    seed: int = 0
    obs_keys: list[str] = Field(default_factory=list)
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(interval_s=300))
    resources: WatchResources = Field(default_factory=WatchResources)
    quarantine_after: int = Field(3, ge=1)
    lease_ttl_s: float = Field(300.0, gt=0)
    tau: float = Field(0.45, gt=0, lt=1)
    experiment: str = "annotation"
    on_new_data: FollowUp | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "annotation name")

    @field_validator("on_new_data", mode="before")
    @classmethod
    def _follow_up(cls, v: object) -> object:
        return {"sweep": v} if isinstance(v, str) else v  # `on_new_data: sweeps/X.yaml`

    @field_validator("grid_levels")
    @classmethod
    def _grid(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(not 0 <= k < 100 for k in v)):
            raise ValueError("grid levels must be DDPM indices in [0, 99]")
        return v


def load_watch_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> WatchConfig:
    """Load and validate a watch file; a follow-up sweep path is taken relative to the file
    when it is not found relative to the working directory, and must exist."""
    src = Path(path)
    data = load_yaml(src)
    apply_overrides(data, list(overrides or []))
    try:
        cfg = WatchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(src))) from None
    if cfg.on_new_data is not None:
        spec = Path(cfg.on_new_data.sweep)
        if not spec.is_file() and (src.parent / spec).is_file():
            spec = src.parent / spec
        if not spec.is_file():
            raise ConfigError(f"{src}: on_new_data.sweep: {cfg.on_new_data.sweep} does not exist")
        cfg.on_new_data.sweep = str(spec)
    return cfg
