"""Re-annotation cost: a first pass over N shards, a pass after k new shards land, and a pass
with nothing new. Prints JSON.

The point of `ambient watch` is that new data costs in proportion to the new data: the k-shard
pass should take about k/N of the first pass's annotation time plus a fixed cost (lease, listing,
diff, scoring tasks start), and an up-to-date pass only the listing and diff.
Usage: .venv/bin/python benchmarks/watch_incremental.py [--shards 40] [--new 4] [--s3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from ambient_core.data import episodes_to_table
from ambient_core.envs import maze
from ambient_platform.config.annotation import ClassifierTrainConfig
from ambient_platform.config.watch import WatchConfig
from ambient_platform.datasets import write_dataset
from ambient_platform.ray_runtime import ensure_ray
from ambient_platform.settings import configure_environment
from ambient_platform.storage import StorageRoot
from jobs.reannotate import run_pass
from jobs.train_classifier import run_classifier_training

GRID = list(range(0, 100, 10)) + [99]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shards", type=int, default=40)
    p.add_argument("--new", type=int, default=4)
    p.add_argument("--episodes-per-shard", type=int, default=5)
    p.add_argument("--actors", type=int, default=2)
    a = p.parse_args()
    configure_environment()
    os.environ.setdefault("AMBIENT_HOME", str(Path(".work/bench-home").resolve()))
    Path(".work").mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="watch-bench-", dir=".work")).resolve()
    n_eps = (a.shards + a.new) * a.episodes_per_shard
    clean, corrupt = maze.generate(maze.MazeEnv(), 20, n_eps, seed=0, clean_method="builtin")
    write_dataset(StorageRoot(str(d / "clean")), clean, "clean", "maze")
    first = a.shards * a.episodes_per_shard
    src = StorageRoot(str(d / "rrt"))
    write_dataset(src, corrupt[:first], "rrt", "maze", shard_episodes=a.episodes_per_shard)
    clf_cfg = ClassifierTrainConfig(
        clean=[str(d / "clean")],
        corrupt=[str(d / "rrt")],
        out=str(d / "clf"),
        epochs=1,
        steps_per_epoch=20,
    )
    clf = run_classifier_training(clf_cfg, track=False)["dir"]
    ensure_ray(num_cpus=2)
    cfg = WatchConfig(
        name="bench",
        sources=[src.uri],
        out=str(d / "ann"),
        classifier=clf,
        epochs=[1],
        grid_levels=GRID,
        num_draws=4,
        resources={"actors": a.actors, "cpus_per_actor": 0.5},
    )
    out = {"shards": a.shards, "new": a.new, "episodes_per_shard": a.episodes_per_shard}
    for label in ("first", "incremental", "up_to_date"):
        if label == "incremental":
            for i in range(a.new):
                lo = first + i * a.episodes_per_shard
                table = episodes_to_table(
                    corrupt[lo : lo + a.episodes_per_shard], "rrt", first_episode_index=lo
                )
                buf = io.BytesIO()
                pq.write_table(table, buf)
                src.write_bytes(f"data/new-{i:03d}.parquet", buf.getvalue())
        t0 = time.perf_counter()
        res = run_pass(cfg, track=False)
        out[label] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "status": res["status"],
            "shards_annotated": res["shards_annotated"],
            "rows_annotated": res["rows_annotated"],
        }
    out["incremental_over_first"] = round(out["incremental"]["wall_s"] / out["first"]["wall_s"], 3)
    out["new_over_total_shards"] = round(a.new / (a.shards + a.new), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
