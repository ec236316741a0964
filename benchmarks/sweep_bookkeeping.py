"""Sweep bookkeeping: driver cost per trial of N one-step trials through the real sweep path.

Runs ``orchestrator.sweep.run_sweep`` (what ``ambient sweep run`` calls: MLflow parent and child
runs, Tune checkpoints, the final report) on sweeps/smoke.yaml with ``train.steps=1``, one round,
a grid of N learning rates, no scheduler, on a local Ray instance. What it measures is the
driver's share, which is what limits thousand-trial sweeps (issue 14's goals in brackets):
- ``driver_cpu_per_trial_s``: CPU seconds (user + system) of the driver process only (Ray's
  servers and workers are other processes) over the whole run, divided by N [<= 0.2 s];
- ``driver_rss_mb`` at start (after Ray is up) and at the end [flat];
- ``report_s``: the parent report built after the last trial: reading every child run from
  MLflow, then tables, plots, index.html (``report_parts_s``) [<= 10 s].
Also ``report_refreshes`` (live rebuilds while trials ran, in the background thread) and the
load average at start and end (the machine is shared: CPU seconds, not wall, are the measure).
Measured (2026-11-30, 2 cores, load 1-2), ``--trials 1000``: 0.042 s of driver CPU a trial,
report 4.1 s (3.9 s of it reading the 1,000 child runs from MLflow), 193 s wall, RSS 428 ->
913 MB (not flat: ~0.5 MB a trial, with or without Tune's snapshot; tracemalloc over 300
trials finds only ~57 MB more live Python objects, mostly imports: the rest is native). Before
this round (load 12-24): 0.237 s a trial, most of it Tune's experiment snapshot forced on every
trial checkpoint by ``CheckpointConfig(num_to_keep=...)`` (see jobs/trial_checkpoints.py).
Prints JSON. Usage: .venv/bin/python benchmarks/sweep_bookkeeping.py [--trials 20]
(``--trials 1000`` for the issue's figure) [--concurrency 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "sweeps" / "smoke.yaml"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _load() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


def _timed_report(times: list[float], results: list[float]) -> None:
    """Wrap the driver's report job and its final reading of the child runs (the report is
    built from those results) so both are timed (benchmark only)."""
    from orchestrator.sweep import driver

    original, read = driver.ReportJob.__call__, driver.build_results

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    def timed_read(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return read(*args, **kwargs)
        finally:
            results.append(time.perf_counter() - t0)

    driver.ReportJob.__call__ = timed  # type: ignore[method-assign]
    driver.build_results = timed_read


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="one-step trials (1000: the goal)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / ".work"), help="where the sweep's home goes")
    a = p.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sweep-book-", dir=a.work))
    os.environ["AMBIENT_HOME"] = str(home)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rbk-", dir="/tmp"))
    from ambient_platform.ray_runtime import ensure_ray
    from orchestrator.sweep import run_sweep

    report_times: list[float] = []
    result_times: list[float] = []
    _timed_report(report_times, result_times)
    lrs = [1e-3 * (0.999**i) for i in range(a.trials)]  # distinct configs, same cost
    overrides = [
        f"name=book-{a.trials}",
        "scheduler.kind=none",
        "constraints=[]",
        f"space={{train.lr: {{grid: {json.dumps(lrs)}}}}}",
        f"max_concurrent={a.concurrency}",
        "reuse_actors=true",
        "overrides=" + json.dumps([*_base_overrides(), "train.steps=1", "train.rounds=1"]),
    ]
    ensure_ray(num_cpus=a.concurrency)
    load0 = _load()
    rss0, cpu0, t0 = _rss_mb(), _cpu_s(), time.perf_counter()
    res = run_sweep(SPEC, overrides, storage_path=str(home / "sweeps"), progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    out = {
        "trials": a.trials,
        "finished": res["counts"].get("finished", 0),
        "concurrency": a.concurrency,
        "wall_s": round(wall, 1),
        "fit_s": round(res["fit_s"], 1),
        "driver_cpu_s": round(cpu, 1),
        "driver_cpu_per_trial_s": round(cpu / a.trials, 3),
        "driver_rss_mb": {"start": rss0, "end": _rss_mb()},
        "report_s": round(report_times[-1] + sum(result_times), 2) if report_times else None,
        "report_parts_s": {
            "read_child_runs": round(sum(result_times), 2),
            "build": round(report_times[-1], 2) if report_times else None,
        },
        "report_refreshes": max(len(report_times) - 1, 0),
        "load_avg": {"start": load0, "end": _load()},
        "goals": {"driver_cpu_per_trial_s": 0.2, "report_s": 10.0},
    }
    print(json.dumps(out, indent=2))


def _base_overrides() -> list[str]:
    import yaml

    return [
        o
        for o in yaml.safe_load(SPEC.read_text())["overrides"]
        if not o.startswith(("train.steps=", "train.rounds="))
    ]


if __name__ == "__main__":
    main()
