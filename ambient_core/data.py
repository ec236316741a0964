"""Episodes in Parquet (one row per frame) -> training chunks with obs history and horizon.

Layout (DESIGN.md "Data"): ``episode_index``, ``frame_index``, feature columns of list<float32>
(``observation.state``, ``action``, task features such as ``observation.goal``) and ``source``.
Chunks follow diffusion_policy's SequenceSampler: pad_before = T_o - 1, pad_after = T_a - 1, edge
values repeated. A chunk is stored as (start frame, episode bounds) only; a batch gathers frames
with clipped indices, so memory is O(frames), not O(chunks x horizon).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ambient_core.envs.base import Episode
from ambient_core.errors import DataError

if TYPE_CHECKING:
    from ambient_core.policy import Normalizer

INDEX_COLUMNS = ("episode_index", "frame_index")


def episodes_to_table(
    episodes: Sequence[Episode], source: str, first_episode_index: int = 0
) -> pa.Table:
    """Frames of ``episodes`` as an Arrow table in the Parquet layout."""
    if not episodes:
        raise DataError(f"dataset {source!r}: no episodes to write")
    keys = list(episodes[0])
    cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    ep_idx, fr_idx = [], []
    for i, ep in enumerate(episodes):
        if list(ep) != keys:
            raise DataError(
                f"dataset {source!r}: episode {i} has keys {list(ep)}, expected {keys}"
            )
        lengths = {k: len(v) for k, v in ep.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"dataset {source!r}: episode {i} has ragged columns {lengths}")
        n = next(iter(lengths.values()))
        ep_idx.append(np.full(n, first_episode_index + i, dtype=np.int64))
        fr_idx.append(np.arange(n, dtype=np.int64))
        for k in keys:
            cols[k].append(np.asarray(ep[k], dtype=np.float32).reshape(n, -1))
    arrays: dict[str, pa.Array] = {
        "episode_index": pa.array(np.concatenate(ep_idx)),
        "frame_index": pa.array(np.concatenate(fr_idx)),
    }
    for k in keys:
        flat = np.concatenate(cols[k])
        arrays[k] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)),
            pa.array(flat.reshape(-1)),
        )
    arrays["source"] = pa.array([source] * len(arrays["episode_index"]), type=pa.string())
    return pa.table(arrays)


def _list_column(table: pa.Table, key: str, name: str) -> np.ndarray:
    """A list<float> column as a dense (N, D) float32 array, validated."""
    col = table.column(key).combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_fixed_size_list(col.type):
        raise DataError(
            f"dataset {name!r}: column {key!r} must be a list of floats, got {col.type}"
        )
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        ep = table.column("episode_index")[row].as_py()
        raise DataError(f"dataset {name!r}: column {key!r} is null at episode {ep} (row {row})")
    lengths = pc.list_value_length(col).to_numpy()
    if lengths.size and np.any(lengths != lengths[0]):
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        ep = table.column("episode_index")[row].as_py()
        raise DataError(
            f"dataset {name!r}: column {key!r} has length {lengths[row]} at episode {ep} "
            f"(row {row}), expected {lengths[0]}"
        )
    d = int(lengths[0]) if lengths.size else 0
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    arr = values.reshape(len(col), d)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        eps = table.column("episode_index").to_numpy()[bad]
        raise DataError(
            f"dataset {name!r}: column {key!r} has {int(bad.sum())} rows with NaN/inf "
            f"(first at episode {int(eps[0])}, row {int(np.flatnonzero(bad)[0])})"
        )
    return arr


def episode_bounds(ep: np.ndarray, fr: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) rows of each episode in rows sorted by (episode, frame); frames must be 0..L-1.

    ``label`` starts the error message (which dataset or file the rows came from).
    """
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    ends = np.r_[starts[1:], ep.size]
    expected = np.arange(ep.size) - np.repeat(starts, ends - starts)
    if np.any(fr != expected):
        row = int(np.flatnonzero(fr != expected)[0])
        raise DataError(
            f"{label}: episode {int(ep[row])} has frame_index {int(fr[row])} where "
            f"{int(expected[row])} was expected (frames must be 0..L-1 without gaps or duplicates)"
        )
    return starts, ends


