"""MLflow layout: one experiment per study, a run per training/annotation job, child runs by tag.

Everything goes through an explicit ``MlflowClient`` (no fluent global state), so the same code
works in the driver, in Ray workers (which do not inherit the driver's tracking URI) and across
processes (``parent_run_id`` is a tag, not a per-process run stack).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ambient_platform.settings import ambient_home

logger = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
SECRET_MARKERS = ("secret", "password", "token", "credential", "access_key")
#: Tag every run carries so a sweep's charts can filter out classifier and annotation runs.
KIND_TAG = "ambient.kind"
#: MLflow's description field of runs and experiments (rendered as Markdown in the UI).
NOTE_TAG = "mlflow.note.content"
#: The legacy ``kind`` tag values mapped onto ``ambient.kind`` (sweep|trial|classifier|...).
_KINDS = {"sweep-trial": "trial"}
#: Switch for queued writes of ``RunTracker`` metrics and tags: one background thread per
#: process writes them in order and ``RunTracker.flush`` waits for them (params stay
#: synchronous: a conflicting value must fail where it is logged). Not MLflow's own async
#: logging: ending a run with it waits for its queue thread, which polls every second
#: (``queue.get(timeout=1)``): 1.04 s per trial between reused-worker trials.
ASYNC_ENV = "AMBIENT_ASYNC_LOGGING"


def default_tracking_uri() -> str:
    home = ambient_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


_spent = [0.0]  # seconds this process's threads waited in MLflow calls (retry_locked)


def mlflow_seconds() -> float:
    """Seconds spent waiting for MLflow in this process so far (per-phase timing of runs)."""
    return _spent[0]


def retry_locked(fn: Any, *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call ``fn``; SQLite allows one writer, so back off on 'database is locked' instead of
    failing a run (every MLflow call of the platform goes through this)."""
    delay = 0.1
    t0 = time.perf_counter()
    try:
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # MlflowException wraps sqlite3.OperationalError
                if "locked" not in str(exc).lower() or i == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")
    finally:
        _spent[0] += time.perf_counter() - t0


_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (uri, name) -> id, known in this process


def ensure_experiment(uri: str, name: str) -> str:
    """Get or create an experiment (create it in the driver before trials start); the id is
    remembered per process, so a worker running trial after trial looks it up once."""
    known = _EXPERIMENTS.get((uri, name))
    if known is not None:
        return known
    exp_id = _get_or_create_experiment(uri, name)
    _EXPERIMENTS[(uri, name)] = exp_id
    return exp_id


def _get_or_create_experiment(uri: str, name: str) -> str:
    client = _client(uri)
    exp = retry_locked(client.get_experiment_by_name, name)
    if exp is not None:
        return str(exp.experiment_id)
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (ambient_home() / "mlartifacts" / name).as_uri()
    try:
        return str(
            retry_locked(client.create_experiment, name, artifact_location=artifact_location)
        )
    except Exception:
        exp = client.get_experiment_by_name(name)  # lost a creation race
        if exp is None:
            raise
        return str(exp.experiment_id)


def describe_experiment(uri: str, name: str, text: str) -> None:
    """Set an experiment's description (shown above its runs in the MLflow UI)."""
    client = _client(uri)
    exp_id = ensure_experiment(uri, name)
    retry_locked(client.set_experiment_tag, exp_id, NOTE_TAG, text)


def close_abandoned_runs(uri: str, experiment: str, tag: str, value: str, reason: str) -> int:
    """End as KILLED every RUNNING run of ``experiment`` whose ``tag`` is ``value``.

    For writers that hold a lease on what the tag names (an annotation root): while this
    process holds it, a RUNNING run of the same root belongs to a holder that was killed
    (``kill -9`` leaves no chance to end its run), so it would otherwise stay RUNNING forever.
    """
    client = _client(uri)
    exp = retry_locked(client.get_experiment_by_name, experiment)
    if exp is None:
        return 0
    query = f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'"
    runs = retry_locked(client.search_runs, [exp.experiment_id], filter_string=query)
    for run in runs:
        retry_locked(client.set_tag, run.info.run_id, "error", reason)
        retry_locked(client.set_terminated, run.info.run_id, "KILLED")
    return len(runs)


def async_logging() -> bool:
    """Whether metrics and tags are queued (see ``ASYNC_ENV``) instead of written now."""
    return os.environ.get(ASYNC_ENV, "").strip().lower() in ("1", "true", "yes")


_WRITER: list[ThreadPoolExecutor] = []
_WRITER_LOCK = threading.Lock()


def _writer(replace: ThreadPoolExecutor | None = None) -> ThreadPoolExecutor:
    """This process's one writer thread (its queue is drained at interpreter exit); a new one
    in place of ``replace``, which refused work."""
    with _WRITER_LOCK:
        if _WRITER and _WRITER[0] is replace:
            _WRITER.clear()
        if not _WRITER:
            _WRITER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-write"))
        return _WRITER[0]


