"""Trials per hour with 1, 2, 4 and 8 trials packed on each GPU (issue 14). Prints JSON.

Runs sweeps/maze_sigma_min_gpu.yaml (ConditionalUnet1D [64, 128, 256], batch 256,
``train.device=auto``: each trial trains on the GPU share Ray assigned) through
``orchestrator.sweep.run_sweep`` (MLflow child runs, Tune, the report), once per packing k on
a fresh local Ray instance: ``resources.gpu = 1/k``, ``max_concurrent = k x GPUs``, ``--waves``
x k x GPUs trials (a sigma_min grid, one seed), no early stopping. Shorter than the spec so the
table fits a lent machine's minutes: ``--steps`` training steps, ``--episodes`` final evaluation
episodes, a smaller generated dataset. Per k it reports:

- ``trials_per_hour``: finished trials / Tuner.fit wall (``fit_s``: Ray's start and the final
  report excluded) x 3600;
- ``trial_steps_per_s``: mean over trials of the training speed each trial logged
  (``steps_per_s``, its last window), and ``aggregate_steps_per_s`` = all trials' steps / wall:
  what packing buys is aggregate speed while each trial slows down;
- ``gpu``: peak memory used and mean utilisation per GPU, sampled from ``nvidia-smi`` each second.

``--resource cpu`` packs the same way on CPU slots (``resources.cpu = 1/k``, ``--slots`` CPUs)
to check the script on a machine without a GPU; a local Ray runs at most one trial per CPU,
so those numbers are not the GPU table.

Usage: .venv/bin/python benchmarks/gpu_packing.py [--packing 1,2,4,8] [--steps 2000]
       [--episodes 100] [--waves 2] [--resource gpu|cpu] [--slots N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "sweeps" / "maze_sigma_min_gpu.yaml"
#: The sigma_min range of the spec's grid; each run spreads its trials over it.
SIGMA_RANGE = (0.0251, 0.4616)


class GpuSampler:
    """Samples ``nvidia-smi`` once a second in a thread: peak memory, mean utilisation."""

    QUERY = ["--query-gpu=index,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self) -> None:
        self.samples: list[tuple[int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            out = subprocess.run(
                ["nvidia-smi", *self.QUERY], capture_output=True, text=True, check=False
            ).stdout
            for line in out.strip().splitlines():
                with contextlib.suppress(ValueError):  # "[N/A]" (MIG) or a partial line
                    idx, mem, util = (x.strip() for x in line.split(","))
                    self.samples.append((int(idx), float(mem), float(util)))

    def summary(self) -> dict[str, Any]:
        by_gpu: dict[int, list[tuple[float, float]]] = {}
        for idx, mem, util in self.samples:
            by_gpu.setdefault(idx, []).append((mem, util))
        return {
            str(i): {
                "mem_peak_mb": max(m for m, _ in s),
                "util_mean_pct": round(sum(u for _, u in s) / len(s), 1),
            }
            for i, s in sorted(by_gpu.items())
        }


def _overrides(k: int, slots: int, a: argparse.Namespace, work: Path) -> list[str]:
    """The spec's overrides for packing ``k`` on ``slots`` accelerators (or CPUs)."""
    n = a.waves * k * slots
    lo, hi = SIGMA_RANGE
    grid = [round(lo + (hi - lo) * i / max(1, n - 1), 4) for i in range(n)]
    share = round(1.0 / k, 6)
    resources = {"cpu": 1, "gpu": share} if a.resource == "gpu" else {"cpu": share, "gpu": 0}
    base = list(yaml.safe_load(SPEC.read_text())["overrides"])
    base += [
        f"data.clean.0.path={work}/data/clean",
        f"data.corrupt.0.path={work}/data/corrupt",
        f"data.generate={{clean: 50, corrupt: {a.corrupt}, seed: 0}}",
        f"train.steps={a.steps}",
        f"train.log_every={max(1, a.steps // 4)}",
        "train.rounds=1",
        f"eval.episodes={a.episodes}",
    ]
    if a.resource == "cpu":
        base.append("train.device=cpu")
    return [
        f"name=pack-{a.resource}-{k}",
        "scheduler.kind=none",
        "seeds=[0]",
        f"space={{data.corrupt.0.sigma_min: {{grid: {json.dumps(grid)}}}}}",
        f"max_concurrent={k * slots}",
        f"resources={json.dumps(resources)}",
        "overrides=" + json.dumps(base),
    ]


def _logged(uri: str, parent_run_id: str) -> tuple[int, list[float]]:
    """The concurrency the sweep ran at (its parent run's ``max_concurrent``: a local Ray caps
    it at the CPU count) and the last ``steps_per_s`` each of its trials logged."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=1000,
    )
    speeds = [r.data.metrics["steps_per_s"] for r in runs if "steps_per_s" in r.data.metrics]
    return int(parent.data.params["max_concurrent"]), speeds


def _packing(k: int, slots: int, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray

    from ambient_platform.ray_runtime import ensure_ray
    from orchestrator.sweep import run_sweep

    ensure_ray()
    overrides = _overrides(k, slots, a, work)
    load0 = os.getloadavg()[0]
    with GpuSampler() as gpu:
        res = run_sweep(SPEC, overrides, storage_path=str(work / "sweeps"), progress=False)
    ray.shutdown()
    finished = res["counts"].get("finished", 0)
    concurrency, speeds = _logged(res["tracking_uri"], res["parent_run_id"])
    wall = res["fit_s"]
    return {
        "trials_per_slot": k,
        "slots": slots,
        "max_concurrent": concurrency,
        "trials": sum(res["counts"].values()),
        "finished": finished,
        "fit_wall_s": round(wall, 1),
        "trials_per_hour": round(finished / wall * 3600, 1),
        "trial_steps_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
        "aggregate_steps_per_s": round(finished * a.steps / wall, 1),
        "gpu": gpu.summary() if gpu.available else None,
        "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _slots(a: argparse.Namespace) -> int:
    if a.slots:
        return int(a.slots)
    if a.resource == "cpu":
        return os.cpu_count() or 1
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; use --resource cpu to check the script")
    return torch.cuda.device_count()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packing", default="1,2,4,8", help="trials per GPU (or CPU) to compare")
    p.add_argument("--steps", type=int, default=2000, help="training steps per trial")
    p.add_argument("--episodes", type=int, default=100, help="final evaluation episodes")
    p.add_argument("--corrupt", type=int, default=500, help="generated corrupt episodes")
    p.add_argument("--waves", type=int, default=2, help="trials = waves x k x slots")
    p.add_argument("--resource", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--slots", type=int, help="GPUs (or CPUs) to use (default: all)")
    p.add_argument("--work", help="work directory (default: a new one under .work/)")
    a = p.parse_args()
    slots = _slots(a)
    (ROOT / ".work").mkdir(exist_ok=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-packing-", dir=ROOT / ".work")).resolve()
    os.environ["AMBIENT_HOME"] = str(work / "home")
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rgp-", dir="/tmp"))
    from ambient_platform.settings import configure_environment

    configure_environment()
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for k in (int(x) for x in a.packing.split(",")):
        rows.append(_packing(k, slots, a, work))
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "resource": a.resource,
        "steps": a.steps,
        "episodes": a.episodes,
        "rows": rows,
        "total_s": round(time.time() - t0, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
