"""Which points a sweep runs: grid/random points, Optuna suggestions with constraints and seed
repeats (``SweepSearcher``), and ASHA early stopping over evaluation rounds."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from ambient_platform.config.naming import PARAM_SPACE_KEY
from ambient_platform.config.sweep import (
    MAX_RESAMPLES,
    SEED_KEY,
    OptunaSpace,
    Sweep,
    optuna_storage_path,
)

logger = logging.getLogger(__name__)

REJECTED_ATTR = "rejected"


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

    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
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
                self._accept(trial_id, inner_id, params)
                return {PARAM_SPACE_KEY: {**params, SEED_KEY: self.seeds[0]}}
            self._reject(inner_id, params, why)
        logger.error("no suggestion out of %d satisfied the constraints", MAX_RESAMPLES)
        return str(Searcher.FINISHED)

    def _accept(self, trial_id: str, inner_id: str, params: dict[str, Any]) -> None:
        self.groups[inner_id] = {
            "params": params,
            "trials": {trial_id: None},
            "primary": trial_id,
            "told": False,
        }
        self.trial_group[trial_id] = inner_id
        self.current = inner_id

    def _reject(self, inner_id: str, params: dict[str, Any], why: str) -> None:
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


@dataclass
class SearchPlan:
    """What Tune runs: the search algorithm, its ``num_samples``, the grid points (grid/random:
    every point x seed, else None) and a summary for the parent run."""

    alg: Any
    num_samples: int
    info: dict[str, Any]
    points: list[dict[str, Any]] | None

    @property
    def n_trials(self) -> int:
        return len(self.points) if self.points is not None else self.num_samples

    @property
    def rejected(self) -> int:
        return len(getattr(getattr(self.alg, "searcher", None), "rejected", []) or [])


def search_plan(sweep: Sweep, max_concurrent: int) -> SearchPlan:
    spec = sweep.spec
    if spec.searcher.kind == "optuna":
        return _optuna_plan(sweep, max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    pts, rejected = sweep.points()
    points = [{**p, SEED_KEY: s} for p in pts for s in spec.seeds]
    alg = BasicVariantGenerator(max_concurrent=max_concurrent, random_state=spec.searcher.seed)
    info = {"points": pts, "rejected": [{"params": p, "reason": r} for p, r in rejected]}
    return SearchPlan(alg, 1, info, points)


def _optuna_plan(sweep: Sweep, max_concurrent: int) -> SearchPlan:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = sweep.spec
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
    return SearchPlan(alg, spec.num_samples * len(spec.seeds), info, None)


def scheduler(sweep: Sweep) -> Any:
    """ASHA over evaluation rounds (t = round), or None."""
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
