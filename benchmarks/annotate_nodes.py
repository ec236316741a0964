"""Annotation across nodes: rows/s of ``jobs.annotate.annotate`` on a local Ray cluster of ONE
node with 1 CPU vs TWO nodes with 1 CPU each. Prints JSON.

Same data and settings as ``benchmarks/annotate_throughput.py`` at its large size (maze, 1000
corrupt episodes, about 35k rows in 20 shards of 50 episodes, grid of 11 levels, 4 draws, one
classifier epoch). Each scoring task asks for 1 CPU (one torch thread) and the run keeps as
many tasks as the cluster has nodes, so a 1-CPU node holds exactly one task: two nodes doing
twice the work of one is "linear in actors across nodes" (issue 14; goal ratio ~2 on an idle
2-core machine, where each node gets a core). Every cluster is ``ambient_platform.local_cluster``
(``ray start`` processes on 127.0.0.1), joined by this process through its GCS address.

Per variant: ``cold`` is the first run on a fresh cluster (worker process start, torch import,
classifier load), ``warm`` the runs after it on the same cluster (workers keep the classifier),
``cluster_start_s`` the time until every node was ALIVE. From Ray's state API, per run:
``tasks_per_node`` (where the scoring tasks ran) and ``mean_tasks_running`` (the sum of their
run times over the wall time), which says whether two nodes keep two tasks busy even on a
loaded machine, where rows/s cannot double because the two nodes share two busy cores.
``ratio_warm`` compares the mean warm rows/s. ``--rounds`` repeats the pair (1 node, then 2
nodes) that many times on fresh clusters, interleaved, since the load of a shared machine moves
by the minute; the 1-minute load average is printed with every run. Usage:
  .venv/bin/python benchmarks/annotate_nodes.py [--episodes 1000] [--warm 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from annotate_setup import GRID, annotate_config

ROOT = Path(__file__).resolve().parents[1]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _data(work: Path, episodes: int) -> tuple[str, str]:
    """The corrupt dataset (shards of 50 episodes) and a one-epoch classifier directory."""
    from ambient_core.envs import maze
    from ambient_platform.config.annotation import ClassifierTrainConfig
    from ambient_platform.datasets import write_dataset
    from ambient_platform.storage import StorageRoot
    from jobs.train_classifier import run_classifier_training

    env = maze.MazeEnv()
    clean, _ = maze.generate(env, 20, 0, seed=0, clean_method="builtin")
    _, corrupt = maze.generate(env, 1, episodes, seed=episodes, clean_method="builtin")
    data = str(work / "corrupt")
    write_dataset(StorageRoot(data), corrupt, "corrupt", "maze", shard_episodes=50)
    write_dataset(StorageRoot(str(work / "clean")), clean, "clean", "maze")
    cfg = ClassifierTrainConfig(
        clean=[str(work / "clean")],
        corrupt=[data],
        out=str(work / "clf"),
        epochs=1,
        steps_per_epoch=50,
    )
    return data, str(run_classifier_training(cfg, track=False)["dir"])


def _annotate(data: str, clf: str, out: str, actors: int, address: str) -> dict[str, Any]:
    from jobs.annotate import annotate

    cfg = annotate_config(data, clf, out, actors, 1.0)
    load = _load()
    res = annotate(cfg, ray_address=address, track=False)
    return {
        "rows": res["rows_annotated"],
        "rows_per_s": round(res["rows_per_s"], 1),
        "wall_s": round(res["wall_s"], 2),
        "first_shard_s": round(res["first_shard_s"], 2),
        "load_avg_1m": [load, _load()],
    }


def _scoring_tasks(cluster: Any) -> dict[str, tuple[str, float]]:
    """Finished scoring tasks so far: task id -> (node name, seconds it ran), from Ray's state
    API (best effort: task events reach it within about a second)."""
    time.sleep(2.0)
    names = {n["node_id"]: n["node_name"] for n in cluster.alive_nodes()}
    query = (
        "limit=10000&detail=true&filter_keys=state&filter_predicates=%3D&filter_values=FINISHED"
    )
    try:
        url = f"{cluster.dashboard_url}/api/v0/tasks?{query}"
        with urllib.request.urlopen(url, timeout=60) as r:
            rows = json.loads(r.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for t in rows:
        if "score_shard" in str(t.get("name")) and t.get("start_time_ms") and t.get("end_time_ms"):
            node = names.get(t.get("node_id"), str(t.get("node_id"))[:8])
            out[str(t["task_id"])] = (node, (t["end_time_ms"] - t["start_time_ms"]) / 1000)
    return out


def _task_summary(
    before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]], wall_s: float
) -> dict[str, Any]:
    """Where this run's scoring tasks ran, and how many ran at once on average (the sum of
    their run times over the wall time: 1 node ~1, 2 nodes ~2 when scoring scales)."""
    new = [v for k, v in after.items() if k not in before]
    busy = sum(s for _, s in new)
    return {
        "tasks_per_node": dict(Counter(node for node, _ in new)),
        "task_busy_s": round(busy, 1),
        "mean_tasks_running": round(busy / wall_s, 2) if wall_s > 0 else None,
    }


def _variant(nodes: int, data: str, clf: str, work: Path, warm: int) -> dict[str, Any]:
    """One fresh cluster of ``nodes`` 1-CPU nodes: a cold run, then ``warm`` runs."""
    import ray

    from ambient_platform.local_cluster import local_cluster

    t0 = time.monotonic()
    with local_cluster(workers=nodes - 1, head_cpus=1, worker_cpus=1) as cluster:
        start_s = time.monotonic() - t0
        runs = []
        try:
            for i in range(warm + 1):
                out = str(work / f"ann-{nodes}n-{time.monotonic_ns()}-{i}")
                before = _scoring_tasks(cluster)
                runs.append(_annotate(data, clf, out, nodes, cluster.address))
                runs[-1].update(_task_summary(before, _scoring_tasks(cluster), runs[-1]["wall_s"]))
                print(json.dumps({"nodes": nodes, "run": i, **runs[-1]}), file=sys.stderr)
        finally:
            ray.shutdown()  # the next variant joins another cluster
    warm_rates = [r["rows_per_s"] for r in runs[1:]]
    return {
        "nodes": nodes,
        "cpus_per_node": 1,
        "tasks": nodes,
        "cluster_start_s": round(start_s, 1),
        "cold": runs[0],
        "warm": runs[1:],
        "warm_rows_per_s": round(statistics.mean(warm_rates), 1) if warm_rates else None,
        "warm_mean_tasks_running": _mean([r.get("mean_tasks_running") for r in runs[1:]]),
    }


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.mean(vals), 2) if vals else None


def _ratio(two: float | None, one: float | None) -> float | None:
    return round(two / one, 3) if two and one else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1000, help="corrupt episodes (~35 rows each)")
    ap.add_argument("--warm", type=int, default=2, help="warm runs per cluster after the cold one")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved (1 node, 2 nodes) pairs")
    a = ap.parse_args()
    from ambient_platform.settings import configure_environment

    configure_environment()
    work = Path(tempfile.mkdtemp(prefix="ann-nodes-"))
    try:
        data, clf = _data(work, a.episodes)
        variants = [
            _variant(nodes, data, clf, work, a.warm) for _ in range(a.rounds) for nodes in (1, 2)
        ]
        one = [v for v in variants if v["nodes"] == 1]
        two = [v for v in variants if v["nodes"] == 2]

        def mean(vs: list[dict[str, Any]], key: str) -> float | None:
            vals = [v[key] for v in vs if v[key]]
            return statistics.mean(vals) if vals else None

        def cold(vs: list[dict[str, Any]]) -> float:
            return statistics.mean(v["cold"]["rows_per_s"] for v in vs)

        out = {
            "rows": variants[0]["cold"]["rows"],
            "grid_levels": len(GRID),
            "num_draws": 4,
            "cpu_count": os.cpu_count(),
            "variants": variants,
            "ratio_warm": _ratio(mean(two, "warm_rows_per_s"), mean(one, "warm_rows_per_s")),
            "ratio_cold": _ratio(cold(two), cold(one)),
            "mean_tasks_running_warm": {
                "1_node": mean(one, "warm_mean_tasks_running"),
                "2_nodes": mean(two, "warm_mean_tasks_running"),
            },
            "goal_ratio": 2.0,
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
