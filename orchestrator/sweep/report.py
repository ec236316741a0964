"""The sweep report: one self-contained ``report/index.html`` (figures inlined, no network)
plus the figures as PNG files, built from the tracking store.

It answers the researcher's question at a glance: which configuration works best, by how much,
with how much seed variance, at what smoothness cost, and whether the data can tell the top
configurations apart at all. Built while the sweep runs (refreshed as trials finish) and at its
end, logged to the parent run under ``report/``; ``ambient sweep report`` rebuilds it anytime.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ambient_core.errors import SweepError
from ambient_platform.config import RunConfig
from ambient_platform.config.base import set_path
from ambient_platform.config.naming import format_value
from ambient_platform.tracking import RunTracker, scratch_dir
from jobs.trial import AnnotationCurves, annotation_curves, derived_sigma_min
from orchestrator.sweep import figures
from orchestrator.sweep.parcoords import parcoords_svg
from orchestrator.sweep.results import ConfigStats, Results, build_results, fmt, write_tables
from orchestrator.sweep.state import SMOOTHNESS, SweepIndex, SweepInfo
from orchestrator.sweep.stats import Importance, param_importance

logger = logging.getLogger(__name__)

INDEX = "index.html"
DATA = "data.json"


@dataclass
class Figure:
    title: str
    file: Path
    caption: str


@dataclass
class Report:
    """A built report: where it is and what it says."""

    dir: Path
    results: Results
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.dir / INDEX

    @property
    def headline(self) -> str:
        return self.results.headline


# --------------------------------------------------------------------------------------------
# Annotation-driven trials


def _trial_config(info: SweepInfo, params: dict[str, Any]) -> RunConfig:
    data = copy.deepcopy(info.base)
    for path, value in params.items():
        set_path(data, path, copy.deepcopy(value))
    return RunConfig.model_validate(data)


def _corrupt_refs(info: SweepInfo, configs: Sequence[ConfigStats]) -> Iterator[Any]:
    """The corrupt dataset references of each configuration's validated run config. Only
    swept ``data`` paths change them, so each distinct data setting is validated once (a
    validation per configuration cost seconds in a thousand-configuration sweep)."""
    seen: dict[str, list[Any]] = {}
    for c in configs:
        data = {p: v for p, v in c.params.items() if p == "data" or p.startswith("data.")}
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = list(_trial_config(info, c.params).data.corrupt)
        yield from seen[key]


def _annotation_figures(results: Results, d: Path, notes: list[str]) -> list[Figure]:
    """Classifier P(clean) vs sigma with tau, and the derived sigma_min per configuration."""
    info = results.info
    if not info.base:
        return []
    cache: dict[tuple[Any, ...], AnnotationCurves] = {}
    taus: dict[tuple[Any, ...], list[float]] = {}
    panels: dict[tuple[Any, ...], tuple[str, np.ndarray, np.ndarray]] = {}
    seed = info.seeds[0] if info.seeds else 0
    try:
        for ref in _corrupt_refs(info, results.ranking.configs):
            ann = ref.annotation
            if ann is None:
                continue
            key = (ref.path, ann.path, ann.version, ann.epoch, ann.dataset)
            if key not in cache:
                cache[key] = annotation_curves(ref)
            taus.setdefault(key, []).append(ann.tau)
            pkey = (*key, ann.tau, ann.granularity, ann.n_buckets, ann.bucket_mode)
            if pkey not in panels:
                title = f"tau={format_value(ann.tau)}, epoch {ann.epoch}, {ann.granularity}"
                if ann.granularity == "bucket":
                    title += f" x{ann.n_buckets} ({ann.bucket_mode})"
                sm = derived_sigma_min(ref, cache[key], seed)
                panels[pkey] = (title, sm, cache[key].grid_sigmas)
    except Exception as exc:  # the report must not fail on an unreadable annotation
        notes.append(f"annotation figures skipped: {exc}")
        logger.warning("annotation figures skipped: %s", exc)
        return []
    sets = [
        figures.CurveSet(
            f"annotation {Path(a.uri).name} v{a.version}, classifier epoch {a.epoch}, "
            f"dataset {a.dataset} ({len(a.curves)} frames)",
            a.grid_sigmas,
            a.curves,
            taus[k],
        )
        for k, a in cache.items()
    ]
    out = []
    f: Path | None = figures.classifier_curves(sets, d / "classifier_p_clean_vs_sigma.png")
    if f:
        out.append(
            Figure(
                "Classifier P(clean) vs sigma",
                f,
                "Mean score curve of the corrupt data (band: 10-90% of frames) with each swept "
                "tau; where the mean curve first exceeds tau is the dataset-level sigma_min.",
            )
        )
    f = figures.sigma_min_distribution(list(panels.values()), d / "sigma_min_distribution.png")
    if f:
        out.append(
            Figure(
                "Derived sigma_min per configuration",
                f,
                "How the annotation's thresholds spread under each (tau, epoch, granularity): "
                "frames at sigma_min = 1 are never used at high noise.",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Figures


def _importance(results: Results) -> Importance:
    info = results.info
    trials = [
        (r.params, r.metrics.get(info.metric))
        for r in results.rows
        if r.outcome == "finished" and info.metric in r.metrics
    ]
    log_axes = {p: bool(s.get("log")) for p, s in info.space.items()}
    try:
        return param_importance(trials, info.labels, log_axes, info.mode)  # type: ignore[arg-type]
    except Exception as exc:
        logger.warning("parameter importance failed: %s", exc)
        return Importance({}, "fANOVA", f"failed: {exc}")


def _all_figures(results: Results, d: Path, notes: list[str]) -> tuple[list[Figure], Importance]:
    info = results.info
    out: list[Figure] = []
    for path in info.paths:
        label = info.labels.get(path, path)
        png = figures.metric_vs_param(results, path, d / f"{info.metric}_vs_{label}.png")
        out.append(
            Figure(
                f"{info.metric} vs {label}",
                png,
                f"Each configuration's mean over seeds with its 95% t-interval (n shown; no "
                f"interval for n = 1), coloured by the other swept parameters; faint dots are "
                f"single seeds. Swept path: {path}.",
            )
        )
    f = figures.tradeoff(results, d / "tradeoff_success_vs_smoothness.png")
    if f:
        out.append(
            Figure(
                "Task success vs smoothness",
                f,
                "Red: the Pareto front, configurations no other one beats on both task "
                "success and smoothness (smoothness is averaged over successful rollouts). "
                "#k is the configuration's rank in the table above.",
            )
        )
    elif any(m in info.metrics for m in SMOOTHNESS):
        notes.append(
            "no success-vs-smoothness figure yet: smoothness is measured over successful "
            "rollouts and no configuration has one"
        )
    else:
        notes.append(f"no success-vs-smoothness figure: task {info.task} reports no smoothness")
    out += _annotation_figures(results, d, notes)
    imp = _importance(results)
    f = figures.importance_bars(imp, info.metric, d / "parameter_importance.png")
    if f:
        out.append(Figure("Parameter importance", f, imp.note))
    else:
        notes.append(f"parameter importance: {imp.note}")
    return out, imp


# --------------------------------------------------------------------------------------------
# HTML


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _ranking_table(results: Results) -> str:
    info = results.info
    extra = [m for m in (figures.gain_metric(results), "mean_sq_accel") if m and m != info.metric]
    extra = [m for m in extra if m in info.metrics]
    head = ["#", "configuration", f"{info.metric} mean", "95% interval", "n", "seeds", "std"]
    head += ["Welch p vs #1", "tied with #1", *[f"{m} mean" for m in extra]]
    rows = []
    r = results.ranking
    for i, c in enumerate(r.configs):
        iv = c.interval
        ci = "-" if iv.half_width is None else f"[{fmt(iv.low)}, {fmt(iv.high)}]"
        cells = [str(i + 1), c.label, fmt(iv.mean), ci, str(iv.n), _seeds(c), fmt(iv.std)]
        cells += [
            fmt(r.p_vs_top[i], 2),
            "yes" if r.tied[i] and i > 0 else ("top" if i == 0 else ""),
        ]
        cells += [fmt(c.metrics[m].mean) if m in c.metrics else "-" for m in extra]
        cls = ' class="tied"' if r.tied[i] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table class="rank"><tr>{ths}</tr>{"".join(rows)}</table>'


def _seeds(c: ConfigStats) -> str:
    return ",".join(str(s) for s in c.seeds) or "-"


def _trials_table(results: Results) -> str:
    info = results.info
    head = ["trial", "outcome", info.metric, "round", "duration", "attempt", "MLflow run"]
    rows = []
    for t in results.rows:
        dur = "-" if t.duration_s is None else f"{t.duration_s:.0f} s"
        cells = [t.name, t.outcome, fmt(t.metrics.get(info.metric)), str(t.round or "-")]
        cells += [dur, str(t.attempt), t.run_id]
        rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{ths}</tr>{''.join(rows)}</table>"


def _status_line(results: Results, index: SweepIndex | None) -> str:
    info = results.info
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(results.counts.items()))
    total = info.n_trials if info.n_trials is not None else len(results.rows)
    state = index.state if index is not None else "unknown"
    wall = f"; wall {index.wall_s / 60:.1f} min" if index is not None and index.wall_s else ""
    started = f"{len(results.rows)} of {total} trials started ({counts or 'none yet'})"
    return f"{started}; sweep {state}{wall}"


def render_html(report: Report, index: SweepIndex | None) -> str:
    res = report.results
    info = res.info
    figs = "\n".join(
        f"<section><h2>{html.escape(f.title)}</h2>{_img(f.file)}"
        f'<p class="cap">{html.escape(f.caption)}</p></section>'
        for f in report.figures
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    better = "higher" if info.mode == "max" else "lower"
    return _PAGE.format(
        title=html.escape(f"Sweep {info.name}"),
        name=html.escape(info.name),
        meta=html.escape(
            f"task {info.task} - metric {info.metric} ({better} is better) - "
            f"{_status_line(res, index)} - built {time.strftime('%Y-%m-%d %H:%M:%S')}"
        ),
        verdict=html.escape(res.ranking.verdict),
        ranking=_ranking_table(res),
        figures=figs,
        parcoords=parcoords_svg(res),
        trials=_trials_table(res),
        notes=f"<ul>{notes}</ul>" if notes else "",
        footer=html.escape(
            f"MLflow: {info.tracking_uri} - experiment {info.experiment} - parent run "
            f"{info.parent_run_id} - spec {info.spec}"
        ),
        check=_CHECK,
    )


_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures', ok + '/' + imgs.length);
  document.body.setAttribute('data-parcoords',
    document.querySelectorAll('#parcoords path.trial').length);
});
</script>"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
  max-width: 1100px; color: #222; padding: 0 16px; }}
h1 {{ margin-bottom: 4px; }} .meta {{ color: #666; font-size: 13px; }}
.verdict {{ background: #f4f7fb; border-left: 4px solid #1f77b4; padding: 10px 14px;
  margin: 16px 0; font-size: 15px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
tr.tied td {{ background: #fff8e1; }}
img {{ max-width: 100%; height: auto; display: block; }}
.cap {{ color: #555; font-size: 13px; margin-top: 4px; }}
section {{ margin: 28px 0; }}
#parcoords path.trial {{ fill: none; stroke-width: 2; opacity: 0.8; }}
#parcoords path.trial:hover {{ stroke-width: 4; opacity: 1; }}
#parcoords path.dim {{ stroke: #ccc !important; opacity: 0.25; }}
#parcoords .axis {{ stroke: #333; }} #parcoords .tick {{ fill: #444; }}
#parcoords rect.brush {{ fill: transparent; cursor: crosshair; }}
#parcoords rect.sel {{ fill: rgba(31, 119, 180, 0.25); stroke: #1f77b4; pointer-events: none; }}
.note {{ color: #666; }} footer {{ color: #888; font-size: 12px; margin-top: 32px; }}
</style></head>
<body>
<h1>Sweep {name}</h1>
<div class="meta">{meta}</div>
<div class="verdict"><b>Answer:</b> {verdict}</div>
<h2>Ranking (mean over seeds, 95% t-interval)</h2>
{ranking}
<p class="cap">Highlighted rows cannot be told apart from the top configuration at this number
of seeds (Welch t-test p &ge; 0.05, or a single seed); rank order among them is noise.</p>
{figures}
<section><h2>Parallel coordinates (interactive)</h2>{parcoords}
<p class="cap">One line per finished trial, coloured by the metric (yellow = best). Drag along
an axis to keep a range, double-click it to clear. <span id="parcoords-count"></span></p>
</section>
<section><h2>Notes</h2>{notes}</section>
<details><summary>All trials</summary>{trials}</details>
<footer>{footer}</footer>
{check}
</body></html>
"""


