"""Run or resume a sweep on Ray Tune: the parent run, the tuner, live progress, the report.

MLflow: the sweep is a parent run (``ambient.kind=sweep``; spec, resolved base config and
searcher summary as artifacts; git commit tag; a description); every trial is a child run
(``jobs.trial``). Runs a dead driver left RUNNING are reopened by their trial on ``resume`` or
closed KILLED at its end (``reconcile_runs``), so no run stays RUNNING and none is duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ambient_core.errors import SweepError
from ambient_platform.config import RunConfig
from ambient_platform.config.sweep import Sweep, load_sweep
from ambient_platform.settings import ambient_home, configure_environment
from ambient_platform.tracking import (
    NOTE_TAG,
    RunTracker,
    describe_experiment,
    ensure_experiment,
    resolve_tracking_uri,
    retry_locked,
    scratch_dir,
)
from jobs.trial import TrialContext, close_run, sweep_trial
from orchestrator.sweep.callbacks import LiveView, Refresher, SweepMonitor, TrialRunCloser
from orchestrator.sweep.placement import effective_concurrency, trial_resources
from orchestrator.sweep.report import Report, build_report, publish
from orchestrator.sweep.results import Results, build_results
from orchestrator.sweep.searcher import SearchPlan, scheduler, search_plan
from orchestrator.sweep.state import (
    REPORT_DIR,
    STATE_FILE,
    SUMMARY_DIR,
    SweepIndex,
    SweepInfo,
    experiment_root,
    read_info,
    report_dir,
    spec_digest,
    sweep_info,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_NOTE = (
    "Ambient sweeps. Each sweep is a parent run (`tags.ambient.kind = 'sweep'`) whose "
    "`report/index.html` answers which configuration works best; each trial is a child run "
    "(`tags.ambient.kind = 'trial'`) named by what differs, with the swept values as "
    "`sweep.*` params. Classifier and annotation runs carry `ambient.kind` too: filter them out "
    "with `tags.ambient.kind = 'trial'`."
)


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


def _check_start(sweep: Sweep, path: str, info: SweepInfo | None, resume: bool) -> None:
    root = experiment_root(sweep)
    name = f" --name {sweep.name}" if sweep.name != (sweep.spec.name or Path(path).stem) else ""
    if resume and info is None:
        raise SweepError(
            f"no sweep {sweep.name!r} at {root.uri}: start it with "
            f"`ambient sweep run {path}{name}`"
        )
    if not resume and info is not None:
        raise SweepError(
            f"sweep {sweep.name!r} already exists at {root.uri}: continue it with "
            f"`ambient sweep resume {path}{name}`, or start another with a new --name"
        )
    if info is not None and info.spec_digest not in ("", spec_digest(sweep)):
        raise SweepError(
            f"the spec of sweep {sweep.name!r} changed since it started (base config, space, "
            "constraints, seeds, searcher or scheduler): resuming would mix two sweeps; start "
            "a new one with --name"
        )


def _parent_params(sweep: Sweep, concurrency: int, trials: int) -> dict[str, Any]:
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
        params["asha.grace_period"] = s.scheduler.grace_period
        params["asha.reduction_factor"] = s.scheduler.reduction_factor
        params["asha.max_t"] = sweep.max_t
    return params


def _parent_note(sweep: Sweep, info: SweepInfo) -> str:
    space = ", ".join(f"`{info.labels[p]}` {e.describe()}" for p, e in sweep.spec.space.items())
    desc = sweep.spec.description or ""
    return (
        f"**Sweep {sweep.name}** ({info.spec}). {desc}\n\n{sweep.metric} "
        f"({'max' if sweep.spec.mode == 'max' else 'min'}) over {space}; seeds "
        f"{list(sweep.spec.seeds)}; {info.n_trials} trials. The answer is in the artifact "
        "`report/index.html` (ranking with 95% intervals, figures, parameter importance)."
    )


def _start_parent(
    sweep: Sweep, path: str, uri: str, plan: SearchPlan, concurrency: int
) -> tuple[RunTracker, SweepInfo]:
    root = experiment_root(sweep)
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
    info = sweep_info(sweep, parent.run_id, uri, str(Path(path).resolve()))
    root.write_json(STATE_FILE, info.to_json())
    parent.log_params(_parent_params(sweep, concurrency, plan.n_trials))
    parent.set_tags({NOTE_TAG: _parent_note(sweep, info)})
    with scratch_dir() as d:
        s = sweep.spec
        (d / "sweep.yaml").write_text(sweep.spec_text or yaml.safe_dump(s.model_dump()))
        (d / "sweep_resolved.json").write_text(json.dumps(sweep.summary(), indent=2, default=str))
        (d / "base_run_config.yaml").write_text(yaml.safe_dump(sweep.base, sort_keys=False))
        (d / "searcher.json").write_text(
            json.dumps({"kind": s.searcher.kind, **plan.info}, indent=2, default=str)
        )
        (d / STATE_FILE).write_text(json.dumps(info.to_json(), indent=2, default=str))
        parent.log_artifact(d, "spec")
    return parent, info


def _reopen_parent(sweep: Sweep, old: SweepInfo) -> tuple[RunTracker, SweepInfo]:
    """Resume: the same parent run, RUNNING again, ``resumes`` up by one; the state file is
    rewritten with every field (sweeps started by older versions lack some)."""
    parent = RunTracker(old.tracking_uri, old.parent_run_id)
    retry_locked(parent.client.update_run, parent.run_id, status="RUNNING")
    run = retry_locked(parent.client.get_run, parent.run_id)
    parent.set_tags({"resumes": int(run.data.tags.get("resumes", "0")) + 1})
    info = sweep_info(sweep, old.parent_run_id, old.tracking_uri, old.spec)
    info.created = old.created
    experiment_root(sweep).write_json(STATE_FILE, info.to_json())
    return parent, info


def _quiet(verbose: int) -> None:
    """Tune's legacy reporter at verbose 0 prints nothing; no TensorBoard/CSV/JSON loggers
    (their hint and files are noise here: results live in MLflow)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune warns on every snapshot forced by num_to_keep; one per report is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose >= 2:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "1"
    elif "TUNE_WARN_THRESHOLD_S" not in os.environ:
        # Tune warns when a callback takes > 0.5 s: on a busy machine the report refresh thread
        # (which shares the GIL) trips it although nothing is wrong.
        from ray.tune.utils.util import warn_if_slow

        warn_if_slow.DEFAULT_THRESHOLD = 5.0


