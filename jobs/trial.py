"""The sweep trial: one (params, seed) point of a sweep, trained by ``run_training`` in a Ray
Tune worker.

The driver (``orchestrator.sweep``) hands every trial a ``TrialContext`` (workers inherit no
tracking URI or working directory). A trial opens its MLflow child run (``parent_run_id`` tag,
named by what differs, e.g. ``tau=0.45 granularity=chunk seed=1``), writes the run id into every
checkpoint so a retried or restored trial reopens the same run, and reports each evaluation
round (``round`` 1..rounds-1) and then the final evaluation (``final`` = 1) to Tune as a
``TrialResult``. A trial that already ended (the driver died after it finished) reports what its
run recorded and trains nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ambient_core.errors import DataError
from ambient_platform.config import DatasetRef, RunConfig
from ambient_platform.config.base import set_path
from ambient_platform.config.naming import (
    PARAM_SPACE_KEY,
    SEED_KEY,
    format_value,
    trial_label,
)
from ambient_platform.settings import ambient_home, configure_environment
from ambient_platform.tracking import (
    ASYNC_ENV,
    NOTE_TAG,
    RunTracker,
    ensure_experiment,
    retry_locked,
)
from jobs.annotated_data import sigma_min_rule
from jobs.trial_checkpoints import (
    TRIAL_TRAIN,
    Restored,
    TrialMeta,
    drop_training_states,
    newest_persisted_checkpoint,
)
from jobs.trial_node import assigned_gpus, node_tags, retry_tags, trial_device
from jobs.worker_cache import drop_pending, record_nested, record_phase

logger = logging.getLogger(__name__)

#: Tag holding the trial's point as JSON (typed values, for reports built from MLflow alone).
POINT_TAG = "ambient.sweep.point"
#: With reuse_actors, Tune waits this long (default 2 s) for the previous trial's thread to end
#: before reusing the actor: an early-stopped trial still closes its MLflow run, which can take
#: longer on a busy SQLite store.
THREAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver."""

    sweep: str
    base: dict[str, Any]
    tracking_uri: str
    experiment: str
    parent_run_id: str
    ambient_home: str
    runs_dir: str
    rounds: int
    checkpoint_train_state: bool
    storage_path: str
    labels: dict[str, str] = field(default_factory=dict)  # swept path -> short key


@dataclass(frozen=True)
class TrialResult:
    """One report of a trial to Tune: evaluation metrics of a round (or the final one)."""

    metrics: dict[str, float]
    round: int
    final: bool
    seed: int
    train_loss: float
    mlflow_run_id: str

    def payload(self) -> dict[str, Any]:
        """The flat dict Tune records (metric names at the top level, for schedulers)."""
        out: dict[str, Any] = {k: float(v) for k, v in self.metrics.items()}
        out.update(
            round=int(self.round),
            final=int(self.final),
            seed=int(self.seed),
            train_loss=float(self.train_loss),
            mlflow_run_id=self.mlflow_run_id,
        )
        return out


# --------------------------------------------------------------------------------------------
# Names: what differs between trials


# --------------------------------------------------------------------------------------------
# Derived sigma_min of annotation-driven trials (also read by the sweep report)


@dataclass(frozen=True)
class AnnotationCurves:
    """Score curves (mean P(clean) per annotation-grid level) of one dataset and epoch."""

    uri: str
    version: int
    epoch: int
    dataset: str
    grid_sigmas: np.ndarray  # (L,), increasing
    curves: np.ndarray  # (N, L), one row per annotated frame
    episodes: np.ndarray  # (N,)


