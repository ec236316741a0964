"""Cameras in imported datasets: kept, written as a LeRobot v3 dataset (MP4 per camera).

Why LeRobot v3: our own layout (Parquet shards + meta.json) holds low-dim columns only, while a
LeRobot v3 dataset is read in place by training (``jobs.pixel_data``), the classifier and
annotation (its data files are ordinary shards). So an importer that finds cameras writes
LeRobot v3 through ``ambient_platform.lerobot.write_lerobot`` instead of dropping them.

Frames are loaded one episode at a time (``CameraEpisode``), from a zarr array slice or by
decoding a LeRobot v2.x per-episode MP4 / Parquet image column, so importing a large camera
dataset never holds more than one episode's frames.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_core.data import DataError
from ambient_platform.datasets import META_FILE
from ambient_platform.lerobot import INFO_PATH, ambient_meta, write_lerobot
from ambient_platform.lerobot.images import decode_image, image_blobs
from ambient_platform.lerobot.layout import IMPORT_PATH
from ambient_platform.storage import StorageRoot

#: OUR name of a camera imported without an explicit --map: LeRobot's convention.
CAMERA_PREFIX = "observation.images."
_V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

Loader = Callable[[], np.ndarray]


def is_camera(shape: Sequence[int], dtype: Any) -> bool:
    """(N, H, W, 3) uint8: the layout diffusion_policy and LeRobot keep camera frames in."""
    return len(shape) == 4 and np.dtype(dtype) == np.uint8 and int(shape[-1]) == 3


class CameraEpisode(Mapping[str, np.ndarray]):
    """One episode for ``write_lerobot``: low-dim arrays in memory, camera frames loaded on
    access (and dropped after), so only the episode being written holds pixels."""

    def __init__(self, low: Mapping[str, np.ndarray], cameras: Mapping[str, Loader]) -> None:
        self.low, self.cameras = dict(low), dict(cameras)

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.low:
            return self.low[key]
        return self.cameras[key]()

    def __iter__(self) -> Iterator[str]:
        return iter([*self.low, *self.cameras])

    def __len__(self) -> int:
        return len(self.low) + len(self.cameras)


def check_camera_names(cameras: Mapping[str, str], what: str, where: str) -> None:
    """Cameras keep LeRobot's ``observation.image*`` names: a camera under a low-dim name such
    as ``observation.state`` is a mapping mistake, not a wish."""
    for ours, theirs in cameras.items():
        if not ours.startswith("observation.image"):
            raise DataError(
                f"{where}: {what} {theirs!r} (-> {ours!r}) is a camera (video or image feature); "
                f"cameras are imported under observation.image* names, e.g. "
                f"--map {CAMERA_PREFIX}{theirs.rsplit('.', 1)[-1]}={theirs}"
            )


def whole_fps(fps: float, where: str) -> int:
    """LeRobot stores an integer frame rate; a camera dataset needs one."""
    if not math.isfinite(fps) or fps <= 0 or fps != round(fps):
        raise DataError(
            f"{where}: fps {fps} must be a positive whole number for a dataset with cameras "
            "(LeRobot v3 stores an integer fps); pass --fps"
        )
    return int(round(fps))


def write_with_cameras(
    out: str | os.PathLike[str],
    episodes: Sequence[Mapping[str, np.ndarray]],
    task: str,
    fps: int,
    overwrite: bool,
    lineage: dict[str, Any],
    parquet_images: Sequence[str],
    notes: list[str],
) -> tuple[StorageRoot, dict[str, Any]]:
    """Write a LeRobot v3 dataset (cameras as MP4, ``parquet_images`` as Parquet images) with
    the import's lineage in ``meta/ambient_import.json``; returns the root and its meta.

    H.264 in yuv420p needs even frame sizes, so a camera with an odd height or width is kept
    as lossless PNG images in the Parquet instead (said in ``notes``).
    """
    still = list(parquet_images)
    odd = [
        k
        for k, v in episodes[0].items()
        if k not in still and is_camera(v.shape, v.dtype) and (v.shape[1] % 2 or v.shape[2] % 2)
    ]
    if odd:
        notes.append(f"cameras {odd} have odd frame sizes (H.264 needs even): kept as PNG images")
        still += odd
    root = StorageRoot(out)
    for marker in (INFO_PATH, META_FILE):
        if not overwrite and root.exists(marker):
            raise DataError(
                f"{root.uri_for(marker)} already exists; pass overwrite=True (--overwrite) to "
                "replace that dataset"
            )
    write_lerobot(
        root, episodes, fps=fps, tasks=task, robot_type=lineage.get("robot_type"),
        parquet_images=still,
    )  # fmt: skip
    if root.exists(META_FILE):  # replaced a dataset in our layout: its meta.json would win
        root.delete(META_FILE)
    root.write_json(IMPORT_PATH, lineage)  # after a complete write only
    return root, ambient_meta(root)


def import_result(
    fmt: str,
    root: StorageRoot,
    meta: dict[str, Any],
    mapping: Mapping[str, str],
    notes: list[str],
    skipped: Mapping[str, str] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The importer's JSON: what was written where, each feature (and camera) with its source."""
    out: dict[str, Any] = {
        "format": fmt,
        **more,
        "out": root.uri,
        "source": meta["name"],
        "episodes": meta["episodes"],
        "frames": meta["frames"],
        "fps": meta["fps"],
        "features": {
            k: {"from": mapping[k], "shape": v["shape"]} for k, v in meta["features"].items()
        },
    }
    if "cameras" in meta:  # a LeRobot v3 output
        out["out_format"] = meta["format"]
        out["cameras"] = {
            k: {"from": mapping[k], "shape": v["shape"], "storage": v["storage"]}
            for k, v in meta["cameras"].items()
        }
    return out | {"skipped": dict(skipped or {}), "notes": notes, "digest": meta["digest"]}


