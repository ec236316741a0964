"""Scoring whole shards on a Ray worker (the worker side of ``jobs.score_shards``).

Kept apart from ``jobs.score_shards`` so that a Ray worker unpickling it imports only numpy,
pyarrow, torch and the classifier: not the planning side (dataset layout, pydantic settings,
LeRobot, pandas) nor MLflow, which took seconds of every actor's start on a loaded 2-core
machine. Everything a worker is given is plain data for the same reason: a ``ScoreSpec`` (the
curve settings as numbers), the checkpoints' bytes (read once by the driver, shared through the
object store, so a worker never touches the classifier's storage) and a pyarrow filesystem.
``score_shard`` is the Ray task; ``CurveAnnotator`` the per-process scorer it keeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ambient_core.errors import DataError

#: One classifier epoch as the driver read it: file name -> bytes of its checkpoint directory.
Checkpoint = Mapping[str, bytes]


@dataclass(frozen=True)
class SharedCheckpoints:
    """The driver's ``{epoch: Checkpoint}`` in Ray's object store. Wrapped, because Ray resolves
    an object ref passed as a task argument for every task: wrapped, a worker fetches the bytes
    only when it loads its annotator, once per process."""

    ref: Any


@dataclass(frozen=True)
class ScoreSpec:
    """The curve settings a worker needs, as plain values (cheap to unpickle anywhere)."""

    columns: Mapping[int, str]  # classifier epoch -> its curve column
    grid_levels: tuple[int, ...]
    num_draws: int
    seed: int
    score_batch: int  # chunks per forward pass (x num_draws x levels rows)
    obs_keys: tuple[str, ...] = ()
    read_columns: tuple[str, ...] | None = None  # the input columns to read (None: all)

    @property
    def epochs(self) -> list[int]:
        return list(self.columns)


class CurveAnnotator:
    """Loads the classifier checkpoints once, scores whole shards.

    ``checkpoints`` is the driver's ``{epoch: Checkpoint}`` or ``SharedCheckpoints``; ``threads``
    torch threads (the worker's CPUs); ``device`` ``cpu`` or ``cuda`` (the GPU Ray assigned).
    """

    def __init__(
        self,
        spec: ScoreSpec,
        checkpoints: Mapping[int, Checkpoint] | SharedCheckpoints,
        filesystem: pafs.FileSystem | None = None,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        import torch

        from ambient_core.classifier import CLASSIFIER_META, load_classifier_files
        from ambient_core.data import ChunkSpec

        torch.set_num_threads(max(1, threads))
        files: Mapping[int, Checkpoint]
        if isinstance(checkpoints, SharedCheckpoints):  # fetched once per process
            import ray

            files = ray.get(checkpoints.ref)
        else:
            files = checkpoints
        self.s = spec
        self.device = device
        self.models = {e: load_classifier_files(files[e], device) for e in spec.columns}
        # Every epoch of a run chunks alike: rows are re-chunked as the classifier was trained.
        meta = json.loads(files[spec.epochs[0]][CLASSIFIER_META])
        self.chunk = ChunkSpec(**meta["extra"]["chunk"])
        self.fs = filesystem

    def score_file(self, path: str) -> pa.Table:
        """Read and score the shard at ``path``, or one error row saying what is wrong with it."""
        cols = None if self.s.read_columns is None else list(self.s.read_columns)
        try:
            t = pq.read_table(path, filesystem=self.fs, columns=cols)
        except (pa.ArrowInvalid, OSError) as exc:
            return _error_row(path, f"cannot read: {exc}", self.s)
        try:
            return self.annotate_table(t.append_column("path", [[path] * t.num_rows]))
        except Exception as exc:  # a bad shard must be reported, not kill the run
            return _error_row(path, f"{type(exc).__name__}: {exc}", self.s)

    def annotate_table(self, block: pa.Table) -> pa.Table:
        """Score rows of one or more whole shards (column ``path`` names the shard)."""
        paths = block.column("path").unique().to_pylist()
        if len(paths) == 1:
            return self._shard(block, paths[0])
        if not paths:
            return _error_row("", None, self.s).slice(0, 0)
        return pa.concat_tables(
            [self._shard(block.filter(pc.equal(block.column("path"), p)), p) for p in paths]
        )

    def _shard(self, rows: pa.Table, path: str) -> pa.Table:
        from ambient_core.data import ChunkDataset, frames_from_table

        obs_keys = list(self.s.obs_keys)
        try:
            frames = frames_from_table(rows, ["action", *obs_keys], path)
            data = ChunkDataset([frames], self.chunk, obs_keys)
        except DataError as exc:
            return _error_row(path, str(exc), self.s)
        ids, lengths, frame = _row_chunks(frames.episode_bounds, data, self.chunk.pad_before)
        cols: dict[str, pa.Array] = {
            "path": pa.array([path] * len(ids)),
            "episode_index": pa.array(np.repeat(frames.episode_index, lengths)),
            "frame_index": pa.array(frame),
            "error": pa.nulls(len(ids), pa.string()),
        }
        for e, name in self.s.columns.items():
            curves = self._curves(e, data, ids)
            flat = pa.array(curves.astype(np.float32).reshape(-1))
            cols[name] = pa.FixedSizeListArray.from_arrays(flat, curves.shape[1])
        return pa.table(cols)

    def _curves(self, epoch: int, data: Any, ids: np.ndarray) -> np.ndarray:
        from ambient_core.classifier import normalized_chunks, score_curves

        model, spec, norm = self.models[epoch]
        if norm is None:
            raise ValueError(f"classifier epoch {epoch} has no normaliser saved with it")
        act, obs = normalized_chunks(data, ids, norm, spec.obs_keys)
        return score_curves(
            model,
            act,
            obs,
            self.s.grid_levels,
            self.s.num_draws,
            self.s.seed,
            self.s.score_batch,
            ids=ids,
        )


def _row_chunks(
    bounds: np.ndarray, data: Any, pad_before: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chunk id of every row, episode lengths, frame index of every row): a row is scored
    by the chunk whose current frame it is (the episode's last chunk for its tail rows)."""
    counts = np.bincount(
        np.searchsorted(bounds[:, 0], data.chunk_start + pad_before, "right") - 1,
        minlength=len(bounds),
    )
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lengths = bounds[:, 1] - bounds[:, 0]
    ep_of_frame = np.repeat(np.arange(len(bounds)), lengths)
    frame_in_ep = np.arange(bounds[-1, 1]) - np.repeat(bounds[:, 0], lengths)
    ids = first[ep_of_frame] + np.minimum(frame_in_ep, counts[ep_of_frame] - 1)
    return ids, lengths, frame_in_ep.astype(np.int64)


def _error_row(path: str, msg: str | None, spec: ScoreSpec) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "path": pa.array([path]),
        "episode_index": pa.array([-1], pa.int64()),
        "frame_index": pa.array([-1], pa.int64()),
        "error": pa.array([msg], pa.string()),
    }
    for name in spec.columns.values():
        cols[name] = pa.array([[]], pa.list_(pa.float32()))
    return pa.table(cols)


