"""Training chunks with camera frames: low-dim chunks as usual, images from an episode cache.

``ImageChunkDataset`` is a ``ChunkDataset`` (same chunk ids, padding, sampler and normaliser) whose
batches also carry each camera's observation history (B, T_o, C, H, W) uint8. Frames come from a
``FrameSource`` per dataset (the platform's LeRobot reader decodes MP4; tests pass arrays) through
``EpisodeFrameCache``: a background thread decodes episodes ahead into memory (uint8, the same
compact form diffusion_policy's replay buffer keeps), so the training loop only waits for an
episode the decoder has not reached yet. When the budget cannot hold every episode, the least
recently used episodes are dropped and decoded again on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch

from ambient_core.data import ChunkDataset, ChunkSpec, Frames
from ambient_core.errors import DataError
from ambient_core.policy import Normalizer

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 << 30


class FrameSource(Protocol):
    """Decodes one camera of one episode into (L, H, W, C) uint8 frames."""

    def decode_episode(self, key: str, episode: int) -> np.ndarray: ...


class ArrayFrameSource:
    """Frames already in memory: ``frames[key][episode]`` -> (L, H, W, C) uint8."""

    def __init__(self, frames: dict[str, dict[int, np.ndarray]]) -> None:
        self.frames = frames

    def decode_episode(self, key: str, episode: int) -> np.ndarray:
        return self.frames[key][episode]


@dataclass
class CacheStats:
    """What the decoder did and how long the training loop waited for it."""

    decoded_episodes: int = 0
    decoded_frames: int = 0
    decode_s: float = 0.0
    waits: int = 0
    wait_s: float = 0.0
    evictions: int = 0


class EpisodeFrameCache:
    """Decoded episodes of several datasets in memory, filled ahead by a background thread.

    Episodes are addressed by (dataset position, episode index). ``start()`` launches the decoder,
    which walks every episode in order until the byte budget is full; ``get`` returns an episode's
    frames, decoding it on the caller's thread if the decoder has not reached it (counted as a
    wait). Decoding errors from the background thread are re-raised by the next ``get``.
    """

    def __init__(
        self,
        sources: Sequence[FrameSource],
        episodes: Sequence[Sequence[int]],
        keys: Sequence[str],
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if len(sources) != len(episodes):
            raise ValueError("need one episode list per frame source")
        self.sources, self.keys, self.max_bytes = list(sources), list(keys), max_bytes
        self.order = [(d, int(e)) for d, eps in enumerate(episodes) for e in eps]
        self.items: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._busy: dict[tuple[int, int], threading.Event] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _decode(self, item: tuple[int, int]) -> dict[str, np.ndarray]:
        d, ep = item
        t0 = time.perf_counter()
        frames = {k: self.sources[d].decode_episode(k, ep) for k in self.keys}
        with self._lock:
            self.stats.decoded_episodes += 1
            self.stats.decoded_frames += sum(len(v) for v in frames.values())
            self.stats.decode_s += time.perf_counter() - t0
        return frames

    def _load(self, item: tuple[int, int], background: bool) -> dict[str, np.ndarray] | None:
        """Return the cached episode, or decode it (waiting if another thread already does)."""
        while True:
            with self._lock:
                if item in self.items:
                    self.items.move_to_end(item)
                    return self.items[item]
                busy = self._busy.get(item)
                if busy is None:
                    if background and self.bytes >= self.max_bytes:
                        return None  # full: leave the rest to on-demand decoding
                    busy = self._busy[item] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                busy.wait()
                continue
            try:
                frames = self._decode(item)
                with self._lock:
                    self.items[item] = frames
                    self.bytes += sum(v.nbytes for v in frames.values())
                    while self.bytes > self.max_bytes and len(self.items) > 1:
                        _, old = self.items.popitem(last=False)
                        self.bytes -= sum(v.nbytes for v in old.values())
                        self.stats.evictions += 1
                return frames
            finally:
                with self._lock:
                    self._busy.pop(item, None)
                busy.set()

    def _run(self) -> None:
        try:
            for item in self.order:
                if self._stop.is_set() or self._load(item, background=True) is None:
                    return
        except BaseException as exc:  # handed to the training thread by the next get()
            self._error = exc

    def start(self) -> EpisodeFrameCache:
        """Launch the background decoder (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="frame-decoder", daemon=True)
            self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the background decoder has finished (everything fits: all decoded)."""
        if self._thread is not None:
            self._thread.join()
        self._raise()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def get(self, dataset: int, episode: int) -> dict[str, np.ndarray]:
        """Frames of one episode, every camera (decoded now if not cached yet)."""
        self._raise()
        item = (dataset, int(episode))
        with self._lock:
            hit = self.items.get(item)
            if hit is not None:
                self.items.move_to_end(item)
                return hit
        t0 = time.perf_counter()
        frames = self._load(item, background=False)
        assert frames is not None
        with self._lock:
            self.stats.waits += 1
            self.stats.wait_s += time.perf_counter() - t0
        return frames


class ImageChunkDataset(ChunkDataset):
    """Chunks over low-dim frames plus camera frames from an ``EpisodeFrameCache``.

    ``frames[i]`` and ``sources[i]`` describe the same dataset; the cache decodes its episodes
    in ``frames[i].episode_index`` order. ``batch`` adds each image key as (B, T_o, H, W, C)
    uint8 and ``torch_batch`` as (B, T_o, C, H, W) uint8 (the encoder scales it). Call
    ``start()`` to decode ahead in the background; without it episodes decode on first use.
    """

    def __init__(
        self,
        frames: Sequence[Frames],
        spec: ChunkSpec,
        obs_keys: Sequence[str],
        image_keys: Sequence[str],
        sources: Sequence[FrameSource],
        action_key: str = "action",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(frames, spec, obs_keys, action_key)
        if not image_keys:
            raise DataError("ImageChunkDataset needs at least one image key")
        self.image_keys = list(image_keys)
        self.image_shape = image_shape  # (H, W, C) when the caller knows it (from metadata)
        # global frame row -> (dataset, episode index, offset in episode)
        ds_of_row, ep_of_row, off_of_row = [], [], []
        for d, f in enumerate(frames):
            lengths = f.episode_bounds[:, 1] - f.episode_bounds[:, 0]
            ds_of_row.append(np.full(int(lengths.sum()), d, dtype=np.int32))
            ep_of_row.append(np.repeat(f.episode_index, lengths))
            off_of_row.append(
                np.arange(int(lengths.sum())) - np.repeat(f.episode_bounds[:, 0], lengths)
            )
        self.row_dataset = np.concatenate(ds_of_row)
        self.row_episode = np.concatenate(ep_of_row).astype(np.int64)
        self.row_offset = np.concatenate(off_of_row).astype(np.int64)
        self.cache = EpisodeFrameCache(
            sources, [f.episode_index.tolist() for f in frames], self.image_keys, cache_bytes
        )

    def start(self) -> ImageChunkDataset:
        """Launch the background decoder; returns self."""
        self.cache.start()
        return self

    def _rows(self, ids: np.ndarray, length: int) -> np.ndarray:
        idx = self.chunk_start[ids, None] + np.arange(length)[None, :]
        return np.clip(idx, self.chunk_bounds[ids, :1], self.chunk_bounds[ids, 1:] - 1)

    def images(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Frames at global rows (any shape) -> {key: rows.shape + (H, W, C)} uint8."""
        flat = rows.reshape(-1)
        out: dict[str, np.ndarray] = {}
        pairs = np.stack([self.row_dataset[flat], self.row_episode[flat]], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for u, (d, ep) in enumerate(uniq):
            sel = np.flatnonzero(inverse == u)
            frames = self.cache.get(int(d), int(ep))
            for key in self.image_keys:
                arr = frames[key]
                if key not in out:
                    out[key] = np.empty((len(flat), *arr.shape[1:]), dtype=np.uint8)
                offsets = self.row_offset[flat[sel]]
                if offsets.max() >= len(arr):
                    raise DataError(
                        f"dataset {self.dataset_names[int(d)]!r}: episode {int(ep)} camera "
                        f"{key!r} has {len(arr)} frames, the low-dim data has more rows"
                    )
                out[key][sel] = arr[offsets]
        return {k: v.reshape(*rows.shape, *v.shape[1:]) for k, v in out.items()}

    def batch(self, ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        obs, act = super().batch(ids)
        obs.update(self.images(self._rows(ids, self.spec.n_obs_steps)))
        return obs, act

    def torch_batch(
        self, ids: np.ndarray, normalizer: torch.nn.Module, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        obs, act = self.batch(ids)
        norm = cast(Normalizer, normalizer)
        t_obs = {k: norm.normalize(k, torch.from_numpy(obs[k]).to(device)) for k in self.obs_keys}
        for k in self.image_keys:
            t_obs[k] = torch.from_numpy(obs[k]).to(device).permute(0, 1, 4, 2, 3)
        t_act = norm.normalize(self.action_key, torch.from_numpy(act).to(device))
        return t_obs, t_act
