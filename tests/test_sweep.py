"""Sweeps: spec validation, space compilation, constraints, a smoke sweep end to end on Ray Tune
with MLflow parent/child runs, and resume after kill -9 of the driver."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import kill_tree

from ambient_platform.config import ConfigError
from ambient_platform.config.sweep import Constraint, OptunaSpace, load_sweep
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
SPECS = sorted(SWEEPS.glob("*.yaml"))
BASE = "train/bin_sorting_ambient.yaml"


def _spec(tmp_path: Path, body: dict[str, Any], name: str = "s.yaml") -> Path:
    """A spec next to a copy of sweeps/train so relative base_config paths resolve."""
    train = tmp_path / "train"
    if not train.exists():
        train.mkdir()
        for f in (SWEEPS / "train").glob("*.yaml"):
            (train / f.name).write_text(f.read_text())
    body = {"base_config": BASE, **body}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_validate(path: Path) -> None:
    s = load_sweep(path)
    assert s.trial_count() >= 2
    assert s.base["train"]["threads"] == 1  # one torch thread per 1-CPU trial
    assert s.max_t == s.rounds


def test_bad_field_names_name_file_and_dotted_path(tmp_path: Path) -> None:
    p = _spec(tmp_path, {"space": {"train.lr": {"grid": [1e-3]}}, "scheduler": {"grace": 1}})
    with pytest.raises(ConfigError, match=r"s.yaml: scheduler.grace: Extra inputs"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"train.lr": {"gird": [1e-3]}}})
    with pytest.raises(ConfigError, match=r"s.yaml: space.train.lr.gird: Extra inputs"):
        load_sweep(p)
    p = _spec(
        tmp_path,
        {"space": {"train.lr": {"uniform": [1e-2, 1e-3]}}, "searcher": {"kind": "random"}},
    )
    with pytest.raises(ConfigError, match=r"space.train.lr: .*lower bound"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"train.lr": {"uniform": [1e-4, 1e-3]}}})
    with pytest.raises(ConfigError, match=r"searcher grid enumerates finite values only"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"train.lr": {"grid": [1e-3]}}, "run": {"task": "maze"}})
    with pytest.raises(ConfigError, match=r"exactly one of base_config"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"train.lr": {"grid": [1e-3]}}, "overrides": ["train.x=1"]})
    with pytest.raises(
        ConfigError,
        match=r"bin_sorting_ambient.yaml \+ overrides of .*s.yaml: "
        r"train.x: Extra inputs",
    ):
        load_sweep(p)


def test_space_and_constraint_paths_must_exist_and_values_validate(tmp_path: Path) -> None:
    p = _spec(tmp_path, {"space": {"train.lrr": {"grid": [1e-3]}}})
    with pytest.raises(
        ConfigError,
        match=r"s.yaml: space.train.lrr: not a path of the base run "
        r"config \(train.lrr does not exist\)",
    ):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"data.corrupt.3.sigma_max": {"grid": [0.1]}}})
    with pytest.raises(ConfigError, match=r"space.data.corrupt.3.sigma_max: .*not an index"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"data.corrupt.0.annotation.tau": {"grid": [0.4]}}})
    with pytest.raises(ConfigError, match=r"data.corrupt.0.annotation is null"):
        load_sweep(p)
    p = _spec(tmp_path, {"space": {"data.corrupt.0.sigma_max": {"grid": [0.2, 1.5]}}})
    with pytest.raises(ConfigError, match=r"space.data.corrupt.0.sigma_max: value 1.5 is invalid"):
        load_sweep(p)
    ok = {"space": {"train.lr": {"grid": [1e-3]}}}
    for bad, msg in [
        ("train.lr <", r"constraints.0: cannot parse"),
        ("__import__('os').system('true') < 1", r"constraints.0: .*neither a number nor"),
        ("1 < 2", r"compares two numbers"),
        ("train.nope < 1", r"constraints.0: train.nope is not a path"),
    ]:
        p = _spec(tmp_path, {**ok, "constraints": [bad]})
        with pytest.raises(ConfigError, match=msg):
            load_sweep(p)
    p = _spec(tmp_path, {**ok, "metric": "accuracy"})
    with pytest.raises(ConfigError, match=r"metric: 'accuracy' is not reported by task"):
        load_sweep(p)
    p = _spec(tmp_path, {**ok, "scheduler": {"max_t": 7}})
    with pytest.raises(ConfigError, match=r"scheduler.max_t: .*train.rounds = 1"):
        load_sweep(p)
    p = _spec(tmp_path, {**ok, "constraints": ["train.lr > 1"]})
    with pytest.raises(ConfigError, match=r"no grid point satisfies"):
        load_sweep(p)


def test_cli_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["sweep", "validate", str(SWEEPS / "smoke.yaml")])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["valid"] and res["trials"] == 4 and res["rejected_points"] == 2
    out = runner.invoke(main, ["sweep", "validate", str(SWEEPS / "maze_classifier.yaml")])
    assert out.exit_code == 0 and "ambient annotate --name rrt" in out.output
    bad = _spec(tmp_path, {"space": {"train.lr": {"grid": [1e-3]}}, "mode": "maximize"})
    out = runner.invoke(main, ["sweep", "validate", str(bad)])
    assert out.exit_code == 2 and "s.yaml: mode: Input should be 'max' or 'min'" in out.output


def test_constraints_evaluate_safely() -> None:
    c = Constraint.parse("data.corrupt.0.sigma_max < data.corrupt.0.sigma_min")
    cfg = {"data": {"corrupt": [{"sigma_max": 0.4, "sigma_min": 1.0}]}}
    assert c.holds(cfg)
    cfg["data"]["corrupt"][0]["sigma_max"] = 1.0
    assert not c.holds(cfg)
    assert Constraint.parse("mixing.alpha >= 0.5").holds({"mixing": {"alpha": 0.5}})
    assert not Constraint.parse("mixing.alpha >= 0.5").holds({"mixing": {"alpha": None}})
    assert Constraint.parse("0.1!=mixing.alpha").holds({"mixing": {"alpha": 0.2}})


# ------------------------------------------------------------------------------ compilation


def test_grid_and_random_points_with_constraints(tmp_path: Path) -> None:
    s = load_sweep(SWEEPS / "smoke.yaml")
    pts, rejected = s.points()
    assert [(p["train.lr"], p["data.corrupt.0.sigma_max"]) for p in pts] == [
        (3e-3, 0.1824),
        (3e-3, 0.4616),
        (1e-6, 0.1824),
        (1e-6, 0.4616),
    ]
    assert len(rejected) == 2 and "sigma_max < 0.5" in rejected[0][1]
    body = {
        "searcher": {"kind": "random", "seed": 3},
        "num_samples": 40,
        "space": {
            "mixing.alpha": {"uniform": [0.1, 0.9]},
            "train.lr": {"loguniform": [1e-5, 1e-2]},
            "policy.kernel_size": {"randint": [3, 6]},
            "mixing.pool": {"choice": ["proportional", "fixed"]},
            "train.batch_size": {"grid": [16, 32]},
        },
        "constraints": ["mixing.alpha < 0.5", "train.lr >= 0.0001"],
    }
    s = load_sweep(_spec(tmp_path, body))
    pts, rejected = s.points()
    assert len(pts) == 80  # num_samples draws x the grid entries (Tune's semantics)
    assert sorted({p["train.batch_size"] for p in pts}) == [16, 32]
    assert all(0.1 <= p["mixing.alpha"] < 0.5 for p in pts)  # resampled, never run
    assert all(1e-4 <= p["train.lr"] <= 1e-2 for p in pts)
    assert {p["policy.kernel_size"] for p in pts} == {3, 4, 5}  # [lo, hi)
    assert {p["mixing.pool"] for p in pts} == {"proportional", "fixed"}
    assert rejected and all("does not hold" in r for _, r in rejected)
    assert s.points()[0] == pts  # seeded: same points every time
    cfg = s.trial_config(pts[0], seed=7)
    assert cfg.train.seed == 7 and cfg.train.batch_size == pts[0]["train.batch_size"]
    assert s.trial_count() == 80


def test_optuna_define_by_run_space(tmp_path: Path) -> None:
    import optuna

    body = {
        "searcher": {"kind": "optuna"},
        "num_samples": 5,
        "space": {
            "mixing.alpha": {"uniform": [0.1, 0.9]},
            "train.lr": {"loguniform": [1e-5, 1e-2]},
            "policy.kernel_size": {"randint": [3, 6]},
            "policy.down_dims": {"choice": [[16, 32], [32, 64]]},
            "train.batch_size": {"grid": [16, 32]},
        },
    }
    s = load_sweep(_spec(tmp_path, body))
    space = OptunaSpace(s.spec.space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        space(t)
        params = space.decode(t.params)
        assert 0.1 <= params["mixing.alpha"] <= 0.9
        assert params["policy.kernel_size"] in (3, 4, 5)
        assert params["policy.down_dims"] in ([16, 32], [32, 64])
        assert s.violation(params) is None
        study.tell(t, 0.0)
    d = study.trials[0].distributions
    assert d["train.lr"].log and isinstance(
        d["policy.kernel_size"], optuna.distributions.IntDistribution
    )
    assert d["policy.kernel_size"].high == 5
    assert d["train.batch_size"].choices == (16, 32)


class _FakeInner:
    """Stands in for OptunaSearch: suggests queued configs, records what it is told."""

    metric, mode = "success", "max"

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.configs, self.told = list(configs), []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return self.configs.pop(0)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.told.append((trial_id, result, error))


def test_searcher_rejects_violations_and_repeats_each_config_per_seed(tmp_path: Path) -> None:
    from orchestrator.sweep import PARAM_SPACE_KEY, SweepSearcher

    body = {
        "searcher": {"kind": "optuna"},
        "space": {"data.corrupt.0.sigma_max": {"uniform": [0.0, 1.0]}},
        "constraints": ["data.corrupt.0.sigma_max < data.corrupt.0.sigma_min"],
        "metric": "success",
        "seeds": [0, 1],
    }
    s = load_sweep(_spec(tmp_path, {**body, "overrides": ["data.corrupt.0.sigma_min=0.5"]}))
    inner = _FakeInner(
        [
            {"data.corrupt.0.sigma_max": 0.7},
            {"data.corrupt.0.sigma_max": 0.2},
            {"data.corrupt.0.sigma_max": 0.3},
        ]
    )
    srch = SweepSearcher(inner, s, OptunaSpace(s.spec.space))
    a = srch.suggest("t1")[PARAM_SPACE_KEY]
    assert a == {"data.corrupt.0.sigma_max": 0.2, "seed": 0}
    assert inner.told == [("t1", None, False)]  # 0.7 violated: completed without a result
    assert "does not hold" in srch.rejected[0]["reason"]
    b = srch.suggest("t2")[PARAM_SPACE_KEY]
    assert b == {"data.corrupt.0.sigma_max": 0.2, "seed": 1}  # same config, next seed
    c = srch.suggest("t3")[PARAM_SPACE_KEY]
    assert c == {"data.corrupt.0.sigma_max": 0.3, "seed": 0}
    srch.on_trial_complete("t1", {"success": 0.2})
    assert len(inner.told) == 1  # waits for every seed
    srch.on_trial_complete("t2", {"success": 0.4})
    assert inner.told[-1][0] == "t1~1" and inner.told[-1][1]["success"] == pytest.approx(0.3)
    state = srch.get_state()
    srch2 = SweepSearcher(_FakeInner([]), s, OptunaSpace(s.spec.space))
    srch2.set_state(state)
    assert srch2.trial_group["t3"] == "t3" and srch2.groups["t1~1"]["told"]


def test_optuna_rejections_are_infeasible_for_tpe() -> None:
    """Rejected suggestions must steer TPE away: told as FAIL, TPE ignores them and proposes
    the same infeasible point again and again (measured: >1000 rejections within 8 trials)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.sweep import PARAM_SPACE_KEY, SweepSearcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = load_sweep(SWEEPS / "smoke.yaml", ["searcher={kind: optuna, seed: 1}"])
    space = OptunaSpace(s.spec.space)
    sampler = optuna.samplers.TPESampler(seed=1, n_startup_trials=2)
    inner = OptunaSearch(space=space, metric="train_loss", mode="min", sampler=sampler)
    srch = SweepSearcher(inner, s, space)
    for i in range(20):
        p = srch.suggest(f"t{i}")[PARAM_SPACE_KEY]
        assert p["data.corrupt.0.sigma_max"] < 0.5
        srch.on_trial_complete(f"t{i}", {"train_loss": 1.0 if p["train.lr"] > 1e-4 else 1.2})
    assert len(srch.rejected) < 20
    rejected = [t for t in inner._ot_study.trials if "rejected" in t.user_attrs]
    assert rejected and all(t.state.name == "PRUNED" for t in rejected)
    assert all(t.constraints == {"rejected": 1.0} for t in rejected)


