"""Per-process caches and phase timing for training runs (sweep trials on reused Ray actors).

Why: a sweep runs many short trials on the same few datasets; with actor reuse the same worker
process runs trial after trial, and re-reading the datasets, re-chunking them and rebuilding the
evaluation environment each time was most of a short trial's cost. Entries are keyed by content
digest (a re-generated or re-annotated dataset gets a new key, so a cached copy is never stale)
and the cache is a small LRU bounded in entries and bytes, so a worker's memory stays flat
whatever the sweep does. Cached values are shared between runs: callers must not mutate them.

``Phases`` times the parts of one run; ``record_phase`` lets a caller (the sweep trial) add a
phase it timed before the run started, e.g. config validation, and ``record_nested`` a part of
a phase of the run in progress (``fit/report``: Tune reports inside the training loop). Nested
names contain a ``/`` so that summing the top-level phases never counts a second twice; every
phase but the MLflow ones also records its MLflow share as ``<phase>/mlflow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ambient_platform.tracking import mlflow_seconds

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Defaults: a few datasets of a few hundred MB each.
MAX_ENTRIES = 4
MAX_BYTES = 2 << 30


def nbytes(value: Any) -> int:
    """Approximate memory of a cached value: numpy arrays found one level down its attributes."""
    total = 0
    for v in [value, *getattr(value, "__dict__", {}).values()]:
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]
        total += sum(int(getattr(x, "nbytes", 0) or 0) for x in items)
    return total


class LruCache:
    """A thread-safe LRU bounded in entries and in (approximate) bytes; counts hits and misses."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        """The cached value of ``key``, or ``build()`` stored under it (if it fits)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
        value = build()
        size = nbytes(value)
        if size > self.max_bytes:
            return value
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries or self._bytes() > self.max_bytes:
                self._items.popitem(last=False)
        return value

    def _bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


#: Datasets as read (frames), chunked datasets, tasks (evaluation environments).
DATASETS = LruCache()
CHUNKS = LruCache(max_entries=2)
TASKS = LruCache(max_entries=4, max_bytes=MAX_BYTES)

_pending: dict[str, float] = {}
_current: list[Phases] = []  # the run in progress of this process (the newest ``Phases``)
#: Phases that are MLflow calls themselves: no ``/mlflow`` share recorded for them.
_MLFLOW_PHASES = ("log", "tracker")


def record_phase(name: str, seconds: float) -> None:
    """Add a phase timed before the next run of this process starts (e.g. config validation)."""
    _pending[name] = _pending.get(name, 0.0) + seconds


def drop_pending() -> None:
    """Forget phases recorded for a run that never started (a trial with nothing to train)."""
    _pending.clear()


def record_nested(name: str, seconds: float) -> None:
    """Add ``seconds`` to ``name`` (``<phase>/<part>``) of the run in progress, if any."""
    if _current:
        _current[0].add(name, seconds)


class Phases:
    """Seconds per phase of one run, logged as ``time/<phase>_s`` metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict(_pending)
        _pending.clear()
        _current[:] = [self]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, m0 = time.perf_counter(), mlflow_seconds()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)
            spent = mlflow_seconds() - m0
            if name not in _MLFLOW_PHASES and spent > 0.0:
                self.add(f"{name}/mlflow", spent)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}_s": round(v, 4) for k, v in self.seconds.items()}
        out["cache/dataset_hits"] = float(DATASETS.hits)
        out["cache/dataset_misses"] = float(DATASETS.misses)
        return out
