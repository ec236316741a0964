"""Annotation throughput: ``ambient annotate`` (the "pipeline": ``jobs.annotate.annotate``, one Ray
task per shard) vs a single-process torch loop. Prints JSON.

Both do identical work on the same data: the same classifier checkpoint, grid, draws and scoring
batch size, whole shards re-chunked per episode, one output shard per input shard. Two dataset
sizes 10x apart; rows/s and peak RSS (summed over the driver and every Ray worker process,
sampled every 0.2 s). ``first_shard_s`` is the pipeline's time to its first scored shard
(worker start, torch import and classifier load when cold, one shard); ``warm_wait_s`` the part
of the workers' warm-up the pipeline waited for (not hidden behind the driver's own work). The
pipeline's tasks keep torch and the classifier per Ray worker process, so each size's first
pipeline run, in a fresh Ray session, is ``cold`` and later ones are warm (as every later run or
watch pass of a session); the loop's classifier load is outside its timer, like a warm worker's.
Goals (issue 14): pipeline >= 0.9x the loop's rows/s at the large size, start + classifier load
<= 2 s. ``--repeat`` runs each variant that many times (a shared machine is noisy; the load
average is printed with every result).
Usage: .venv/bin/python benchmarks/annotate_throughput.py [--small 100] [--actors 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from annotate_setup import GRID, NUM_DRAWS, annotate_config

from ambient_core.envs import maze
from ambient_platform.config.annotation import ClassifierTrainConfig
from ambient_platform.datasets import read_meta, write_dataset
from ambient_platform.manifest import CurveSettings
from ambient_platform.ray_runtime import ensure_ray
from ambient_platform.storage import StorageRoot
from jobs.annotate import annotate
from jobs.curve_annotator import CurveAnnotator
from jobs.score_shards import read_checkpoints, score_spec
from jobs.train_classifier import run_classifier_training


class PeakRss:
    """Peak of the summed RSS of this process and all its descendants (Ray workers included)."""

    def __init__(self, children: bool = True) -> None:
        self.peak, self._stop, self._children = 0, threading.Event(), children
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *(me.children(recursive=True) if self._children else [])]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def loop(data: str, clf: str, threads: int) -> dict[str, float]:
    """The same work without Ray: one process, shard after shard."""
    import torch

    torch.set_num_threads(threads)
    root = StorageRoot(data)
    settings = CurveSettings(classifier_dir=clf, epochs=[1], grid_levels=GRID, num_draws=NUM_DRAWS)
    ann = CurveAnnotator(score_spec(settings, []), read_checkpoints(settings), threads=threads)
    rows = 0
    t0 = time.perf_counter()
    with PeakRss(children=False) as mem:  # Ray's processes are this one's children too
        for shard in read_meta(root)["shards"]:
            t = pq.read_table(str(root.local_path / shard["key"]))
            t = t.append_column("path", [[shard["key"]] * t.num_rows])
            out = ann.annotate_table(t)
            buf = io.BytesIO()
            pq.write_table(out.drop_columns(["path", "error"]), buf)
            rows += t.num_rows
    wall = time.perf_counter() - t0
    return {"rows": rows, "rows_per_s": round(rows / wall, 1), "peak_rss_mb": mem.peak >> 20}


def pipeline(data: str, clf: str, out: str, actors: int) -> dict[str, float]:
    with PeakRss() as mem:
        cfg = annotate_config(data, clf, out, actors, 0.5)
        res = annotate(cfg, track=False)
    return {
        "rows": res["rows_annotated"],
        "rows_per_s": round(res["rows_per_s"], 1),
        "first_shard_s": round(res["first_shard_s"], 2),
        "warm_wait_s": round(res["warm_wait_s"], 2),
        "peak_rss_mb": mem.peak >> 20,
    }


def fresh_ray() -> None:
    """A new local Ray session: its workers have imported nothing yet (a cold pipeline run)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=os.cpu_count())  # Ray's own start is not annotation throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=100, help="corrupt episodes, small size")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the loop")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant")
    a = ap.parse_args()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray-bench-"))
    work = Path(tempfile.mkdtemp(prefix="ann-bench-"))
    try:
        env = maze.MazeEnv()
        clean, _ = maze.generate(env, 20, 0, seed=0, clean_method="builtin")
        sizes = {}
        for n in (a.small, a.small * 10):
            _, corrupt = maze.generate(env, 1, n, seed=n, clean_method="builtin")
            write_dataset(
                StorageRoot(str(work / f"q{n}")), corrupt, "corrupt", "maze", shard_episodes=50
            )
            sizes[n] = str(work / f"q{n}")
        write_dataset(StorageRoot(str(work / "clean")), clean, "clean", "maze")
        clf_cfg = ClassifierTrainConfig(
            clean=[str(work / "clean")],
            corrupt=[sizes[a.small]],
            out=str(work / "clf"),
            epochs=1,
            steps_per_epoch=50,
        )
        clf = run_classifier_training(clf_cfg, track=False)["dir"]
        results: list[dict] = []
        for n, path in sizes.items():
            fresh_ray()  # the first pipeline run of each size is cold, the later ones warm
            for i in range(a.repeat):  # interleaved: the other jobs' load changes by the minute
                lp = loop(path, clf, a.threads)
                pp = pipeline(path, clf, str(work / f"ann{n}-{i}"), a.actors)
                ratio = round(pp["rows_per_s"] / lp["rows_per_s"], 3)
                results.append(
                    {
                        "episodes": n,
                        "cold": i == 0,
                        "loop": lp,
                        "pipeline": pp,
                        "ratio_rows_per_s": ratio,
                        "load_avg_1m": round(os.getloadavg()[0], 2),
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # partial results
        print(
            json.dumps(
                {
                    "grid_levels": len(GRID),
                    "num_draws": 4,
                    "epochs": 1,
                    "loop_threads": a.threads,
                    "pipeline_actors": a.actors,
                    "results": results,
                    "goal_ratio": 0.9,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
