"""Score whole shards with the classifier on Ray Data (the engine of annotate and watch).

A Ray Dataset with one block per shard -> ``map_batches`` of ``jobs.curve_annotator.score_block``
on at most ``resources.actors`` concurrent tasks (each reads its shard with pyarrow, re-chunks it
per episode exactly as training chunks it and scores it) -> the driver receives each shard's rows
as they stream in and hands a complete shard to ``on_shard``. Streaming keeps memory flat in the
dataset size: a worker holds one shard at a time. (``read_parquet`` packs many small files into
one block, so results arrived in bursts and a crash lost whole bursts; one block per shard keeps
commits per shard.)

Why tasks, not an actor pool: a fresh actor pays process start, torch import and classifier load
on every run (4-6 s of every run on a loaded 2-core machine, longer than scoring a small
dataset). Ray reuses worker processes between tasks, and ``score_block`` keeps its annotator per
process (keyed by the checkpoints' bytes and the settings), so torch is imported and the
classifier loaded once per worker process per Ray session: the first run pays it, every later
run or watch pass starts scoring at once. The checkpoints are read once by the driver and shared
through the object store, so workers never touch the classifier's storage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from ambient_core.errors import DataError
from ambient_platform.config.annotation import AnnotationConfig
from ambient_platform.manifest import CurveSettings, curve_column
from jobs.annotation_plan import ShardInput, annotation_columns, epoch_dir
from jobs.curve_annotator import Checkpoint, ScoreSpec, score_block

logger = logging.getLogger(__name__)

#: Called in the driver once per shard: (input, annotated table or None, error or None).
ShardHandler = Callable[[ShardInput, pa.Table | None, str | None], None]
#: Chunks per forward pass on a GPU (a CPU keeps ``CurveSettings.score_batch``).
GPU_SCORE_BATCH = 1024


def score_spec(settings: CurveSettings, obs_keys: Sequence[str], device: str = "cpu") -> ScoreSpec:
    """A worker's view of the curve settings; a GPU scores bigger batches than a CPU."""
    batch = settings.score_batch if device == "cpu" else max(settings.score_batch, GPU_SCORE_BATCH)
    return ScoreSpec(
        columns={e: curve_column(e) for e in settings.epochs},
        grid_levels=tuple(settings.grid_levels),
        num_draws=settings.num_draws,
        seed=settings.seed,
        score_batch=batch,
        obs_keys=tuple(obs_keys),
        read_columns=tuple(annotation_columns(obs_keys)),
    )


def read_checkpoints(settings: CurveSettings) -> dict[int, Checkpoint]:
    """The files of each classifier epoch (an s3:// classifier: from this node's copy)."""
    out: dict[int, Checkpoint] = {}
    for e in settings.epochs:
        d = Path(epoch_dir(settings.classifier_dir, e))
        out[e] = {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}
    return out


def _warm_key(
    spec: ScoreSpec, checkpoints: dict[int, Checkpoint], threads: int, device: str
) -> str:
    """What a worker's cached annotator must match: checkpoint bytes, settings, threads, device."""
    h = hashlib.sha256(repr((spec, threads, device)).encode())
    for e, files in sorted(checkpoints.items()):
        for name, data in sorted(files.items()):
            h.update(f"{e}/{name}".encode())
            h.update(data)
    return h.hexdigest()


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
    res = cfg.resources
    device = "cuda" if res.gpus_per_actor > 0 else "cpu"
    spec = score_spec(settings, cfg.obs_keys, device)
    checkpoints = read_checkpoints(settings)
    kwargs = {
        "spec": spec,
        # Read once here, shared by every worker through the object store.
        "checkpoints": ray.put(checkpoints),
        "filesystem": shards[0].root.arrow_filesystem()[0],
        "threads": max(1, int(res.cpus_per_actor)),
        "device": device,
    }
    kwargs["key"] = _warm_key(spec, checkpoints, kwargs["threads"], device)
    ds = ray.data.from_items([{"path": p} for p in by_path], override_num_blocks=len(by_path))
    ds = ds.map_batches(
        score_block,
        fn_kwargs=kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=res.actors),
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
    """Score ``shards`` with Ray Data tasks; ``on_shard(input, table, error)`` is called
    in the driver once per shard, as soon as all of its rows (or its error) have arrived.
    Returns the seconds to the first scored block (``first_block_s``: planning, worker start,
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
