"""Write a LeRobot v3 dataset: Parquet for low-dim columns, one MP4 per camera and file.

Videos are encoded in-process with PyAV (libx264, no B-frames, a key frame at every episode
start so a reader reaches any episode with one seek). A camera named in ``parquet_images`` is
written as LeRobot does with videos off instead: one PNG (or JPEG) per frame in a
``{bytes, path}`` struct column of the data files (``dtype: "image"``). ``meta/info.json`` is
written last: a reader never sees a half-written dataset as complete.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_core.errors import DataError
from ambient_platform.lerobot.images import IMAGE_FORMATS, STRUCT_TYPE, encode_images
from ambient_platform.lerobot.layout import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
)
from ambient_platform.storage import StorageRoot


@dataclass(frozen=True)
class VideoOptions:
    """Encoder settings; ``gop`` bounds how many frames a seek inside an episode decodes.
    ``image_format`` ("PNG" or "JPEG") encodes the cameras written as Parquet images."""

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 16
    preset: str = "fast"
    image_format: str = "PNG"


#: Rows per Parquet row group when a data file holds images: a reader of one episode's images
#: reads only the row groups that hold it (LeRobot / HF datasets use small groups too).
IMAGE_ROW_GROUP = 128


# ------------------------------------------------------------------------------------ write


def _is_video(arr: np.ndarray) -> bool:
    return arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[-1] == 3


def _features(
    first: Mapping[str, np.ndarray], video: VideoOptions, fps: int, images: Sequence[str]
) -> dict[str, Any]:
    feats: dict[str, Any] = {}
    for key, arr in first.items():
        if key in images:
            h, w = int(arr.shape[1]), int(arr.shape[2])
            feats[key] = {
                "dtype": "image",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
            }
        elif _is_video(arr):
            h, w = int(arr.shape[1]), int(arr.shape[2])
            feats[key] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264" if video.codec == "libx264" else video.codec,
                    "video.pix_fmt": video.pix_fmt,
                    "video.is_depth_map": False,
                    "video.fps": fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        else:
            dim = int(np.asarray(arr).reshape(len(arr), -1).shape[1])
            feats[key] = {"dtype": "float32", "shape": [dim], "names": None}
    return {**feats, **DEFAULT_FEATURES}


def _check_episodes(episodes: Sequence[Mapping[str, np.ndarray]], label: str) -> None:
    """Same keys, equal non-zero lengths, cameras (L, H, W, 3) uint8 at one size per camera.
    Each episode is read once (cameras of lazily loaded episodes are decoded here)."""
    if not episodes:
        raise DataError(f"dataset {label!r}: no episodes to write")
    keys = list(episodes[0])
    sizes: dict[str, tuple[int, ...]] = {}
    for i, ep in enumerate(episodes):
        cols = dict(ep.items())
        if list(cols) != keys:
            raise DataError(
                f"dataset {label!r}: episode {i} has keys {list(cols)}, expected {keys}"
            )
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
            raise DataError(
                f"dataset {label!r}: episode {i} has ragged or empty columns {lengths}"
            )
        for k, v in cols.items():
            if v.ndim == 4 and not _is_video(v):
                raise DataError(
                    f"dataset {label!r}: episode {i} camera {k!r} must be (L, H, W, 3) uint8, "
                    f"got {v.shape} {v.dtype}"
                )
            if v.ndim == 4 and sizes.setdefault(k, v.shape[1:]) != v.shape[1:]:
                raise DataError(
                    f"dataset {label!r}: episode {i} camera {k!r} has frames of shape "
                    f"{v.shape[1:]}, episode 0 has {sizes[k]}"
                )


def _encode_video(
    out: IO[bytes], episodes: Sequence[np.ndarray], fps: int, opts: VideoOptions
) -> list[tuple[float, float]]:
    """Encode episodes back to back into one MP4; returns (from_ts, to_ts) per episode."""
    container = av.open(out, mode="w", format="mp4")
    h, w = episodes[0].shape[1:3]
    stream: Any = container.add_stream(
        opts.codec,
        rate=fps,
        options={"crf": str(opts.crf), "g": str(opts.gop), "bf": "0", "preset": opts.preset},
    )
    stream.width, stream.height, stream.pix_fmt = w, h, opts.pix_fmt
    stream.time_base = Fraction(1, fps)
    spans, pts = [], 0
    for frames in episodes:
        spans.append((pts / fps, (pts + len(frames)) / fps))
        for j, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = pts
            if j == 0:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
            pts += 1
    container.mux(stream.encode(None))
    container.close()
    return spans


def _stats(values: np.ndarray) -> dict[str, Any]:
    flat = values.reshape(len(values), -1).astype(np.float64)
    return {
        "min": flat.min(0).tolist(),
        "max": flat.max(0).tolist(),
        "mean": flat.mean(0).tolist(),
        "std": flat.std(0).tolist(),
        "count": [len(flat)],
    }


def _image_stats(episodes: Sequence[Mapping[str, np.ndarray]], key: str) -> dict[str, Any]:
    """Per-channel stats in [0, 1] of every 4th frame, shaped (3, 1, 1) as LeRobot stores them;
    accumulated episode by episode, so only one episode's frames are in memory at a time."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    total, total_sq, n_px, n_frames = np.zeros(3), np.zeros(3), 0, 0
    for ep in episodes:
        sample = ep[key][::4]
        px = sample.reshape(-1, 3).astype(np.float64) / 255.0
        lo, hi = np.minimum(lo, px.min(0)), np.maximum(hi, px.max(0))
        total += px.sum(0)
        total_sq += (px**2).sum(0)
        n_px += len(px)
        n_frames += len(sample)
    mean = total / n_px
    std = np.sqrt(np.maximum(total_sq / n_px - mean**2, 0.0))
    return {
        k: [[[float(v)]] for v in arr]
        for k, arr in (("min", lo), ("max", hi), ("mean", mean), ("std", std))
    } | {"count": [n_frames]}