#: The annotator of this worker process (key, annotator): kept between tasks and runs.
_WARM: dict[str, CurveAnnotator] = {}


def score_shard(
    path: str,
    *,
    key: str,
    spec: ScoreSpec,
    checkpoints: Mapping[int, Checkpoint] | SharedCheckpoints,
    filesystem: pafs.FileSystem | None = None,
    threads: int = 1,
    device: str = "cpu",
) -> pa.Table:
    """Ray task: the scored rows of the shard at ``path`` (an arrow path in ``filesystem``),
    or one error row, with this process's annotator.

    Ray reuses worker processes between tasks, so torch is imported and the classifier loaded
    once per process (``key`` names the checkpoints and settings), not once per run: a second
    run, or a watch pass, starts scoring at once.
    """
    ann = _annotator(key, spec, checkpoints, threads, device)
    ann.fs = filesystem
    return ann.score_file(path)


def warm_up(
    *,
    key: str,
    spec: ScoreSpec,
    checkpoints: Mapping[int, Checkpoint] | SharedCheckpoints,
    threads: int = 1,
    device: str = "cpu",
) -> int:
    """Ray task submitted when an annotation starts, before its scoring tasks: imports torch
    and loads the classifier into this worker process (as ``score_shard`` would) while the
    driver is still starting MLflow, so that work overlaps instead of adding up. Returns this
    worker's pid."""
    _annotator(key, spec, checkpoints, threads, device)
    return os.getpid()


def _annotator(
    key: str,
    spec: ScoreSpec,
    checkpoints: Mapping[int, Checkpoint] | SharedCheckpoints,
    threads: int,
    device: str,
) -> CurveAnnotator:
    """This process's annotator for ``key``, loaded on first use."""
    ann = _WARM.get(key)
    if ann is None:
        _WARM.clear()  # one classifier per process: memory stays bounded
        ann = _WARM[key] = CurveAnnotator(spec, checkpoints, None, threads, device)
    return ann