def annotation_curves(ref: DatasetRef) -> AnnotationCurves:
    """The curves a corrupt dataset's annotation holds for its configured epoch (the pinned
    version, else the latest)."""
    from ambient_platform.datasets import read_meta
    from ambient_platform.manifest import curve_column, latest_manifest, read_curves, read_manifest
    from ambient_platform.settings import resolve_location
    from ambient_platform.storage import StorageRoot

    ann = ref.annotation
    if ann is None:
        raise ValueError(f"{ref.path} has no annotation")
    root = StorageRoot(resolve_location(ann.path))
    if ann.version is None:
        version, manifest = latest_manifest(root)
    else:
        version, manifest = ann.version, read_manifest(root, ann.version)
    if manifest is None:
        raise DataError(f"{root.uri} has no committed annotation manifest")
    name = ann.dataset
    if name is None:
        data = StorageRoot(resolve_location(ref.path))
        name = str(read_meta(data).get("name") or data.uri.rstrip("/").rsplit("/", 1)[-1])
    table = read_curves(root, manifest, name, ann.epoch)
    col = table.column(curve_column(ann.epoch)).combine_chunks()
    curves = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    return AnnotationCurves(
        uri=root.uri,
        version=version,
        epoch=ann.epoch,
        dataset=name,
        grid_sigmas=np.asarray(manifest.grid_sigmas, dtype=float),
        curves=np.asarray(curves, dtype=float),
        episodes=table.column("episode_index").to_numpy(),
    )


def derived_sigma_min(ref: DatasetRef, curves: AnnotationCurves, seed: int) -> np.ndarray:
    """sigma_min per annotated frame under the reference's tau / granularity (no classifier)."""
    from ambient_core.classifier import derive_sigma_min

    ann = ref.annotation
    if ann is None:
        raise ValueError(f"{ref.path} has no annotation")
    rule = sigma_min_rule(ann, seed)
    return derive_sigma_min(curves.curves, curves.grid_sigmas, rule, groups=curves.episodes)


def sigma_min_metrics(sigma_min: np.ndarray, prefix: str = "sigma_min") -> dict[str, float]:
    """Mean, quantiles and the eligible corrupt share (mean over DDPM levels of the share of
    corrupt frames with sigma_k >= sigma_min) of a derived sigma_min distribution."""
    from ambient_core.schedule import ddpm_sigmas

    if len(sigma_min) == 0:
        return {}
    sig = np.asarray(ddpm_sigmas(), dtype=float)
    eligible = float((sig[None, :] >= sigma_min[:, None]).mean())
    q = np.quantile(sigma_min, [0.1, 0.5, 0.9])
    return {
        f"{prefix}/mean": float(sigma_min.mean()),
        f"{prefix}/p10": float(q[0]),
        f"{prefix}/p50": float(q[1]),
        f"{prefix}/p90": float(q[2]),
        f"{prefix}/eligible_share": eligible,
        f"{prefix}/never_share": float((sigma_min >= 1.0).mean()),
    }