def _data_table(
    group: Sequence[Mapping[str, np.ndarray]],
    first_episode: int,
    first_index: int,
    task_index: Sequence[int],
    fps: int,
    low_keys: Sequence[str],
    images: Mapping[str, str],
) -> pa.Table:
    lengths = [len(next(iter(ep.values()))) for ep in group]
    cols: dict[str, pa.Array] = {}
    for key in low_keys:
        flat = np.concatenate(
            [
                np.asarray(ep[key], np.float32).reshape(n, -1)
                for ep, n in zip(group, lengths, strict=True)
            ]
        )
        cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    for key, fmt in images.items():
        parts = [encode_images(ep[key], fmt) for ep in group]
        cols[key] = pa.chunked_array(parts, type=STRUCT_TYPE)
    frame_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    cols["timestamp"] = pa.array((frame_index / fps).astype(np.float32))
    cols["frame_index"] = pa.array(frame_index)
    cols["episode_index"] = pa.array(
        np.repeat(np.arange(first_episode, first_episode + len(group)), lengths).astype(np.int64)
    )
    cols["index"] = pa.array(np.arange(first_index, first_index + sum(lengths), dtype=np.int64))
    cols["task_index"] = pa.array(np.repeat(np.asarray(task_index, np.int64), lengths))
    return pa.table(cols)


def _parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def _image_keys(
    first: Mapping[str, np.ndarray], parquet_images: bool | Sequence[str], label: str
) -> list[str]:
    """The cameras to write as Parquet images (``True``: every camera)."""
    cameras = [k for k, v in first.items() if _is_video(v)]
    if parquet_images is True:
        return cameras
    if parquet_images is False:
        return []
    unknown = [k for k in parquet_images if k not in cameras]
    if unknown:
        raise DataError(
            f"dataset {label!r}: parquet_images {unknown} are not cameras; cameras: {cameras}"
        )
    return list(parquet_images)


