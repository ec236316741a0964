"""Generate a benchmark's clean and corrupt datasets (``ambient data generate``).

``ambient data generate maze --clean 50 --corrupt 5000 --out DIR`` writes DIR/clean and
DIR/corrupt (local directory or s3:// prefix), each with shards and meta.json.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ambient_core.envs.registry import get_task
from ambient_platform.datasets import write_dataset
from ambient_platform.storage import StorageRoot
from jobs.pixel_data import generate_lerobot, image_keys

log = logging.getLogger(__name__)


def generate(
    task: str, n_clean: int, n_corrupt: int, out: str, seed: int = 0, plot: bool = True
) -> dict[str, Any]:
    """Generate and write both datasets; returns timings, counts and digests."""
    t = get_task(task)
    if image_keys(t):  # a task with cameras: LeRobot v3 datasets with MP4 videos
        return generate_lerobot(task, n_clean, n_corrupt, out, seed)
    t0 = time.perf_counter()
    clean, corrupt = t.generate(n_clean, n_corrupt, seed)
    gen_s = time.perf_counter() - t0
    root = StorageRoot(out)
    extra = {"seed": seed, "generator": f"ambient_core.envs.{task}"}
    metas = {"clean": write_dataset(root.child("clean"), clean, "clean", task, extra=extra)}
    if corrupt:
        metas["corrupt"] = write_dataset(
            root.child("corrupt"), corrupt, "corrupt", task, extra=extra
        )
    if plot and root.local_path is not None:
        t.plot_dataset(clean, corrupt, root.local_path / "dataset.png")
    log.info("%s: %d clean + %d corrupt episodes -> %s", task, len(clean), len(corrupt), root.uri)
    return {
        "task": task,
        "out": root.uri,
        "generate_s": round(gen_s, 3),
        "total_s": round(time.perf_counter() - t0, 3),
        **{f"{k}_episodes": m["episodes"] for k, m in metas.items()},
        **{f"{k}_digest": m["digest"] for k, m in metas.items()},
    }
