"""Score whole shards with classifier actors on Ray Data (the engine of annotate and watch).

A Ray Dataset with one block per shard -> ``map_batches`` with a callable class on an actor
pool (one classifier load per actor; the actor reads its shard with pyarrow, re-chunks it per
episode exactly as training chunks it and scores it) -> the driver receives each shard's rows
as they stream in and hands a complete shard to ``on_shard``. Streaming keeps memory flat in
the dataset size: an actor holds one shard at a time. (``read_parquet`` packs many small files
into one block, so results arrived in bursts and a crash lost whole bursts; one block per shard
keeps commits per shard.) The actor class lives in ``jobs.curve_annotator``, which imports
no planning code, so an actor's start is torch + classifier load only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from ambient_core.errors import DataError
from ambient_platform.config.annotation import AnnotationConfig
from ambient_platform.manifest import CurveSettings
from jobs.annotation_plan import ShardInput, annotation_columns, epoch_dir
from jobs.curve_annotator import CurveAnnotator

logger = logging.getLogger(__name__)

#: Called in the driver once per shard: (input, annotated table or None, error or None).
ShardHandler = Callable[[ShardInput, pa.Table | None, str | None], None]


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
    # A local classifier is resolved here, once: the actors then import no planning code.
    local = "://" not in settings.classifier_dir
    paths = {e: epoch_dir(settings.classifier_dir, e) for e in settings.epochs} if local else None
    ds = ray.data.from_items([{"path": p} for p in by_path], override_num_blocks=len(by_path))
    res = cfg.resources
    ds = ds.map_batches(
        CurveAnnotator,
        fn_constructor_kwargs={
            "settings": settings,
            "obs_keys": list(cfg.obs_keys),
            "fs_root": shards[0].root.uri,
            "columns": annotation_columns(cfg.obs_keys),
            "epoch_paths": paths,
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
) -> dict[str, float]:
    """Score ``shards`` on a Ray Data actor pool; ``on_shard(input, table, error)`` is called
    in the driver once per shard, as soon as all of its rows (or its error) have arrived.
    Returns the seconds to the first scored block (``first_block_s``: planning, actor start,
    classifier load and one shard) and in all (``wall_s``)."""
    t0 = time.perf_counter()
    timing = {"first_block_s": 0.0, "wall_s": 0.0}
    if not shards:
        return timing
    if len({inp.root.uri.split("://")[0] for inp in shards}) > 1:
        raise DataError("annotate local and s3:// datasets in separate runs")
    ds, by_path = _dataset(shards, cfg, settings, ray_address)
    parts: dict[str, list[pa.Table]] = {}
    got: dict[str, int] = {}
    quiet = not logger.isEnabledFor(logging.INFO)
    with tqdm(total=len(shards), desc="annotate", unit="shard", disable=quiet or None) as bar:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            timing["first_block_s"] = timing["first_block_s"] or time.perf_counter() - t0
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
    timing["wall_s"] = time.perf_counter() - t0
    return timing
