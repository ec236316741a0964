"""Dataset I/O on any storage root: Parquet shards + meta.json, committed last.

A dataset directory (or s3:// prefix) holds ``data/shard-NNNNN.parquet`` files and a
``meta.json`` (features, shapes, fps, counts, per-shard and content digests). Readers trust only
the shards meta.json names, so an interrupted write is invisible.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ambient_core.data import DataError, Frames, episodes_to_table, frames_from_table
from ambient_core.envs.base import Episode
from ambient_platform.storage import StorageRoot

META_FILE = "meta.json"
SHARD_EPISODES = 1000


def write_dataset(
    root: StorageRoot,
    episodes: Sequence[Episode],
    source: str,
    task: str,
    fps: float = 10.0,
    shard_episodes: int = SHARD_EPISODES,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write episodes as shards, then meta.json (the commit point). Returns the meta."""
    shards, digests = [], []
    for i in range(0, len(episodes), shard_episodes):
        table = episodes_to_table(episodes[i : i + shard_episodes], source, first_episode_index=i)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        key = root.join("data", f"shard-{i // shard_episodes:05d}.parquet")
        root.write_bytes(key, data)
        digest = hashlib.sha256(data).hexdigest()
        shards.append({"key": key, "rows": table.num_rows, "sha256": digest})
        digests.append(digest)
    first = episodes[0]
    meta = {
        "format": "ambient-dataset/1",
        "name": source,
        "task": task,
        "fps": fps,
        "features": {
            k: {"dtype": "float32", "shape": [int(v.reshape(len(v), -1).shape[1])]}
            for k, v in first.items()
        },
        "episodes": len(episodes),
        "frames": int(sum(s["rows"] for s in shards)),
        "shards": shards,
        "digest": hashlib.sha256("".join(digests).encode()).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    root.write_json(META_FILE, meta)
    return meta


def read_meta(root: StorageRoot) -> dict[str, Any]:
    if not root.exists(META_FILE):
        raise DataError(
            f"{root.uri} is not a dataset: {META_FILE} is missing (generate or import it first)"
        )
    meta = root.read_json(META_FILE)
    if not isinstance(meta, dict) or "shards" not in meta:
        raise DataError(f"{root.uri}/{META_FILE}: not a dataset meta file (no 'shards')")
    return meta


def read_frames(
    root: StorageRoot,
    keys: Sequence[str],
    name: str | None = None,
    max_episodes: int | None = None,
    shards: Sequence[str] | None = None,
) -> tuple[Frames, dict[str, Any]]:
    """Validated frames of the shards meta.json names, or of ``shards`` (keys, e.g. those an
    annotation manifest names), first ``max_episodes`` episodes."""
    meta = read_meta(root)
    label = name or str(meta.get("name") or root.uri)
    missing = [k for k in keys if k not in meta.get("features", {})]
    if missing:
        raise DataError(
            f"dataset {label!r} ({root.uri}) lacks features {missing}; "
            f"it has {sorted(meta.get('features', {}))}"
        )
    fs, base = root.arrow_filesystem()
    tables = []
    for key in shards if shards is not None else [s["key"] for s in meta["shards"]]:
        path = f"{base.rstrip('/')}/{key}"
        try:
            tables.append(
                pq.read_table(path, filesystem=fs, columns=["episode_index", "frame_index", *keys])
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"dataset {label!r}: cannot read shard {root.uri_for(key)}: {exc}"
            ) from exc
    table = pa.concat_tables(tables)
    if max_episodes is not None:
        eps = table.column("episode_index").to_numpy()
        keep = sorted(set(eps.tolist()))[:max_episodes]
        table = table.filter(pa.compute.is_in(table.column("episode_index"), pa.array(keep)))
    return frames_from_table(table, keys, label), meta
