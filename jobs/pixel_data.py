"""Image observations for jobs: LeRobot v3 datasets in training, the vision policy, generation.

A task with cameras (``Task.image_keys``, e.g. ``bin_sorting_pixels``) trains on LeRobot v3
datasets read in place: the low-dim columns through the usual shard reader (``read_meta`` turns a
LeRobot root into the platform's meta), the cameras (MP4 videos or encoded images inside the
data Parquet, per dataset and camera) through ``LeRobotDataset`` and the decode-ahead
``EpisodeFrameCache``. The classifier and annotation never need images (they work
on action chunks, optionally low-dim state), so only training and evaluation come here, and
``ambient data check`` (``check_dataset``), which decodes every frame to validate a dataset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ambient_core.data import ChunkSpec, Frames
from ambient_core.envs import bin_sorting_pixels as px
from ambient_core.envs.registry import Task, get_task
from ambient_core.errors import ConfigError, DataError
from ambient_core.vision import VisionPolicySpec
from ambient_core.vision_data import ImageChunkDataset
from ambient_platform.datasets import read_frames, read_meta
from ambient_platform.lerobot import INFO_PATH as LEROBOT_INFO
from ambient_platform.lerobot import LeRobotDataset, write_lerobot
from ambient_platform.storage import StorageRoot

log = logging.getLogger(__name__)

DEFAULT_FPS = 10


def image_keys(task: Task) -> tuple[str, ...]:
    """The cameras a task's policy sees (empty for low-dim tasks)."""
    return tuple(getattr(task, "image_keys", ()))


def image_chunk_dataset(
    task: Task,
    frames: Sequence[Frames],
    uris: Sequence[str],
    spec: ChunkSpec,
    cache_bytes: int,
) -> ImageChunkDataset:
    """Chunks over the loaded low-dim frames plus each camera, decoded from the datasets' MP4s
    or Parquet images.

    Every dataset must be LeRobot v3 with the task's cameras at one common image shape; how a
    camera is stored (video or images) may differ between datasets and cameras.
    """
    cams = image_keys(task)
    sources: list[LeRobotDataset] = []
    shapes: dict[tuple[int, int, int], str] = {}
    for f, uri in zip(frames, uris, strict=True):
        ds = LeRobotDataset(StorageRoot(uri), f.name)
        missing = [k for k in cams if k not in ds.camera_keys]
        if missing:
            raise DataError(
                f"dataset {f.name!r} ({uri}) has no camera {missing[0]!r}; task {task.name!r} "
                f"needs {list(cams)} and the dataset has {ds.camera_keys} (a LeRobot v3 dataset "
                "with videos or Parquet images is required)"
            )
        for k in cams:
            shapes.setdefault(ds.image_shape(k), f.name)
        sources.append(ds)
    if len(shapes) > 1:
        raise DataError(f"datasets disagree on the image shape (H, W, C): {shapes}")
    return ImageChunkDataset(
        frames,
        spec,
        task.obs_keys,
        cams,
        sources,
        cache_bytes=cache_bytes,
        image_shape=next(iter(shapes)),
    ).start()


def vision_spec(base: dict[str, Any], vision: Any, data: ImageChunkDataset) -> VisionPolicySpec:
    """A ``VisionPolicySpec`` from the low-dim spec fields and ``policy.vision`` settings."""
    if data.image_shape is None:
        raise ValueError("the image chunk dataset does not know its image shape")
    h, w, c = data.image_shape
    crop = vision.crop_shape if vision.crop_shape else [h * 7 // 8, w * 7 // 8]
    if crop[0] > h or crop[1] > w:
        raise ConfigError(f"policy.vision.crop_shape {crop} is larger than the images ({h}x{w})")
    return VisionPolicySpec(
        **base,
        image_keys=list(data.image_keys),
        image_shape=[int(c), int(h), int(w)],
        crop_shape=[int(v) for v in crop],
        num_keypoints=vision.num_keypoints,
        backbone_width=vision.backbone_width,
        shared_encoder=vision.shared_encoder,
    )


def generate_lerobot(
    task_name: str,
    n_clean: int,
    n_corrupt: int,
    out: str,
    seed: int = 0,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Generate a camera task's clean and corrupt demos as LeRobot v3 datasets (MP4 videos)
    under ``out``/clean and ``out``/corrupt (local or s3://). ``image_size`` overrides the
    camera resolution of ``bin_sorting_pixels`` (default 96x96)."""
    task = get_task(task_name)
    t0 = time.perf_counter()
    if image_size is not None:
        if task_name != "bin_sorting_pixels":
            raise ConfigError(f"image_size applies to bin_sorting_pixels only, not {task_name!r}")
        clean, corrupt = px.generate(n_clean, n_corrupt, seed, size=image_size)
    else:
        clean, corrupt = task.generate(n_clean, n_corrupt, seed)
    gen_s = time.perf_counter() - t0
    root = StorageRoot(out)
    result: dict[str, Any] = {"task": task_name, "out": root.uri, "format": "lerobot/v3.0"}
    for kind, episodes in (("clean", clean), ("corrupt", corrupt)):
        if not episodes:
            continue
        info = write_lerobot(
            root.child(kind),
            episodes,
            fps=DEFAULT_FPS,
            tasks=f"{task_name} ({kind} demonstrations)",
            robot_type=task_name,
        )
        result[f"{kind}_episodes"] = info["total_episodes"]
        result[f"{kind}_frames"] = info["total_frames"]
    log.info("%s: %d clean + %d corrupt episodes -> %s", task_name, len(clean), len(corrupt), out)
    result["generate_s"] = round(gen_s, 3)
    result["total_s"] = round(time.perf_counter() - t0, 3)
    return result


def check_dataset(path: str, decode: bool = True) -> dict[str, Any]:
    """Validate a dataset where it lives (our layout or LeRobot v3, local or s3://): every
    low-dim column, and for LeRobot v3 every frame of every camera (MP4 or Parquet images)
    unless ``decode`` is off. Returns a summary; a problem raises ``DataError`` naming the
    dataset, episode, camera and row."""
    root = StorageRoot(path)
    meta = read_meta(root)
    summary: dict[str, Any] = {
        "dataset": root.uri,
        "format": meta.get("format", "ambient"),
        "episodes": meta.get("episodes"),
        "frames": meta.get("frames"),
        "features": {k: v.get("shape") for k, v in meta.get("features", {}).items()},
        "digest": meta.get("digest"),
    }
    if root.exists(LEROBOT_INFO):
        ds = LeRobotDataset(root)
        report = ds.validate(decode=decode)
        summary["cameras"] = report["cameras"]
        summary["decoded_frames"] = report["decoded_frames"]
    else:
        frames, _ = read_frames(root, list(meta.get("features", {})))
        summary["frames"] = frames.n_frames
    return summary
