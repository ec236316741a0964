"""Sweep bookkeeping: driver cost per trial of N one-step trials through the real sweep path.

Runs ``orchestrator.sweep.run_sweep`` (what ``ambient sweep run`` calls: MLflow parent and child
runs, Tune checkpoints, the final report) on sweeps/smoke.yaml with ``train.steps=1``, one round,
a grid of N learning rates, no scheduler, on a local Ray instance. What it measures is the
driver's share, which is what limits thousand-trial sweeps (issue 14's goals in brackets):
- ``driver_cpu_per_trial_s``: CPU seconds (user + system) of the driver process only (Ray's
  servers and workers are other processes) over the whole run, divided by N [<= 0.2 s];
- ``driver_rss_mb`` at start (after Ray is up, before run_sweep's imports) and at the end;
  ``rss_curve`` (every N/20 ended trials: RSS, anon/file pages, glibc heap in use / freed but
  kept, large mmaps), ``rss_mb_per_trial`` (its least-squares slope after N/5 trials) [flat],
  RSS around each report build, pymalloc arenas (1 MiB each) at start and end, and with
  ``--malloc-trim`` RSS after glibc's ``malloc_trim(0)`` at the end;
- ``report_s``: the parent report built after the last trial: reading every child run from
  MLflow, then tables, plots, index.html (``report_parts_s``) [<= 10 s].
Also ``report_refreshes`` (live rebuilds while trials ran, in the background thread) and the
load average at start and end (the machine is shared: CPU seconds, not wall, are the measure).
``--no-refresh`` turns the live rebuilds off (to split their memory from Tune's).
Measured (2026-11-30, 2 cores, load 1-2), ``--trials 1000``: 0.042 s of driver CPU a trial,
report 4.1 s (3.9 s of it reading the 1,000 child runs from MLflow), 193 s wall. Memory (load
2-6): RSS 428 MB before run_sweep, ~655 MB at trial 50 (imports, Tune, first report: one-off),
then 0.26 MB a trial, in steps of +46..67 MB at each live refresh: every refresh read all child
runs in one request (a ~160 MB transient of MLflow/SQLAlchemy objects at 1,000 runs, pymalloc
high-water 435 arenas) whose arenas stay pinned afterwards (live objects do not grow: a replay
of 5 refreshes keeps 188 MB live while RSS climbs). Without live refreshes 0.09 MB a trial:
Tune's per-trial state (~57 KB of live Python objects a trial, 33 KB of it Tune's
metric_analysis/metric_n_steps of every numeric result key) plus allocator slack; the driver's
Ray object refs stay at 6-7. Reading in pages of 200 and malloc_trim after each refresh: 0.12
MB a trial, ~790 MB instead of 924 at the end; an ended trial also dropping Tune's
statistics (callbacks.forget_tune_statistics): 0.08 MB a trial, 760 MB at the end (load 1-2).
Before the previous round (load 12-24): 0.237 s a trial, most of it Tune's experiment
snapshot forced on every trial checkpoint by ``CheckpointConfig(num_to_keep=...)`` (see
jobs/trial_checkpoints.py).
Prints JSON. Usage: .venv/bin/python benchmarks/sweep_bookkeeping.py [--trials 20]
(``--trials 1000`` for the issue's figure) [--concurrency 2] [--work DIR] [--sample-every N]
[--no-refresh] [--malloc-trim]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import sys
import tempfile
import threading
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


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mem() -> dict[str, float]:
    """RSS split (anon vs file-backed pages, from /proc) and glibc's heap: ``heap_used`` is
    malloc'd and live, ``heap_free`` freed but kept by malloc (fragmentation), ``mmap`` large
    blocks; MB."""
    out: dict[str, float] = {"rss": _rss_mb()}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile"):
                out[k[3:].lower()] = round(int(v.split()[0]) / 1024, 1)
    except OSError:
        pass
    libc = _libc()
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
        out.update(
            heap_used=round(m.uordblks / 2**20, 1),
            heap_free=round(m.fordblks / 2**20, 1),
            mmap=round(m.hblkhd / 2**20, 1),
        )
    return out


def _pymalloc() -> dict[str, float]:
    """pymalloc (small Python objects): arenas (1 MiB each) now and at their high-water mark,
    MB of live blocks, of free blocks in used pools, of unused pools in used arenas."""
    import io

    r, w = os.pipe()
    saved = os.dup(2)
    buf = io.BytesIO()

    def drain() -> None:
        while chunk := os.read(r, 65536):
            buf.write(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        sys.stderr.flush()
        os.dup2(w, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
        reader.join()
        os.close(r)
    text = buf.getvalue().decode(errors="replace")
    out: dict[str, float] = {}
    for key, name in (
        ("arenas allocated current", "arenas"),
        ("arenas highwater mark", "arenas_highwater"),
    ):
        m = re.search(rf"# {key}\s*=\s*([\d,]+)", text)
        if m:
            out[name] = int(m.group(1).replace(",", ""))
    for key, name in (
        ("bytes in allocated blocks", "live_mb"),
        ("bytes in available blocks", "free_blocks_mb"),
        ("unused pools \\* \\d+ bytes", "unused_pools_mb"),
    ):
        m = re.search(rf"{key}\s*=\s*([\d,]+)", text)
        if m:
            out[name] = round(int(m.group(1).replace(",", "")) / 2**20, 1)
    return out


class _Samples:
    """RSS every ``every`` ended trials, and before/after each report build."""

    def __init__(self, every: int) -> None:
        self.every, self.ended = every, 0
        self.curve: list[dict[str, Any]] = []
        self.builds: list[dict[str, Any]] = []

    def install(self, no_refresh: bool) -> None:
        from orchestrator.sweep import callbacks, driver

        ended, build = callbacks.LiveView.ended, driver.ReportJob.__call__
        samples = self

        def on_end(view: Any, *args: Any, **kwargs: Any) -> Any:
            out = ended(view, *args, **kwargs)
            samples.ended += 1
            if samples.every and samples.ended % samples.every == 0:
                samples.curve.append({"trials": samples.ended, **_mem()})
            return out

        def on_build(job: Any, *args: Any, **kwargs: Any) -> Any:
            before = _rss_mb()
            try:
                return build(job, *args, **kwargs)
            finally:
                samples.builds.append(
                    {"trials": samples.ended, "rss_before": before, "rss_after": _rss_mb()}
                )

        callbacks.LiveView.ended = on_end  # type: ignore[method-assign,assignment]
        driver.ReportJob.__call__ = on_build  # type: ignore[method-assign,assignment]
        if no_refresh:
            callbacks.Refresher.poke = lambda self: None  # type: ignore[method-assign]


def _slope(curve: list[dict[str, Any]], trials: int) -> float | None:
    """Least-squares RSS growth per ended trial after the first fifth of the trials (the
    imports, Tune's set-up and the first report happen before)."""
    curve = [c for c in curve if c["trials"] >= trials / 5]
    if len(curve) < 2:
        return None
    xs, ys = [c["trials"] for c in curve], [c["rss"] for c in curve]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return (
        round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var, 4)
        if var
        else None
    )


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
    p.add_argument(
        "--sample-every", type=int, default=0, help="RSS every N ended trials (0: N/20)"
    )
    p.add_argument("--no-refresh", action="store_true", help="no live report rebuilds")
    p.add_argument(
        "--malloc-trim", action="store_true", help="at the end: RSS before/after malloc_trim(0)"
    )
    a = p.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sweep-book-", dir=a.work))
    os.environ["AMBIENT_HOME"] = str(home)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rbk-", dir="/tmp"))
    from ambient_platform.ray_runtime import ensure_ray
    from orchestrator.sweep import run_sweep

    report_times: list[float] = []
    result_times: list[float] = []
    samples = _Samples(a.sample_every or max(a.trials // 20, 1))
    samples.install(a.no_refresh)
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
    mem0, py0 = _mem(), _pymalloc()
    rss0, cpu0, t0 = _rss_mb(), _cpu_s(), time.perf_counter()
    res = run_sweep(SPEC, overrides, storage_path=str(home / "sweeps"), progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    mem1, py1 = _mem(), _pymalloc()
    trim = None
    if a.malloc_trim:
        from orchestrator.sweep.callbacks import release_memory  # what each refresh does

        release_memory()
        trim = _mem()
    out = {
        "trials": a.trials,
        "finished": res["counts"].get("finished", 0),
        "concurrency": a.concurrency,
        "wall_s": round(wall, 1),
        "fit_s": round(res["fit_s"], 1),
        "driver_cpu_s": round(cpu, 1),
        "driver_cpu_per_trial_s": round(cpu / a.trials, 3),
        "driver_rss_mb": {"start": rss0, "end": mem1["rss"]},
        "driver_mem_mb": {"start": mem0, "end": mem1, "after_malloc_trim": trim},
        "pymalloc_arenas": {"start": py0, "end": py1},
        "rss_mb_per_trial": _slope(samples.curve, a.trials),
        "rss_curve": samples.curve,
        "report_builds_rss": samples.builds,
        "live_refresh": not a.no_refresh,
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