def _trial_dirname(trial: Any) -> str:
    """``trial_<id>``. A module function, not a lambda: Tune pickles it into every experiment
    snapshot (59 bytes instead of 498)."""
    return f"trial_{trial.trial_id}"


def _tuner(
    sweep: Sweep,
    ctx: TrialContext,
    plan: SearchPlan,
    callbacks: list[Any],
    restore: bool,
    verbose: int = 0,
) -> Any:
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, ctx=ctx), trial_resources(sweep.spec.resources)
    )
    root = experiment_root(sweep)
    if restore:
        return tune.Tuner.restore(root.uri, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(plan.points)} if plan.points else {},
        tune_config=tune.TuneConfig(
            search_alg=plan.alg,
            scheduler=scheduler(sweep),
            num_samples=plan.num_samples,
            time_budget_s=sweep.spec.time_budget_s,
            reuse_actors=sweep.spec.reuse_actors,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=sweep.storage_path,
            failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # trial_checkpoints
            callbacks=callbacks,
            verbose=min(verbose, 3),
        ),
    )


class ReportJob:
    """Builds the report into the local report directory and publishes it (parent run,
    storage, summary tables)."""

    def __init__(self, sweep: Sweep, info: SweepInfo, index: SweepIndex, parent: RunTracker):
        self.sweep, self.info, self.index, self.parent = sweep, info, index, parent
        self.root = experiment_root(sweep)

    def refresh(self) -> None:
        self()

    def __call__(self, results: Results | None = None) -> Report:
        out = report_dir(self.root, self.sweep.name)
        report = build_report(self.info, out, self.index, results)
        store = self.root.child(REPORT_DIR) if self.root.local_path is None else None
        publish(report, self.parent, store)
        summary = self.root.child(SUMMARY_DIR)
        for f in sorted((report.dir / "tables").iterdir()):
            summary.write_bytes(f.name, f.read_bytes())
            self.parent.log_artifact(f, "results")
        return report


