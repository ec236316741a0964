"""Reproduce the paper's tables (``ambient reproduce maze|bin-sorting``).

Each row is a base config in sweeps/train/, trained with several seeds (in parallel worker
processes, one torch thread each) on the same data and evaluated on the same goals; the result is
a markdown + CSV table (mean +- std) and a figure, also logged to an MLflow parent run.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ambient_platform.config import RunConfig, load_run_config
from ambient_platform.settings import ambient_home, configure_environment
from ambient_platform.tracking import RunTracker, resolve_tracking_uri

CONFIG_DIR = Path(__file__).resolve().parents[1] / "sweeps" / "train"


@dataclass(frozen=True)
class Row:
    label: str
    config: str
    paper: dict[str, float]


BENCHMARKS: dict[str, dict[str, Any]] = {
    "maze": {
        "rows": [
            Row(
                "filtering (clean only)",
                "maze_filtering.yaml",
                {"success_rate": 0.575, "mean_sq_accel": 31.9},
            ),
            Row(
                "corrupt only (RRT)",
                "maze_corrupt_only.yaml",
                {"success_rate": 0.990, "mean_sq_accel": 141.65},
            ),
            Row(
                "co-training",
                "maze_cotraining.yaml",
                {"success_rate": 0.994, "mean_sq_accel": 62.2},
            ),
            Row(
                "ambient (sigma_min=0.074)",
                "maze_ambient.yaml",
                {"success_rate": 0.995, "mean_sq_accel": 31.0},
            ),
        ],
        "metrics": [
            "success_rate",
            "mean_sq_accel",
            "reach_rate",
            "mean_sq_jerk",
            "collision_rate",
            "velocity_violation_rate",
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
            ),
            Row(
                "ambient (sigma_max=0.46)",
                "bin_sorting_ambient.yaml",
                {"success": 0.933, "motion": 0.950, "logic": 0.982},
            ),
        ],
        "metrics": ["success", "motion", "logic"],
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
            ),
            Row(
                "ambient (pixels, sigma_max=0.46)",
                "bin_sorting_pixels_ambient.yaml",
                {"success": 0.933, "motion": 0.950, "logic": 0.982},
            ),
        ],
        "metrics": ["success", "motion", "logic"],
        "full": [
            "train.steps=30000",
            "train.batch_size=64",
            "train.lr=1e-4",
            "eval.episodes=200",
            "policy.down_dims=[64,128,256]",
            "policy.vision.backbone_width=64",
        ],
    },
}
PERCENT = {
    "success_rate",
    "collision_rate",
    "success",
    "motion",
    "logic",
    "reach_rate",
    "velocity_violation_rate",
}


def _train_one(cfg_json: dict[str, Any], uri: str, parent: str, tags: dict[str, str]) -> dict:
    import torch

    from jobs.train import run_training

    torch.set_num_threads(1)
    res = run_training(RunConfig.model_validate(cfg_json), uri, parent, tags)
    return {k: v for k, v in res.items() if k != "history"}


def _fmt(values: list[float], key: str) -> str:
    arr = np.array([v for v in values if v == v], dtype=float)
    if arr.size == 0:
        return "n/a"
    scale = 100.0 if key in PERCENT else 1.0
    m, s = arr.mean() * scale, (arr.std(ddof=1) * scale if arr.size > 1 else 0.0)
    return f"{m:.1f} ± {s:.1f}"


def _figure(bench: str, rows: list[Row], metrics: list[str], per_row: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    shown = metrics[:3]
    fig = Figure(figsize=(5 * len(shown), 4))
    for i, key in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        scale = 100.0 if key in PERCENT else 1.0
        vals = [np.array(per_row[r.label][key], float) * scale for r in rows]
        means = [np.nanmean(v) if np.isfinite(v).any() else 0.0 for v in vals]
        stds = [np.nanstd(v) if np.isfinite(v).sum() > 1 else 0.0 for v in vals]
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
    extra = [*(spec["full"] if full else []), *(overrides or [])]
    out_dir = Path(out or ambient_home() / "reproduce" / (bench + ("-full" if full else "")))
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(tracking_uri)
    jobs = []
    for row in rows:
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
            jobs.append((row, s, cfg))
    for _, _, cfg in jobs:  # generate shared data once, before workers start
        ensure_generated(cfg)
    parent = RunTracker.start(
        uri,
        jobs[0][2].tracking.experiment,
        f"reproduce-{bench}",
        tags={"kind": "reproduce", "benchmark": bench},
    )
    t0 = time.perf_counter()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with parent.active():
        parent.log_params(
            {"benchmark": bench, "seeds": seeds, "full": full, "overrides": " ".join(extra) or "-"}
        )
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = {
                pool.submit(
                    _train_one,
                    cfg.model_dump(mode="json"),
                    uri,
                    parent.run_id,
                    {"row": row.label, "seed": str(s)},
                ): (row, s)
                for row, s, cfg in jobs
            }
            for i, fut in enumerate(as_completed(futs), 1):
                row, s = futs[fut]
                results[(row.label, s)] = fut.result()
                m = results[(row.label, s)]["metrics"]
                print(
                    f"[reproduce {i}/{len(jobs)}] {row.label} seed {s}: "
                    + ", ".join(f"{k}={m[k]:.3f}" for k in spec["metrics"]),
                    flush=True,
                )
        wall = time.perf_counter() - t0
        metrics: list[str] = spec["metrics"]
        per_row = {
            r.label: {
                k: [results[(r.label, s)]["metrics"][k] for s in range(seeds)] for k in metrics
            }
            for r in rows
        }
        train_s = {
            r.label: float(np.mean([results[(r.label, s)]["time/train_s"] for s in range(seeds)]))
            for r in rows
        }
        head = [
            "method",
            *[f"{k} (ours)" for k in metrics],
            *[f"{k} (paper)" for k in rows[0].paper],
            "train s/run",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            paper = [f"{v * 100:.1f}" if k in PERCENT else f"{v:.1f}" for k, v in r.paper.items()]
            cells = [
                r.label,
                *[_fmt(per_row[r.label][k], k) for k in metrics],
                *paper,
                f"{train_s[r.label]:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        n_eval = jobs[0][2].eval.episodes
        md = "\n".join(lines) + (
            f"\n\n{seeds} seeds per row, {n_eval} evaluation episodes per run; rates in %, "
            f"mean ± std over seeds. Wall time {wall / 60:.1f} min with {workers} workers."
        )
        (out_dir / "table.md").write_text(md + "\n")
        with (out_dir / "table.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "seed", *metrics, "train_s", "run_id"])
            for r in rows:
                for s in range(seeds):
                    res = results[(r.label, s)]
                    w.writerow(
                        [
                            r.label,
                            s,
                            *[res["metrics"][k] for k in metrics],
                            round(res["time/train_s"], 1),
                            res["run_id"],
                        ]
                    )
        _figure(bench, rows, metrics, per_row, out_dir / "table.png")
        for name in ("table.md", "table.csv", "table.png"):
            parent.log_artifact(out_dir / name)
        parent.log_metrics({"time/wall_s": wall})
    return {"dir": str(out_dir), "markdown": md, "wall_s": wall, "per_row": per_row}