@dataclass
class Frames:
    """Dense per-frame features of one dataset plus episode boundaries."""

    name: str
    features: dict[str, np.ndarray]  # key -> (F, D) float32
    episode_index: np.ndarray  # (E,) original episode ids
    episode_bounds: np.ndarray  # (E, 2) [start, end) frame rows

    @property
    def n_frames(self) -> int:
        return int(self.episode_bounds[-1, 1]) if len(self.episode_bounds) else 0


def frames_from_table(table: pa.Table, keys: Sequence[str], name: str = "dataset") -> Frames:
    """Validate a Parquet-layout table and turn it into dense frames sorted by episode, frame."""
    missing = [c for c in (*INDEX_COLUMNS, *keys) if c not in table.column_names]
    if missing:
        raise DataError(
            f"dataset {name!r}: missing columns {missing}; has {sorted(table.column_names)}"
        )
    table = table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    ep = table.column("episode_index").to_numpy().astype(np.int64)
    fr = table.column("frame_index").to_numpy().astype(np.int64)
    if ep.size == 0:
        raise DataError(f"dataset {name!r} has no rows")
    starts, ends = episode_bounds(ep, fr, f"dataset {name!r}")
    feats = {k: _list_column(table, k, name) for k in keys}
    return Frames(name, feats, ep[starts], np.stack([starts, ends], axis=1))


def read_parquet_frames(
    path: str, keys: Sequence[str], filesystem: pa.fs.FileSystem | None = None, name: str = ""
) -> Frames:
    """Read every Parquet shard under ``path`` (a directory) into validated frames."""
    try:
        table = pq.read_table(path, filesystem=filesystem, columns=[*INDEX_COLUMNS, *keys])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"dataset {name or path!r}: cannot read Parquet under {path}: {exc}"
        ) from exc
    return frames_from_table(table, keys, name or path)


@dataclass(frozen=True)
class _DeviceFrames:
    """Frames (F, D) per key and chunk tables on one device, for gathering batches there."""

    features: dict[str, torch.Tensor]
    start: torch.Tensor  # (N,) first frame row of each chunk (may precede its episode)
    bounds: torch.Tensor  # (N, 2) [start, end) rows of each chunk's episode


@dataclass(frozen=True)
class ChunkSpec:
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8

    @property
    def pad_before(self) -> int:
        return self.n_obs_steps - 1

    @property
    def pad_after(self) -> int:
        return self.n_action_steps - 1