def reconcile_runs(
    uri: str, sweep: Sweep, parent_run_id: str, trials: Mapping[str, Mapping[str, Any]]
) -> int:
    """After ``fit``: no child run of this sweep may stay RUNNING. Runs of trials that finished
    are closed like the trial ended; runs of trials Tune does not know (opened by a driver that
    died before it recorded them) are closed KILLED. Returns how many runs were closed."""
    client = RunTracker(uri, parent_run_id).client
    exp_id = ensure_experiment(uri, sweep.experiment)
    runs = retry_locked(
        client.search_runs,
        [exp_id],
        filter_string=f"tags.sweep = '{sweep.name}' and attributes.status = 'RUNNING'",
        max_results=5000,
    )
    closed = 0
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") != parent_run_id:
            continue
        t = trials.get(run.data.tags.get("ray_trial_id", ""))
        rid = run.info.run_id
        if t is not None and t["status"] == "TERMINATED" and t.get("round") is not None:
            tracker = RunTracker(uri, rid)
            if not t.get("final"):
                tracker.set_tags({"stopped_early": "true", "stopped_at_round": t["round"]})
            tracker.end("FINISHED")
        elif t is not None and t["status"] == "ERROR":
            close_run(uri, rid, "FAILED", "trial errored (closed by the sweep driver)")
        else:
            close_run(uri, rid, "KILLED", "left RUNNING by a driver that died; not resumed")
        closed += 1
    return closed


