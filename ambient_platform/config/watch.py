"""The ``ambient watch`` file format: what to re-annotate, with what, how often, then what.

Loaded like every other config (``yaml.safe_load``, ``base:`` inheritance, dotted ``--set``
overrides, errors naming file and dotted path). A watch file is an annotation config
(``AnnotationConfig``: classifier, epochs, grid, resources, ...) plus its sources, a schedule,
the retry/lease policy and an optional follow-up sweep. The schedule is a fixed interval or a
standard five-field cron expression (minute hour day-of-month month day-of-week, UTC), evaluated
by the ``cronsim`` library (Debian cron semantics: when either day field starts with ``*``, both
must match, so ``*/2`` in day-of-month restricts days with AND, not OR) plus the usual
``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly`` aliases.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator, model_validator

from ambient_core.errors import ConfigError
from ambient_platform.config.annotation import AnnotationConfig
from ambient_platform.config.base import PositiveFloat, StrictModel, load_model

CRON_FIELDS = "minute hour day-of-month month day-of-week"
CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def cron_expression(expr: str) -> str:
    """The five-field form of ``expr`` (macros expanded); ValueError names what is wrong."""
    text = CRON_MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:  # cronsim also takes a sixth (seconds) field; cron does not
        raise ValueError(f"cron {expr!r} needs 5 fields ({CRON_FIELDS}), got {len(fields)}")
    try:
        CronSim(text, dt.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"cron {expr!r}: {exc} (fields: {CRON_FIELDS})") from None
    return text


def cron_next_after(expr: str, t: dt.datetime) -> dt.datetime:
    """The first minute matching ``expr`` strictly after ``t`` (aware or naive UTC)."""
    start = t.replace(second=0, microsecond=0)
    return next(CronSim(cron_expression(expr), start))


class ScheduleConfig(StrictModel):
    """Run a pass every ``interval_s`` seconds, or at the minutes a cron expression names."""

    interval_s: PositiveFloat | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ScheduleConfig:
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("give exactly one of interval_s or cron")
        if self.cron is not None:
            cron_expression(self.cron)
        return self

    def next_after(self, last_start: dt.datetime) -> dt.datetime:
        if self.cron is not None:
            return cron_next_after(self.cron, last_start)
        if self.interval_s is None:  # unreachable: the validator requires one of them
            raise ValueError("schedule has neither interval_s nor cron")
        return last_start + dt.timedelta(seconds=self.interval_s)


class FollowUp(StrictModel):
    """A sweep to run after a pass that committed new or changed shards.

    The sweep's run configs that read this annotation are pinned to the new manifest version,
    so every trial of it sees the same data even if the next pass commits meanwhile.
    """

    sweep: str
    set: list[str] = Field(default_factory=list)


class WatchConfig(AnnotationConfig):
    """The file format of ``ambient watch --config``: an annotation kept current."""

    sources: list[str] = Field(..., min_length=1)
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(interval_s=300))
    quarantine_after: int = Field(3, ge=1)
    lease_ttl_s: PositiveFloat = 300.0
    on_new_data: FollowUp | None = None

    @field_validator("on_new_data", mode="before")
    @classmethod
    def _follow_up(cls, v: object) -> object:
        return {"sweep": v} if isinstance(v, str) else v  # `on_new_data: sweeps/X.yaml`


def load_watch_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> WatchConfig:
    """Load and validate a watch file; a follow-up sweep path is taken relative to the file
    when it is not found relative to the working directory, and must exist."""
    src = Path(path)
    cfg = load_model(WatchConfig, src, overrides)
    if cfg.on_new_data is not None:
        spec = Path(cfg.on_new_data.sweep)
        if not spec.is_file() and (src.parent / spec).is_file():
            spec = src.parent / spec
        if not spec.is_file():
            raise ConfigError(f"{src}: on_new_data.sweep: {cfg.on_new_data.sweep} does not exist")
        cfg.on_new_data.sweep = str(spec)
    return cfg
