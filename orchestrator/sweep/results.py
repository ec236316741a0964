"""A sweep's results from the tracking store: one row per child run, configurations aggregated
over seeds with 95% intervals, a ranking that admits ties, tables and the best config.

Everything is read from MLflow (the child runs of the sweep's parent run), so a report can be
rebuilt for any sweep, finished or not, from any machine that reaches the tracking server.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ambient_platform.config.base import set_path
from ambient_platform.config.naming import format_value, trial_label
from ambient_platform.tracking import RunTracker, retry_locked
from jobs.trial import POINT_TAG
from orchestrator.sweep.state import SweepInfo
from orchestrator.sweep.stats import Interval, t_interval, welch_p

SEPARABLE_P = 0.05
HEADLINE_ROWS = 5


@dataclass
class TrialRow:
    """One trial as its MLflow child run recorded it."""

    run_id: str
    trial_id: str
    name: str
    status: str  # MLflow run status
    outcome: str  # finished | stopped_early | errored | killed | running
    params: dict[str, Any]
    seed: int | None
    round: int | None
    final: bool
    metrics: dict[str, float]
    duration_s: float | None
    attempt: int = 1

    def flat(self, paths: Sequence[str]) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "name": self.name,
            "status": self.status,
            "outcome": self.outcome,
            **{p: self.params.get(p) for p in paths},
            "seed": self.seed,
            "round": self.round,
            "final": self.final,
            **self.metrics,
            "duration_s": self.duration_s,
            "attempt": self.attempt,
            "mlflow_run_id": self.run_id,
        }


@dataclass
class ConfigStats:
    """One configuration (params without the seed) over its seeds."""

    params: dict[str, Any]
    label: str
    seeds: list[int]
    values: list[float]  # the metric of finished seeds (of all seeds if none finished)
    interval: Interval
    n_trials: int
    n_finished: int
    complete: bool
    run_ids: list[str]
    metrics: dict[str, Interval] = field(default_factory=dict)

    def flat(self, paths: Sequence[str]) -> dict[str, Any]:
        i = self.interval
        return {
            **{p: self.params.get(p) for p in paths},
            "label": self.label,
            "n": i.n,
            "n_trials": self.n_trials,
            "n_finished": self.n_finished,
            "complete": self.complete,
            "mean": i.mean,
            "std": i.std,
            "ci_low": i.low,
            "ci_high": i.high,
            "half_width": i.half_width,
            "values": self.values,
            "seeds": self.seeds,
            "run_ids": self.run_ids,
        }


# --------------------------------------------------------------------------------------------
# Collect


#: Child runs read per request. One request for every run made the driver's RSS step up by
#: ~50 MB at each live report refresh of a 1,000-trial sweep (MLflow's entities and SQLAlchemy's
#: rows of 1,000 runs at once: a ~160 MB transient whose allocator arenas stay pinned); pages of
#: 200, each turned into rows before the next is read, bound it (~0.3 s more per 1,000 runs).
PAGE_RUNS = 200


def _search_children(info: SweepInfo) -> Iterator[Any]:
    """The child runs of the sweep's parent, a page of ``PAGE_RUNS`` at a time, oldest first:
    runs a live sweep creates meanwhile come after the pages already read, not shifting them."""
    tracker = RunTracker(info.tracking_uri, info.parent_run_id)
    client = tracker.client
    parent = retry_locked(client.get_run, info.parent_run_id)
    token = None
    while True:
        page = retry_locked(
            client.search_runs,
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{info.parent_run_id}'",
            max_results=PAGE_RUNS,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        return {"true": True, "false": False, "none": None}.get(low, text)


def _outcome(run: Any) -> str:
    status = run.info.status
    if status == "FINISHED":
        return "stopped_early" if run.data.tags.get("stopped_early") == "true" else "finished"
    return {"FAILED": "errored", "KILLED": "killed"}.get(status, "running")


def row_of(info: SweepInfo, run: Any) -> TrialRow:
    tags, m = run.data.tags, run.data.metrics
    if POINT_TAG in tags:
        params = json.loads(tags[POINT_TAG])
    else:  # runs of older sweeps: the flattened config params (strings)
        params = {p: _parse(run.data.params[p]) for p in info.paths if p in run.data.params}
    outcome = _outcome(run)
    final = outcome == "finished" and any(k.startswith("eval/") for k in m)
    prefix = "eval/" if final else "round/"
    metrics = {k: m[f"{prefix}{k}"] for k in info.metrics if f"{prefix}{k}" in m}
    if "loss" in m:
        metrics["train_loss"] = m["loss"]
    metrics.update({k: v for k, v in m.items() if k.startswith("sigma_min/")})
    rounds = int(info.base.get("train", {}).get("rounds", 1)) if info.base else None
    rnd = rounds if final else _int(tags.get("stopped_at_round"))
    end, start = run.info.end_time, run.info.start_time
    seed = _int(tags.get("seed"))
    return TrialRow(
        run_id=run.info.run_id,
        trial_id=tags.get("ray_trial_id", ""),
        name=run.info.run_name or trial_label(params, info.labels, seed),
        status=run.info.status,
        outcome=outcome,
        params=params,
        seed=seed,
        round=rnd,
        final=final,
        metrics=metrics,
        duration_s=(end - start) / 1000.0 if end and start else None,
        attempt=_int(tags.get("attempt")) or 1,
    )


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def collect_rows(info: SweepInfo) -> list[TrialRow]:
    """One row per child run of the sweep's parent run, in the order the trials started (a
    run becomes its row as it is read: the runs are never all in memory)."""
    rows: dict[str, tuple[int, TrialRow]] = {}  # by run id: a page boundary may repeat one
    for r in _search_children(info):
        rows[r.info.run_id] = (r.info.start_time or 0, row_of(info, r))
    return [row for _, row in sorted(rows.values(), key=lambda k: k[0])]


# --------------------------------------------------------------------------------------------
# Aggregate and rank


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _finite(rows: Iterable[TrialRow], metric: str) -> list[float]:
    out = []
    for r in rows:
        v = r.metrics.get(metric)
        if v is not None and math.isfinite(v):
            out.append(float(v))
    return out


def aggregate(info: SweepInfo, rows: Sequence[TrialRow]) -> list[ConfigStats]:
    """Configurations with the metric's mean and 95% interval over their finished seeds."""
    groups: dict[str, list[TrialRow]] = {}
    for r in rows:
        groups.setdefault(_key(r.params), []).append(r)
    out = []
    for members in groups.values():
        fin = [r for r in members if r.outcome == "finished"]
        use = fin or members
        values = _finite(use, info.metric)
        params = members[0].params
        out.append(
            ConfigStats(
                params=params,
                label=trial_label(params, info.labels, None),
                seeds=sorted(r.seed for r in use if r.seed is not None),
                values=values,
                interval=t_interval(values),
                n_trials=len(members),
                n_finished=len(fin),
                complete=set(info.seeds) <= {r.seed for r in fin},
                run_ids=[r.run_id for r in members],
                metrics={m: t_interval(_finite(use, m)) for m in info.metrics},
            )
        )
    return out


