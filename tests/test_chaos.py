"""The chaos run in miniature: kill -9 the annotator and the watcher once each at a seeded
random moment, recover them through the `ambient` CLI, and find no violated invariant.

`benchmarks/chaos.py --kills 20` is the full run (also the sweep driver and a trial worker);
this keeps its machinery honest on every `make test` (2.7 min measured on 2 cores shared with
other work at load 4; most of it is CLI imports and four Ray start-ups).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("annotator", "watcher")


@pytest.mark.timeout(450)  # slack for a loaded machine (5 min measured at load 13)
def test_short_chaos_run_recovers_without_violations(tmp_path: Path) -> None:
    # Seed 14 kills the annotator's PID 13.5 s and the watcher's whole session 10.7 s into a
    # 30 s window: both land while the command still runs (CLI start, Ray start, scoring).
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "chaos.py"),
        "--small",
        "--kills=1",
        "--seed=14",
        f"--targets={','.join(TARGETS)}",
        "--durations=annotator=30,watcher=30",
        "--grace=60",  # Ray's agents may take ~30 s to notice a dead driver on a busy machine
        "--timeout=240",
        f"--work={tmp_path}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:  # timed out: chaos.py kills what it started on SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert out.strip(), f"no report (exit {proc.returncode}):\n{err[-4000:]}"
    report = json.loads(out)
    detail = json.dumps(report, indent=1) + "\n" + err[-4000:]
    assert proc.returncode == 0 and report["violations"] == 0, detail
    for name in TARGETS:
        res = report["targets"][name]
        assert res["attempts"] == res["kills_landed"] == res["recovered"] == 1, detail
        assert res["violations"] == [], detail