def _annotation_metrics(cfg: RunConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    refs = [r for r in cfg.data.corrupt if r.annotation is not None]
    for i, ref in enumerate(refs):
        prefix = "sigma_min" if len(refs) == 1 else f"sigma_min/{i}"
        try:
            sm = derived_sigma_min(ref, annotation_curves(ref), cfg.train.seed)
        except Exception as exc:  # run_training raises the real error with its context
            logger.warning("derived sigma_min of %s not logged: %s", ref.path, exc)
            continue
        out.update(sigma_min_metrics(sm, prefix))
    return out


# --------------------------------------------------------------------------------------------
# MLflow bookkeeping shared with the driver


def find_trial_run(uri: str, experiment: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run a previous attempt of this trial opened (tag ray_trial_id), if any."""
    client = RunTracker(uri, parent_run_id).client
    exp_id = ensure_experiment(uri, experiment)
    runs = retry_locked(
        client.search_runs,
        [exp_id],
        filter_string=f"tags.ray_trial_id = '{trial_id}'",
        max_results=10,
    )
    mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    return mine[0].info.run_id if mine else None


def close_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run that is still RUNNING (idempotent); ``reason`` goes to tag + artifact."""
    tracker = RunTracker(uri, run_id)
    if tracker.status() != "RUNNING":
        return
    if reason:
        with contextlib.suppress(Exception):
            tracker.log_text(reason, "error/traceback.txt")
        tracker.set_tags({"error": reason.strip().splitlines()[-1][:5000]})
    tracker.end(status)


def prior_outcome(uri: str, run_id: str, rounds: int, seed: int) -> TrialResult | None:
    """The result of a run that already ended FINISHED (final evaluation or stopped early),
    rebuilt from its MLflow metrics; None when the trial still has work to do.

    A RUNNING run that holds its final evaluation was killed between recording it (the last
    thing a run logs, after its artifacts) and ending: it is ended FINISHED here, so the
    evaluation is never run, nor logged, twice."""
    run = retry_locked(RunTracker(uri, run_id).client.get_run, run_id)
    m = run.data.metrics
    if run.info.status == "RUNNING" and any(k.startswith("eval/") for k in m):
        close_run(uri, run_id, "FINISHED")
    elif run.info.status != "FINISHED":
        return None
    loss = m.get("loss", math.nan)
    if run.data.tags.get("stopped_early") == "true":
        rnd = int(run.data.tags.get("stopped_at_round", "1"))
        vals = {k[len("round/") :]: v for k, v in m.items() if k.startswith("round/")}
        return TrialResult(vals, rnd, False, seed, loss, run_id)
    vals = {k[len("eval/") :]: v for k, v in m.items() if k.startswith("eval/")}
    return TrialResult(vals, rounds, True, seed, loss, run_id) if vals else None


# --------------------------------------------------------------------------------------------
# The trial


_FIRST_TRIAL = [True]  # of this worker process: its start-up is charged to that trial


def _process_start() -> None:
    """Record the seconds from this worker process's start to its first trial (Ray actor
    start-up plus unpickling the trainable: what actor reuse saves), once per process."""
    if not _FIRST_TRIAL[0]:
        return
    _FIRST_TRIAL[0] = False
    import psutil

    record_phase("process", max(0.0, time.time() - psutil.Process().create_time()))


def sweep_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: train one (params, seed) with ``run_training``."""
    _process_start()
    t0 = time.perf_counter()
    _worker_environment(ctx)
    from ray import tune

    tc = tune.get_context()
    trial_id = tc.get_trial_id()
    point = dict(config[PARAM_SPACE_KEY])
    seed = int(point.pop(SEED_KEY))
    gpus = assigned_gpus()
    record_phase("setup", time.perf_counter() - t0)
    cfg = _trial_config(ctx, point, seed, gpus)
    t0 = time.perf_counter()
    work = _scratch_dir(f"{ctx.sweep}-{trial_id}")
    try:
        restored = _restore(ctx, trial_id, work)
        if restored.meta is not None and restored.meta.done and restored.meta.final:
            tune.report(restored.meta.final)  # finished before the driver died: train nothing
            return
        run_id = (restored.meta.run_id if restored.meta else None) or find_trial_run(
            ctx.tracking_uri, ctx.experiment, ctx.parent_run_id, trial_id
        )
        prior = prior_outcome(ctx.tracking_uri, run_id, ctx.rounds, seed) if run_id else None
        if prior is not None:
            # Ended after Tune's last experiment snapshot: report what the run recorded.
            tune.report(prior.payload())
            return
        tracker, tags = _open_run(ctx, cfg, point, seed, run_id, restored, tc.get_trial_name())
        tags.update(node_tags(gpus))
        record_phase("setup", time.perf_counter() - t0)
        _train(ctx, cfg, point, seed, tracker, tags, restored, work)
    finally:
        drop_pending()  # taken by the run, or the trial had nothing to train
        shutil.rmtree(work, ignore_errors=True)


def _worker_environment(ctx: TrialContext) -> None:
    os.environ["AMBIENT_HOME"] = ctx.ambient_home
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(THREAD_TIMEOUT_S)
    os.environ.pop("MLFLOW_RUN_ID", None)  # it would override parent_run_id (mlflow#15713)
    # Metrics and tags are queued, not written in the training loop; every checkpoint report
    # and the end of the run wait for them (``RunTracker.flush``).
    os.environ.setdefault(ASYNC_ENV, "true")
    configure_environment()


def _trial_config(
    ctx: TrialContext, point: Mapping[str, Any], seed: int, gpus: list[str]
) -> RunConfig:
    data = json.loads(json.dumps(ctx.base))
    for path, value in point.items():
        set_path(data, path, value)
    data["train"]["seed"] = seed
    data["train"]["device"] = trial_device(data["train"].get("device", "cpu"), gpus)
    data["tracking"].update(
        uri=ctx.tracking_uri,
        experiment=ctx.experiment,
        run_name=trial_label(point, ctx.labels, seed),
    )
    data["output_dir"] = ctx.runs_dir
    t0 = time.perf_counter()
    cfg = RunConfig.model_validate(data)
    record_phase("config", time.perf_counter() - t0)  # logged as time/config_s with the run
    return cfg


def _restore(ctx: TrialContext, trial_id: str, work: Path) -> Restored:
    """Tune's checkpoint of this trial, or a newer one it persisted after Tune's last snapshot."""
    from ray import tune

    out = Restored()
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        ckpt.to_directory(str(work / "restored"))
        out.meta = TrialMeta.read(work / "restored")
        if (work / "restored" / TRIAL_TRAIN).exists():
            out.train_dir = str(work / "restored" / TRIAL_TRAIN)
    after = out.meta.round if out.meta else 0
    newer = newest_persisted_checkpoint(
        ctx.storage_path, ctx.sweep, trial_id, after, ctx.checkpoint_train_state
    )
    return newer if newer is not None else out


def _open_run(
    ctx: TrialContext,
    cfg: RunConfig,
    point: Mapping[str, Any],
    seed: int,
    run_id: str | None,
    restored: Restored,
    trial_name: str,
) -> tuple[RunTracker, dict[str, str]]:
    """Create the child run (first attempt) or reopen it (retry, resume): attempt tag up."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    label = trial_label(point, ctx.labels, seed)
    tags = {
        "kind": "sweep-trial",
        "sweep": ctx.sweep,
        "ray_trial_id": trial_id,
        "ray_trial_name": trial_name,
        "seed": str(seed),
    }
    if run_id is None:
        note = f"Trial of sweep **{ctx.sweep}**: {label} (Ray trial {trial_id})."
        extra = {"task": cfg.task, "attempt": "1", POINT_TAG: json.dumps(point), NOTE_TAG: note}
        tracker = RunTracker.start(
            ctx.tracking_uri, ctx.experiment, label, ctx.parent_run_id, {**tags, **extra}
        )
        metrics = _annotation_metrics(cfg)
        if metrics:
            tracker.log_metrics(metrics)
        return tracker, tags
    tracker = RunTracker(ctx.tracking_uri, run_id)
    previous = retry_locked(tracker.client.get_run, run_id).data.tags
    attempt = int(previous.get("attempt", "1")) + 1
    tags["attempt"] = str(attempt)
    tags["resumed_from_round"] = str(restored.meta.round if restored.meta else 0)
    tags.update(retry_tags(previous, attempt))
    return tracker, tags


def _log_sweep_params(tracker: RunTracker, ctx: TrialContext, point: Mapping[str, Any]) -> None:
    """The swept values under short keys (``sweep.tau``), once run_training logged the config
    (it logs the config only into a run without params)."""
    params = {f"sweep.{ctx.labels.get(p, p)}": format_value(v) for p, v in point.items()}
    with contextlib.suppress(Exception):  # already logged by an earlier attempt
        tracker.log_params(params)


#: A round checkpoint carries the training state only once the work a restart would redo
#: (seconds since the trial started) is at least this many times what writing the state costs:
#: for a trial of a few seconds, starting over is cheaper than a state save every round.
STATE_SAVE_RATIO = 10.0
_SAVE_S: list[float] = []  # the last training-state write of this worker process, seconds


class _Reporter:
    """``run_training``'s round callback: checkpoint (run id + training state where resume
    needs it), flush the run's queued metrics, report."""

    def __init__(
        self, ctx: TrialContext, cfg: RunConfig, tracker: RunTracker, seed: int, work: Path
    ) -> None:
        self.ctx, self.cfg, self.tracker, self.seed, self.work = ctx, cfg, tracker, seed, work
        self.stopped_early = False
        self.params_logged = False
        self.point: Mapping[str, Any] = {}
        self.started = time.perf_counter()
        self.config: dict[str, Any] | None = None

    def _wants_state(self) -> bool:
        if not self.ctx.checkpoint_train_state:
            return False
        redo_s = time.perf_counter() - self.started
        return not _SAVE_S or redo_s >= STATE_SAVE_RATIO * _SAVE_S[-1]

    def _write(self, d: Path, state: Any) -> None:
        from ray import tune

        from ambient_core.train import save_checkpoint

        TrialMeta(self.tracker.run_id, tune.get_context().get_trial_id(), state.round).write(d)
        if self._wants_state():
            t0 = time.perf_counter()
            if self.config is None:
                self.config = self.cfg.model_dump(mode="json")
            save_checkpoint(d / TRIAL_TRAIN, state, {"config": self.config})
            _SAVE_S[:] = [time.perf_counter() - t0]

    def __call__(self, state: Any, metrics: dict[str, float]) -> bool:
        from ray import tune

        if not self.params_logged:
            _log_sweep_params(self.tracker, self.ctx, self.point)
            self.params_logged = True
        loss = state.history[-1]["loss"] if state.history else math.nan
        result = TrialResult(metrics, state.round, False, self.seed, loss, self.tracker.run_id)
        t0 = time.perf_counter()
        d = Path(tempfile.mkdtemp(prefix="ckpt-", dir=self.work))
        try:
            self._write(d, state)
            # What the run logged up to this round is stored before the checkpoint says so: a
            # trial resumed from it logs again only what came after.
            self.tracker.flush()
            t1 = time.perf_counter()
            record_nested("fit/checkpoint", t1 - t0)
            try:
                tune.report(result.payload(), checkpoint=tune.Checkpoint.from_directory(str(d)))
            except SystemExit:  # the scheduler stopped this trial (ASHA)
                self.stopped_early = True
                return True
            finally:
                record_nested("fit/report", time.perf_counter() - t1)
            return False
        finally:
            shutil.rmtree(d, ignore_errors=True)


def _train(
    ctx: TrialContext,
    cfg: RunConfig,
    point: Mapping[str, Any],
    seed: int,
    tracker: RunTracker,
    tags: dict[str, str],
    restored: Restored,
    work: Path,
) -> None:
    from ray import tune

    t0 = time.perf_counter()
    from jobs.train import run_training  # torch and the training stack: paid once per process

    record_phase("imports", time.perf_counter() - t0)
    reporter = _Reporter(ctx, cfg, tracker, seed, work)
    reporter.point = point
    try:
        res = run_training(
            cfg,
            ctx.tracking_uri,
            ctx.parent_run_id,
            tags=tags,
            report=reporter,
            run_id=tracker.run_id,
            resume_from=restored.train_dir,
        )
    except BaseException:
        close_run(ctx.tracking_uri, tracker.run_id, "FAILED", traceback.format_exc())
        raise
    _log_sweep_params(tracker, ctx, point)
    # Finished or stopped: no resume needs its training state any more (trial_checkpoints).
    drop_training_states(ctx.storage_path, ctx.sweep, tune.get_context().get_trial_id())
    if reporter.stopped_early or res.get("stopped_early"):
        raise SystemExit(0)  # graceful end of Tune's runner thread, nothing more to report
    loss = res["history"][-1]["loss"] if res.get("history") else math.nan
    final = TrialResult(res["metrics"], ctx.rounds, True, seed, loss, tracker.run_id)
    d = work / "final"
    d.mkdir()
    trial_id = tune.get_context().get_trial_id()
    TrialMeta(tracker.run_id, trial_id, ctx.rounds, True, final.payload()).write(d)
    # A stop decision on this report (ASHA stops every trial at max_t) arrives as SystemExit(0):
    # let it end Tune's runner thread, never swallow it (the function wrapper's closing report
    # would then block the thread and actor reuse would fail).
    tune.report(final.payload(), checkpoint=tune.Checkpoint.from_directory(str(d)))


def _scratch_dir(key: str) -> Path:
    """A fresh scratch directory of this attempt of trial ``key`` (sweep-trial id). An earlier
    attempt killed with its process (kill -9, a lost node) left its own behind: removed here,
    since a trial never runs twice at once."""
    base = ambient_home() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(f"trial-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"trial-{key}-", dir=base))
