"""Sweeps on Ray Tune (``ambient sweep run|resume|status|best``): one trial = one ``run_training``.

Layout of a sweep named NAME under ``storage_path`` (local or s3://, default AMBIENT_HOME/sweeps):

    NAME/                   Ray Tune's experiment directory (tuner.pkl, experiment state, trials)
    NAME/ambient_sweep.json the MLflow parent run id, tracking URI and spec of this sweep
    NAME/summary/           results.csv, results_by_config.csv, best_config.yaml, best.json,
                            plots/*.png (also logged to the parent run)

MLflow: the sweep is a parent run (spec, resolved base config and searcher summary as artifacts,
git commit tag); every trial is a child run (``mlflow.parentRunId``) opened inside the trial and
tagged with its Ray trial id. Its run id is written into every trial checkpoint, so a retried or
restored trial reopens the same run; a trial restarted before its first checkpoint finds its run
by the trial-id tag. Params (the full resolved trial config) are logged once. Runs stopped by ASHA
end FINISHED with ``stopped_early=true``; crashed trials FAILED with a traceback artifact; runs a
dead driver left RUNNING are reopened by their trial on ``resume`` or closed KILLED at its end.

Seeds: every configuration runs once per entry of ``seeds`` (grid/random: the points are crossed
with the seeds; Optuna: ``SweepSearcher`` repeats each suggestion per seed and tells the study the
mean over seeds). Constraints: see ambient_platform/sweep_config.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray.tune import Callback
from ray.tune.search import Searcher

from ambient_core.errors import SweepError
from ambient_platform.config import RunConfig
from ambient_platform.settings import ambient_home, configure_environment
from ambient_platform.storage import StorageRoot
from ambient_platform.sweep_config import (
    MAX_RESAMPLES,
    SEED_KEY,
    TASK_METRICS,
    OptunaSpace,
    Sweep,
    load_sweep,
    optuna_storage_path,
    set_path,
)
from ambient_platform.tracking import (
    RunTracker,
    _retry,
    ensure_experiment,
    resolve_tracking_uri,
    scratch_dir,
)

logger = logging.getLogger(__name__)

STATE_FILE = "ambient_sweep.json"
#: Tune config key of a trial's point: {dotted path: value, ..., "seed": s}. Grid and random
#: points are precomputed (constraints applied) and enumerated by BasicVariantGenerator as one
#: grid_search over whole points; Optuna suggestions arrive under the same key.
PARAM_SPACE_KEY = "trial"
THREAD_TIMEOUT_S = 60
REJECTED_ATTR = "rejected"
SUMMARY_DIR = "summary"
TRIAL_META = "trial.json"
TRIAL_TRAIN = "train"
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker)


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (workers inherit no tracking URI or home)."""

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


