"""A sweep at scale on a real multi-node cluster: 100 one-step trials through ``ambient sweep
run --ray-address`` on a local two-node Ray cluster (head and worker node, 1 CPU each), data on
the moto S3 server, tracking on an ``mlflow server``. Every trial must end as exactly one
FINISHED child run of the sweep's parent, no (params, seed) twice, and trials on both nodes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import free_port, kill_tree

from ambient_platform.local_cluster import local_cluster

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "sweeps" / "train" / "bin_sorting_ambient.yaml"
LRS = [round(1e-3 * 0.9**i, 8) for i in range(20)]
SEEDS = [0, 1, 2, 3, 4]
TRIALS = len(LRS) * len(SEEDS)
#: One training step, one round, the smallest evaluation: the trial is almost all overhead,
#: which is what this test is about (bookkeeping of many trials across nodes).
ONE_STEP = [
    "data.generate=null",
    "train.steps=1",
    "train.rounds=1",
    "train.batch_size=16",
    "train.log_every=1",
    "train.warmup_steps=0",
    "policy.down_dims=[16,32]",
    "policy.step_embed_dim=16",
    "eval.episodes=1",
    "eval.round_episodes=1",
    "eval.inference_steps=1",
    "eval.max_steps=8",
    "eval.plot=false",
]
DRIVER_TIMEOUT_S = 900


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (SQLite store, proxied artifacts under ``work``) in its
    own process group, started on entry and killed (the whole group) on exit; ``wait()`` blocks
    until /health answers, so the cluster can start while the server imports."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MlflowServer:
        hosts = f"127.0.0.1,127.0.0.1:{self.port},localhost,localhost:{self.port}"
        cmd = [sys.executable, "-m", "mlflow", "server"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", str(self.work / "artifacts")]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--allowed-hosts", hosts]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        # No job runner and its huey worker processes (~7 Pythons): tracking is all we need.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(self.work / "mlflow-server.log", "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self, timeout_s: float = 300.0) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        health = f"{self.url}/health"
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=5) as r:
                if r.status == 200:
                    return self.url
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.work / "mlflow-server.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"mlflow server did not answer (exit {self.proc.poll()}): {log}")
            time.sleep(1.0)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=30)


def _spec(tmp_path: Path, bucket: str) -> Path:
    data = f"s3://{bucket}/data/smoke"
    body = {
        "name": "cluster-100",
        "base_config": str(BASE),
        "overrides": [
            f"data.clean.0.path={data}/clean",
            f"data.corrupt.0.path={data}/corrupt",
            *ONE_STEP,
        ],
        "space": {"train.lr": {"grid": LRS}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "none"},
        "metric": "train_loss",
        "mode": "min",
        "seeds": SEEDS,
        "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 1,
        "reuse_actors": True,
        "experiment": "cluster-sweep",
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _run_driver(args: list[str], work: Path) -> tuple[int, float]:
    """The real CLI in its own process group, stdout to ``driver.out``, stderr to
    ``driver.log``; (exit code, seconds)."""
    t0 = time.monotonic()
    with open(work / "driver.out", "wb") as out, open(work / "driver.log", "wb") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
    try:
        code = proc.wait(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        tail = (work / "driver.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"ambient sweep run did not end within {DRIVER_TIMEOUT_S} s: {tail}")
    return code, time.monotonic() - t0


def _children(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'", max_results=10)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    pid = parents[0].info.run_id
    kids = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=1000
    )
    return parents[0], kids


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_hundred_one_step_trials_on_two_nodes(s3_bucket: str, tmp_path: Path) -> None:
    from jobs.generate import generate

    generate("bin_sorting", 6, 12, f"s3://{s3_bucket}/data/smoke", seed=0, plot=False)
    spec = _spec(tmp_path, s3_bucket)
    ambient = str(Path(sys.executable).with_name("ambient"))
    load0 = os.getloadavg()
    t0 = time.monotonic()
    with MlflowServer(tmp_path) as server, local_cluster(workers=1) as cluster:
        uri = server.wait()
        setup_s = time.monotonic() - t0
        assert cluster.num_nodes == 2
        nodes = cluster.alive_nodes()
        node_ids = {n["node_id"] for n in nodes}
        assert len(node_ids) == 2
        args = [ambient, "sweep", "run", str(spec), "--json"]
        args += ["--ray-address", cluster.address, "--tracking-uri", uri]
        args += ["--storage-path", str(tmp_path / "sweeps")]
        code, driver_s = _run_driver(args, tmp_path)
        log = (tmp_path / "driver.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        parent, kids = _children(uri, "cluster-sweep")
        root = cluster.root
    # Everything the cluster started is gone (its temp dirs are in their command lines).
    procs = psutil.process_iter(["cmdline"])
    left = [p.pid for p in procs if root in " ".join(p.info["cmdline"] or ())]
    assert not left, f"processes of the stopped cluster still run: {left}"

    status = Counter(k.info.status for k in kids)
    assert len(kids) == TRIALS and status == {"FINISHED": TRIALS}, status
    assert parent.info.status == "FINISHED"
    assert len({k.data.tags["ray_trial_id"] for k in kids}) == TRIALS
    points = {(k.data.params["train.lr"], k.data.tags["seed"]) for k in kids}
    assert len(points) == TRIALS  # every (params, seed) exactly once
    assert {k.data.tags["seed"] for k in kids} == {str(s) for s in SEEDS}
    ran_on = Counter(k.data.tags.get("node.id") for k in kids)
    assert set(ran_on) == node_ids, ran_on  # both nodes ran trials, and nothing else did
    assert {k.data.tags.get("node.ip") for k in kids} == {n["node_ip"] for n in nodes}
    # --json prints JSON only (settings.QUIET_ENV silences MLflow's "View run ... at" lines).
    summary = json.loads((tmp_path / "driver.out").read_text())
    assert summary["counts"] == {"finished": TRIALS}
    print(
        json.dumps(
            {
                "trials": TRIALS,
                "setup_s": round(setup_s, 1),
                "driver_s": round(driver_s, 1),
                "total_s": round(time.monotonic() - t0, 1),
                "trials_per_node": sorted(ran_on.values()),
                "load_avg_before": [round(x, 2) for x in load0],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