@dataclass
class Ranking:
    """Configurations best first, which of them the data cannot tell apart from the top one,
    and the verdict in words."""

    configs: list[ConfigStats]
    p_vs_top: list[float | None]
    tied: list[bool]
    verdict: str

    @property
    def best(self) -> ConfigStats | None:
        return self.configs[0] if self.configs else None


def rank(info: SweepInfo, configs: Sequence[ConfigStats]) -> Ranking:
    sign = 1.0 if info.mode == "max" else -1.0
    scored = [c for c in configs if c.interval.mean is not None]
    # Configs whose seeds finished come first; early-stopped ones only have round values.
    ordered = sorted(
        scored, key=lambda c: (c.n_finished == 0, -sign * (c.interval.mean or 0.0), c.label)
    )
    ordered += [c for c in configs if c.interval.mean is None]
    if not scored:
        return Ranking(ordered, [None] * len(ordered), [False] * len(ordered), _NO_RESULT)
    top = ordered[0]
    p = [welch_p(top.values, c.values) if c is not top else None for c in ordered]
    tied = [
        c is top or (c.interval.mean is not None and (pv is None or pv >= SEPARABLE_P))
        for c, pv in zip(ordered, p, strict=True)
    ]
    return Ranking(ordered, p, tied, _verdict(ordered, p, tied))


_NO_RESULT = "no configuration has reported the metric yet"


def _verdict(ordered: list[ConfigStats], p: list[float | None], tied: list[bool]) -> str:
    top = ordered[0]
    scored = [c for c in ordered if c.interval.mean is not None]
    if len(scored) == 1:
        return f"only one configuration has results: {top.label}"
    if top.interval.n < 2:
        return (
            f"{top.label} has the best value, but with {top.interval.n} seed there is no "
            "interval, so the top configurations cannot be separated; run more seeds "
            "(e.g. seeds: [0, 1, 2]) before calling one best"
        )
    others = [c.label for c, t in zip(ordered, tied, strict=True) if t and c is not top]
    if not others:
        return (
            f"{top.label} is best: separable from every other configuration at "
            f"{top.interval.n} seeds (Welch t-test p < {SEPARABLE_P})"
        )
    shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
    return (
        f"not separable at {top.interval.n} seeds: {top.label} and {shown} (Welch t-test "
        f"p >= {SEPARABLE_P} against the top; their 95% intervals overlap) - no single best"
    )


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def interval_text(i: Interval) -> str:
    if i.mean is None:
        return "no result"
    if i.half_width is None:
        return f"{fmt(i.mean)} (n={i.n}, no interval)"
    return f"{fmt(i.mean)} [{fmt(i.low)}, {fmt(i.high)}] (n={i.n})"