# --------------------------------------------------------------------------------------------
# Build and publish


def _data(report: Report, imp: Importance) -> dict[str, Any]:
    res = report.results
    info, r = res.info, res.ranking
    return {
        "name": info.name,
        "metric": info.metric,
        "mode": info.mode,
        "counts": res.counts,
        "verdict": r.verdict,
        "configs": [
            {**c.flat(info.paths), "tied_with_top": t, "welch_p_vs_top": p}
            for c, t, p in zip(r.configs, r.tied, r.p_vs_top, strict=True)
        ],
        "importance": {"values": imp.values, "method": imp.method, "note": imp.note},
        "figures": [f.file.name for f in report.figures],
        "notes": report.notes,
    }


def build_report(
    info: SweepInfo, out: Path, index: SweepIndex | None = None, results: Results | None = None
) -> Report:
    """Collect the results (unless given) and write index.html, the PNGs, data.json and the
    result tables into ``out``."""
    results = results or build_results(info)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, results)
    report.figures, imp = _all_figures(results, out, report.notes)
    write_tables(info, results.rows, results.ranking, results.best, out / "tables")
    (out / DATA).write_text(json.dumps(_data(report, imp), indent=2, default=str))
    (out / INDEX).write_text(render_html(report, index))
    return report


def publish(report: Report, parent: RunTracker | None, store: Any | None) -> None:
    """Log the report to the parent run (``report/``) and copy it to the sweep's storage."""
    files = sorted(p for p in report.dir.rglob("*") if p.is_file())
    if store is not None:
        for f in files:
            store.write_bytes(str(f.relative_to(report.dir)), f.read_bytes())
    if parent is not None:
        parent.log_artifact(report.dir, "report")


def info_from_tracking(name: str, tracking_uri: str | None = None) -> SweepInfo:
    """A sweep's info from its parent run alone (``spec/ambient_sweep.json``), for sweeps whose
    storage this machine cannot see (another cluster's disk)."""
    from mlflow import MlflowClient

    from ambient_platform.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exps,
        filter_string=f"tags.sweep = '{name}' and tags.`ambient.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SweepError(f"no sweep named {name!r} in the tracking store {uri}")
    with scratch_dir() as d:
        local = client.download_artifacts(runs[0].info.run_id, "spec/ambient_sweep.json", str(d))
        data = json.loads(Path(local).read_text())
    return SweepInfo.from_json({**data, "tracking_uri": uri})
