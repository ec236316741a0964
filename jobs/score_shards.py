"""Score whole shards with the classifier on Ray tasks (the engine of annotate and watch).

One Ray task per shard (``jobs.curve_annotator.score_shard``: read the shard with pyarrow,
re-chunk it per episode exactly as training chunks it, score it), at most ``resources.actors``
of them at a time, anywhere in the cluster; the driver takes each shard's rows as its task ends
and hands them to ``on_shard``, so commits (and crash recovery) are per shard and memory is flat
in the dataset size: a worker holds one shard at a time and at most ``resources.actors``
results wait for the driver.

Why plain tasks, not Ray Data: the pipeline was one block per shard through ``map_batches`` on
a task pool, so Ray Data added nothing a task per shard lacks, and it cost its import in every
worker and the driver (2.9 s each on a loaded 2-core machine) and its streaming executor's CPU
in the driver. Measured on 2 cores at 35k rows against a single-process torch loop
(benchmarks/annotate_throughput.py): Ray Data 0.79x in a fresh Ray session and 0.96x warm,
tasks 0.84-0.95x and 0.75-1.22x (median 1.05x; the spread is mostly the loop's own).

Why tasks, not an actor pool: a fresh actor pays process start, torch import and classifier load
on every run (4-6 s of every run on a loaded 2-core machine, longer than scoring a small
dataset). Ray reuses worker processes between tasks, and ``score_shard`` keeps its annotator per
process (keyed by the checkpoints' bytes and the settings), so torch is imported and the
classifier loaded once per worker process per Ray session: the first run pays it, every later
run or watch pass starts scoring at once. The checkpoints are read once by the driver and shared
through the object store, so workers never touch the classifier's storage.

The first run of a session pays the worker's cold start (process, ``import torch``, classifier)
once, but not on top of the driver's own set-up: ``start_scoring`` warms ``resources.actors``
workers with one ``warm_up`` task each as soon as the shards to score are known, and
``execute`` waits for them before its first scoring task, which then runs on a warmed worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from ambient_core.errors import DataError
from ambient_platform.config.annotation import AnnotationConfig, AnnotationResources
from ambient_platform.manifest import CurveSettings, curve_column
from jobs.annotation_plan import ShardInput, annotation_columns, epoch_dir
from jobs.curve_annotator import Checkpoint, ScoreSpec, SharedCheckpoints, score_shard, warm_up

logger = logging.getLogger(__name__)

#: Called in the driver once per shard: (input, annotated table or None, error or None).
ShardHandler = Callable[[ShardInput, pa.Table | None, str | None], None]
#: Chunks per forward pass on a GPU (a CPU keeps ``CurveSettings.score_batch``).
GPU_SCORE_BATCH = 1024
#: How long scoring waits for its workers' warm-up before it starts anyway.
WARM_TIMEOUT_S = 300.0
#: Retries of a scoring task whose worker died; then the shard is reported as bad.
TASK_RETRIES = 3


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
    """The scoring side of one run, started before the driver's own set-up work (MLflow):
    Ray joined, the checkpoints in the object store, workers warming up."""

    ray: Any
    kwargs: dict[str, Any]  # score_shard's arguments, but the path
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
    first scoring task there would. They run while the driver does its own set-up; the
    scoring waits for them before its first task, so its tasks run on the warmed workers
    instead of starting more cold ones on a busy machine.
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
        "checkpoints": SharedCheckpoints(ray.put(checkpoints)),
        "threads": threads,
        "device": device,
    }
    task = ray.remote(warm_up).options(num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor)
    warming = [task.remote(**kwargs) for _ in range(min(res.actors, len(shards)))]
    kwargs["filesystem"] = shards[0].root.arrow_filesystem()[0] if shards else None
    return Scoring(ray, kwargs, res, warming, started)


def _arrow_paths(shards: Sequence[ShardInput]) -> dict[str, ShardInput]:
    """The shards by their path in their root's arrow filesystem (what a task reads)."""
    by_path = {}
    for inp in shards:
        _, base = inp.root.arrow_filesystem()
        by_path[f"{base.rstrip('/')}/{inp.key}"] = inp
    return by_path


