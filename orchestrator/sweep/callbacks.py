"""Driver-side Tune callbacks: MLflow bookkeeping a trial cannot do itself, and the live view
(the index ``sweep status`` reads, one log line per finished trial, a progress bar with ETA and
report refreshes as trials finish)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from tqdm import tqdm

from ambient_platform.config.naming import PARAM_SPACE_KEY, trial_label
from ambient_platform.config.sweep import SEED_KEY
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import RunTracker
from jobs.trial import close_run, find_trial_run
from jobs.trial_node import RETRY_AFTER_TAG, RETRY_REASON_TAG
from orchestrator.sweep.results import fmt
from orchestrator.sweep.state import SweepIndex, SweepInfo

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
#: The index is rewritten at most this often while trials change (and at the end).
INDEX_WRITE_S = 1.0
DONE = ("finished", "stopped_early", "errored")


class TrialRunCloser(Callback):
    """A trial stopped by the scheduler is killed right after its report, so its child run is
    ended here: FINISHED with ``stopped_early=true`` (or KILLED if it never reported). A trial
    whose actor died ends FAILED. Runs the trial already ended are left alone."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str) -> None:
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id

    def _run_id(self, trial: Any) -> str | None:
        last = trial.last_result or {}
        return last.get("mlflow_run_id") or find_trial_run(
            self.uri, self.experiment, self.parent_run_id, trial.trial_id
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            last = trial.last_result or {}
            if last.get("final"):
                return
            run_id = self._run_id(trial)
            if run_id is None:
                return
            tracker = RunTracker(self.uri, run_id)
            if "round" not in last:
                close_run(self.uri, run_id, "KILLED", "stopped before its first report")
                return
            tracker.set_tags({"stopped_early": "true", "stopped_at_round": last["round"]})
            if tracker.status() == "RUNNING":
                tracker.end("FINISHED")
        except Exception:  # never take the driver down for bookkeeping
            logger.exception("closing the MLflow run of trial %s", trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            run_id = self._run_id(trial)
            if run_id is not None:
                err = getattr(trial, "error_file", None) or "the trial's actor died"
                close_run(self.uri, run_id, "FAILED", f"Ray trial error: {err}")
        except Exception:
            logger.exception("closing the MLflow run of trial %s", trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tell the next attempt why it runs: its run gets ``retry_reason`` for the attempt
        that failed (the trial itself only knows that attempt did not finish)."""
        try:
            run_id = self._run_id(trial)
            if run_id is None:
                return
            tracker = RunTracker(self.uri, run_id)
            attempt = tracker.client.get_run(run_id).data.tags.get("attempt", "1")
            reason, _ = retry_cause(trial)
            tracker.set_tags({RETRY_REASON_TAG: reason, RETRY_AFTER_TAG: attempt})
        except Exception:
            logger.exception("recording why trial %s is retried", trial.trial_id)


#: How Ray says a trial's actor went down with its node (GCS message, Ray 2.60).
_NODE_DIED = re.compile(r"node has died\. Node Id: ([0-9a-f]+)|NodeDiedError|node is dead")


def retry_cause(trial: Any) -> tuple[str, str | None]:
    """(one-line reason, id of the lost node or None) from the last failure Tune recorded
    for a trial it is about to retry."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path:
        with contextlib.suppress(OSError):
            text = Path(path).read_text(errors="replace").rsplit("Failure #", 1)[-1]
    m = _NODE_DIED.search(text)
    if m is not None:
        node = m.group(1) or "unknown"
        return f"node {node[:12]} lost", node
    lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
    return (f"error: {lines[-1][:300]}" if lines else "error (no message recorded)"), None


def outcome_of(status: str, last: dict[str, Any]) -> str:
    if status == "ERROR":
        return "errored"
    if status == "TERMINATED":
        if last.get("final"):
            return "finished"
        return "stopped_early" if "round" in last else "terminated"
    return status.lower()


def forget_tune_statistics(trial: Any) -> None:
    """Drop Tune's running statistics of an ended trial (min, max, mean, last-5 and last-10
    means of every numeric key it reported: ~33 KB a trial, kept for the whole sweep). Only
    Tune's analysis API reads them, which sweeps never use: reports are built from MLflow, and
    the trial's last result stays."""
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and hasattr(meta, "metric_analysis"):
        meta.metric_analysis = {}
        meta.metric_n_steps = {}


#: The live views of the sweeps this process drives, by sweep name (see ``SweepMonitor``).
_LIVE: dict[str, LiveView] = {}


class SweepMonitor(Callback):
    """Tune callback that forwards to this process's ``LiveView`` of the sweep.

    Tune pickles its callbacks into ``tuner.pkl`` and ``Tuner.restore`` brings back those
    pickled objects, not the driver's new ones: so the callback holds only the sweep name and
    looks up the live view (index, progress bar, report refresh) the current driver registered.
    """

    def __init__(self, view: LiveView) -> None:
        self.key = view.info.name
        _LIVE[self.key] = view

    @property
    def view(self) -> LiveView | None:
        return _LIVE.get(self.key)

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        if self.view is not None:
            self.view.setup()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.view is not None:
            self.view.trial_started(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.view is not None:
            self.view.step(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.view is not None:
            self.view.ended(trial, "TERMINATED")
        forget_tune_statistics(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.view is not None:
            self.view.ended(trial, "ERROR")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.view is not None:
            self.view.recovered(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        view = _LIVE.pop(self.key, None)
        if view is not None:
            view.close(trials)


class LiveView:
    """Keeps ``ambient_index.json`` current, logs a line per finished trial, drives a tqdm bar
    and asks for a report refresh whenever a trial ends.

    Its cost must not grow with the sweep: Tune calls ``step`` many times a second with every
    trial, so only trials still in play are looked at (an entry is rebuilt when what it is made
    of changed), and the index, which holds every trial, is written at most every
    ``INDEX_WRITE_S`` (rewriting it on every start and end made 200 trials cost 13 s)."""

    def __init__(
        self,
        info: SweepInfo,
        root: StorageRoot,
        index: SweepIndex,
        on_trial_end: Callable[[], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.info, self.root, self.index = info, root, index
        self.on_trial_end = on_trial_end
        self.progress = progress
        self.bar: Any = None
        self.last_write = 0.0
        self.dirty = False
        self.started: dict[str, float] = {}
        self.seen: dict[str, tuple[Any, ...]] = {}  # trial id -> _inputs at its last sync
        self.settled: set[str] = set()  # ended under this driver: Tune changes them no more
        self.done = {k for k, t in index.trials.items() if t.get("outcome") in DONE}

    # -- index

    def _inputs(self, trial: Any) -> tuple[Any, ...]:
        """What a trial's entry is computed from, besides its fixed config."""
        last = trial.last_result or {}
        return (
            trial.status,
            "round" in last,
            last.get("round"),
            last.get("final"),
            last.get(self.info.metric),
            last.get("mlflow_run_id"),
        )

    def _entry(self, trial: Any) -> dict[str, Any]:
        last = dict(trial.last_result or {})
        point = dict((trial.config or {}).get(PARAM_SPACE_KEY) or {})
        seed = point.pop(SEED_KEY, None)
        old = self.index.trials.get(trial.trial_id, {})
        entry = {
            **old,
            "trial_id": trial.trial_id,
            "status": trial.status,
            "outcome": outcome_of(trial.status, last),
            "label": trial_label(point, self.info.labels, seed),
            "params": point,
            "seed": seed,
        }
        if "round" in last:
            entry.update(
                round=last.get("round"),
                final=bool(last.get("final")),
                value=last.get(self.info.metric),
                mlflow_run_id=last.get("mlflow_run_id"),
            )
        return entry

    def _put(self, trial_id: str, entry: dict[str, Any]) -> None:
        self.index.trials[trial_id] = entry
        if entry.get("outcome") in DONE:
            self.done.add(trial_id)
        else:
            self.done.discard(trial_id)
        self.dirty = True

    def _sync(self, trials: list[Any]) -> bool:
        changed = False
        for t in trials:
            if t.trial_id in self.settled:
                continue
            inputs = self._inputs(t)
            if self.seen.get(t.trial_id) == inputs and t.trial_id in self.index.trials:
                continue
            self.seen[t.trial_id] = inputs
            e = self._entry(t)
            if self.index.trials.get(t.trial_id) != e:
                self._put(t.trial_id, e)
                changed = True
            if t.status in ("TERMINATED", "ERROR"):  # e.g. ended before a resume
                self.settled.add(t.trial_id)
        return changed

    def write(self, force: bool = False) -> None:
        """Write the index now (``force``), once it changed and ``INDEX_WRITE_S`` passed, or
        every ``HEARTBEAT_S`` (``sweep status`` tells a silent driver by the index's age)."""
        now = time.time()
        since = now - self.last_write
        if force or (self.dirty and since >= INDEX_WRITE_S) or since >= HEARTBEAT_S:
            with contextlib.suppress(Exception):
                self.index.write(self.root)
                self.dirty = False
            self.last_write = now

    # -- what the Tune hooks do

    def setup(self) -> None:
        self.bar = tqdm(
            total=self.index.n_trials,
            initial=len(self.done),
            desc=f"sweep {self.info.name}",
            unit="trial",
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )

    def trial_started(self, trial: Any) -> None:
        """A start of a trial the index saw start and not end is a retry (Tune's, after an
        error, or the restart of an unfinished trial when the sweep resumes)."""
        old = self.index.trials.get(trial.trial_id, {})
        if old.get("started") and old.get("outcome") not in DONE:
            self.index.retries += 1
        self.started[trial.trial_id] = time.time()
        self.settled.discard(trial.trial_id)
        self._put(trial.trial_id, {**self._entry(trial), "started": time.time()})
        self.write()

    def recovered(self, trial: Any) -> None:
        """Tune will retry a failed trial: note a lost node (the retry is counted when the
        trial starts again)."""
        reason, node = retry_cause(trial)
        logger.warning("trial %s failed and will be retried: %s", trial.trial_id, reason)
        if node is not None and node not in self.index.lost_nodes:
            self.index.lost_nodes.append(node)
        self.index.trials.setdefault(trial.trial_id, self._entry(trial))["retry_reason"] = reason
        self.dirty = True
        self.write()

    def step(self, trials: list[Any]) -> None:
        self._sync(trials)
        self.write()

    def ended(self, trial: Any, status: str) -> None:
        """Tune calls the end hooks before it sets the trial's final status: take it from the
        hook that fired."""
        entry = self._entry(trial)
        start = self.started.get(trial.trial_id) or entry.get("started")
        entry["duration_s"] = time.time() - start if start else None
        entry["status"] = status
        entry["outcome"] = outcome_of(status, dict(trial.last_result or {}))
        self._put(trial.trial_id, entry)
        self.settled.add(trial.trial_id)
        self.write()
        total = self.index.n_trials or len(self.index.trials)
        dur = "" if entry["duration_s"] is None else f", {entry['duration_s']:.0f} s"
        logger.info(
            "[%d/%d] %s: %s %s (%s%s)",
            len(self.done),
            total,
            entry["label"],
            self.info.metric,
            fmt(entry.get("value")),
            entry["outcome"].replace("_", " "),
            dur,
        )
        if self.bar is not None:
            self.bar.update(1)
        if self.on_trial_end is not None:
            self.on_trial_end()

    def close(self, trials: list[Any]) -> None:
        self._sync(trials)
        self.write(force=True)
        if self.bar is not None:
            self.bar.close()


#: A live report refresh waits at least this many times the last build took: the build shares
#: the machine with the trials (on 2 cores, 5x cost them ~15% of a core, 20x about 5%).
REFRESH_COST_RATIO = 20.0
#: ... and until the trials ended since the last build are at least this share of those ended
#: before it: a build reads every trial, so a refresh per trial made the refreshes of a long
#: sweep cost O(N^2); spaced geometrically they add up to about 1 / share final builds.
REFRESH_GROWTH = 0.1


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Hand the heap a report build freed back to the OS (glibc's ``malloc_trim``, a few ms;
    a no-op elsewhere): glibc keeps freed memory below the top of its heaps, so each live
    refresh of a 1,000-trial sweep left the driver ~5-10 MB larger."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Refresher:
    """Rebuilds the report in a background thread when asked, at most every ``interval_s``
    (and never more often than ``REFRESH_COST_RATIO`` x the last build took, nor before
    ``REFRESH_GROWTH`` more trials ended), so trials are not slowed down."""

    def __init__(self, build: Callable[[], None], interval_s: float = 30.0) -> None:
        self.build, self.interval_s = build, interval_s
        self.wanted = threading.Event()
        self.stop = threading.Event()
        self.last = 0.0
        self.took = 0.0
        self.pokes = 0  # trials ended (one poke each)
        self.built_at = 0  # pokes the last build saw
        self.thread = threading.Thread(target=self._loop, name="sweep-report", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self.pokes += 1
        self.wanted.set()

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.wanted.wait(timeout=1.0):
                continue
            wait = max(self.interval_s, REFRESH_COST_RATIO * self.took) - (time.time() - self.last)
            if wait > 0 and self.stop.wait(timeout=wait):
                return
            self.wanted.clear()
            seen = self.pokes
            if seen - self.built_at < REFRESH_GROWTH * self.built_at:
                continue  # the next poke asks again
            t0 = time.time()
            try:
                self.build()
            except Exception as exc:  # a report must never stop the sweep
                logger.warning("report refresh failed: %s", exc)
            release_memory()
            self.last, self.took, self.built_at = time.time(), time.time() - t0, seen

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