# ------------------------------------------------------------------------- LeRobot v2.x


def decode_video(path: Path, length: int, fps: float, where: str) -> np.ndarray:
    """All ``length`` frames of a per-episode MP4 (LeRobot v2.x), (L, H, W, 3) uint8; frame j
    is the one at j / fps seconds (the stream's own rate when info.json has no fps)."""
    if not path.is_file():
        raise DataError(f"{where}: video file {path} is missing")
    frames: list[np.ndarray | None] = [None] * length
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = fps or float(stream.average_rate or stream.guessed_rate or 0)
            for frame in container.decode(stream):
                j = round(float(frame.time or 0.0) * fps)
                if 0 <= j < length:
                    frames[j] = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"{where}: cannot read the video {path}: {exc}") from exc
    missing = [j for j, f in enumerate(frames) if f is None]
    if missing:
        raise DataError(
            f"{where} ({path}): decoded {length - len(missing)} frames, the data has {length} "
            f"rows (first missing frame {missing[0]})"
        )
    return np.stack([f for f in frames if f is not None])


def decode_image_column(file: Path, key: str, episode: int, length: int, where: str) -> np.ndarray:
    """An image feature of one episode from its LeRobot v2.x Parquet file, in frame order."""
    try:
        table = pq.read_table(file, columns=["episode_index", "frame_index", key])
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise DataError(f"{where}: cannot read column {key!r} of {file}: {exc}") from exc
    table = table.filter(pc.equal(table.column("episode_index"), episode))
    if table.num_rows != length:
        raise DataError(f"{where}: {file} has {table.num_rows} image rows, the episode {length}")
    order = np.argsort(table.column("frame_index").to_numpy(), kind="stable")
    blobs = image_blobs(table.column(key).combine_chunks())
    if blobs is None:
        raise DataError(f"{where}: column {key!r} of {file} is not an image struct<bytes, path>")
    out = []
    for j, row in enumerate(order.tolist()):
        blob = blobs[row].as_py()
        if not blob:
            raise DataError(f"{where}: frame {j} of {file} has no image bytes")
        try:
            out.append(decode_image(blob))
        except ValueError as exc:
            raise DataError(f"{where}: frame {j} of {file}: {exc}") from exc
    if len({img.shape for img in out}) > 1:
        raise DataError(f"{where}: images of different sizes in {file}")
    return np.stack(out)


def v2_camera_loaders(
    path: Path,
    info: Mapping[str, Any],
    cameras: Mapping[str, str],
    source_episode: int,
    length: int,
    episode_file: Path,
) -> dict[str, Loader]:
    """OUR camera -> loader of THEIR video/image feature for one LeRobot v2.x episode."""
    fps = float(info.get("fps") or 0)
    chunk = source_episode // int(info.get("chunks_size") or 1000)
    template = str(info.get("video_path") or _V2_VIDEO_PATH)
    loaders: dict[str, Loader] = {}
    for ours, theirs in cameras.items():
        where = f"LeRobot dataset {path}: episode {source_episode} camera {theirs!r}"
        if info["features"][theirs]["dtype"] == "video":
            try:
                rel = template.format(
                    episode_chunk=chunk, video_key=theirs, episode_index=source_episode
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise DataError(f"{where}: info.json video_path {template!r}: {exc!r}") from exc
            if rel.startswith("/") or ".." in rel.split("/"):
                raise DataError(f"{where}: info.json video_path {template!r} leaves the dataset")
            video = path / rel
            loaders[ours] = functools.partial(decode_video, video, length, fps, where)
        else:
            loaders[ours] = functools.partial(
                decode_image_column, episode_file, theirs, source_episode, length, where
            )
    return loaders