def _scored(
    paths: Sequence[str], scoring: Scoring, fn: Callable[..., pa.Table] = score_shard
) -> Generator[tuple[str, pa.Table | str], None, None]:
    """(path, ``fn(path, **scoring.kwargs)``) of each shard as its task ends, with at most
    ``resources.actors`` tasks submitted at a time: that is the run's parallelism on any
    cluster, and no more results than that wait in the object store for the driver. A task
    that ends is replaced before its result is handed on, so the caller's work on it (writing
    the shard) overlaps the next task instead of leaving a worker idle. A shard whose worker
    died ``TASK_RETRIES`` + 1 times (a crash, out of memory, its node lost) comes with an error
    message instead of a table: it is that shard's error, not the run's. Tasks still running
    when the caller stops (an error, a lost lease) are cancelled, not left to finish."""
    ray, res = scoring.ray, scoring.resources
    task = ray.remote(fn).options(
        num_cpus=res.cpus_per_actor,
        num_gpus=res.gpus_per_actor,
        max_retries=TASK_RETRIES,
        scheduling_strategy="DEFAULT",  # never inside a caller's placement group
    )
    died = (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.OutOfMemoryError,
        ray.exceptions.NodeDiedError,
    )
    todo = deque(paths)
    running: dict[Any, str] = {}  # object ref -> path

    def top_up() -> None:
        while todo and len(running) < max(res.actors, 1):
            path = todo.popleft()
            running[task.remote(path, **scoring.kwargs)] = path

    try:
        top_up()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            path = running.pop(done[0])
            top_up()
            try:
                result: pa.Table | str = ray.get(done[0])
            except died as exc:
                tries = TASK_RETRIES + 1
                result = f"its worker died on each of {tries} tries ({type(exc).__name__})"
            yield path, result
    finally:
        for ref in running:
            with contextlib.suppress(Exception):  # best effort: it may have just ended
                ray.cancel(ref)


def _wait_warm(scoring: Scoring) -> float:
    """Wait (bounded) for the warm-up tasks; their errors surface again in the scoring
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
    """Score ``shards`` with Ray tasks; ``on_shard(input, table, error)`` is called in the
    driver once per shard, as soon as its task has ended.

    ``scoring`` is ``start_scoring``'s, called earlier so that the workers warm up while the
    caller does other work (started here if None). Returns, counted from ``start_scoring``, the
    seconds to the first scored shard (``first_shard_s``: Ray, worker start, classifier load
    and one shard) and in all (``wall_s``), until scoring started (``ready_s``: Ray joined,
    warm-up done) and how long it waited for the warm-up (``warm_wait_s``: worker start and
    classifier load not hidden behind the driver's work)."""
    timing = {"first_shard_s": 0.0, "wall_s": 0.0, "warm_wait_s": 0.0, "ready_s": 0.0}
    if not shards:
        return timing
    if scoring is None:
        scoring = start_scoring(shards, cfg, settings, ray_address)
    t0 = scoring.started
    by_path = _arrow_paths(shards)
    timing["warm_wait_s"] = _wait_warm(scoring)
    timing["ready_s"] = time.perf_counter() - t0
    quiet = not logger.isEnabledFor(logging.INFO)
    with (
        tqdm(total=len(shards), desc="annotate", unit="shard", disable=quiet or None) as bar,
        contextlib.closing(_scored(list(by_path), scoring)) as results,
    ):
        for path, result in results:
            timing["first_shard_s"] = timing["first_shard_s"] or time.perf_counter() - t0
            _hand_over(by_path[path], result, on_shard)
            bar.update()
    timing["wall_s"] = time.perf_counter() - t0
    logger.debug("scoring timing: %s", {k: round(v, 2) for k, v in timing.items()})
    return timing


def _hand_over(inp: ShardInput, result: pa.Table | str, on_shard: ShardHandler) -> None:
    """Give ``on_shard`` the shard's scored rows, or its error. A table without every row the
    shard had when it was listed is an error too (the file changed since), never committed."""
    if isinstance(result, str):
        on_shard(inp, None, result)
        return
    errors = [e for e in result.column("error").to_pylist() if e]
    if errors:
        on_shard(inp, None, errors[0])
    elif result.num_rows == inp.rows:
        on_shard(inp, result, None)
    else:
        changed = f"{result.num_rows} rows, {inp.rows} when it was listed: it changed since"
        on_shard(inp, None, changed)