def _find_trial_run(uri: str, experiment: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run a previous attempt of this trial opened (tag ray_trial_id), if any."""
    client = RunTracker(uri, parent_run_id).client
    exp_id = ensure_experiment(uri, experiment)
    runs = _retry(
        client.search_runs,
        [exp_id],
        filter_string=f"tags.ray_trial_id = '{trial_id}'",
        max_results=10,
    )
    mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    return mine[0].info.run_id if mine else None


def _close_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run that is still RUNNING (idempotent); ``reason`` goes to tag + artifact."""
    tracker = RunTracker(uri, run_id)
    if tracker.status() != "RUNNING":
        return
    if reason:
        with contextlib.suppress(Exception):
            tracker.log_text(reason, "error/traceback.txt")
        tracker.set_tags({"error": reason.strip().splitlines()[-1][:5000]})
    tracker.end(status)


def _prior_outcome(uri: str, run_id: str, rounds: int, seed: int) -> dict[str, Any] | None:
    """The result of a run that already ended FINISHED (final evaluation or stopped early),
    rebuilt from its MLflow metrics; None when the trial still has work to do."""
    run = _retry(RunTracker(uri, run_id).client.get_run, run_id)
    if run.info.status != "FINISHED":
        return None
    m = run.data.metrics
    loss = m.get("loss", math.nan)
    if run.data.tags.get("stopped_early") == "true":
        rnd = int(run.data.tags.get("stopped_at_round", "1"))
        vals = {k[len("round/") :]: v for k, v in m.items() if k.startswith("round/")}
        return _trial_payload(vals, rnd, False, seed, run_id, loss)
    vals = {k[len("eval/") :]: v for k, v in m.items() if k.startswith("eval/")}
    return _trial_payload(vals, rounds, True, seed, run_id, loss) if vals else None


def _trial_payload(
    metrics: Mapping[str, float], rnd: int, final: bool, seed: int, run_id: str, loss: float
) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
    out.update(
        round=int(rnd),
        final=int(final),
        seed=int(seed),
        train_loss=float(loss),
        mlflow_run_id=run_id,
    )
    return out


def sweep_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: train one (params, seed) with ``run_training``.

    Reports each evaluation round (``round`` 1..rounds-1) with a checkpoint holding the MLflow run
    id and the training state, then the final evaluation (``round`` = rounds, ``final`` = 1).
    """
    os.environ["AMBIENT_HOME"] = ctx.ambient_home
    # With reuse_actors, Tune waits this long (default 2 s) for the previous trial's thread to
    # end before reusing the actor and errors the next trial when it has not: an early-stopped
    # trial still closes its MLflow run, which can take longer on a busy SQLite store.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(THREAD_TIMEOUT_S)
    os.environ.pop("MLFLOW_RUN_ID", None)  # it would override parent_run_id (mlflow#15713)
    configure_environment()
    from ray import tune

    from ambient_core.train import save_checkpoint
    from jobs.train import run_training

    tc = tune.get_context()
    trial_id, trial_name = tc.get_trial_id(), tc.get_trial_name()
    point = config[PARAM_SPACE_KEY]
    seed = int(point[SEED_KEY])
    params = {k: v for k, v in point.items() if k != SEED_KEY}
    data = json.loads(json.dumps(ctx.base))
    for path, value in params.items():
        set_path(data, path, value)
    data["train"]["seed"] = seed
    data["tracking"].update(uri=ctx.tracking_uri, experiment=ctx.experiment, run_name=trial_name)
    data["output_dir"] = ctx.runs_dir
    cfg = RunConfig.model_validate(data)

    work = Path(tempfile.mkdtemp(prefix=f"trial-{trial_id}-", dir=_scratch_base()))
    try:
        saved: dict[str, Any] = {}
        train_dir: str | None = None
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            ckpt.to_directory(str(work / "restored"))
            meta = work / "restored" / TRIAL_META
            saved = json.loads(meta.read_text()) if meta.exists() else {}
            if (work / "restored" / TRIAL_TRAIN).exists():
                train_dir = str(work / "restored" / TRIAL_TRAIN)
        newer = _newest_persisted_checkpoint(ctx, trial_id, int(saved.get("round", 0)))
        if newer is not None:
            saved, train_dir = newer
        if saved.get("done"):
            # Finished before the driver died: report the final result again, train nothing.
            tune.report(saved["final"])
            return
        uri = ctx.tracking_uri
        run_id = saved.get("run_id") or _find_trial_run(
            uri, ctx.experiment, ctx.parent_run_id, trial_id
        )
        prior = _prior_outcome(uri, run_id, ctx.rounds, seed) if run_id else None
        if prior is not None:
            # Ended before the driver died but after Tune's last experiment snapshot: report
            # what the run recorded and stop; never train (or log) it twice.
            tune.report(prior)
            return
        tags = {
            "kind": "sweep-trial",
            "sweep": ctx.sweep,
            "ray_trial_id": trial_id,
            "ray_trial_name": trial_name,
            "seed": str(seed),
        }
        if run_id is None:
            tracker = RunTracker.start(
                uri,
                ctx.experiment,
                trial_name,
                ctx.parent_run_id,
                {**tags, "task": cfg.task, "attempt": "1"},
            )
            run_id = tracker.run_id
        else:
            tracker = RunTracker(uri, run_id)
            prev = _retry(tracker.client.get_run, run_id).data.tags.get("attempt", "1")
            tags["attempt"] = str(int(prev) + 1)
            tags["resumed_from_round"] = str(saved.get("round", 0))
        stopped = {"early": False}

        def report(state: Any, metrics: dict[str, float]) -> bool:
            loss = state.history[-1]["loss"] if state.history else math.nan
            payload = _trial_payload(metrics, state.round, False, seed, run_id, loss)
            d = Path(tempfile.mkdtemp(prefix="ckpt-", dir=work))
            try:
                meta = {"run_id": run_id, "trial_id": trial_id, "round": state.round}
                (d / TRIAL_META).write_text(json.dumps({**meta, "done": False}))
                if ctx.checkpoint_train_state:
                    save_checkpoint(
                        d / TRIAL_TRAIN, state, {"config": cfg.model_dump(mode="json")}
                    )
                try:
                    tune.report(payload, checkpoint=tune.Checkpoint.from_directory(str(d)))
                except SystemExit:  # the scheduler stopped this trial (ASHA)
                    stopped["early"] = True
                    return True
                return False
            finally:
                shutil.rmtree(d, ignore_errors=True)

        try:
            res = run_training(
                cfg,
                uri,
                ctx.parent_run_id,
                tags=tags,
                report=report,
                run_id=run_id,
                resume_from=train_dir,
            )
        except BaseException:
            _close_run(uri, run_id, "FAILED", traceback.format_exc())
            raise
        if stopped["early"] or res.get("stopped_early"):
            raise SystemExit(0)  # graceful end of Tune's runner thread, nothing more to report
        loss = res["history"][-1]["loss"] if res.get("history") else math.nan
        final = _trial_payload(res["metrics"], ctx.rounds, True, seed, run_id, loss)
        d = work / "final"
        d.mkdir()
        (d / TRIAL_META).write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "trial_id": trial_id,
                    "round": ctx.rounds,
                    "done": True,
                    "final": final,
                }
            )
        )
        # A stop decision on this report (ASHA stops every trial at max_t) arrives as
        # SystemExit(0): let it end Tune's runner thread, never swallow it (the function
        # wrapper's closing report would then block the thread and actor reuse would fail).
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(d)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _newest_persisted_checkpoint(
    ctx: TrialContext, trial_id: str, after_round: int
) -> tuple[dict[str, Any], str | None] | None:
    """A checkpoint this trial persisted after Tune's last experiment snapshot (the driver died
    in between, so Tune restores an older one or none): (trial meta, train dir) if it is newer
    than ``after_round`` and readable. Local storage only; s3:// relies on Tune's snapshot."""
    trial_dir = Path(ctx.storage_path) / ctx.sweep / f"trial_{trial_id}"
    if "://" in ctx.storage_path or not trial_dir.is_dir():
        return None
    found = []
    for d in trial_dir.glob("checkpoint_*"):
        try:
            meta = json.loads((d / TRIAL_META).read_text())
        except (OSError, ValueError):
            continue
        if meta.get("trial_id") == trial_id and int(meta.get("round", 0)) > after_round:
            found.append((int(meta["round"]), bool(meta.get("done")), d, meta))
    for _, done, d, meta in sorted(found, key=lambda f: f[:2], reverse=True):
        if done or not ctx.checkpoint_train_state:
            return meta, None
        train = d / TRIAL_TRAIN
        try:
            import torch

            from ambient_core.train import CHECKPOINT_FILE, read_checkpoint_meta

            read_checkpoint_meta(train)  # a copy cut short by kill -9 fails here or below
            torch.load(train / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, KeyError) as exc:
            logger.warning("skipping unreadable checkpoint %s: %s", d, exc)
            continue
        return meta, str(train)
    return None


