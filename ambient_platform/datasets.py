"""Dataset I/O on any storage root: Parquet shards + meta.json, committed last.

A dataset directory (or s3:// prefix) holds ``data/shard-NNNNN.parquet`` files and a
``meta.json`` (features, shapes, fps, counts, per-shard and content digests). Readers trust only
the shards meta.json names, so an interrupted write is invisible.

This module is the boundary where a shard's name is known, so every way a dataset can be bad
(no meta.json, no shards, a truncated shard, a missing or mistyped column, NaN/inf or null
values, an episode in two shards, a shard that changed since meta.json) becomes one
``DataError`` line naming the dataset, the shard and, where it applies, column, episode and row;
pyarrow's own messages (which can dump the whole schema) never reach the user.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_core.data import (
    INDEX_COLUMNS,
    DataError,
    Frames,
    episodes_to_table,
    frames_from_table,
)
from ambient_core.envs.base import Episode
from ambient_platform.lerobot import INFO_PATH as LEROBOT_INFO
from ambient_platform.lerobot import ambient_meta
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
    if not episodes:
        raise DataError(f"dataset {source!r}: no episodes to write to {root.uri}")
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
    """meta.json of the dataset at ``root``, checked for the fields readers rely on.

    A LeRobot v3 root (``meta/info.json``, no meta.json) is read in place: its data files are
    the shards (``ambient_platform.lerobot.ambient_meta``).
    """
    if not root.exists(META_FILE) and root.exists(LEROBOT_INFO):
        return ambient_meta(root)
    if not root.exists(META_FILE):
        raise DataError(
            f"{root.uri} is not a dataset: {META_FILE} is missing (generate or import it first)"
        )
    meta = root.read_json(META_FILE)
    where = root.uri_for(META_FILE)
    if not isinstance(meta, dict) or "shards" not in meta:
        raise DataError(f"{where}: not a dataset meta file (no 'shards')")
    shards = meta["shards"]
    if not isinstance(shards, list):
        raise DataError(f"{where}: 'shards' must be a list, got {type(shards).__name__}")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("key"), str):
            raise DataError(f"{where}: shards.{i} must be an object with a string 'key'")
    if not isinstance(meta.get("features", {}), dict):
        raise DataError(f"{where}: 'features' must be an object")
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
    listed = {s["key"]: s.get("rows") for s in meta["shards"]}
    wanted = list(shards) if shards is not None else list(listed)
    if not wanted:
        raise DataError(
            f"dataset {label!r} ({root.uri}) has no shards: its {META_FILE} lists none "
            "(an empty dataset; generate or import data into it first)"
        )
    fs, base = root.arrow_filesystem()
    tables = []
    for key in wanted:
        shard = _Shard(label, root.uri_for(key), f"{base.rstrip('/')}/{key}")
        table = shard.read(fs, list(keys))
        rows = listed.get(key)
        if isinstance(rows, int) and rows != table.num_rows:
            raise DataError(
                f"dataset {label!r}: shard {shard.uri} has {table.num_rows} rows but "
                f"{META_FILE} says {rows} (the file changed after the dataset was written)"
            )
        tables.append(table)
    _check_unique_episodes(label, [t.column("episode_index") for t in tables], wanted, root)
    table = pa.concat_tables(tables)
    if max_episodes is not None:
        eps = table.column("episode_index").to_numpy()
        keep = sorted(set(eps.tolist()))[:max_episodes]
        table = table.filter(pc.is_in(table.column("episode_index"), pa.array(keep)))
    return frames_from_table(table, keys, label), meta


class _Shard:
    """One Parquet shard of a dataset, read into the canonical layout or refused by name."""

    def __init__(self, dataset: str, uri: str, path: str) -> None:
        self.where = f"dataset {dataset!r}: shard {uri}"
        self.uri = uri
        self.path = path

    def read(self, fs: pa.fs.FileSystem, keys: list[str]) -> pa.Table:
        """Index columns as int64 and features as list<float32>, every value checked."""
        columns = [*INDEX_COLUMNS, *keys]
        try:
            with pq.ParquetFile(self.path, filesystem=fs) as pf:
                self._check_schema(pf.schema_arrow, keys)
                table = pf.read(columns=columns)
        except FileNotFoundError as exc:
            raise DataError(f"{self.where} is missing (named in {META_FILE})") from exc
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{self.where} is not a readable Parquet file ({_first_line(exc)}); "
                "a truncated or half-written file?"
            ) from exc
        table = self._canonical(table, keys)
        for key in keys:
            self._check_values(table, key)
        return table

    def _check_schema(self, schema: pa.Schema, keys: list[str]) -> None:
        for col in (*INDEX_COLUMNS, *keys):
            if col not in schema.names:
                raise DataError(f"{self.where} has no column {col!r}")
        for col in INDEX_COLUMNS:
            if not pa.types.is_integer(schema.field(col).type):
                raise DataError(
                    f"{self.where}: column {col!r} is {schema.field(col).type}, expected integers"
                )
        for col in keys:
            t = schema.field(col).type
            listy = (
                pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            )
            value = t.value_type if listy else t
            if not listy or not (pa.types.is_floating(value) or pa.types.is_integer(value)):
                raise DataError(f"{self.where}: column {col!r} is {t}, expected a list of floats")

    def _canonical(self, table: pa.Table, keys: list[str]) -> pa.Table:
        arrays = []
        for col in INDEX_COLUMNS:
            arr = table.column(col)
            if arr.null_count:
                raise DataError(f"{self.where}: column {col!r} has {arr.null_count} null values")
            arrays.append(arr.cast(pa.int64()))
        for col in keys:
            try:
                arrays.append(table.column(col).cast(pa.list_(pa.float32())))
            except pa.ArrowException as exc:
                raise DataError(
                    f"{self.where}: column {col!r} cannot be read as floats ({_first_line(exc)})"
                ) from exc
        return pa.table(arrays, names=[*INDEX_COLUMNS, *keys])

    def _check_values(self, table: pa.Table, key: str) -> None:
        """Nulls and NaN/inf, named by episode and row of this shard (training would only see
        a loss that turns NaN, steps later)."""
        col = table.column(key).combine_chunks()
        episodes = table.column("episode_index")
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{self.where}: column {key!r} is null at episode {episodes[row].as_py()}, "
                f"row {row}"
            )
        values = col.flatten()
        parents = pc.list_parent_indices(col).to_numpy()
        flat = values.to_numpy(zero_copy_only=False)
        bad = values.is_null().to_numpy(zero_copy_only=False) | ~np.isfinite(flat)
        if bad.any():
            rows = np.unique(parents[bad])
            row = int(rows[0])
            raise DataError(
                f"{self.where}: column {key!r} has NaN/inf/null values in {rows.size} rows "
                f"(first at episode {episodes[row].as_py()}, row {row})"
            )


def _check_unique_episodes(
    label: str, columns: Sequence[pa.ChunkedArray], keys: Sequence[str], root: StorageRoot
) -> None:
    """An episode index in two shards would silently merge two episodes into one."""
    if len(columns) < 2:
        return
    eps = [np.unique(c.to_numpy()) for c in columns]
    owner = np.repeat(np.arange(len(eps)), [e.size for e in eps])
    flat = np.concatenate(eps)
    order = np.argsort(flat, kind="stable")
    flat, owner = flat[order], owner[order]
    dup = np.flatnonzero(flat[1:] == flat[:-1])
    if dup.size:
        i = int(dup[0])
        first, second = (root.uri_for(keys[int(owner[j])]) for j in (i, i + 1))
        raise DataError(
            f"dataset {label!r}: episode {int(flat[i])} is in shard {first} and in shard "
            f"{second} (episode indices must be unique across shards)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
