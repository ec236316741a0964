"""Write a LeRobot v3 dataset: Parquet for low-dim columns, one MP4 per camera and file.

Videos are encoded in-process with PyAV (libx264, no B-frames, a key frame at every episode
start so a reader reaches any episode with one seek). ``meta/info.json`` is written last: a
reader never sees a half-written dataset as complete.
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
    """Encoder settings; ``gop`` bounds how many frames a seek inside an episode decodes."""

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 16
    preset: str = "fast"


# ------------------------------------------------------------------------------------ write


def _is_video(arr: np.ndarray) -> bool:
    return arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[-1] == 3


def _features(first: Mapping[str, np.ndarray], video: VideoOptions, fps: int) -> dict[str, Any]:
    feats: dict[str, Any] = {}
    for key, arr in first.items():
        if _is_video(arr):
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
    if not episodes:
        raise DataError(f"dataset {label!r}: no episodes to write")
    keys = list(episodes[0])
    for i, ep in enumerate(episodes):
        if list(ep) != keys:
            raise DataError(f"dataset {label!r}: episode {i} has keys {list(ep)}, expected {keys}")
        lengths = {k: len(v) for k, v in ep.items()}
        if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
            raise DataError(
                f"dataset {label!r}: episode {i} has ragged or empty columns {lengths}"
            )
        for k, v in ep.items():
            if v.ndim == 4 and not _is_video(v):
                raise DataError(
                    f"dataset {label!r}: episode {i} camera {k!r} must be (L, H, W, 3) uint8, "
                    f"got {v.shape} {v.dtype}"
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


def _image_stats(frames: np.ndarray) -> dict[str, Any]:
    """Per-channel stats in [0, 1], shaped (3, 1, 1) as LeRobot stores them."""
    px = frames.reshape(-1, 3).astype(np.float64) / 255.0
    return {
        k: [[[float(v)]] for v in fn(px)]
        for k, fn in (
            ("min", lambda a: a.min(0)),
            ("max", lambda a: a.max(0)),
            ("mean", lambda a: a.mean(0)),
            ("std", lambda a: a.std(0)),
        )
    } | {"count": [len(frames)]}


def _data_table(
    group: Sequence[Mapping[str, np.ndarray]],
    first_episode: int,
    first_index: int,
    task_index: Sequence[int],
    fps: int,
    low_keys: Sequence[str],
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
    frame_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    cols["timestamp"] = pa.array((frame_index / fps).astype(np.float32))
    cols["frame_index"] = pa.array(frame_index)
    cols["episode_index"] = pa.array(
        np.repeat(np.arange(first_episode, first_episode + len(group)), lengths).astype(np.int64)
    )
    cols["index"] = pa.array(np.arange(first_index, first_index + sum(lengths), dtype=np.int64))
    cols["task_index"] = pa.array(np.repeat(np.asarray(task_index, np.int64), lengths))
    return pa.table(cols)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_lerobot(
    root: StorageRoot,
    episodes: Sequence[Mapping[str, np.ndarray]],
    *,
    fps: int,
    tasks: str | Sequence[str],
    robot_type: str | None = None,
    episodes_per_file: int | None = None,
    video: VideoOptions | None = None,
) -> dict[str, Any]:
    """Write ``episodes`` (key -> (L, ...) arrays; (L, H, W, 3) uint8 arrays become videos) as a
    LeRobot v3 dataset under ``root``; ``meta/info.json`` is written last. Returns info.json.

    ``tasks`` is one task string for every episode or one per episode. ``episodes_per_file``
    starts a new data/video file every that many episodes (default: one file for all).
    """
    label = root.uri
    _check_episodes(episodes, label)
    opts = video or VideoOptions()
    ep_tasks = [tasks] * len(episodes) if isinstance(tasks, str) else list(tasks)
    if len(ep_tasks) != len(episodes):
        raise DataError(f"dataset {label!r}: {len(ep_tasks)} tasks for {len(episodes)} episodes")
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(ep_tasks))}
    features = _features(episodes[0], opts, fps)
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
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
        )
        root.write_bytes(DATA_PATH.format(**where), _parquet_bytes(table))
        spans: dict[str, list[tuple[float, float]]] = {}
        for key in video_keys:
            with tempfile.TemporaryFile() as tmp:
                spans[key] = _encode_video(tmp, [ep[key] for ep in group], fps, opts)
                tmp.seek(0)
                with root.open_output(VIDEO_PATH.format(video_key=key, **where)) as out:
                    out.write(tmp.read())
        for i, ep in enumerate(group):
            n = len(ep[low_keys[0]] if low_keys else ep[video_keys[0]])
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
    stats |= {k: _image_stats(np.concatenate([ep[k][::4] for ep in episodes])) for k in video_keys}
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