def write_lerobot(
    root: StorageRoot,
    episodes: Sequence[Mapping[str, np.ndarray]],
    *,
    fps: int,
    tasks: str | Sequence[str],
    robot_type: str | None = None,
    episodes_per_file: int | None = None,
    video: VideoOptions | None = None,
    parquet_images: bool | Sequence[str] = False,
) -> dict[str, Any]:
    """Write ``episodes`` (key -> (L, ...) arrays; (L, H, W, 3) uint8 arrays are cameras) as a
    LeRobot v3 dataset under ``root``; ``meta/info.json`` is written last. Returns info.json.

    ``tasks`` is one task string for every episode or one per episode. ``episodes_per_file``
    starts a new data/video file every that many episodes (default: one file for all). Cameras
    are MP4 videos, except those in ``parquet_images`` (``True``: all), which are written as
    encoded images inside the data files (``video.image_format``).
    """
    label = root.uri
    _check_episodes(episodes, label)
    opts = video or VideoOptions()
    if opts.image_format not in IMAGE_FORMATS:
        raise DataError(f"image_format {opts.image_format!r}: expected one of {IMAGE_FORMATS}")
    images = {k: opts.image_format for k in _image_keys(episodes[0], parquet_images, label)}
    ep_tasks = [tasks] * len(episodes) if isinstance(tasks, str) else list(tasks)
    if len(ep_tasks) != len(episodes):
        raise DataError(f"dataset {label!r}: {len(ep_tasks)} tasks for {len(episodes)} episodes")
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(ep_tasks))}
    features = _features(episodes[0], opts, fps, list(images))
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
    odd = [k for k in video_keys if any(v % 2 for v in features[k]["shape"][:2])]
    if odd and opts.pix_fmt == "yuv420p":
        raise DataError(
            f"dataset {label!r}: cameras {odd} have an odd frame height or width, which H.264 "
            "in yuv420p cannot encode; write them as Parquet images (parquet_images)"
        )
    low_keys = [k for k, f in features.items() if f["dtype"] == "float32" and k in episodes[0]]
    per_file = episodes_per_file or len(episodes)
    rows: list[dict[str, Any]] = []
    index = 0
    for file_no, start in enumerate(range(0, len(episodes), per_file)):
        group = episodes[start : start + per_file]
        where = {"chunk_index": file_no // CHUNKS_SIZE, "file_index": file_no % CHUNKS_SIZE}
        table = _data_table(
            group,
            start,
            index,
            [task_ids[t] for t in ep_tasks[start : start + per_file]],
            fps,
            low_keys,
            images,
        )
        root.write_bytes(
            DATA_PATH.format(**where),
            _parquet_bytes(table, IMAGE_ROW_GROUP if images else None),
        )
        spans: dict[str, list[tuple[float, float]]] = {}
        for key in video_keys:
            with tempfile.TemporaryFile() as tmp:
                spans[key] = _encode_video(tmp, [ep[key] for ep in group], fps, opts)
                tmp.seek(0)
                with root.open_output(VIDEO_PATH.format(video_key=key, **where)) as out:
                    out.write(tmp.read())
        for i, ep in enumerate(group):
            n = len(next(iter(ep.values())))
            row: dict[str, Any] = {
                "episode_index": start + i,
                "tasks": [ep_tasks[start + i]],
                "length": n,
                "data/chunk_index": where["chunk_index"],
                "data/file_index": where["file_index"],
                "dataset_from_index": index,
                "dataset_to_index": index + n,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            for key in video_keys:
                row[f"videos/{key}/chunk_index"] = where["chunk_index"]
                row[f"videos/{key}/file_index"] = where["file_index"]
                row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"] = spans[
                    key
                ][i]
            rows.append(row)
            index += n
    root.write_bytes(
        EPISODES_PATH.format(chunk_index=0, file_index=0),
        _parquet_bytes(pa.Table.from_pylist(rows)),
    )
    # indexed by the task string, as LeRobot writes it (pandas.read_parquet gives that index)
    task_frame = pd.DataFrame(
        {"task_index": list(task_ids.values())}, index=pd.Index(list(task_ids), name="task")
    )
    task_buf = io.BytesIO()
    task_frame.to_parquet(task_buf)
    root.write_bytes(TASKS_PATH, task_buf.getvalue())
    stats = {k: _stats(np.concatenate([ep[k] for ep in episodes])) for k in low_keys}
    stats |= {k: _image_stats(episodes, k) for k in [*video_keys, *images]}
    root.write_json(STATS_PATH, stats)
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": index,
        "total_tasks": len(task_ids),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys else None,
        "features": features,
    }
    root.write_json(INFO_PATH, info)
    return info