def headline(info: SweepInfo, ranking: Ranking) -> str:
    """The ranked table in a few plain-text lines (what the CLI and the demo print)."""
    better = "higher" if info.mode == "max" else "lower"
    n_seeds = len(info.seeds)
    lines = [
        f"{info.metric} ({better} is better), {len(ranking.configs)} configurations x "
        f"{n_seeds} seed{'s' if n_seeds != 1 else ''}, mean and 95% interval over seeds "
        "(= : not separable from #1):"
    ]
    width = max((len(c.label) for c in ranking.configs), default=10)
    for i, c in enumerate(ranking.configs[:HEADLINE_ROWS]):
        mark = "=" if ranking.tied[i] and i > 0 else " "
        lines.append(f" {mark}{i + 1:>2}. {c.label:<{width}}  {interval_text(c.interval)}")
    if len(ranking.configs) > HEADLINE_ROWS:
        lines.append(f"     ... {len(ranking.configs) - HEADLINE_ROWS} more in the report")
    lines.append(f"verdict: {ranking.verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Tables and the best config


def best_record(info: SweepInfo, ranking: Ranking) -> dict[str, Any] | None:
    best = ranking.best
    if best is None or best.interval.mean is None:
        return None
    cfg = copy.deepcopy(info.base)
    if cfg:  # sweeps started by older versions did not record their base config
        for path, value in best.params.items():
            set_path(cfg, path, copy.deepcopy(value))
        cfg["train"]["seed"] = int(info.seeds[0]) if info.seeds else 0
        cfg["tracking"]["run_name"] = None
    i = best.interval
    return {
        "params": best.params,
        "label": best.label,
        "metric": info.metric,
        "mode": info.mode,
        "mean": i.mean,
        "std": i.std,
        "ci": [i.low, i.high] if i.half_width is not None else None,
        "n": i.n,
        "values": best.values,
        "seeds": best.seeds,
        "complete": best.complete,
        "run_ids": best.run_ids,
        "tied_with": [
            c.label for c, t in zip(ranking.configs[1:], ranking.tied[1:], strict=True) if t
        ],
        "verdict": ranking.verdict,
        "config": cfg,
    }


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])


def _cell(v: Any) -> Any:
    if isinstance(v, list | dict):
        return json.dumps(v)
    if isinstance(v, float):
        return format_value(v) if math.isfinite(v) else ""
    return "" if v is None else v


def write_tables(
    info: SweepInfo,
    rows: Sequence[TrialRow],
    ranking: Ranking,
    best: dict[str, Any] | None,
    d: Path,
) -> None:
    """results.csv, results_by_config.csv (ranked), best_config.yaml and best.json in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    trial_cols = ["trial_id", "status", "outcome", *info.paths, "seed", "round", "final"]
    trial_cols += [*info.metrics, "duration_s", "attempt", "name", "mlflow_run_id"]
    _write_csv(d / "results.csv", [r.flat(info.paths) for r in rows], trial_cols)
    ranked = []
    for i, c in enumerate(ranking.configs):
        flat = c.flat(info.paths)
        flat.update(rank=i + 1, tied_with_top=ranking.tied[i], welch_p_vs_top=ranking.p_vs_top[i])
        ranked.append(flat)
    cols = ["rank", *info.paths, "n", "mean", "ci_low", "ci_high", "std", "tied_with_top"]
    cols += ["welch_p_vs_top", "n_trials", "n_finished", "complete", "values", "seeds", "run_ids"]
    _write_csv(d / "results_by_config.csv", ranked, cols)
    if best is not None:
        head = (
            f"# Best configuration of sweep {info.name}: {info.metric} "
            f"{interval_text(_interval_of(best))} ({info.mode}) over seeds {best['seeds']}\n"
            f"# verdict: {best['verdict']}\n# params: {json.dumps(best['params'])}\n"
            f"# run with: ambient train --config best_config.yaml\n"
        )
        (d / "best_config.yaml").write_text(head + yaml.safe_dump(best["config"], sort_keys=False))
    (d / "best.json").write_text(json.dumps(best, indent=2, default=str))


def _interval_of(best: dict[str, Any]) -> Interval:
    ci = best.get("ci")
    half = None if not ci else (ci[1] - ci[0]) / 2
    return Interval(int(best.get("n") or 0), best.get("mean"), best.get("std"), half)


@dataclass
class Results:
    """Everything a summary or a report shows, computed once."""

    info: SweepInfo
    rows: list[TrialRow]
    configs: list[ConfigStats]
    ranking: Ranking
    best: dict[str, Any] | None
    counts: dict[str, int]

    @property
    def headline(self) -> str:
        return headline(self.info, self.ranking)

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly summary ``run_sweep`` returns."""
        return {
            "name": self.info.name,
            "metric": self.info.metric,
            "mode": self.info.mode,
            "counts": self.counts,
            "trials": [r.flat(self.info.paths) for r in self.rows],
            "configs": [c.flat(self.info.paths) for c in self.ranking.configs],
            "best": dict(self.best) if self.best else None,
            "headline": self.headline,
        }


def build_results(info: SweepInfo) -> Results:
    rows = collect_rows(info)
    configs = aggregate(info, rows)
    ranking = rank(info, configs)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return Results(info, rows, configs, ranking, best_record(info, ranking), counts)
