"""The sweep driver's memory over long sweeps (issue 14, benchmarks/sweep_bookkeeping.py): a live
report refresh hands the heap it freed back to the OS, and the report reads the child runs a page
at a time (reading every run at once left the driver ~50 MB larger after each refresh)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from jobs.trial import POINT_TAG
from orchestrator.sweep import callbacks, results
from orchestrator.sweep.state import SweepInfo


def test_release_memory_is_safe_to_call_repeatedly() -> None:
    callbacks.release_memory()
    callbacks.release_memory()


def test_a_refresh_releases_memory_after_each_build_even_a_failed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(callbacks, "release_memory", lambda: calls.append("release"))

    def build() -> None:
        calls.append("build")
        raise RuntimeError("the report failed")

    refresher = callbacks.Refresher(build, interval_s=0.0)
    try:
        refresher.poke()
        deadline = time.time() + 10
        while "release" not in calls and time.time() < deadline:
            time.sleep(0.01)
    finally:
        refresher.close()
    assert calls[:2] == ["build", "release"]


def test_child_runs_are_read_a_page_at_a_time_once_each_in_start_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Against a real SQLite store, in pages of 3: every child run once, in the order the
    trials started, however the pages fall (7 runs: pages of 3, 3 and 1)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("paged")
    parent = client.create_run(exp, start_time=1000).info.run_id
    made = []
    for i in [4, 0, 6, 2, 5, 1, 3]:  # created out of start-time order
        tags = {
            "mlflow.parentRunId": parent,
            "ray_trial_id": f"t{i}",
            "seed": "0",
            POINT_TAG: json.dumps({"train.lr": i}),
        }
        run = client.create_run(exp, start_time=2000 + i, tags=tags).info.run_id
        client.set_terminated(run, "FINISHED", end_time=3000 + i)
        made.append((i, run))
    client.create_run(exp, start_time=1500)  # not a child of this sweep
    monkeypatch.setattr(results, "PAGE_RUNS", 3)
    info = SweepInfo("s", parent, uri, "paged", "spec.yaml", "", 0.0, paths=["train.lr"])
    rows = results.collect_rows(info)
    assert [r.run_id for r in rows] == [run for _, run in sorted(made)]
    assert [r.params for r in rows] == [{"train.lr": i} for i in range(7)]


def test_an_ended_trial_forgets_tunes_statistics_but_keeps_its_last_result() -> None:
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    meta = _TrainingRunMetadata()
    meta.last_result = {"success_rate": 0.5, "final": 1}
    for step, value in enumerate([0.1, 0.3, 0.5], start=1):
        meta.update_metric("success_rate", value, step)
    trial = SimpleNamespace(run_metadata=meta)
    before = len(meta.get_json_state())
    callbacks.forget_tune_statistics(trial)
    assert meta.metric_analysis == {} and meta.metric_n_steps == {}
    assert meta.last_result == {"success_rate": 0.5, "final": 1}
    assert len(meta.get_json_state()) < before  # Tune's snapshot of the trial shrinks too
    callbacks.forget_tune_statistics(SimpleNamespace())  # not a Tune trial: nothing to do
