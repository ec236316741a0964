"""Reproduce the paper's tables (``ambient reproduce maze|bin-sorting``).

Each row is a base config in sweeps/train/, trained with several seeds (in parallel worker
processes, one torch thread each) on the same data and evaluated on the same goals; the result is
a markdown + CSV table (mean +- std) and a figure, also logged to an MLflow parent run.

Below the table, each relation of the paper's ordering (e.g. "ambient >= co-training" on task
success, "ambient < co-training" on mean squared acceleration) is checked on every metric of its
level with a 95% Welch interval over seeds of the difference of means: task level (success at
the strict speed check, at 1.1x and 1.2x the limit, reach rate) and motion level (mean squared
acceleration). "better" holds when the interval excludes 0 in the row's favour, "not worse" when
it does not exclude 0 against it, so a small CPU budget shows which relations it can resolve.

``full`` runs the paper's sizes with ``train.device=auto``: on a machine with a GPU every worker
process trains on it (several runs share one GPU; batches are gathered on the device), elsewhere
on the CPU.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ambient_platform.config import RunConfig, load_run_config
from ambient_platform.settings import ambient_home, configure_environment
from ambient_platform.tracking import RunTracker, resolve_tracking_uri

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "sweeps" / "train"
#: Every --full run asks for the GPU when there is one.
FULL_DEVICE = "train.device=auto"


@dataclass(frozen=True)
class Row:
    label: str
    config: str
    paper: dict[str, float]
    key: str = ""  # short name the claims use (defaults to the label)

    @property
    def id(self) -> str:
        return self.key or self.label


@dataclass(frozen=True)
class Claim:
    """One relation of the paper's ordering: row ``a`` better than row ``b`` (``strict``) or not
    worse than it, at the task level or the motion level."""

    a: str
    b: str
    level: Literal["task", "motion"]
    strict: bool


BENCHMARKS: dict[str, dict[str, Any]] = {
    "maze": {
        "rows": [
            Row(
                "filtering (clean only)",
                "maze_filtering.yaml",
                {"success_rate": 0.575, "mean_sq_accel": 31.9},
                "filtering",
            ),
            Row(
                "corrupt only (RRT)",
                "maze_corrupt_only.yaml",
                {"success_rate": 0.990, "mean_sq_accel": 141.65},
                "corrupt-only",
            ),
            Row(
                "co-training",
                "maze_cotraining.yaml",
                {"success_rate": 0.994, "mean_sq_accel": 62.2},
                "co-training",
            ),
            Row(
                "ambient (sigma_min=0.074)",
                "maze_ambient.yaml",
                {"success_rate": 0.995, "mean_sq_accel": 31.0},
                "ambient",
            ),
        ],
        "metrics": [
            "success_rate",
            "mean_sq_accel",
            "success_rate_v110",
            "success_rate_v120",
            "reach_rate",
            "mean_sq_jerk",
            "collision_rate",
            "velocity_violation_rate",
            "violations_chunk_start",
            "violations_within_chunk",
        ],
        # The paper: success filtering 57.5 < co-training 99.4 ~ corrupt only 99.0 ~ ambient
        # 99.5; mean squared acceleration ambient 31.0 ~ filtering 31.9 < co-training 62.2 <
        # corrupt only 141.7.
        "task_metrics": ["success_rate", "success_rate_v110", "success_rate_v120", "reach_rate"],
        "motion_metrics": ["mean_sq_accel"],
        "claims": [
            Claim("ambient", "co-training", "task", strict=False),
            Claim("ambient", "filtering", "task", strict=True),
            Claim("co-training", "filtering", "task", strict=True),
            Claim("ambient", "corrupt-only", "task", strict=False),
            Claim("ambient", "co-training", "motion", strict=True),
            Claim("ambient", "filtering", "motion", strict=False),
            Claim("co-training", "corrupt-only", "motion", strict=True),
        ],
        "full": [
            "data.generate.clean=50",
            "data.generate.corrupt=5000",
            "eval.episodes=1000",
            "data.clean.0.path=data/maze-full/clean",
            "data.corrupt.0.path=data/maze-full/corrupt",
            "train.steps=30000",
            "train.batch_size=256",
            "train.lr=1e-4",
            "train.warmup_steps=500",
            "policy.down_dims=[64,128,256]",
            "policy.step_embed_dim=64",
        ],
    },
    "bin_sorting": {
        "rows": [
            Row(
                "co-training",
                "bin_sorting_cotraining.yaml",
                {"success": 0.227, "motion": 0.872, "logic": 0.260},
                "co-training",
            ),
            Row(
                "ambient (sigma_max=0.46)",
                "bin_sorting_ambient.yaml",
                {"success": 0.933, "motion": 0.950, "logic": 0.982},
                "ambient",
            ),
        ],
        "metrics": ["success", "motion", "logic"],
        "task_metrics": ["success", "logic"],
        "motion_metrics": ["motion"],
        "claims": [
            Claim("ambient", "co-training", "task", strict=True),
            Claim("ambient", "co-training", "motion", strict=False),
        ],
        "full": [
            "train.steps=30000",
            "train.batch_size=256",
            "train.lr=1e-4",
            "eval.episodes=200",
            "policy.down_dims=[64,128,256]",
        ],
    },
    # The same table from a 96x96 camera (LeRobot v3 datasets with MP4 videos, read in place).
    "bin_sorting_pixels": {
        "rows": [
            Row(
                "co-training (pixels)",
                "bin_sorting_pixels_cotraining.yaml",
                {"success": 0.227, "motion": 0.872, "logic": 0.260},
                "co-training",
            ),
            Row(
                "ambient (pixels, sigma_max=0.46)",
                "bin_sorting_pixels_ambient.yaml",
                {"success": 0.933, "motion": 0.950, "logic": 0.982},
                "ambient",
            ),
        ],
        "metrics": ["success", "motion", "logic"],
        "task_metrics": ["success", "logic"],
        "motion_metrics": ["motion"],
        "claims": [
            Claim("ambient", "co-training", "task", strict=True),
            Claim("ambient", "co-training", "motion", strict=False),
        ],
        "full": [
            "train.steps=30000",
            "train.batch_size=64",
            "train.lr=1e-4",
            "train.warmup_steps=500",
            "eval.episodes=200",
            "policy.down_dims=[64,128,256]",
            "policy.vision.backbone_width=64",
        ],
    },
}
PERCENT = {
    "success_rate",
    "success_rate_v110",
    "success_rate_v120",
    "collision_rate",
    "success",
    "motion",
    "logic",
    "reach_rate",
    "velocity_violation_rate",
}
LOWER_IS_BETTER = {
    "mean_sq_accel",
    "mean_sq_jerk",
    "collision_rate",
    "velocity_violation_rate",
    "violations_chunk_start",
    "violations_within_chunk",
}


@dataclass
class Job:
    row: Row
    seed: int
    config: RunConfig


def _train_one(cfg_json: dict[str, Any], uri: str, parent: str, tags: dict[str, str]) -> dict:
    import torch

    from jobs.train import run_training

    torch.set_num_threads(1)
    res = run_training(RunConfig.model_validate(cfg_json), uri, parent, tags)
    return {k: v for k, v in res.items() if k != "history"}


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _fmt(values: list[float], key: str) -> str:
    arr = _finite(values)
    if arr.size == 0:
        return "n/a"
    scale = 100.0 if key in PERCENT else 1.0
    m, s = arr.mean() * scale, (arr.std(ddof=1) * scale if arr.size > 1 else 0.0)
    return f"{m:.1f} ± {s:.1f}"


def diff_interval(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """mean(a) - mean(b) and its Welch t-interval (None bounds with fewer than 2 values a side)."""
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return math.nan, None, None
    d = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return d, None, None
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return d, d - half, d + half


def claim_cell(claim: Claim, a: Sequence[float], b: Sequence[float], metric: str) -> str:
    """``holds: +10.0 [+2.1, +17.9]``: the row-favouring difference (points for rates) and
    its 95% interval, judged by the claim's rule."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    scale = 100.0 if metric in PERCENT else 1.0
    d, lo, hi = diff_interval(a, b)
    if not math.isfinite(d):
        return "n/a (no finite values)"
    d *= sign * scale
    if lo is None or hi is None:
        ok = d > 0 if claim.strict else d >= 0
        return f"{'holds' if ok else 'fails'}: {d:+.1f} (1 seed, no interval)"
    lo, hi = sorted((lo * sign * scale, hi * sign * scale))
    ok = lo > 0 if claim.strict else hi >= 0
    return f"{'holds' if ok else 'fails'}: {d:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def claims_markdown(
    spec: dict[str, Any], rows: Sequence[Row], per_row: dict[str, dict[str, list[float]]]
) -> str:
    """Which relations of the paper's ordering hold on which metric, one table per level."""
    by_id = {r.id: r for r in rows}
    out = []
    for level in ("task", "motion"):
        metrics = [m for m in spec.get(f"{level}_metrics", []) if m in spec["metrics"]]
        claims = [c for c in spec.get("claims", []) if c.level == level]
        if not metrics or not claims:
            continue
        head = ["paper's claim", *metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in claims:
            a, b = by_id[c.a], by_id[c.b]
            key = metrics[0]
            paper = ""
            if key in a.paper and key in b.paper:
                scale = 100.0 if key in PERCENT else 1.0
                paper = f" (paper {a.paper[key] * scale:.1f} vs {b.paper[key] * scale:.1f})"
            text = f"{c.a} {'better than' if c.strict else 'not worse than'} {c.b}{paper}"
            cells = [claim_cell(c, per_row[a.label][m], per_row[b.label][m], m) for m in metrics]
            lines.append("| " + " | ".join([text, *cells]) + " |")
        out.append(f"{level.capitalize()} level:\n\n" + "\n".join(lines))
    if not out:
        return ""
    return (
        "Which relations of the paper's ordering hold (difference in the first row's favour, "
        "points for rates; 95% Welch interval over seeds):\n\n" + "\n\n".join(out)
    )


def _figure(bench: str, rows: list[Row], metrics: list[str], per_row: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    shown = metrics[:3]
    fig = Figure(figsize=(5 * len(shown), 4))
    for i, key in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        scale = 100.0 if key in PERCENT else 1.0
        vals = [np.array(per_row[r.label][key], float) * scale for r in rows]
        means = [float(np.nanmean(v)) if np.isfinite(v).any() else 0.0 for v in vals]
        stds = [float(np.nanstd(v)) if np.isfinite(v).sum() > 1 else 0.0 for v in vals]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, means, 0.4, yerr=stds, capsize=3, label="ours")
        paper = [r.paper.get(key, np.nan) * scale for r in rows]
        ax.bar(x + 0.2, paper, 0.4, color="lightgrey", label="paper")
        ax.set_xticks(x, [r.label.split(" (")[0] for r in rows], rotation=15)
        ax.set_title(key + (" (%)" if key in PERCENT else ""))
        ax.legend(fontsize=8)
    fig.suptitle(f"{bench}: ours vs paper")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _jobs(spec: dict[str, Any], seeds: int, extra: list[str], out_dir: Path) -> list[Job]:
    jobs = []
    for row in spec["rows"]:
        for s in range(seeds):
            cfg = load_run_config(
                CONFIG_DIR / row.config,
                [
                    *extra,
                    f"train.seed={s}",
                    f"tracking.run_name={row.label} seed {s}",
                    f"output_dir={out_dir / 'runs'}",
                    "eval.plot=true",
                ],
            )
            jobs.append(Job(row, s, cfg))
    return jobs


def _run_jobs(
    jobs: list[Job], workers: int, uri: str, parent_id: str, metrics: list[str]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Train every job in ``workers`` spawned processes; results keyed by (row label, seed)."""
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {
            pool.submit(
                _train_one,
                j.config.model_dump(mode="json"),
                uri,
                parent_id,
                {"row": j.row.label, "seed": str(j.seed)},
            ): j
            for j in jobs
        }
        for i, fut in enumerate(as_completed(futs), 1):
            j = futs[fut]
            res = results[(j.row.label, j.seed)] = fut.result()
            m = res["metrics"]
            shown = ", ".join(f"{k}={m[k]:.3f}" for k in metrics if k in m)
            logger.info(
                "[reproduce %d/%d] %s seed %d: %s", i, len(jobs), j.row.label, j.seed, shown
            )
    return results


def _table(
    rows: list[Row], metrics: list[str], per_row: dict, train_s: dict[str, float]
) -> list[str]:
    head = [
        "method",
        *[f"{k} (ours)" for k in metrics],
        *[f"{k} (paper)" for k in rows[0].paper],
        "train s/run",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = [f"{v * 100:.1f}" if k in PERCENT else f"{v:.1f}" for k, v in r.paper.items()]
        cells = [r.label, *[_fmt(per_row[r.label][k], k) for k in metrics], *paper]
        lines.append("| " + " | ".join([*cells, f"{train_s[r.label]:.0f}"]) + " |")
    return lines


def _write_csv(path: Path, jobs: list[Job], metrics: list[str], results: dict) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", *metrics, "train_s", "run_id"])
        for j in jobs:
            res = results[(j.row.label, j.seed)]
            m = res["metrics"]
            w.writerow(
                [
                    j.row.label,
                    j.seed,
                    *[m.get(k) for k in metrics],
                    round(res["time/train_s"], 1),
                    res["run_id"],
                ]
            )


def reproduce(
    bench: str,
    seeds: int = 3,
    full: bool = False,
    out: str | None = None,
    workers: int = 2,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Train every row x seed, aggregate, write table/figure; returns paths and the markdown."""
    from jobs.train import ensure_generated

    configure_environment()
    spec = BENCHMARKS[bench]
    rows: list[Row] = spec["rows"]
    metrics: list[str] = spec["metrics"]
    extra = [*([*spec["full"], FULL_DEVICE] if full else []), *(overrides or [])]
    out_dir = Path(out or ambient_home() / "reproduce" / (bench + ("-full" if full else "")))
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(tracking_uri)
    jobs = _jobs(spec, seeds, extra, out_dir)
    for j in jobs:  # generate shared data once, before workers start
        ensure_generated(j.config)
    parent = RunTracker.start(
        uri,
        jobs[0].config.tracking.experiment,
        f"reproduce-{bench}",
        tags={"kind": "reproduce", "benchmark": bench},
    )
    t0 = time.perf_counter()
    with parent.active():
        parent.log_params(
            {"benchmark": bench, "seeds": seeds, "full": full, "overrides": " ".join(extra) or "-"}
        )
        results = _run_jobs(jobs, workers, uri, parent.run_id, metrics)
        wall = time.perf_counter() - t0
        per_row = {
            r.label: {
                k: [results[(r.label, s)]["metrics"].get(k, math.nan) for s in range(seeds)]
                for k in metrics
            }
            for r in rows
        }
        train_s = {
            r.label: float(np.mean([results[(r.label, s)]["time/train_s"] for s in range(seeds)]))
            for r in rows
        }
        md = "\n".join(_table(rows, metrics, per_row, train_s)) + (
            f"\n\n{seeds} seeds per row, {jobs[0].config.eval.episodes} evaluation episodes per "
            f"run; rates in %, mean ± std over seeds. Wall time {wall / 60:.1f} min with "
            f"{workers} workers."
        )
        if any(k.startswith("violations_") for k in metrics):
            md += (
                " violations_chunk_start / _within_chunk: steps over the strict speed limit "
                "per rollout at the first action of a chunk / later in it; success_rate_v110 / "
                "_v120: success with the speed check at 1.10 / 1.20 x v_max."
            )
        claims = claims_markdown(spec, rows, per_row)
        if claims:
            md += "\n\n" + claims
        (out_dir / "table.md").write_text(md + "\n")
        _write_csv(out_dir / "table.csv", jobs, metrics, results)
        _figure(bench, rows, metrics, per_row, out_dir / "table.png")
        for name in ("table.md", "table.csv", "table.png"):
            parent.log_artifact(out_dir / name)
        parent.log_metrics({"time/wall_s": wall})
    return {"dir": str(out_dir), "markdown": md, "wall_s": wall, "per_row": per_row}