def _submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Queue ``fn`` on the writer. Seen in reused Ray Tune workers: the executor shut down
    between two trials ("cannot schedule new futures after shutdown"); it is replaced once."""
    ex = _writer()
    try:
        return ex.submit(fn, *args, **kwargs)
    except RuntimeError:
        return _writer(replace=ex).submit(fn, *args, **kwargs)


class _Pending:
    """Async batches not yet known to be stored, per run: ``flush`` waits for them and
    writes again (synchronously, retrying on a locked SQLite store) any that failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, list[tuple[Any, list[Any], list[Any]]]] = {}

    def add(self, run_id: str, op: Any, metrics: list[Any], tags: list[Any]) -> None:
        with self._lock:
            self._ops.setdefault(run_id, []).append((op, metrics, tags))

    def flush(self, client: Any, run_id: str) -> None:
        with self._lock:
            ops = self._ops.pop(run_id, [])
        t0 = time.perf_counter()
        for op, metrics, tags in ops:
            try:
                op.result()
            except Exception as exc:
                logger.debug("async batch of run %s failed (%s); writing it again", run_id, exc)
                retry_locked(
                    client.log_batch, run_id, metrics=metrics, tags=tags, synchronous=True
                )
        _spent[0] += time.perf_counter() - t0


_PENDING = _Pending()


def _is_secret(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in SECRET_MARKERS)


class RunTracker:
    """One MLflow run, opened or reopened by id; params logged once, metrics any time."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunTracker:
        exp_id = ensure_experiment(uri, experiment)
        all_tags = dict(tags or {})
        if "kind" in all_tags and KIND_TAG not in all_tags:
            all_tags[KIND_TAG] = _KINDS.get(all_tags["kind"], all_tags["kind"])
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        client = _client(uri)
        try:
            run = retry_locked(client.create_run, exp_id, run_name=run_name, tags=all_tags)
        except Exception:
            # The remembered experiment id may be stale (the store was replaced): look again.
            if _EXPERIMENTS.pop((uri, experiment), None) is None:
                raise
            exp_id = ensure_experiment(uri, experiment)
            run = retry_locked(client.create_run, exp_id, run_name=run_name, tags=all_tags)
        return cls(uri, run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log immutable params once; secret-looking keys are refused, long values truncated."""
        from mlflow.entities import Param

        bad = [k for k in params if _is_secret(k)]
        if bad:
            raise ValueError(f"refusing to log secret-looking params to MLflow: {bad}")
        items = [Param(k[:250], str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            retry_locked(
                self.client.log_batch, self.run_id, params=items[i : i + 100], synchronous=True
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One ``log_batch`` per call (queued with async logging, see ``flush``)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items() if v is not None
        ]
        for i in range(0, len(items), 500):
            self._batch(items[i : i + 500], [])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags in one batch request (queued with async logging)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self._batch([], items[i : i + 100])

    def _batch(self, metrics: list[Any], tags: list[Any]) -> None:
        if not async_logging():
            retry_locked(self.client.log_batch, self.run_id, metrics=metrics, tags=tags)
            return
        try:
            op = _submit(
                retry_locked,
                self.client.log_batch,
                self.run_id,
                metrics=metrics,
                tags=tags,
                synchronous=True,
            )
        except RuntimeError as exc:  # the interpreter is exiting: write now, never lose it
            logger.debug("queued logging unavailable (%s); writing synchronously", exc)
            retry_locked(
                self.client.log_batch, self.run_id, metrics=metrics, tags=tags, synchronous=True
            )
            return
        _PENDING.add(self.run_id, op, metrics, tags)

    def flush(self) -> None:
        """Wait until every queued metric and tag of this run is stored (before a checkpoint
        says the work up to it is done, and before the run ends)."""
        _PENDING.flush(self.client, self.run_id)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            retry_locked(self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            retry_locked(self.client.log_artifact, self.run_id, str(p), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        retry_locked(self.client.log_dict, self.run_id, data, artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """Record a dataset (or annotation manifest) as a run input with its content digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type="path", source=source, schema=None)
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])]
        try:
            retry_locked(self.client.log_inputs, self.run_id, datasets=inputs)
        except Exception as exc:
            # Two trials registering the same dataset at once: one insert wins on SQLite; the
            # loser's retry finds the row and only links it to its run.
            if "UNIQUE constraint" not in str(exc):
                raise
            time.sleep(0.2)
            retry_locked(self.client.log_inputs, self.run_id, datasets=inputs)

    def end(self, status: str = "FINISHED") -> None:
        """Flush what is queued, then end the run: an ended run has all its data."""
        self.flush()
        retry_locked(self.client.set_terminated, self.run_id, status)

    def status(self) -> str:
        return str(self.client.get_run(self.run_id).info.status)

    @contextmanager
    def active(self) -> Iterator[RunTracker]:
        """End FINISHED on success, FAILED with the traceback as an artifact on error."""
        try:
            yield self
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                self.log_text(traceback.format_exc(), "error/traceback.txt")
                self.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
            finally:
                self.end(status)
            raise
        else:
            self.end("FINISHED")


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory for artifacts before upload (inside the project's home)."""
    base = ambient_home() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield Path(d)
