"""The classifier actor of annotation: scores whole shards (the worker side of ``score_shards``).

Kept apart from ``jobs.score_shards`` so that a Ray worker unpickling it imports only numpy,
pyarrow, torch and the classifier: not the planning side (dataset layout, LeRobot, pandas) nor
MLflow, which took seconds of every actor's start on a loaded 2-core machine. Classifier epochs
are resolved to local directories by the driver when the classifier is local (``epoch_paths``);
an s3:// classifier is downloaded per node by the actor (``jobs.train_classifier``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_core.errors import DataError
from ambient_platform.manifest import CurveSettings, curve_column
from ambient_platform.storage import StorageRoot


class CurveAnnotator:
    """Ray Data actor: loads the classifier checkpoints once, scores whole shards (blocks)."""

    def __init__(
        self,
        settings: CurveSettings,
        obs_keys: list[str],
        threads: int = 1,
        fs_root: str | None = None,
        columns: list[str] | None = None,
        epoch_paths: dict[int, str] | None = None,
    ) -> None:
        t0 = time.perf_counter()
        import torch

        from ambient_core.classifier import load_classifier, read_classifier_meta
        from ambient_core.data import ChunkSpec

        torch.set_num_threads(threads)
        self.s = settings
        paths = epoch_paths or _download_epochs(settings)
        self.models = {e: load_classifier(paths[e]) for e in self.s.epochs}
        # Every epoch of a run chunks alike: rows are re-chunked as the classifier was trained.
        first = paths[self.s.epochs[0]]
        self.chunk = ChunkSpec(**read_classifier_meta(first)["extra"]["chunk"])
        self.obs_keys = obs_keys
        self.columns = columns
        self.fs = StorageRoot(fs_root).arrow_filesystem()[0] if fs_root else None
        #: Seconds this actor took to import torch and load its classifiers (benchmarks).
        self.start_s = time.perf_counter() - t0

    def __call__(self, items: pa.Table) -> pa.Table:
        """Read and score the shards named in ``items`` (column ``path``)."""
        tables = []
        for path in items.column("path").to_pylist():
            try:
                t = pq.read_table(path, filesystem=self.fs, columns=self.columns)
            except (pa.ArrowInvalid, OSError) as exc:
                tables.append(_error_row(path, f"cannot read: {exc}", self.s.epochs))
                continue
            try:
                tables.append(self.annotate_table(t.append_column("path", [[path] * t.num_rows])))
            except Exception as exc:  # a bad shard must be reported, not kill the pipeline
                tables.append(_error_row(path, f"{type(exc).__name__}: {exc}", self.s.epochs))
        return pa.concat_tables(tables) if tables else _empty(self.s.epochs)

    def annotate_table(self, block: pa.Table) -> pa.Table:
        """Score rows of one or more whole shards (column ``path`` names the shard)."""
        paths = block.column("path").unique().to_pylist()
        if not paths:
            return _empty(self.s.epochs)
        return pa.concat_tables([self._shard(block, p) for p in paths])

    def _shard(self, block: pa.Table, path: str) -> pa.Table:
        from ambient_core.data import ChunkDataset, frames_from_table

        rows = block.filter(pc.equal(block.column("path"), path))
        try:
            frames = frames_from_table(rows, ["action", *self.obs_keys], path)
            data = ChunkDataset([frames], self.chunk, self.obs_keys)
        except DataError as exc:
            return _error_row(path, str(exc), self.s.epochs)
        ids, lengths, frame = _row_chunks(frames.episode_bounds, data, self.chunk.pad_before)
        cols: dict[str, pa.Array] = {
            "path": pa.array([path] * len(ids)),
            "episode_index": pa.array(np.repeat(frames.episode_index, lengths)),
            "frame_index": pa.array(frame),
            "error": pa.nulls(len(ids), pa.string()),
        }
        for e in self.models:
            curves = self._curves(e, data, ids)
            flat = pa.array(curves.astype(np.float32).reshape(-1))
            cols[curve_column(e)] = pa.FixedSizeListArray.from_arrays(flat, curves.shape[1])
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


def _download_epochs(settings: CurveSettings) -> dict[int, str]:
    """Local directories of the classifier's epochs (an s3:// classifier: fetched per node)."""
    from jobs.annotation_plan import epoch_dir

    return {e: epoch_dir(settings.classifier_dir, e) for e in settings.epochs}


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


def _empty(epochs: Sequence[int]) -> pa.Table:
    return _error_row("", None, epochs).slice(0, 0)


def _error_row(path: str, msg: str | None, epochs: Sequence[int]) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "path": pa.array([path]),
        "episode_index": pa.array([-1], pa.int64()),
        "frame_index": pa.array([-1], pa.int64()),
        "error": pa.array([msg], pa.string()),
    }
    for e in epochs:
        cols[curve_column(e)] = pa.array([[]], pa.list_(pa.float32()))
    return pa.table(cols)
