"""The statistics a sweep report rests on: intervals over seeds, separability, Pareto fronts and
parameter importance. Kept apart from plotting so the test can check the numbers directly."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` seeds with the 95% Student-t interval (none for n < 2: none invented)."""

    n: int
    mean: float | None
    std: float | None  # sample std (ddof 1); None for n < 2
    half_width: float | None

    @property
    def low(self) -> float | None:
        return (
            None if self.mean is None or self.half_width is None else self.mean - self.half_width
        )

    @property
    def high(self) -> float | None:
        return (
            None if self.mean is None or self.half_width is None else self.mean + self.half_width
        )


def t_interval(values: Sequence[float]) -> Interval:
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(vals)
    if n == 0:
        return Interval(0, None, None, None)
    mean = float(vals.mean())
    if n < 2:
        return Interval(1, mean, None, None)
    std = float(vals.std(ddof=1))
    half = float(_t_quantile(n - 1) * std / math.sqrt(n))
    return Interval(n, mean, std, half)


@functools.lru_cache(maxsize=256)
def _t_quantile(dof: int) -> float:
    """Student-t quantile of the interval: one scipy call per seed count, not per interval
    (a thousand-configuration report asks for it thousands of times)."""
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, dof))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when either side has fewer than 2 values."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return None
    if x.var(ddof=1) + y.var(ddof=1) == 0.0:
        return 1.0 if x.mean() == y.mean() else 0.0
    from scipy import stats

    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def overlap(a: Interval, b: Interval) -> bool | None:
    if a.low is None or b.low is None or a.high is None or b.high is None:
        return None
    return a.low <= b.high and b.low <= a.high


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, gain) points no other point beats on both (lower cost, higher gain).

    A point is dominated by one of lower cost and at least its gain, or of equal cost and
    higher gain; sorted by cost this is one pass (the pairwise check was quadratic). NaN
    compares false, so a point with a NaN neither dominates nor is dominated."""
    out = [True] * len(points)
    finite = sorted(
        (i for i, (c, g) in enumerate(points) if not (math.isnan(c) or math.isnan(g))),
        key=lambda i: points[i][0],
    )
    best_below: float | None = None  # highest gain among points of strictly lower cost
    k = 0
    while k < len(finite):
        end = k
        while end < len(finite) and points[finite[end]][0] == points[finite[k]][0]:
            end += 1
        same = finite[k:end]
        top = max(points[i][1] for i in same)
        for i in same:
            g = points[i][1]
            out[i] = not ((best_below is not None and best_below >= g) or top > g)
        best_below = top if best_below is None else max(best_below, top)
        k = end
    return out


# --------------------------------------------------------------------------------------------
# Parameter importance (Optuna's evaluators over a study rebuilt from the results)


#: Up to this many finished trials, fANOVA uses Optuna's default 64 trees.
FANOVA_FULL_TRIALS = 250


@dataclass(frozen=True)
class Importance:
    values: dict[str, float]  # label -> importance (sums to 1), most important first
    method: str
    note: str  # why there is no importance, or what it rests on


def _distribution(values: list[Any], log: bool) -> tuple[Any, Any] | None:
    """(Optuna distribution, encoder) of one swept parameter, None if it takes one value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) < 2:
        return None
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric:
        lo, hi = float(min(values)), float(max(values))
        log = log and lo > 0
        return FloatDistribution(lo, hi, log=log), float
    choices = tuple(sorted(distinct))
    return CategoricalDistribution(choices), lambda v: json.dumps(v, sort_keys=True)


def _fanova_trees(n_trials: int) -> int:
    """Optuna's 64 trees up to 250 trials, fewer beyond: fANOVA's cost grows with trees x
    trials (17.8 s for 1,000 trials of 4 parameters at 64 trees, 4.7 s at 16, importances equal
    to 0.002), and a report must stay within seconds at thousands of trials."""
    return max(8, min(64, 64 * FANOVA_FULL_TRIALS // max(1, n_trials)))


def param_importance(
    trials: Sequence[tuple[Mapping[str, Any], float]],
    labels: Mapping[str, str],
    log_axes: Mapping[str, bool],
    mode: str,
) -> Importance:
    """fANOVA importance of each swept parameter for the metric, one Optuna trial per finished
    (config, seed) so seed noise counts against every parameter alike."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [(p, v) for p, v in trials if v is not None and math.isfinite(v)]
    configs = {json.dumps(p, sort_keys=True, default=str) for p, _ in done}
    if len(configs) < 2:
        return Importance({}, "fANOVA", "needs at least 2 finished configurations")
    if len({float(v) for _, v in done}) < 2:
        return Importance(
            {}, "fANOVA", "the metric is the same in every trial: nothing to explain"
        )
    dists = {}
    for path, label in labels.items():
        d = _distribution([p[path] for p, _ in done], log_axes.get(path, False))
        if d is not None:
            dists[path] = (label, *d)
    if not dists:
        return Importance(
            {}, "fANOVA", "no swept parameter takes two values among finished trials"
        )
    note = f"fANOVA (Optuna) over {len(done)} finished trials of {len(configs)} configurations"
    if len(dists) == 1:  # normalised importances sum to 1: no forest needed (seconds at 1,000)
        ((label, _, _),) = dists.values()
        note += "; a single varying parameter takes all the importance by definition"
        return Importance({label: 1.0}, "fANOVA", note)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for p, v in done:
        study.add_trial(
            optuna.trial.create_trial(
                params={label: enc(p[path]) for path, (label, _, enc) in dists.items()},
                distributions={label: dist for _, (label, dist, _) in dists.items()},
                value=float(v),
            )
        )
    try:
        evaluator = FanovaImportanceEvaluator(n_trees=_fanova_trees(len(done)), seed=0)
        imp = get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # fANOVA refuses degenerate studies (e.g. all values equal)
        logger.info("parameter importance unavailable: %s", exc)
        return Importance({}, "fANOVA", f"not computable here: {exc}")
    return Importance({k: float(v) for k, v in imp.items()}, "fANOVA", note)
