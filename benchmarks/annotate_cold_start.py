"""Where the cold first shard of an annotation goes. Prints JSON.

Each measurement runs in a fresh Python process with a fresh local Ray node (a "cold" run: the
first annotation of a Ray session), interleaved over ``--repeat`` rounds:

- ``phases``: one Ray task submitted right after ``ray.init`` times, inside the worker, how long
  it waited for a worker process, ``import torch``, our scoring modules, and loading the
  classifier (``CurveAnnotator``: object-store fetch + ``torch.load``), then scores one shard;
- ``annotate``: ``jobs.annotate.annotate`` as the CLI runs it (``--track``: with MLflow on
  SQLite), with the summary's ``first_shard_s`` (worker start, imports, classifier load, one
  shard: ``--shard-episodes`` small makes it mostly start-up), ``ready_s`` / ``warm_wait_s`` and
  its wall time; ``--delay`` seconds between ``ray.init`` and the run (a driver that did other
  work first, e.g. a watch loop or the benchmark's loop run) lets prestarted workers come up;
- ``python -c "import torch"`` (and ``ray``, ``ray.data``): the floor of any fresh process.

``--trees`` compares checkouts (e.g. ``git archive HEAD`` unpacked somewhere), interleaved.
Usage: .venv/bin/python benchmarks/annotate_cold_start.py [--repeat 3] [--delay 0] [--track]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from annotate_setup import GRID, NUM_DRAWS, annotate_config

HERE = Path(__file__).resolve()


def _setup(work: Path, episodes: int, shard_episodes: int) -> tuple[str, str]:
    """A corrupt dataset of ``episodes`` (``shard_episodes`` per shard) and a 1-epoch
    classifier."""
    from ambient_core.envs import maze
    from ambient_platform.config.annotation import ClassifierTrainConfig
    from ambient_platform.datasets import write_dataset
    from ambient_platform.storage import StorageRoot
    from jobs.train_classifier import run_classifier_training

    env = maze.MazeEnv()
    clean, _ = maze.generate(env, 20, 0, seed=0, clean_method="builtin")
    _, corrupt = maze.generate(env, 1, episodes, seed=episodes, clean_method="builtin")
    q = StorageRoot(str(work / "q"))
    write_dataset(q, corrupt, "corrupt", "maze", shard_episodes=shard_episodes)
    write_dataset(StorageRoot(str(work / "clean")), clean, "clean", "maze")
    cfg = ClassifierTrainConfig(
        clean=[str(work / "clean")],
        corrupt=[str(work / "q")],
        out=str(work / "clf"),
        epochs=1,
        steps_per_epoch=50,
    )
    return str(work / "q"), str(run_classifier_training(cfg, track=False)["dir"])


def _probe(checkpoints: Any, spec: Any, path: str, t_submit: float) -> dict[str, float]:
    """Runs in the worker: the phases of a cold scoring task, in seconds."""
    t0 = time.time()
    import torch

    t1 = time.time()
    import ambient_core.classifier  # noqa: F401
    import jobs.curve_annotator as ca

    t2 = time.time()
    ann = ca.CurveAnnotator(spec, checkpoints, threads=1)
    t3 = time.time()
    ann.score_file(path)
    t4 = time.time()
    return {
        "wait_for_worker_s": t0 - t_submit,
        "import_torch_s": t1 - t0,
        "import_scoring_s": t2 - t1,
        "load_classifier_s": t3 - t2,
        "first_shard_s": t4 - t3,
        "torch_threads": float(torch.get_num_threads()),
    }


def child_phases(data: str, clf: str, delay: float) -> dict[str, Any]:
    from ambient_platform.manifest import CurveSettings
    from ambient_platform.ray_runtime import ensure_ray
    from jobs.score_shards import read_checkpoints, score_spec

    t = time.time()
    ray = ensure_ray(num_cpus=2)
    init_s = time.time() - t
    time.sleep(delay)
    settings = CurveSettings(classifier_dir=clf, epochs=[1], grid_levels=GRID, num_draws=NUM_DRAWS)
    ckpt = ray.put(read_checkpoints(settings))
    shard = str(Path(data) / "data" / "shard-00000.parquet")
    t = time.time()
    res = ray.get(
        ray.remote(num_cpus=0.5)(_probe).remote(ckpt, score_spec(settings, []), shard, t)
    )
    return {"ray_init_s": init_s, **res, "task_total_s": time.time() - t}


def child_annotate(data: str, clf: str, out: str, track: str, delay: float) -> dict[str, Any]:
    from ambient_platform.ray_runtime import ensure_ray
    from jobs.annotate import annotate

    t = time.time()
    ensure_ray(num_cpus=2)
    init_s = time.time() - t
    time.sleep(delay)
    cfg = annotate_config(data, clf, out, 2, 0.5)
    t = time.time()
    res = annotate(cfg, track=bool(track), tracking_uri=track or None)
    return {
        "ray_init_s": init_s,
        "first_shard_s": res["first_shard_s"],
        "ready_s": res.get("ready_s", -1.0),
        "warm_wait_s": res.get("warm_wait_s", -1.0),
        "annotate_wall_s": time.time() - t,
        "rows": res["rows_annotated"],
    }


def _run_child(args: list[str], env: dict[str, str], tree: str) -> dict[str, Any]:
    """One measurement in a fresh process importing the code of ``tree`` (a checkout)."""
    t = time.time()
    env = {**env, "PYTHONPATH": tree}  # before the editable install's finder
    p = subprocess.run(
        [sys.executable, str(Path(tree) / "benchmarks" / HERE.name), "--child", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-3:], "process_s": time.time() - t}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_s": time.time() - t}


def _torch_floor(env: dict[str, str]) -> dict[str, float]:
    out = {}
    codes = {"import_torch_s": "import torch", "import_ray_s": "import ray"}
    codes["import_ray_data_s"] = "import ray.data"
    for name, code in codes.items():
        t = time.time()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        out[name] = time.time() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--shard-episodes", type=int, default=50)
    ap.add_argument("--track", action="store_true", help="annotate with MLflow (SQLite)")
    ap.add_argument("--modes", default="floor,phases,annotate")
    ap.add_argument(
        "--trees",
        default=str(HERE.parents[1]),
        help="comma-separated checkouts to compare, interleaved (e.g. a `git archive` of HEAD)",
    )
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, *rest = a.child
        if mode == "phases":
            got = child_phases(rest[0], rest[1], float(rest[2]))
        else:
            got = child_annotate(rest[0], rest[1], rest[2], rest[3], float(rest[4]))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in got.items()}))
        return
    work = Path(tempfile.mkdtemp(prefix="ann-cold-"))
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-cold-")}
    try:
        data, clf = _setup(work, a.episodes, a.shard_episodes)
        modes = a.modes.split(",")
        results: list[dict[str, Any]] = []
        runs = [("floor", "")] if "floor" in modes else []
        runs += [(m, t) for m in modes if m != "floor" for t in a.trees.split(",")]
        for i in range(a.repeat):  # interleaved: the machine's load moves by the minute
            for j, (mode, tree) in enumerate(runs):
                if mode == "floor":
                    res: dict[str, Any] = _torch_floor(env)
                elif mode == "phases":
                    res = _run_child(["phases", data, clf, str(a.delay)], env, tree)
                else:
                    out = str(work / f"ann-{i}-{j}")
                    uri = f"sqlite:///{work}/mlflow-{j}.db" if a.track else ""
                    args = ["annotate", data, clf, out, uri, str(a.delay)]
                    res = _run_child(args, env, tree)
                res = {"mode": mode, "tree": tree, "round": i, **res}
                res["load_avg_1m"] = os.getloadavg()[0]
                results.append(res)
                print(json.dumps(res), file=sys.stderr, flush=True)
        print(json.dumps({"delay_s": a.delay, "episodes": a.episodes, "results": results}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