class ChunkDataset:
    """Chunks over one or more datasets concatenated in order (item ids follow that order)."""

    def __init__(
        self,
        frames: Sequence[Frames],
        spec: ChunkSpec,
        obs_keys: Sequence[str],
        action_key: str = "action",
    ) -> None:
        if not frames:
            raise DataError("ChunkDataset needs at least one dataset")
        self.spec, self.obs_keys, self.action_key = spec, list(obs_keys), action_key
        keys = [*self.obs_keys, action_key]
        offset, bounds, starts, ds_of_chunk, ep_of_chunk, first = 0, [], [], [], [], []
        self.dataset_names = [f.name for f in frames]
        self.dataset_chunk_ranges: list[tuple[int, int]] = []
        n_chunks = 0
        for di, f in enumerate(frames):
            lo, hi = f.episode_bounds[:, 0] + offset, f.episode_bounds[:, 1] + offset
            counts = np.maximum(hi - lo - spec.horizon + spec.pad_before + spec.pad_after + 1, 0)
            ep_rep = np.repeat(np.arange(len(lo)), counts)
            within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            starts.append(lo[ep_rep] - spec.pad_before + within)
            bounds.append(np.stack([lo[ep_rep], hi[ep_rep]], axis=1))
            ds_of_chunk.append(np.full(counts.sum(), di, dtype=np.int32))
            ep_of_chunk.append(f.episode_index[ep_rep])
            first.append(within - spec.pad_before)
            self.dataset_chunk_ranges.append((n_chunks, n_chunks + int(counts.sum())))
            n_chunks += int(counts.sum())
            offset += f.n_frames
        self.features = {k: np.concatenate([f.features[k] for f in frames]) for k in keys}
        self.chunk_start = np.concatenate(starts).astype(np.int64)
        self.chunk_bounds = np.concatenate(bounds).astype(np.int64)
        self.chunk_dataset = np.concatenate(ds_of_chunk)
        self.chunk_episode = np.concatenate(ep_of_chunk).astype(np.int64)
        self.chunk_frame = np.concatenate(first).astype(np.int64)  # start frame (may be < 0)
        self._device_cache: dict[str, _DeviceFrames] = {}
        if len(self.chunk_start) == 0:
            raise DataError(
                f"datasets {self.dataset_names} yield no chunk: every episode is shorter than "
                f"horizon - pad_before - pad_after = "
                f"{spec.horizon - spec.pad_before - spec.pad_after} frames"
            )

    def __len__(self) -> int:
        return len(self.chunk_start)

    def _gather(self, key: str, ids: np.ndarray, length: int) -> np.ndarray:
        idx = self.chunk_start[ids, None] + np.arange(length)[None, :]
        idx = np.clip(idx, self.chunk_bounds[ids, :1], self.chunk_bounds[ids, 1:] - 1)
        return self.features[key][idx]

    def batch(self, ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(obs history per key (B, T_o, D), action chunk (B, H, Da)) for chunk ids."""
        ids = np.asarray(ids, dtype=np.int64)
        obs = {k: self._gather(k, ids, self.spec.n_obs_steps) for k in self.obs_keys}
        return obs, self._gather(self.action_key, ids, self.spec.horizon)

    def torch_batch(
        self, ids: np.ndarray, normalizer: torch.nn.Module, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Normalised tensors for a batch (normalizer: ambient_core.policy.Normalizer).

        On the CPU the batch is gathered in numpy and wrapped without a copy. On an accelerator
        the frames live on the device (copied once, ``on_device``) and the batch is gathered
        there, so a step copies only the B chunk ids to the device, never B x H frames.
        """
        dev = torch.device(device)
        if dev.type != "cpu":
            return self._device_batch(ids, normalizer, dev)
        norm = cast("Normalizer", normalizer)
        obs, act = self.batch(ids)
        t_obs = {k: norm.normalize(k, torch.from_numpy(v)) for k, v in obs.items()}
        t_act = norm.normalize(self.action_key, torch.from_numpy(act))
        return t_obs, t_act

    def on_device(self, device: torch.device) -> _DeviceFrames:
        """The frames and chunk tables as tensors on ``device`` (built once per device)."""
        cached = self._device_cache.get(str(device))
        if cached is None:
            keys = [*self.obs_keys, self.action_key]
            cached = _DeviceFrames(
                {k: torch.from_numpy(self.features[k]).to(device) for k in keys},
                torch.from_numpy(self.chunk_start).to(device),
                torch.from_numpy(self.chunk_bounds).to(device),
            )
            self._device_cache[str(device)] = cached
        return cached

    def _device_batch(
        self, ids: np.ndarray, normalizer: torch.nn.Module, device: torch.device
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        norm = cast("Normalizer", normalizer)
        frames = self.on_device(device)
        t_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device, non_blocking=True)

        def gather(key: str, length: int) -> torch.Tensor:
            idx = frames.start[t_ids, None] + torch.arange(length, device=device)[None, :]
            lo, hi = frames.bounds[t_ids, :1], frames.bounds[t_ids, 1:] - 1
            return frames.features[key][torch.minimum(torch.maximum(idx, lo), hi)]

        t_obs = {k: norm.normalize(k, gather(k, self.spec.n_obs_steps)) for k in self.obs_keys}
        return t_obs, norm.normalize(self.action_key, gather(self.action_key, self.spec.horizon))

    def feature_dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.features.items()}
