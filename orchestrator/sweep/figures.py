"""The report's figures (matplotlib, Agg, PNG at 160 dpi). Each figure answers one question of
the researcher; titles say what is shown and the axes carry units or the metric's direction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ambient_platform.config.naming import format_value
from orchestrator.sweep.results import ConfigStats, Results
from orchestrator.sweep.state import SMOOTHNESS
from orchestrator.sweep.stats import Importance, Interval, pareto_front

DPI = 160
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
#: Groups of the other parameters drawn in colour, with a legend entry each; beyond, the best
#: ``MAX_GROUPS - 1`` keep their colour and the rest are grey.
MAX_GROUPS = len(COLORS)
GREY = "#b0b0b0"
#: Lower is better for these task metrics (everything else: higher).
LOWER_IS_BETTER = ("collision_rate", "velocity_violation_rate", "train_loss", *SMOOTHNESS)


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


# --------------------------------------------------------------------------------------------
# Metric against each swept parameter


@dataclass(frozen=True)
class Axis:
    """How one swept parameter is placed on an x axis."""

    numeric: bool
    categories: list[str]
    log: bool

    def x(self, v: Any) -> float:
        if self.numeric:
            return float(v)
        return float(self.categories.index(format_value(v)))


def param_axis(results: Results, path: str) -> Axis:
    info = results.info
    seen = [r.params.get(path) for r in results.rows if path in r.params]
    spec = info.space.get(path, {})
    values = spec.get("values") or seen
    numeric = bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in [*values, *seen]
    )
    if numeric:
        xs = [float(v) for v in [*values, *seen] if v is not None]
        wide = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 10
        return Axis(True, [], bool(spec.get("log")) or wide)
    cats: list[str] = []
    for v in [*values, *seen]:
        if format_value(v) not in cats:
            cats.append(format_value(v))
    return Axis(False, cats, False)


def _groups(results: Results, path: str) -> dict[str, list[ConfigStats]]:
    """Configurations grouped by the values of the other swept parameters."""
    others = [p for p in results.info.paths if p != path]
    labels = results.info.labels
    out: dict[str, list[ConfigStats]] = {}
    for c in results.configs:
        key = ", ".join(f"{labels.get(p, p)}={format_value(c.params.get(p))}" for p in others)
        out.setdefault(key or "all", []).append(c)
    return out


def _offsets(n: int, axis: Axis, span: float) -> list[float]:
    """Horizontal dodge per group so points of different groups do not cover each other."""
    if n == 1:
        return [0.0]
    width = 0.5 if not axis.numeric else span
    return [width * (i / (n - 1) - 0.5) for i in range(n)]


def _dodge_span(axis: Axis, xs: Sequence[float], n_groups: int) -> float:
    """Total horizontal spread of the dodged groups at one x: up to half the smallest gap
    between swept values (in log space on a log axis), so groups never reach a neighbour."""
    if not axis.numeric or not xs:
        return 0.0
    vals = sorted({math.log(x) if axis.log and x > 0 else x for x in xs})
    gaps = [b - a for a, b in zip(vals, vals[1:], strict=False)]
    gap = min(gaps) if gaps else (0.2 if axis.log else 0.2 * (abs(vals[0]) or 1.0))
    return gap * min(0.5, 0.08 * n_groups)


def _jitter_width(axis: Axis, offs: Sequence[float], span: float) -> float:
    """Half-width of the seed dots' jitter: a quarter of the gap between dodged groups."""
    gap = abs(offs[1] - offs[0]) if len(offs) > 1 else (0.4 if not axis.numeric else span)
    return gap / 4


def _dodged(x: float, off: float, axis: Axis) -> float:
    if axis.numeric and axis.log:
        return x * math.exp(off)
    return x + off


def _best_groups(
    groups: dict[str, list[ConfigStats]], mode: str
) -> tuple[dict[str, list[ConfigStats]], list[list[ConfigStats]]]:
    """The ``MAX_GROUPS - 1`` groups with the best configuration (all of them when they fit
    ``MAX_GROUPS``) and the rest, which are drawn in grey under one legend entry: a legend of
    hundreds of colours says nothing."""
    if len(groups) <= MAX_GROUPS:
        return groups, []
    sign = -1.0 if mode == "min" else 1.0

    def best(configs: list[ConfigStats]) -> float:
        means = [sign * c.interval.mean for c in configs if c.interval.mean is not None]
        return max(means, default=-math.inf)

    ranked = sorted(groups, key=lambda k: best(groups[k]), reverse=True)
    keep = ranked[: MAX_GROUPS - 1]
    return {k: groups[k] for k in keep}, [groups[k] for k in ranked[MAX_GROUPS - 1 :]]