def _scratch_base() -> str:
    base = ambient_home() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return str(base)


# --------------------------------------------------------------------------------------------
# Driver side: searcher wrapper, MLflow callback


class SweepSearcher(Searcher):
    """Constraint filter + per-seed repeats around a searcher (OptunaSearch).

    A suggestion that violates a constraint (or the run-config schema) never becomes a Tune
    trial: it is completed without a result (Optuna: state PRUNED, user attr ``rejected`` with
    the reason, constraint ``rejected`` = 1 so TPE treats it as infeasible) and a new one is
    asked for, up to MAX_RESAMPLES times. Each accepted suggestion is repeated
    once per seed (config key ``seed``); when every repeat has completed, the inner searcher is
    told the mean of their last ``metric`` values. Unlike Tune's ``Repeater`` the whole state
    (groups included) is saved and restored, so ``Tuner.restore`` keeps the seed groups.
    """

    def __init__(self, searcher: Any, sweep: Sweep, space: OptunaSpace) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.sweep = sweep
        self.space = space
        self.seeds = list(sweep.spec.seeds)
        self.groups: dict[str, dict[str, Any]] = {}
        self.trial_group: dict[str, str] = {}
        self.current: str | None = None
        self.rejected: list[dict[str, Any]] = []

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        from ray.tune.search.util import _set_search_properties_backwards_compatible

        ok = _set_search_properties_backwards_compatible(
            self.searcher.set_search_properties, metric, mode, config, **spec
        )
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return bool(ok)

    def suggest(self, trial_id: str) -> dict | None:
        g = self.groups.get(self.current) if self.current else None
        if g is not None and len(g["trials"]) < len(self.seeds):
            seed = self.seeds[len(g["trials"])]
            g["trials"][trial_id] = None
            self.trial_group[trial_id] = self.current  # type: ignore[assignment]
            return {PARAM_SPACE_KEY: {**g["params"], SEED_KEY: seed}}
        for attempt in range(MAX_RESAMPLES):
            inner_id = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            cfg = self.searcher.suggest(inner_id)
            if cfg is None or cfg == Searcher.FINISHED:
                return cfg
            params = self.space.decode(cfg)
            why = self.sweep.violation(params)
            if why is None:
                self.groups[inner_id] = {
                    "params": params,
                    "trials": {trial_id: None},
                    "primary": trial_id,
                    "told": False,
                }
                self.trial_group[trial_id] = inner_id
                self.current = inner_id
                return {PARAM_SPACE_KEY: {**params, SEED_KEY: self.seeds[0]}}
            self.rejected.append({"params": params, "reason": why})
            ot = getattr(self.searcher, "_ot_trials", {}).get(inner_id)
            if ot is not None:
                with contextlib.suppress(Exception):
                    ot.set_user_attr(REJECTED_ATTR, why[:500])
                    # Infeasible (> 0) for constraint-aware samplers: TPE ranks it below every
                    # feasible trial. Told as FAIL instead, TPE would ignore it and propose the
                    # same point again and again.
                    ot.set_constraint(REJECTED_ATTR, 1.0)
            # No result and no error: OptunaSearch tells PRUNED (TPE keeps PRUNED, drops FAIL).
            self.searcher.on_trial_complete(inner_id)
        logger.error("no suggestion out of %d satisfied the constraints", MAX_RESAMPLES)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        gid = self.trial_group.get(trial_id)
        if gid is None or self.groups[gid]["primary"] != trial_id:
            return
        v = result.get(self.metric)
        if isinstance(v, int | float) and math.isfinite(v):
            with contextlib.suppress(Exception):
                self.searcher.on_trial_result(gid, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        gid = self.trial_group.get(trial_id)
        if gid is None:
            logger.warning("trial %s is not one of this searcher's suggestions", trial_id)
            return
        g = self.groups[gid]
        v = (result or {}).get(self.metric)
        value = float(v) if isinstance(v, int | float) else math.nan
        g["trials"][trial_id] = {"value": value, "error": bool(error)}
        done = [x for x in g["trials"].values() if x is not None]
        if g["told"] or len(done) < len(self.seeds):
            return
        vals = [x["value"] for x in done if not x["error"] and math.isfinite(x["value"])]
        if vals:
            self.searcher.on_trial_complete(gid, result={self.metric: float(np.mean(vals))})
        else:
            self.searcher.on_trial_complete(gid, error=True)
        g["told"] = True

    # Tune saves wrappers (objects with a ``searcher``) by get_state/set_state and the base
    # searcher (OptunaSearch) by save/restore, next to each other in the experiment directory.
    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class TrialRunCloser(Callback):
    """Driver-side MLflow bookkeeping the trial itself cannot do.

    A trial stopped by the scheduler is killed right after its report, so its child run is
    ended here: FINISHED with ``stopped_early=true`` (or KILLED if it never reported). A trial
    whose actor died ends FAILED. Runs the trial already ended are left alone.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str) -> None:
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id

    def _run_id(self, trial: Any) -> str | None:
        last = trial.last_result or {}
        return last.get("mlflow_run_id") or _find_trial_run(
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
                _close_run(self.uri, run_id, "KILLED", "stopped before its first report")
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
                _close_run(self.uri, run_id, "FAILED", f"Ray trial error: {err}")
        except Exception:
            logger.exception("closing the MLflow run of trial %s", trial.trial_id)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------------------------
# Driver


def _git_commit() -> dict[str, str]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {
            "mlflow.source.git.commit": sha.stdout.strip(),
            "git_dirty": str(bool(dirty.stdout.strip())).lower(),
        }
    except (OSError, subprocess.SubprocessError):
        return {}


def spec_digest(sweep: Sweep) -> str:
    """What a resumed sweep must share with the one that started (not concurrency, budget)."""
    s = sweep.spec
    what = {
        "base": sweep.base,
        "space": {p: e.model_dump() for p, e in s.space.items()},
        "constraints": [c.text for c in sweep.constraints],
        "seeds": s.seeds,
        "searcher": s.searcher.model_dump(),
        "scheduler": s.scheduler.model_dump(),
        "metric": sweep.metric,
        "mode": s.mode,
        "num_samples": s.num_samples,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def experiment_root(sweep: Sweep) -> StorageRoot:
    return StorageRoot(sweep.storage_path.rstrip("/") + "/" + sweep.name)


def _read_state(root: StorageRoot) -> dict[str, Any] | None:
    return root.read_json(STATE_FILE) if root.exists(STATE_FILE) else None


def sweep_started(sweep: Sweep) -> bool:
    """True once a sweep of this name has state at its storage path (resume it, do not rerun)."""
    return _read_state(experiment_root(sweep)) is not None


def _search_alg(
    sweep: Sweep, max_concurrent: int
) -> tuple[Any, int, dict[str, Any], list[dict[str, Any]] | None]:
    """(search algorithm, Tune num_samples, summary for the parent run, grid points or None)."""
    spec = sweep.spec
    seeds = spec.seeds
    if spec.searcher.kind == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        kw: dict[str, Any] = {"seed": spec.searcher.seed}
        if spec.searcher.n_startup_trials:
            kw["n_startup_trials"] = spec.searcher.n_startup_trials
        storage = None
        path = optuna_storage_path(sweep)
        if path:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(path))
        space = OptunaSpace(spec.space)
        inner = OptunaSearch(
            space=space,
            metric=sweep.metric,
            mode=spec.mode,
            sampler=optuna.samplers.TPESampler(**kw),
            storage=storage,
            study_name=sweep.name,
        )
        alg = ConcurrencyLimiter(SweepSearcher(inner, sweep, space), max_concurrent)
        info = {"sampler": "TPESampler", **kw, "study_name": sweep.name, "storage": path}
        return alg, spec.num_samples * len(seeds), info, None
    from ray.tune.search.basic_variant import BasicVariantGenerator

    pts, rejected = sweep.points()
    points = [{**p, SEED_KEY: s} for p in pts for s in seeds]
    alg = BasicVariantGenerator(max_concurrent=max_concurrent, random_state=spec.searcher.seed)
    info = {"points": pts, "rejected": [{"params": p, "reason": r} for p, r in rejected]}
    return alg, 1, info, points


def _scheduler(sweep: Sweep) -> Any:
    s = sweep.spec.scheduler
    if s.kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="round",
        metric=sweep.metric,
        mode=sweep.spec.mode,
        max_t=sweep.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def _effective_concurrency(sweep: Sweep, ray: Any) -> int:
    """max_concurrent, capped by the cluster: one torch thread per trial, never more trials
    than CPUs (the 2-CPU deadlock of ENVIRONMENT.md) and never a GPU request that cannot fit."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
    r = sweep.spec.resources
    if r.gpu > gpus:
        raise SweepError(
            f"resources.gpu = {r.gpu} but the Ray cluster has {gpus:g} GPUs: trials would wait "
            "forever"
        )
    if r.cpu > cpus:
        raise SweepError(f"resources.cpu = {r.cpu} but the Ray cluster has {cpus:g} CPUs")
    cap = min(int(cpus), int(cpus // r.cpu))
    if r.gpu > 0:
        cap = min(cap, int(gpus // r.gpu))
    n = min(sweep.spec.max_concurrent, max(cap, 1))
    if n < sweep.spec.max_concurrent:
        logger.warning(
            "max_concurrent %d capped to %d by the cluster", sweep.spec.max_concurrent, n
        )
    return n


def _log_parent_start(
    parent: RunTracker, sweep: Sweep, info: dict[str, Any], concurrency: int, trials: int
) -> None:
    s = sweep.spec
    params = {
        "sweep": sweep.name,
        "base_config": sweep.base_source,
        "task": sweep.task,
        "searcher": s.searcher.kind,
        "searcher.seed": s.searcher.seed,
        "scheduler": s.scheduler.kind,
        "metric": sweep.metric,
        "mode": s.mode,
        "num_samples": s.num_samples,
        "trials": trials,
        "seeds": s.seeds,
        "max_concurrent": concurrency,
        "resources.cpu": s.resources.cpu,
        "resources.gpu": s.resources.gpu,
        "rounds": sweep.rounds,
        "constraints": " ; ".join(c.text for c in sweep.constraints) or "-",
        **{f"space.{p}": e.describe() for p, e in s.space.items()},
    }
    if s.scheduler.kind == "asha":
        params.update(
            {
                "asha.grace_period": s.scheduler.grace_period,
                "asha.reduction_factor": s.scheduler.reduction_factor,
                "asha.max_t": sweep.max_t,
            }
        )
    parent.log_params(params)
    with scratch_dir() as d:
        (d / "sweep.yaml").write_text(sweep.spec_text or yaml.safe_dump(s.model_dump()))
        (d / "sweep_resolved.json").write_text(json.dumps(sweep.summary(), indent=2, default=str))
        (d / "base_run_config.yaml").write_text(yaml.safe_dump(sweep.base, sort_keys=False))
        (d / "searcher.json").write_text(
            json.dumps({"kind": s.searcher.kind, **info}, indent=2, default=str)
        )
        for name in ("sweep.yaml", "sweep_resolved.json", "base_run_config.yaml", "searcher.json"):
            parent.log_artifact(d / name, "spec")


def run_sweep(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    ray_address: str | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run (or, with ``resume``, continue after a crash or kill -9) the sweep of spec ``path``.

    Returns the summary: trial counts, best configuration, paths of the written tables/plots.
    """
    configure_environment()
    sweep = load_sweep(path, overrides, storage_path=storage_path, name=name)
    root = experiment_root(sweep)
    state = _read_state(root)
    if resume and state is None:
        raise SweepError(
            f"no sweep {sweep.name!r} at {root.uri}: start it with `ambient sweep run {path}`"
        )
    if not resume and state is not None:
        raise SweepError(
            f"sweep {sweep.name!r} already exists at {root.uri}: continue it with "
            f"`ambient sweep resume {path}`, or start another with --name"
        )
    digest = spec_digest(sweep)
    if state is not None and state.get("spec_digest") not in (None, digest):
        raise SweepError(
            f"the spec of sweep {sweep.name!r} changed since it started (base config, space, "
            "constraints, seeds, searcher or scheduler): resuming would mix two sweeps; start "
            "a new one with --name"
        )
    # Tune warns on every snapshot forced by num_to_keep; one per report is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = resolve_tracking_uri(
        tracking_uri or (state or {}).get("tracking_uri") or sweep.base["tracking"]["uri"]
    )
    from ambient_platform.ray_runtime import ensure_ray

    ray = ensure_ray(ray_address)
    from ray import tune

    from jobs.train import _ensure_generated

    concurrency = _effective_concurrency(sweep, ray)
    ensure_experiment(uri, sweep.experiment)  # in the driver, before any trial (SQLite race)
    _ensure_generated(RunConfig.model_validate(sweep.base))  # shared data, once, here

    alg, num_samples, info, points = _search_alg(sweep, concurrency)
    n_trials = len(points) if points is not None else num_samples
    if state is None:
        parent = RunTracker.start(
            uri,
            sweep.experiment,
            f"sweep-{sweep.name}",
            tags={
                "kind": "sweep",
                "sweep": sweep.name,
                "task": sweep.task,
                "ray_experiment": root.uri,
                **_git_commit(),
            },
        )
        state = {
            "name": sweep.name,
            "parent_run_id": parent.run_id,
            "tracking_uri": uri,
            "experiment": sweep.experiment,
            "spec": str(Path(path).resolve()),
            "spec_digest": digest,
            "created": time.time(),
        }
        root.write_json(STATE_FILE, state)
        _log_parent_start(parent, sweep, info, concurrency, n_trials)
    else:
        parent = RunTracker(uri, state["parent_run_id"])
        _retry(parent.client.update_run, parent.run_id, status="RUNNING")
        runs = _retry(parent.client.get_run, parent.run_id)
        parent.set_tags({"resumes": int(runs.data.tags.get("resumes", "0")) + 1})

    ctx = TrialContext(
        sweep=sweep.name,
        base=sweep.base,
        tracking_uri=uri,
        experiment=sweep.experiment,
        parent_run_id=parent.run_id,
        ambient_home=str(ambient_home()),
        runs_dir=str(ambient_home() / "sweep-runs" / sweep.name),
        rounds=sweep.rounds,
        checkpoint_train_state=sweep.spec.checkpoint_train_state,
        storage_path=sweep.storage_path,
    )
    r = sweep.spec.resources
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, ctx=ctx), {"cpu": r.cpu, "gpu": r.gpu}
    )
    t0 = time.perf_counter()
    restored = resume and tune.Tuner.can_restore(root.uri)
    with parent.active():
        if restored:
            tuner = tune.Tuner.restore(
                root.uri, trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={PARAM_SPACE_KEY: tune.grid_search(points)} if points else {},
                tune_config=tune.TuneConfig(
                    search_alg=alg,
                    scheduler=_scheduler(sweep),
                    num_samples=num_samples,
                    time_budget_s=sweep.spec.time_budget_s,
                    reuse_actors=sweep.spec.reuse_actors,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=sweep.storage_path,
                    failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=sweep.spec.keep_checkpoints
                    ),
                    callbacks=[TrialRunCloser(uri, sweep.experiment, parent.run_id)],
                    verbose=verbose,
                ),
            )
        tuner.fit()
        wall = time.perf_counter() - t0
        summary = summarize(sweep, write=True, parent=parent)
        closed = reconcile_runs(uri, sweep, parent.run_id, summary["trials"])
        rejected = len(getattr(getattr(alg, "searcher", None), "rejected", []) or [])
        parent.set_tags(
            {
                "trials_finished": summary["counts"].get("finished", 0),
                "trials_stopped_early": summary["counts"].get("stopped_early", 0),
                "trials_errored": summary["counts"].get("errored", 0),
            }
        )
        metrics = {
            "time/wall_s": wall,
            "trials/total": len(summary["trials"]),
            "trials/finished": summary["counts"].get("finished", 0),
            "trials/stopped_early": summary["counts"].get("stopped_early", 0),
            "trials/errored": summary["counts"].get("errored", 0),
            "trials/closed_by_driver": closed,
        }
        if sweep.spec.searcher.kind == "optuna" and not restored:  # restored: not this object
            metrics["trials/rejected_suggestions"] = rejected
        best = summary.get("best")
        if best and best.get("mean") is not None:
            metrics[f"best/{sweep.metric}"] = best["mean"]
        parent.log_metrics(metrics)
    summary.update(wall_s=wall, parent_run_id=parent.run_id, tracking_uri=uri)
    return summary


def reconcile_runs(uri: str, sweep: Sweep, parent_run_id: str, trials: list[dict]) -> int:
    """After ``fit``: no child run of this sweep may stay RUNNING. Runs of trials that finished
    are closed like the trial ended; runs of trials Tune does not know (opened by a driver that
    died before it recorded them) are closed KILLED. Returns how many runs were closed."""
    client = RunTracker(uri, parent_run_id).client
    exp_id = ensure_experiment(uri, sweep.experiment)
    runs = _retry(
        client.search_runs,
        [exp_id],
        filter_string=f"tags.sweep = '{sweep.name}' and attributes.status = 'RUNNING'",
        max_results=5000,
    )
    by_trial = {t["trial_id"]: t for t in trials}
    closed = 0
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") != parent_run_id:
            continue
        t = by_trial.get(run.data.tags.get("ray_trial_id", ""))
        rid = run.info.run_id
        if t is not None and t["status"] == "TERMINATED" and t.get("round") is not None:
            tracker = RunTracker(uri, rid)
            if not t.get("final"):
                tracker.set_tags({"stopped_early": "true", "stopped_at_round": t["round"]})
            tracker.end("FINISHED")
        elif t is not None and t["status"] == "ERROR":
            _close_run(uri, rid, "FAILED", "trial errored (closed by the sweep driver)")
        else:
            _close_run(uri, rid, "KILLED", "left RUNNING by a driver that died; not resumed")
        closed += 1
    return closed


# --------------------------------------------------------------------------------------------
# Results: table, aggregation, plots, best config


def collect_trials(sweep: Sweep) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per Tune trial (status, params, seed, last metrics) and metric histories."""
    from ray.tune import ExperimentAnalysis

    root = experiment_root(sweep)
    try:
        ea = ExperimentAnalysis(root.uri)
    except Exception as exc:  # no experiment state yet
        raise SweepError(f"no Tune experiment state at {root.uri} yet: {exc}") from None
    metric_names = [*TASK_METRICS[sweep.task], "train_loss"]
    rows, histories = [], {}
    for t in ea.trials:
        last = dict(t.last_result or {})
        cfg = dict((t.config or {}).get(PARAM_SPACE_KEY) or {})
        has = "round" in last
        if t.status == "ERROR":
            outcome = "errored"
        elif t.status == "TERMINATED" and last.get("final"):
            outcome = "finished"
        elif t.status == "TERMINATED" and has:
            outcome = "stopped_early"
        else:
            outcome = t.status.lower()
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            "outcome": outcome,
            "seed": cfg.get(SEED_KEY),
            **{p: cfg.get(p) for p in sweep.paths},
            "round": last.get("round"),
            "final": bool(last.get("final")),
            **{m: last.get(m) for m in metric_names},
            "mlflow_run_id": last.get("mlflow_run_id"),
        }
        rows.append(row)
        df = ea.trial_dataframes.get(t.trial_id)
        if df is not None and "round" in df and sweep.metric in df:
            histories[t.trial_id] = (
                df["round"].astype(float).tolist(),
                df[sweep.metric].astype(float).tolist(),
            )
    return rows, histories


def _fill_run_ids(sweep: Sweep, rows: list[dict[str, Any]]) -> None:
    """Trials that never reported (e.g. crashed) still have a child run: find it by tag."""
    if all(r["mlflow_run_id"] for r in rows):
        return
    state = _read_state(experiment_root(sweep))
    if state is None:
        return
    with contextlib.suppress(Exception):
        client = RunTracker(state["tracking_uri"], state["parent_run_id"]).client
        exp_id = ensure_experiment(state["tracking_uri"], state["experiment"])
        runs = _retry(
            client.search_runs,
            [exp_id],
            filter_string=f"tags.sweep = '{sweep.name}'",
            max_results=5000,
        )
        ids = {
            r.data.tags.get("ray_trial_id"): r.info.run_id
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]
        }
        for r in rows:
            r["mlflow_run_id"] = r["mlflow_run_id"] or ids.get(r["trial_id"])


def _key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def aggregate(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configs (params without seed) with mean/std of the metric over their seeds."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        params = {p: r[p] for p in sweep.paths}
        g = groups.setdefault(_key(params), {"params": params, "rows": []})
        g["rows"].append(r)
    out = []
    for g in groups.values():
        vals = [
            float(r[sweep.metric])
            for r in g["rows"]
            if r[sweep.metric] is not None and math.isfinite(float(r[sweep.metric]))
        ]
        fin = [r for r in g["rows"] if r["outcome"] == "finished"]
        fvals = [
            float(r[sweep.metric])
            for r in fin
            if r[sweep.metric] is not None and math.isfinite(float(r[sweep.metric]))
        ]
        out.append(
            {
                **g["params"],
                "seeds": [r["seed"] for r in g["rows"]],
                "n": len(g["rows"]),
                "n_finished": len(fin),
                "complete": set(sweep.spec.seeds) <= {r["seed"] for r in fin},
                "mean": float(np.mean(fvals if fin else vals)) if (fvals or vals) else None,
                "std": float(np.std(fvals if fin else vals)) if (fvals or vals) else None,
                "values": fvals if fin else vals,
                "run_ids": [r["mlflow_run_id"] for r in g["rows"]],
                "_params": g["params"],
            }
        )
    return out


def pick_best(sweep: Sweep, configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best mean over seeds among configs whose every seed finished; else among all."""
    pool = [c for c in configs if c["complete"] and c["mean"] is not None]
    pool = pool or [c for c in configs if c["mean"] is not None]
    if not pool:
        return None
    sign = 1.0 if sweep.spec.mode == "max" else -1.0
    return max(pool, key=lambda c: sign * c["mean"])


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(
                [
                    json.dumps(r.get(c)) if isinstance(r.get(c), list | dict) else r.get(c)
                    for c in columns
                ]
            )


def _plots(sweep: Sweep, rows: list[dict], configs: list[dict], histories: dict, d: Path) -> None:
    from matplotlib.figure import Figure

    metric = sweep.metric
    d.mkdir(parents=True, exist_ok=True)
    for p, entry in sweep.spec.space.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
        numeric = entry.values is None or all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in entry.values
        )
        cats = [json.dumps(v) for v in entry.values] if not numeric else []  # type: ignore[union-attr]

        def xpos(v: Any, cats: list[str] = cats, numeric: bool = numeric) -> float:
            return float(v) if numeric else float(cats.index(json.dumps(v)))

        for outcome, style in (("finished", "o"), ("stopped_early", "x"), ("errored", "s")):
            pts = [
                (xpos(r[p]), float(r[metric]))
                for r in rows
                if r["outcome"] == outcome and r[metric] is not None and r[p] is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, marker=style, label=outcome, alpha=0.8)
        means = sorted(
            (xpos(c[p]), c["mean"]) for c in configs if c["mean"] is not None and c[p] is not None
        )
        if means and len(sweep.spec.space) == 1:
            xs, ys = zip(*means, strict=True)
            ax.plot(xs, ys, color="grey", lw=1, label="mean over seeds")
        xs_all = [float(v) for v in (entry.values or entry.bounds or [])] if numeric else []
        if entry.loguniform is not None or (
            xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100
        ):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(cats)), cats, rotation=15)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.set_title(f"{sweep.name}: {metric} vs {p.rsplit('.', 2)[-1]}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(d / f"{metric}_vs_{p}.png", dpi=90)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for tid, (rounds, vals) in sorted(histories.items()):
        ax.plot(rounds, vals, marker="o", lw=1, label=tid)
    ax.set_xticks(range(1, sweep.rounds + 1))
    ax.set_xlabel("evaluation round (last = final evaluation)")
    ax.set_ylabel(metric)
    ax.set_title(f"{sweep.name}: {metric} per round (ASHA stops show as short lines)")
    if len(histories) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(d / f"{metric}_by_round.png", dpi=90)


def summarize(
    sweep: Sweep, write: bool = False, parent: RunTracker | None = None
) -> dict[str, Any]:
    """Results of the sweep so far; with ``write`` also the tables, plots and best config
    (under NAME/summary/ of the storage path, and as parent-run artifacts when given)."""
    rows, histories = collect_trials(sweep)
    _fill_run_ids(sweep, rows)
    configs = aggregate(sweep, rows)
    best = pick_best(sweep, configs)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    best_out = None
    if best is not None:
        best_cfg = sweep.trial_dict(best["_params"], sweep.spec.seeds[0])
        best_cfg["tracking"]["run_name"] = None
        best_out = {
            "params": best["_params"],
            "metric": sweep.metric,
            "mode": sweep.spec.mode,
            "mean": best["mean"],
            "std": best["std"],
            "values": best["values"],
            "seeds": best["seeds"],
            "complete": best["complete"],
            "run_ids": best["run_ids"],
            "config": best_cfg,
        }
    out: dict[str, Any] = {
        "name": sweep.name,
        "metric": sweep.metric,
        "mode": sweep.spec.mode,
        "counts": counts,
        "trials": rows,
        "configs": [{k: v for k, v in c.items() if k != "_params"} for c in configs],
        "best": best_out,
    }
    if not write:
        return out
    root = experiment_root(sweep).child(SUMMARY_DIR)
    with scratch_dir() as d:
        metric_cols = [*TASK_METRICS[sweep.task], "train_loss"]
        _write_csv(
            d / "results.csv",
            rows,
            [
                "trial_id",
                "status",
                "outcome",
                *sweep.paths,
                "seed",
                "round",
                "final",
                *metric_cols,
                "mlflow_run_id",
            ],
        )
        _write_csv(
            d / "results_by_config.csv",
            out["configs"],
            [
                *sweep.paths,
                "n",
                "n_finished",
                "complete",
                "mean",
                "std",
                "values",
                "seeds",
                "run_ids",
            ],
        )
        _plots(sweep, rows, configs, histories, d / "plots")
        if best_out is not None:
            head = (
                f"# Best configuration of sweep {sweep.name}: {sweep.metric} "
                f"{best_out['mean']:.4g} +- {best_out['std']:.4g} ({sweep.spec.mode}) over "
                f"seeds {best_out['seeds']}\n# params: {json.dumps(best_out['params'])}\n"
                f"# run with: ambient train --config best_config.yaml\n"
            )
            (d / "best_config.yaml").write_text(
                head + yaml.safe_dump(best_out["config"], sort_keys=False)
            )
        (d / "best.json").write_text(json.dumps(best_out, indent=2, default=str))
        for f in sorted(d.rglob("*")):
            if f.is_file():
                root.write_bytes(str(f.relative_to(d)), f.read_bytes())
        if parent is not None:
            for f in sorted(d.iterdir()):
                parent.log_artifact(f, "results" if f.is_file() else f"results/{f.name}")
        out["files"] = sorted(
            root.uri_for(str(f.relative_to(d))) for f in d.rglob("*") if f.is_file()
        )
    return out


def sweep_status(path: str, overrides: Iterable[str] = (), **kw: Any) -> dict[str, Any]:
    """Trial states (from Tune's experiment state) and the parent run's status."""
    configure_environment()
    sweep = load_sweep(path, overrides, **kw)
    root = experiment_root(sweep)
    state = _read_state(root)
    if state is None:
        raise SweepError(f"no sweep {sweep.name!r} at {root.uri}: nothing has run yet")
    out: dict[str, Any] = {"name": sweep.name, "experiment_dir": root.uri, **state}
    with contextlib.suppress(Exception):
        out["parent_status"] = RunTracker(state["tracking_uri"], state["parent_run_id"]).status()
    try:
        s = summarize(sweep)
    except SweepError as exc:
        out.update(trials=[], counts={}, note=str(exc))
        return out
    out.update(trials=s["trials"], counts=s["counts"], best=s["best"], metric=sweep.metric)
    return out


def sweep_best(path: str, overrides: Iterable[str] = (), **kw: Any) -> dict[str, Any]:
    """The best configuration: from NAME/summary/best.json when the sweep finished, else
    computed from the trials so far."""
    configure_environment()
    sweep = load_sweep(path, overrides, **kw)
    root = experiment_root(sweep).child(SUMMARY_DIR)
    if root.exists("best.json"):
        best = root.read_json("best.json")
        if best is not None:
            return {**best, "source": root.uri_for("best.json")}
    if _read_state(experiment_root(sweep)) is None:
        raise SweepError(f"no sweep {sweep.name!r} at {experiment_root(sweep).uri}")
    best = summarize(sweep)["best"]
    if best is None:
        raise SweepError(f"no trial of sweep {sweep.name!r} has reported {sweep.metric} yet")
    return {**best, "source": "trials so far (the sweep has not finished)"}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["run", "resume", "status", "best"])
    p.add_argument("spec")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--tracking-uri")
    p.add_argument("--storage-path")
    p.add_argument("--name")
    p.add_argument("--ray-address")
    a = p.parse_args(argv)
    kw = {"storage_path": a.storage_path, "name": a.name}
    if a.action in ("run", "resume"):
        res = run_sweep(
            a.spec,
            a.set,
            resume=a.action == "resume",
            tracking_uri=a.tracking_uri,
            ray_address=a.ray_address,
            **kw,
        )
        res = {k: v for k, v in res.items() if k not in ("trials", "configs")}
    elif a.action == "status":
        res = sweep_status(a.spec, a.set, **kw)
    else:
        res = sweep_best(a.spec, a.set, **kw)
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
