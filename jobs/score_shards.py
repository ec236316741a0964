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

The first run of a session pays the worker's cold start (process, ``import torch``, classifier)
once, but not on top of the driver's own set-up: ``start_scoring`` warms ``resources.actors``
workers with one ``warm_up`` task each as soon as the shards to score are known, and the
pipeline, built meanwhile, waits for them before its first task.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from ambient_core.errors import DataError
from ambient_platform.config.annotation import AnnotationConfig, AnnotationResources
from ambient_platform.manifest import CurveSettings, curve_column
from jobs.annotation_plan import ShardInput, annotation_columns, epoch_dir
from jobs.curve_annotator import Checkpoint, ScoreSpec, score_block, warm_up

logger = logging.getLogger(__name__)

#: Called in the driver once per shard: (input, annotated table or None, error or None).
ShardHandler = Callable[[ShardInput, pa.Table | None, str | None], None]
#: Chunks per forward pass on a GPU (a CPU keeps ``CurveSettings.score_batch``).
GPU_SCORE_BATCH = 1024
#: How long the pipeline waits for its workers' warm-up before it starts anyway.
WARM_TIMEOUT_S = 300.0


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


@dataclass
class Scoring:
    """The scoring side of one run, started before the driver's own set-up work (MLflow, the
    pipeline): Ray joined, the checkpoints in the object store, workers warming up."""

    ray: Any
    kwargs: dict[str, Any]  # score_block's arguments
    resources: AnnotationResources
    warming: list[Any]  # object refs of the warm_up tasks
    started: float  # time.perf_counter() when start_scoring was called


def start_scoring(
    shards: Sequence[ShardInput],
    cfg: AnnotationConfig,
    settings: CurveSettings,
    ray_address: str | None = None,
) -> Scoring:
    """Join (or start) Ray, share the checkpoints and warm ``resources.actors`` workers up.

    Each ``warm_up`` task imports torch and loads the classifier into a worker process, as the
    pipeline's first task there would. They run while the driver does its own set-up; the
    pipeline waits for them before its first task, so its tasks run on the warmed workers (6 of
    6 tasks did, measured) instead of starting more cold ones on a busy machine.
    """
    from ambient_platform.ray_runtime import ensure_ray

    if len({inp.root.uri.split("://")[0] for inp in shards}) > 1:
        raise DataError("annotate local and s3:// datasets in separate runs")
    started = time.perf_counter()
    ray = ensure_ray(ray_address)
    res = cfg.resources
    device = "cuda" if res.gpus_per_actor > 0 else "cpu"
    spec = score_spec(settings, cfg.obs_keys, device)
    checkpoints = read_checkpoints(settings)
    threads = max(1, int(res.cpus_per_actor))
    kwargs: dict[str, Any] = {
        "key": _warm_key(spec, checkpoints, threads, device),
        "spec": spec,
        # Read once here, shared by every worker through the object store.
        "checkpoints": ray.put(checkpoints),
        "threads": threads,
        "device": device,
    }
    task = ray.remote(warm_up).options(num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor)
    warming = [task.remote(**kwargs) for _ in range(min(res.actors, len(shards)))]
    kwargs["filesystem"] = shards[0].root.arrow_filesystem()[0] if shards else None
    return Scoring(ray, kwargs, res, warming, started)


def _dataset(shards: Sequence[ShardInput], scoring: Scoring) -> tuple[Any, dict[str, ShardInput]]:
    """The Ray Dataset of scored rows, one block per shard, and the shards by arrow path."""
    ray = scoring.ray
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
    res = scoring.resources
    ds = ray.data.from_items([{"path": p} for p in by_path], override_num_blocks=len(by_path))
    ds = ds.map_batches(
        score_block,
        fn_kwargs=scoring.kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=res.actors),
        num_cpus=res.cpus_per_actor,
        num_gpus=res.gpus_per_actor,
    )
    return ds, by_path


def _wait_warm(scoring: Scoring) -> float:
    """Wait (bounded) for the warm-up tasks; their errors surface again in the pipeline's
    tasks, where they are reported as before. Returns the seconds waited."""
    t0 = time.perf_counter()
    if scoring.warming:
        scoring.ray.wait(
            scoring.warming,
            num_returns=len(scoring.warming),
            timeout=WARM_TIMEOUT_S,
            fetch_local=False,
        )
    return time.perf_counter() - t0


def execute(
    shards: Sequence[ShardInput],
    cfg: AnnotationConfig,
    settings: CurveSettings,
    on_shard: ShardHandler,
    ray_address: str | None = None,
    scoring: Scoring | None = None,
) -> dict[str, float]:
    """Score ``shards`` with Ray Data tasks; ``on_shard(input, table, error)`` is called
    in the driver once per shard, as soon as all of its rows (or its error) have arrived.

    ``scoring`` is ``start_scoring``'s, called earlier so that the workers warm up while the
    caller does other work (started here if None). Returns, counted from ``start_scoring``, the
    seconds to the first scored block (``first_block_s``: Ray, worker start, classifier load
    and one shard) and in all (``wall_s``), until the pipeline started (``ready_s``: Ray
    joined, pipeline built, warm-up done) and how long it waited for the warm-up
    (``warm_wait_s``: worker start and classifier load not hidden behind the driver's work)."""
    timing = {"first_block_s": 0.0, "wall_s": 0.0, "warm_wait_s": 0.0, "ready_s": 0.0}
    if not shards:
        return timing
    if scoring is None:
        scoring = start_scoring(shards, cfg, settings, ray_address)
    t0 = scoring.started
    ds, by_path = _dataset(shards, scoring)
    timing["warm_wait_s"] = _wait_warm(scoring)
    timing["ready_s"] = time.perf_counter() - t0
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
    logger.debug("scoring timing: %s", {k: round(v, 2) for k, v in timing.items()})
    return timing
