"""Score whole shards with classifier actors on Ray Data (the engine of annotate and watch).

A Ray Dataset with one block per shard -> ``map_batches`` with a callable class on an actor
pool (one classifier load per actor; the actor reads its shard with pyarrow, re-chunks it per
episode exactly as training chunks it and scores it) -> the driver receives each shard's rows
as they stream in and hands a complete shard to ``on_shard``. Streaming keeps memory flat in
the dataset size: an actor holds one shard at a time. (``read_parquet`` packs many small files
into one block, so results arrived in bursts and a crash lost whole bursts; one block per shard
keeps commits per shard.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ambient_core.data import DataError
from ambient_platform.config.annotation import AnnotationConfig
from ambient_platform.manifest import CurveSettings, curve_column
from ambient_platform.storage import StorageRoot
from jobs.annotation_plan import ShardInput, annotation_columns, epoch_dir

logger = logging.getLogger(__name__)

#: Called in the driver once per shard: (input, annotated table or None, error or None).
ShardHandler = Callable[[ShardInput, pa.Table | None, str | None], None]


class CurveAnnotator:
    """Ray Data actor: loads the classifier checkpoints once, scores whole shards (blocks)."""

    def __init__(
        self,
        settings: CurveSettings,
        obs_keys: list[str],
        threads: int = 1,
        fs_root: str | None = None,
        columns: list[str] | None = None,
    ) -> None:
        import torch

        from ambient_core.classifier import load_classifier, read_classifier_meta
        from ambient_core.data import ChunkSpec

        torch.set_num_threads(threads)
        self.s = settings
        paths = {e: epoch_dir(self.s.classifier_dir, e) for e in self.s.epochs}
        self.models = {e: load_classifier(path) for e, path in paths.items()}
        # Every epoch of a run chunks alike: rows are re-chunked as the classifier was trained.
        first = paths[self.s.epochs[0]]
        self.chunk = ChunkSpec(**read_classifier_meta(first)["extra"]["chunk"])
        self.obs_keys = obs_keys
        self.columns = columns
        self.fs = StorageRoot(fs_root).arrow_filesystem()[0] if fs_root else None

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


def _dataset(
    shards: Sequence[ShardInput],
    cfg: AnnotationConfig,
    settings: CurveSettings,
    ray_address: str | None,
) -> tuple[Any, dict[str, ShardInput]]:
    """The Ray Dataset of scored rows, one block per shard, and the shards by arrow path."""
    from ambient_platform.ray_runtime import ensure_ray

    ray = ensure_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = logger.isEnabledFor(logging.DEBUG)
    # Small shards would otherwise be bundled into one task whose results all arrive at the
    # end; one shard per bundle keeps commits (and crash recovery) per shard.
    ctx.target_min_block_size = 1
    by_path = {}
    for inp in shards:
        fs, base = inp.root.arrow_filesystem()
        by_path[f"{base.rstrip('/')}/{inp.key}"] = inp
    ds = ray.data.from_items([{"path": p} for p in by_path], override_num_blocks=len(by_path))
    res = cfg.resources
    ds = ds.map_batches(
        CurveAnnotator,
        fn_constructor_kwargs={
            "settings": settings,
            "obs_keys": list(cfg.obs_keys),
            "fs_root": shards[0].root.uri,
            "columns": annotation_columns(cfg.obs_keys),
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=res.actors),
        num_cpus=res.cpus_per_actor,
        num_gpus=res.gpus_per_actor,
    )
    return ds, by_path


def execute(
    shards: Sequence[ShardInput],
    cfg: AnnotationConfig,
    settings: CurveSettings,
    on_shard: ShardHandler,
    ray_address: str | None = None,
) -> None:
    """Score ``shards`` on a Ray Data actor pool; ``on_shard(input, table, error)`` is called
    in the driver once per shard, as soon as all of its rows (or its error) have arrived."""
    if not shards:
        return
    if len({inp.root.uri.split("://")[0] for inp in shards}) > 1:
        raise DataError("annotate local and s3:// datasets in separate runs")
    ds, by_path = _dataset(shards, cfg, settings, ray_address)
    parts: dict[str, list[pa.Table]] = {}
    got: dict[str, int] = {}
    quiet = not logger.isEnabledFor(logging.INFO)
    with tqdm(total=len(shards), desc="annotate", unit="shard", disable=quiet or None) as bar:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for p in block.column("path").unique().to_pylist():
                sub = block.filter(pc.equal(block.column("path"), p))
                inp = by_path[p]
                err = [e for e in sub.column("error").to_pylist() if e]
                if err:
                    parts.pop(p, None)
                    on_shard(inp, None, err[0])
                    bar.update()
                    continue
                parts.setdefault(p, []).append(sub)
                got[p] = got.get(p, 0) + sub.num_rows
                if got[p] == inp.rows:
                    on_shard(inp, pa.concat_tables(parts.pop(p)), None)
                    bar.update()
    if parts:
        raise RuntimeError(f"annotation produced partial shards {[by_path[p].key for p in parts]}")