def _grey_groups(ax: Any, rest: list[list[ConfigStats]], path: str, axis: Axis) -> None:
    """The groups outside the legend: their means as grey dots, joined per group on a numeric
    axis (one artist each for all of them, so hundreds of groups cost milliseconds)."""
    from matplotlib.collections import LineCollection

    lines, dots = [], []
    for configs in rest:
        means = sorted(
            (axis.x(c.params[path]), c.interval.mean)
            for c in configs
            if c.interval.mean is not None and path in c.params
        )
        dots += means
        if axis.numeric and len(means) > 1:
            lines.append(means)
    if lines:
        ax.add_collection(LineCollection(lines, colors=GREY, linewidths=0.6, zorder=0))
    if dots:
        ax.scatter(*zip(*dots, strict=True), s=10, color=GREY, zorder=0)
    ax.plot([], [], "o", color=GREY, label=f"{len(rest)} more groups")


def metric_vs_param(results: Results, path: str, out: Path) -> Path:
    info = results.info
    axis = param_axis(results, path)
    groups, rest = _best_groups(_groups(results, path), info.mode)
    xs_all = [axis.x(c.params[path]) for c in results.configs if path in c.params]
    span = _dodge_span(axis, xs_all, len(groups))
    offs = _offsets(len(groups), axis, span)
    ns = {c.interval.n for c in results.configs if c.interval.mean is not None}
    same_n = len(ns) <= 1
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    for gi, (label, configs) in enumerate(groups.items()):
        color = _color(gi)
        pts = sorted(
            ((_dodged(axis.x(c.params[path]), offs[gi], axis), c) for c in configs),
            key=lambda t: t[0],
        )
        _seed_dots(ax, pts, color, axis, _jitter_width(axis, offs, span), rng)
        _mean_bars(ax, pts, color, same_n)
        means = [(x, c.interval.mean) for x, c in pts if c.interval.mean is not None]
        if axis.numeric and len(means) > 1:
            ax.plot(*zip(*means, strict=True), color=color, lw=1, alpha=0.7, zorder=1)
        ax.plot([], [], "o", color=color, label=label)
    if rest:
        _grey_groups(ax, rest, path, axis)
    _style_param_axis(ax, axis, info.labels.get(path, path), path, xs_all, span)
    better = "lower is better" if info.mode == "min" else "higher is better"
    ax.set_ylabel(f"{info.metric} ({better})")
    n = ns.pop() if same_n and ns else None
    n_text = "mean over seeds (n shown); bars: 95% t-interval (none for n = 1); dots: seeds"
    if n is not None:
        n_text = f"mean of n = {n} seeds; bars: 95% t-interval; dots: single seeds"
    if n == 1:
        n_text = "one seed per configuration: single runs, no interval"
    ax.set_title(f"{info.metric} vs {info.labels.get(path, path)}\n{n_text}", fontsize=9)
    if len(groups) > 1:
        ax.legend(
            title="other parameters" + (" (best groups)" if rest else ""),
            fontsize=8,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _seed_dots(
    ax: Any,
    pts: Sequence[tuple[float, ConfigStats]],
    color: str,
    axis: Axis,
    width: float,
    rng: np.random.Generator,
) -> None:
    """Single seeds as faint jittered dots, one artist for the whole group (one per
    configuration made a thousand-configuration figure take seconds)."""
    xs: list[float] = []
    ys: list[float] = []
    for x, c in pts:
        if len(c.values) > 1:
            jit = rng.uniform(-1.0, 1.0, len(c.values)) * width
            xs += [_dodged(x, j, axis) for j in jit]
            ys += c.values
    if xs:
        ax.scatter(xs, ys, s=14, color=color, alpha=0.35, linewidths=0, zorder=2)


def _mean_bars(
    ax: Any, pts: Sequence[tuple[float, ConfigStats]], color: str, same_n: bool
) -> None:
    """Each configuration's mean with its 95% interval (NaN: none for n = 1), one artist."""
    shown = [(x, c.interval) for x, c in pts if c.interval.mean is not None]
    if not shown:
        return
    ax.errorbar(
        [x for x, _ in shown],
        [i.mean for _, i in shown],
        yerr=_half_widths([i for _, i in shown]),
        fmt="o",
        ms=6,
        color=color,
        capsize=4,
        lw=1.4,
        zorder=3,
    )
    if not same_n:
        for x, i in shown:
            ax.annotate(
                f"n={i.n}",
                (x, i.mean),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )


def _style_param_axis(
    ax: Any, axis: Axis, label: str, path: str, values: Sequence[float] = (), span: float = 0.0
) -> None:
    """Log scale, the swept values as ticks, and x limits that hold every swept value plus the
    groups dodged around it (``span``: their total spread, in log space on a log axis)."""
    from matplotlib.ticker import NullFormatter

    if axis.numeric and axis.log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if axis.numeric and 0 < len(set(values)) <= 8:  # tick exactly the swept values
        ticks = sorted(set(values))
        ax.set_xticks(ticks, [format_value(v) for v in ticks])
    if axis.numeric and values:  # every swept value in view, also those without results yet
        lo, hi = min(values), max(values)
        if axis.log and lo > 0:
            pad = span / 2 + 0.06 * (math.log(hi / lo) or 1.0)
            ax.set_xlim(lo * math.exp(-pad), hi * math.exp(pad))
        else:
            pad = span / 2 + 0.06 * ((hi - lo) or abs(lo) or 1.0)
            ax.set_xlim(lo - pad, hi + pad)
    if not axis.numeric:
        ax.set_xticks(range(len(axis.categories)), axis.categories)
        ax.set_xlim(-0.6, len(axis.categories) - 0.4)
    ax.set_xlabel(f"{label}   ({path})" if label != path else path)


# --------------------------------------------------------------------------------------------
# Task-level vs motion-level trade-off


def gain_metric(results: Results) -> str | None:
    """The task-level metric of the trade-off plot: the sweep's metric when it is a
    higher-is-better task metric, else the task's success metric."""
    info = results.info
    if info.metric not in LOWER_IS_BETTER and info.metric in info.metrics:
        return info.metric
    for m in ("success_rate", "success", "reach_rate"):
        if m in info.metrics:
            return m
    return None


def tradeoff(results: Results, out: Path) -> Path | None:
    """Success (or reach) against smoothness per configuration, Pareto front marked."""
    info = results.info
    costs = [m for m in SMOOTHNESS if m in info.metrics]
    gain = gain_metric(results)
    if not costs or gain is None:
        return None
    costs = [m for m in costs if any(_both(c, m, gain) for c in results.configs)]
    if not costs:
        return None
    fig = _figure(5.2 * len(costs) + 0.6, 4.6)
    for k, cost in enumerate(costs):
        ax = fig.add_subplot(1, len(costs), k + 1)
        _tradeoff_panel(ax, results.ranking.configs, cost, gain)
    fig.suptitle(
        f"{gain} vs smoothness per configuration (mean over seeds, bars: 95% t-interval)",
        fontsize=10,
    )
    return _save(fig, out)


def _both(c: ConfigStats, cost: str, gain: str) -> bool:
    ci, gi = c.metrics.get(cost), c.metrics.get(gain)
    return ci is not None and gi is not None and ci.mean is not None and gi.mean is not None


def _tradeoff_panel(ax: Any, configs: Sequence[ConfigStats], cost: str, gain: str) -> None:
    """``configs`` in rank order: points are labelled with their rank in the report's table."""
    rank = {id(c): i + 1 for i, c in enumerate(configs)}
    pts = [(c, c.metrics[cost], c.metrics[gain]) for c in configs if _both(c, cost, gain)]
    front = pareto_front([(ci.mean or 0.0, gi.mean or 0.0) for _, ci, gi in pts])
    label_all = len(pts) <= 6
    for on in (False, True):  # one artist per class: one per configuration took seconds
        mine = [(ci, gi) for (_, ci, gi), o in zip(pts, front, strict=True) if o == on]
        if mine:
            _tradeoff_points(ax, mine, on)
    for (c, ci, gi), on in zip(pts, front, strict=True):
        if on or label_all:
            ax.annotate(
                f"#{rank[id(c)]}",
                (ci.mean, gi.mean),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=8,
                color="#b11f20" if on else "#555555",
                zorder=4,
            )
    line = sorted(
        (ci.mean or 0.0, gi.mean or 0.0) for (_, ci, gi), on in zip(pts, front, strict=True) if on
    )
    if len(line) > 1:
        ax.plot(*zip(*line, strict=True), color="#d62728", lw=1.2, ls="--", zorder=1)
    ax.plot([], [], "o", color="#d62728", label="Pareto front (joined)")
    ax.plot([], [], "o", color="#8c99a6", label="dominated")
    ax.set_xlabel(f"{cost} (lower is smoother)")
    ax.set_ylabel(f"{gain} (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", frameon=False)


def _half_widths(intervals: Sequence[Interval]) -> list[list[float]] | None:
    """Symmetric error bars of ``intervals`` (NaN: no bar), None when no interval has one."""
    half = [math.nan if i.half_width is None else i.half_width for i in intervals]
    return None if all(math.isnan(h) for h in half) else [half, half]


def _tradeoff_points(ax: Any, pts: Sequence[tuple[Interval, Interval]], on: bool) -> None:
    """Configurations on (red) or off (grey) the Pareto front with their 95% intervals."""
    color = "#d62728" if on else "#8c99a6"
    ax.errorbar(
        [ci.mean for ci, _ in pts],
        [gi.mean for _, gi in pts],
        xerr=_half_widths([ci for ci, _ in pts]),
        yerr=_half_widths([gi for _, gi in pts]),
        fmt="o",
        color=color,
        ecolor=color,
        elinewidth=1,
        alpha=0.9 if on else 0.55,
        ms=7 if on else 5,
        capsize=2,
        zorder=3 if on else 2,
    )


# --------------------------------------------------------------------------------------------
# Annotation: classifier curves and derived sigma_min


@dataclass(frozen=True)
class CurveSet:
    """Mean score curve of one annotation epoch and the taus swept over it."""

    title: str
    grid_sigmas: np.ndarray
    curves: np.ndarray
    taus: list[float]


def classifier_curves(sets: Sequence[CurveSet], out: Path) -> Path | None:
    if not sets:
        return None
    fig = _figure(5.4 * len(sets) + 0.4, 4.4)
    for k, cs in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), k + 1)
        s = cs.grid_sigmas
        mean = cs.curves.mean(axis=0)
        lo, hi = np.quantile(cs.curves, [0.1, 0.9], axis=0)
        ax.fill_between(s, lo, hi, color="#1f77b4", alpha=0.2, label="10-90% of frames")
        ax.plot(s, mean, color="#1f77b4", lw=2, label="mean P(clean)")
        for j, tau in enumerate(sorted(set(cs.taus))):
            color = _color(j + 1)
            ax.axhline(tau, color=color, ls="--", lw=1.2, label=f"tau = {format_value(tau)}")
            cross = np.flatnonzero(mean > tau)
            if len(cross):
                sm = float(s[cross[0]])
                ax.axvline(sm, color=color, ls=":", lw=1)
                ax.annotate(
                    f"sigma_min = {sm:.3g}",
                    (sm, 0.02 + 0.06 * j),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                    rotation=0,
                )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("sigma (VP noise level, log scale)")
        ax.set_ylabel("classifier P(clean | x_sigma)")
        ax.set_title(cs.title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    fig.suptitle("Classifier P(clean) of the corrupt data vs noise level", fontsize=10)
    return _save(fig, out)


def sigma_min_distribution(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], out: Path
) -> Path | None:
    """(title, derived sigma_min per annotated frame, grid sigmas) per configuration.

    sigma_min only takes annotation-grid values, so each panel is a bar per grid level (equal
    widths, share of frames), not a histogram whose bin widths follow the uneven grid."""
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.4 * cols + 0.3, 2.9 * rows + 0.6)
    for k, (title, sm, grid) in enumerate(sorted(panels, key=lambda p: p[0])):
        ax = fig.add_subplot(rows, cols, k + 1)
        idx = np.clip(np.searchsorted(grid, sm - 1e-9), 0, len(grid) - 1)
        share = np.bincount(idx, minlength=len(grid)) * 100.0 / max(len(sm), 1)
        ax.bar(np.arange(len(grid)), share, width=0.8, color="#ff7f0e")
        step = max(1, math.ceil(len(grid) / 6))
        ticks = list(range(0, len(grid), step))
        ax.set_xticks(ticks, [f"{grid[t]:.2g}" for t in ticks], fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("derived sigma_min (annotation grid)", fontsize=8)
        ax.set_ylabel("% of frames", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(0, 105)
        ax.text(
            0.97,
            0.95,
            f"mean {sm.mean():.3g}\nnever passes: {100 * float((sm >= 1.0).mean()):.0f}%",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    fig.suptitle("Derived sigma_min per configuration (share of annotated frames)", fontsize=10)
    return _save(fig, out)


# --------------------------------------------------------------------------------------------
# Parameter importance


def importance_bars(imp: Importance, metric: str, out: Path) -> Path | None:
    if not imp.values:
        return None
    names = list(imp.values)[::-1]
    vals = [imp.values[n] for n in names]
    fig = _figure(6.5, 1.2 + 0.45 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, vals, color="#2ca02c")
    for y, v in enumerate(vals):
        ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title("Parameter importance", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)
