"""Scale: per-worker caches, per-phase timing of a training run, a lean annotation actor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from ambient_platform.config import load_run_config
from jobs import worker_cache
from jobs.generate import generate
from jobs.train import run_training
from jobs.worker_cache import LruCache, Phases, record_phase

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.steps=4",
    "train.batch_size=16",
    "train.log_every=2",
    "train.warmup_steps=1",
    "policy.down_dims=[16,32]",
    "policy.step_embed_dim=16",
    "eval.episodes=2",
    "eval.inference_steps=2",
    "eval.max_steps=20",
]


def test_lru_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = LruCache(max_entries=2, max_bytes=1000)
    built: list[str] = []

    def build(key: str, size: int) -> np.ndarray:
        built.append(key)
        return np.zeros(size, dtype=np.uint8)

    cache.get_or_build("a", lambda: build("a", 100))
    cache.get_or_build("b", lambda: build("b", 100))
    cache.get_or_build("a", lambda: build("a", 100))  # hit, "a" becomes the newest
    cache.get_or_build("c", lambda: build("c", 100))  # evicts "b", the least recently used
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    cache.get_or_build("b", lambda: build("b", 100))
    assert built == ["a", "b", "c", "b"]
    cache.get_or_build("big", lambda: build("big", 2000))  # larger than the bound: not kept
    assert len(cache) == 2
    cache.get_or_build("d", lambda: build("d", 950))  # the byte bound evicts the others
    assert len(cache) == 1


def test_phases_include_a_phase_recorded_before_the_run() -> None:
    record_phase("config", 0.25)
    ph = Phases()
    with ph("data"):
        pass
    m = ph.metrics()
    assert m["time/config_s"] == 0.25 and "time/data_s" in m
    assert "time/config_s" not in Phases().metrics()  # drained by the run that took it


def test_consecutive_runs_reuse_the_worker_cache_and_log_phase_times(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = tmp_path / "bs"
    generate("bin_sorting", 4, 8, str(data), seed=0)
    worker_cache.DATASETS.clear()
    worker_cache.CHUNKS.clear()
    cfg = load_run_config(
        ROOT / "sweeps" / "train" / "bin_sorting_ambient.yaml",
        [*TINY, f"data.clean.0.path={data}/clean", f"data.corrupt.0.path={data}/corrupt"],
    )
    first = run_training(cfg, uri)
    misses = worker_cache.DATASETS.misses
    second = run_training(cfg, uri)
    assert worker_cache.DATASETS.misses == misses and worker_cache.DATASETS.hits >= 2
    assert worker_cache.CHUNKS.hits >= 1
    assert first["metrics"] == second["metrics"]  # a cached dataset trains the same run
    m = MlflowClient(uri).get_run(second["run_id"]).data.metrics
    for phase in ("env", "data", "sampler", "model", "tracker", "fit", "checkpoint", "eval"):
        assert m[f"time/{phase}_s"] >= 0.0, phase
    assert set(second["phases"]) >= {"data", "fit", "eval", "log"}


def test_annotation_actor_imports_no_planning_code_nor_mlflow() -> None:
    code = (
        "import sys, jobs.curve_annotator; heavy = ('pandas', 'mlflow', 'jobs.annotation_plan'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