# ------------------------------------------------------------------------------ end to end


def _children(uri: str, parent: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


@pytest.mark.timeout(240)
def test_smoke_sweep_end_to_end(ray_session: object, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from orchestrator.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "sweeps")
    res = run_sweep(SWEEPS / "smoke.yaml", tracking_uri=uri, storage_path=storage, verbose=0)
    client = MlflowClient(uri)
    parent = client.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["searcher"] == "grid" and parent.data.params["trials"] == "4"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/results.csv", "results/best_config.yaml"} <= arts
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/index.html", "report/train_loss_vs_lr.png"} <= report
    assert Path(res["report"]).is_file() and "verdict:" in res["headline"]
    spec_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "spec")}
    assert {"spec/sweep.yaml", "spec/searcher.json", "spec/base_run_config.yaml"} <= spec_arts
    assert parent.data.metrics["trials/total"] == 4

    children = _children(uri, parent.info.run_id)
    assert len(children) == 4
    assert len({c.data.tags["ray_trial_id"] for c in children}) == 4
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.params["train.threads"] == "1"
        assert c.data.params["data.clean.0.path"] == "data/bin_sorting_smoke/clean"
        assert c.data.tags["attempt"] == "1"  # params logged once, never re-opened
        assert "retry_reason" not in c.data.tags
        assert c.data.tags["node.ip"] == "127.0.0.1" and c.data.tags["node.accelerator"] == "cpu"
        assert len(c.data.tags["node.id"]) == 56  # Ray's hex node id
        rounds = client.get_metric_history(c.info.run_id, "round/success")
        assert [h.step for h in rounds] == sorted({h.step for h in rounds}) and rounds
    by_lr: dict[str, list[Any]] = {}
    for c in children:
        by_lr.setdefault(c.data.params["train.lr"], []).append(c)
    slow = by_lr["1e-06"]  # they start after the fast ones, lose at round 1, ASHA stops them
    assert all(c.data.tags.get("stopped_early") == "true" for c in slow)
    assert all("eval/success" not in c.data.metrics for c in slow)
    done = [c for c in children if c.data.tags.get("stopped_early") != "true"]
    assert done and all("eval/success" in c.data.metrics for c in done)
    assert [h.step for h in client.get_metric_history(done[0].info.run_id, "round/success")] == [
        10,
        20,
    ]
    assert res["counts"]["finished"] == len(done)
    assert res["counts"]["stopped_early"] == 4 - len(done)
    summary = Path(storage) / "smoke" / "summary"
    rows = (summary / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial_id,status,outcome,train.lr")
    best = yaml.safe_load((summary / "best_config.yaml").read_text())
    assert best["train"]["lr"] == 3e-3 and best["task"] == "bin_sorting"

    runner = CliRunner()
    args = ["--storage-path", storage]
    out = runner.invoke(main, ["sweep", "best", str(SWEEPS / "smoke.yaml"), *args])
    assert out.exit_code == 0, out.output
    assert "train_loss" in out.output and "lr: 0.003" in out.output
    out = runner.invoke(main, ["sweep", "status", str(SWEEPS / "smoke.yaml"), *args])
    assert out.exit_code == 0, out.output
    assert "FINISHED" in out.output and "stopped_early" in out.output
    assert out.output.count("TERMINATED") == 4
    out = runner.invoke(main, ["sweep", "run", str(SWEEPS / "smoke.yaml"), *args])
    assert out.exit_code == 2 and "already exists" in out.output and "resume" in out.output


@pytest.mark.timeout(300)
def test_kill_dash_nine_then_resume_keeps_runs_and_finished_trials(
    ray_session: object, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from ambient_platform.tracking import ensure_experiment
    from orchestrator.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "sweeps")
    spec = str(SWEEPS / "smoke.yaml")
    # No early stopping (every trial must finish), trials long enough to be caught mid-way.
    overrides = ["scheduler.kind=none", "name=smoke-k9"]
    overrides += [
        "overrides="
        + json.dumps(
            yaml.safe_load((SWEEPS / "smoke.yaml").read_text())["overrides"]
            + ["train.steps=240", "train.log_every=40"]
        )
    ]
    ensure_experiment(uri, "sweep-smoke")  # the store exists before two processes open it
    ray_tmp = tempfile.mkdtemp(prefix="rk9-", dir="/tmp")
    code = (
        "from orchestrator.sweep import run_sweep; "
        f"run_sweep({spec!r}, {overrides!r}, tracking_uri={uri!r}, storage_path={storage!r}, "
        "verbose=0)"
    )
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = MlflowClient(uri)
    deadline = time.time() + 200
    exp_dir = Path(storage) / "smoke-k9"
    before: dict[str, str] = {}
    mid: set[str] = set()  # runs of trials with a persisted mid-training checkpoint
    try:
        while time.time() < deadline and not before:
            assert proc.poll() is None, "the sweep driver exited before it could be killed"
            time.sleep(0.25)
            ckpts = {}
            for meta in exp_dir.glob("trial_*/checkpoint_*/trial.json"):
                with contextlib.suppress(OSError, ValueError):
                    m = json.loads(meta.read_text())
                    ckpts[m["run_id"]] = m["done"]
            parents = [
                r
                for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                if r.data.tags.get("kind") == "sweep"
            ]
            if not parents:
                continue
            parent_id = parents[0].info.run_id
            kids = _children(uri, parent_id)
            status = {k.info.run_id: k.info.status for k in kids}
            running_mid = {
                r for r, done in ckpts.items() if not done and status.get(r) == "RUNNING"
            }
            if "FINISHED" in status.values() and running_mid:
                before, mid = status, running_mid
        assert before, "no trial finished while another had checkpointed (timeout)"
    finally:
        # The driver's group and every process it started: no trial outlives it and logs on.
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # What the dead driver left behind (a trial may have ended between the last poll and -9).
    before = {k.info.run_id: k.info.status for k in _children(uri, parent_id)}
    mid = {r for r in mid if before[r] == "RUNNING"}
    # Killed after recording its final evaluation but before ending: closed on resume, not rerun.
    evaluated = {r for r in before if client.get_metric_history(r, "eval/success")}
    mid -= evaluated
    assert "FINISHED" in before.values() and "RUNNING" in before.values()
    assert client.get_run(parent_id).info.status == "RUNNING"  # the dead driver's parent

    res = run_sweep(
        spec, overrides, resume=True, tracking_uri=uri, storage_path=storage, verbose=0
    )
    assert res["parent_run_id"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["resumes"] == "1"
    index = json.loads((exp_dir / "ambient_index.json").read_text())
    assert index["state"] == "FINISHED" and len(index["segments"]) == 2
    first = index["segments"][0][1] - index["segments"][0][0]
    assert parent.data.metrics["time/wall_s"] > first > 0  # spans the killed segment too
    # Every trial running at the kill started again: counted as a retry, no node was lost.
    assert index["retries"] == parent.data.metrics["trials/retries"] >= 1
    assert parent.data.metrics["trials/node_losses"] == 0
    assert res["counts"] == {"finished": 4}
    kids = _children(uri, parent_id)
    assert len(kids) == 4 and len({k.data.tags["ray_trial_id"] for k in kids}) == 4
    assert all(k.info.status == "FINISHED" for k in kids)
    assert set(before) <= {k.info.run_id for k in kids}  # no run duplicated or replaced
    from ambient_platform.settings import ambient_home

    scratch = ambient_home() / "tmp"  # killed attempts' scratch is removed by their retry
    ids = [k.data.tags["ray_trial_id"] for k in kids]
    assert not [p for i in ids for p in scratch.glob(f"trial-smoke-k9-{i}-*")]
    for k in kids:
        status = before.get(k.info.run_id)
        evals = client.get_metric_history(k.info.run_id, "eval/success")
        assert len(evals) == 1  # final evaluation exactly once
        if status == "FINISHED":
            assert k.data.tags["attempt"] == "1"  # finished before the kill: not rerun
        elif status == "RUNNING" and k.info.run_id in evaluated:
            assert k.data.tags["attempt"] == "1"  # its evaluation stands: ended, not retrained
        elif status == "RUNNING":
            assert k.data.tags["attempt"] == "2"  # reopened by its trial, same run id
            assert k.data.tags["retry_reason"].startswith("attempt 1 did not finish")
            assert k.data.tags["retry_after_attempt"] == "1"
        if k.info.run_id in mid:
            r = int(k.data.tags["resumed_from_round"])
            assert r >= 1  # continued from its checkpoint, not from step 0
            steps = [h.step for h in client.get_metric_history(k.info.run_id, "loss")]
            # Only what was logged after that checkpoint (and before the kill) is logged again.
            assert all(st > r * 80 for st in steps if steps.count(st) > 1)
            assert sorted(set(steps)) == [40, 80, 120, 160, 200, 240]
    rows = [r for r in res["trials"] if r["final"]]
    assert len(rows) == 4 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert np.isfinite(res["best"]["mean"])


def test_a_run_killed_after_its_final_evaluation_is_ended_not_retrained(tmp_path: Path) -> None:
    """The window between recording eval/* (the last thing a run logs) and ending the run: the
    restarted trial takes the recorded evaluation; a run without one trains again."""
    from ambient_platform.tracking import RunTracker
    from jobs.trial import prior_outcome

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = RunTracker.start(uri, "window", "evaluated")
    done.log_metrics({"loss": 0.5, "eval/success": 0.75}, 240)
    done.flush()
    res = prior_outcome(uri, done.run_id, rounds=3, seed=1)
    assert res is not None and res.metrics == {"success": 0.75} and res.final
    assert RunTracker(uri, done.run_id).status() == "FINISHED"
    busy = RunTracker.start(uri, "window", "mid-training")
    busy.log_metrics({"loss": 0.5, "round/success": 0.25}, 80)
    busy.flush()
    assert prior_outcome(uri, busy.run_id, rounds=3, seed=1) is None
    assert RunTracker(uri, busy.run_id).status() == "RUNNING"


def test_short_keys_and_trial_names() -> None:
    """MLflow columns and run names read: the shortest unique dotted suffix of each path."""
    from ambient_platform.config.naming import short_keys, trial_label

    keys = short_keys(
        ["data.corrupt.0.sigma_min", "data.corrupt.1.sigma_min", "data.corrupt.0.annotation.tau"]
    )
    assert keys == {
        "data.corrupt.0.sigma_min": "0.sigma_min",
        "data.corrupt.1.sigma_min": "1.sigma_min",
        "data.corrupt.0.annotation.tau": "tau",
    }
    point = {"data.corrupt.0.annotation.tau": 0.45, "policy.down_dims": [16, 32]}
    labels = short_keys(point)
    assert trial_label(point, labels, 1) == "tau=0.45 down_dims=[16,32] seed=1"


# ------------------------------------------------------------------------------ trial overhead


def test_async_logging_is_stored_before_the_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued metrics and tags are all stored once ``end`` returns, and a queued batch that
    failed (e.g. a locked SQLite store) is written again by ``flush``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from ambient_platform import tracking

    monkeypatch.setenv(tracking.ASYNC_ENV, "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.RunTracker.start(uri, "async", "r")
    for step in range(1, 6):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step)
    tracker.set_tags({"stage": "done"})

    class Failed:
        def result(self) -> None:
            raise RuntimeError("database is locked")

    lost = [Metric("late", 7.0, int(time.time() * 1000), 9)]
    tracking._PENDING.add(tracker.run_id, Failed(), lost, [])
    tracker.end()
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "done"
    assert run.data.metrics["late"] == 7.0
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_nested_phases_are_kept_apart_from_the_run_phases() -> None:
    """``fit/report`` (timed by the trial's round callback) lands in the run in progress under
    a name with a ``/``, so summing the top-level phases never counts a second twice."""
    from jobs.worker_cache import Phases, record_nested

    ph = Phases()
    with ph("fit"):
        record_nested("fit/report", 0.5)
    m = ph.metrics()
    assert m["time/fit/report_s"] == 0.5 and "time/fit_s" in m


def test_round_checkpoints_carry_the_training_state_only_where_resume_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial that has run for less than STATE_SAVE_RATIO state writes restarts instead of
    writing its state every round; a longer one (or the first write of a process) saves it."""
    from jobs import trial

    ctx = type("Ctx", (), {"checkpoint_train_state": True})()
    rep = trial._Reporter(ctx, None, None, 0, Path("."))  # type: ignore[arg-type]
    monkeypatch.setattr(trial, "_SAVE_S", [])
    assert rep._wants_state()  # cost unknown: write and measure
    monkeypatch.setattr(trial, "_SAVE_S", [1.0])
    assert not rep._wants_state()  # ran for less than 10 writes' worth
    rep.started -= trial.STATE_SAVE_RATIO
    assert rep._wants_state()
    ctx.checkpoint_train_state = False
    assert not rep._wants_state()


def test_a_finished_trial_drops_the_training_state_of_its_checkpoints(tmp_path: Path) -> None:
    """Tune keeps every round checkpoint (a limit would snapshot the experiment each time):
    the bulky training state goes once the trial ends; what resume reads stays."""
    from jobs.trial_checkpoints import TRIAL_META, TRIAL_TRAIN, drop_training_states

    trial = tmp_path / "sw" / "trial_ab_00001"
    for r in range(3):
        d = trial / f"checkpoint_00000{r}"
        (d / TRIAL_TRAIN).mkdir(parents=True)
        (d / TRIAL_TRAIN / "state.pt").write_bytes(b"x" * 100)
        (d / TRIAL_META).write_text("{}")
    (trial / "result.json").write_text("{}")
    assert drop_training_states(str(tmp_path), "sw", "ab_00001") == 3
    left = sorted(p.relative_to(trial).as_posix() for p in trial.rglob("*") if p.is_file())
    assert left == [f"checkpoint_00000{r}/{TRIAL_META}" for r in range(3)] + ["result.json"]
    assert drop_training_states(str(tmp_path), "sw", "missing") == 0


def test_queued_logging_survives_a_shut_down_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in a reused Tune worker: the writer executor was shut down between two trials and
    the next trial's run ended FAILED; a new writer must take over."""
    from ambient_platform import tracking

    monkeypatch.setenv(tracking.ASYNC_ENV, "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = tracking.RunTracker.start(uri, "queue", "r")
    t.log_metrics({"loss": 1.0}, 1)
    t.flush()
    tracking._writer().shutdown(wait=True)
    t.log_metrics({"time/train_s": 2.0}, 2)
    t.set_tags({"stage": "done"})
    t.end()
    run = t.client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["time/train_s"] == 2.0
    assert run.data.tags["stage"] == "done"
