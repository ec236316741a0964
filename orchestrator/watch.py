"""``ambient watch``: run re-annotation passes on a schedule (or once, for cron / RayCronJob).

The loop is deliberately simple: a pass, then sleep until the schedule's next time. A failing
pass (storage down, cluster gone) is logged and retried at the next time rather than ending
the watcher; ``--once`` instead lets the error end the command, so cron and Kubernetes see it
(the exit codes of ``ambient watch --once`` are listed in its ``--help``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ambient_core.errors import ConfigError
from ambient_platform.config import apply_overrides, load_yaml
from ambient_platform.config.sweep import load_sweep
from ambient_platform.config.watch import WatchConfig
from ambient_platform.settings import resolve_location
from ambient_platform.storage import StorageRoot
from orchestrator.sweep import run_sweep, sweep_started

logger = logging.getLogger(__name__)

PassFn = Callable[[WatchConfig], dict[str, Any]]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def watch(
    cfg: WatchConfig,
    run_pass: PassFn,
    *,
    once: bool = False,
    max_passes: int | None = None,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] = logger.info,
) -> list[dict[str, Any]]:
    """Run passes until ``stop`` is set or ``max_passes`` are done; returns their summaries.

    ``echo`` receives one JSON line per pass (the CLI prints it). With ``once`` a single pass
    runs and its exception propagates.
    """
    stop = stop or threading.Event()
    results: list[dict[str, Any]] = []
    while not stop.is_set():
        started = _utcnow()
        try:
            res = run_pass(cfg)
        except Exception as exc:
            if once:
                raise
            res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            logger.exception("watch pass failed; retrying at the next scheduled time")
        res["started"] = started.isoformat(timespec="seconds")
        results.append(res)
        echo(json.dumps(_brief(res), default=str))
        if once or (max_passes is not None and len(results) >= max_passes):
            break
        nxt = cfg.schedule.next_after(started)
        now = _utcnow()
        if nxt <= now:  # the pass overran its slot: skip to the next one still ahead
            nxt = cfg.schedule.next_after(now) if cfg.schedule.cron else now
        logger.info("next pass at %s", nxt.isoformat(timespec="seconds"))
        stop.wait(max(0.0, (nxt - _utcnow()).total_seconds()))
    return results


def _brief(res: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "status",
        "version",
        "shards_listed",
        "shards_annotated",
        "shards_resumed",
        "shards_retry_later",
        "shards_quarantined",
        "rows_annotated",
        "holder",
        "error",
        "run_id",
        "follow_up",
        "started",
    )
    return {k: res[k] for k in keep if k in res}


def follow_up_sweep(cfg: WatchConfig, version: int, root: StorageRoot) -> dict[str, Any]:
    """Run ``on_new_data.sweep`` with every annotation reference to ``root`` pinned to
    ``version``; the sweep is named after the spec, the annotation and the version, so a
    follow-up interrupted by a crash resumes instead of starting twice."""
    if cfg.on_new_data is None:
        raise ConfigError(f"watch {cfg.name!r} has no on_new_data sweep")
    spec = cfg.on_new_data.sweep
    sets = [s.replace("{version}", str(version)) for s in cfg.on_new_data.set]
    sweep = load_sweep(spec, sets)
    pins = [
        f"data.corrupt.{i}.annotation.version={version}"
        for i, ref in enumerate(sweep.base["data"]["corrupt"])
        if ref.get("annotation")
        and StorageRoot(resolve_location(ref["annotation"]["path"])).uri == root.uri
    ]
    if not pins:
        raise ConfigError(
            f"follow-up sweep {spec} reads no annotation at {root.uri}; point one of its "
            "data.corrupt.N.annotation.path at it"
        )
    raw = load_yaml(spec)
    apply_overrides(raw, sets)
    sets.append("overrides=" + json.dumps([*raw.get("overrides", []), *pins]))
    name = f"{Path(spec).stem}-{cfg.name}-v{version}"
    resume = sweep_started(load_sweep(spec, sets, name=name))
    res = run_sweep(spec, sets, name=name, resume=resume)
    return {"sweep": name, "resumed": resume, **{k: res.get(k) for k in ("best", "counts")}}