def run_sweep(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    verbose: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or, with ``resume``, continue after a crash or kill -9) the sweep of spec ``path``.

    Returns the summary: trial counts, ranked configurations, the best one, ``report`` (the
    local report/index.html) and ``headline`` (the ranking as a few lines of text).
    ``progress`` logs a line per finished trial and shows a bar; ``verbose`` >= 2 lets Tune talk.
    Ray: the cluster at RAY_ADDRESS (the CLI's ``--ray-address``), else a local one.
    """
    configure_environment()
    path = str(path)
    sweep = load_sweep(path, overrides, storage_path=storage_path, name=name)
    root = experiment_root(sweep)
    old = read_info(root)
    _check_start(sweep, path, old, resume)
    _quiet(verbose)
    t_start = time.time()
    uri = resolve_tracking_uri(
        tracking_uri or (old.tracking_uri if old else None) or sweep.base["tracking"]["uri"]
    )
    from ray import tune

    from ambient_platform.ray_runtime import ensure_ray
    from jobs.train import ensure_generated

    concurrency = effective_concurrency(sweep, ensure_ray())
    ensure_experiment(uri, sweep.experiment)  # in the driver, before any trial (SQLite race)
    _describe(uri, sweep.experiment)
    ensure_generated(RunConfig.model_validate(sweep.base))  # shared data, once, here
    plan = search_plan(sweep, concurrency)
    if old is None:
        parent, info = _start_parent(sweep, path, uri, plan, concurrency)
    else:
        parent, info = _reopen_parent(sweep, old)
    index = SweepIndex.read(root) or SweepIndex(n_trials=plan.n_trials)
    index.state, index.n_trials = "RUNNING", info.n_trials or plan.n_trials
    index.segments.append([t_start, t_start])
    index.write(root)
    restored = resume and tune.Tuner.can_restore(root.uri)
    report_job = ReportJob(sweep, info, index, parent)
    return _fit(sweep, info, index, parent, plan, report_job, _Run(restored, progress, verbose))


def _describe(uri: str, experiment: str) -> None:
    try:
        describe_experiment(uri, experiment, EXPERIMENT_NOTE)
    except Exception as exc:  # cosmetic: never fail a sweep for it
        logger.debug("experiment description not set: %s", exc)


def _context(sweep: Sweep, info: SweepInfo) -> TrialContext:
    return TrialContext(
        sweep=sweep.name,
        base=sweep.base,
        tracking_uri=info.tracking_uri,
        experiment=sweep.experiment,
        parent_run_id=info.parent_run_id,
        ambient_home=str(ambient_home()),
        runs_dir=str(ambient_home() / "sweep-runs" / sweep.name),
        rounds=sweep.rounds,
        checkpoint_train_state=sweep.spec.checkpoint_train_state,
        storage_path=sweep.storage_path,
        labels=info.labels,
    )


@dataclass(frozen=True)
class _Run:
    """How this segment runs: restored from Tune's state or fresh, and how much it says."""

    restored: bool
    progress: bool
    verbose: int


def _fit(
    sweep: Sweep,
    info: SweepInfo,
    index: SweepIndex,
    parent: RunTracker,
    plan: SearchPlan,
    report_job: ReportJob,
    run: _Run,
) -> dict[str, Any]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    root = experiment_root(sweep)
    refresher = Refresher(report_job.refresh)
    monitor = SweepMonitor(LiveView(info, root, index, refresher.poke, run.progress))
    from ray.tune.logger import JsonLoggerCallback

    # Only result.json (Tune's result grid reads it); no CSV or TensorBoard files.
    callbacks = [
        TrialRunCloser(info.tracking_uri, sweep.experiment, parent.run_id),
        monitor,
        JsonLoggerCallback(),
    ]
    tuner = _tuner(sweep, _context(sweep, info), plan, callbacks, run.restored, run.verbose)
    try:
        with parent.active():
            t0 = time.perf_counter()
            try:
                with logging_redirect_tqdm():
                    tuner.fit()
            finally:
                refresher.close()
            fit_s = time.perf_counter() - t0
            index.state = "FINISHED"
            closed = reconcile_runs(info.tracking_uri, sweep, parent.run_id, index.trials)
            results = build_results(info)
            report = report_job(results)
            _log_end(
                parent, sweep, index, results.counts, closed, plan, run.restored, results.best
            )
    except BaseException as exc:
        index.state = "INTERRUPTED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        raise
    finally:
        index.write(root)
    summary = results.summary()
    summary.update(
        wall_s=index.wall_s,
        fit_s=fit_s,
        parent_run_id=parent.run_id,
        tracking_uri=info.tracking_uri,
        report=str(report.index),
        files=sorted(str(p) for p in report.dir.rglob("*") if p.is_file()),
    )
    logger.info(
        "sweep %s done in %.1f min; report: %s", sweep.name, index.wall_s / 60, report.index
    )
    return summary


def _log_end(
    parent: RunTracker,
    sweep: Sweep,
    index: SweepIndex,
    counts: Mapping[str, int],
    closed: int,
    plan: SearchPlan,
    restored: bool,
    best: Mapping[str, Any] | None,
) -> None:
    index.segments[-1][1] = time.time()
    parent.set_tags(
        {
            "trials_finished": counts.get("finished", 0),
            "trials_stopped_early": counts.get("stopped_early", 0),
            "trials_errored": counts.get("errored", 0),
        }
    )
    metrics = {
        "time/wall_s": index.wall_s,
        "trials/total": sum(counts.values()),
        "trials/finished": counts.get("finished", 0),
        "trials/stopped_early": counts.get("stopped_early", 0),
        "trials/errored": counts.get("errored", 0),
        "trials/closed_by_driver": closed,
        "trials/retries": index.retries,
        "trials/node_losses": len(index.lost_nodes),
    }
    if sweep.spec.searcher.kind == "optuna" and not restored:  # restored: not this object
        metrics["trials/rejected_suggestions"] = plan.rejected
    if best and best.get("mean") is not None:
        metrics[f"best/{sweep.metric}"] = best["mean"]
    parent.log_metrics(metrics)
