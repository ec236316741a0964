"""Sweep overhead: how much of a sweep's wall time its trials spend on their own work. Prints JSON.

Real trials (sweeps/smoke.yaml: tiny bin-sorting policy, 3 evaluation rounds, one torch thread,
no early stopping) run through ``orchestrator.sweep.run_sweep`` with ``train.steps`` calibrated
on this machine so one trial computes about ``--short`` and ``--long`` seconds, with and without
actor reuse, each variant on a fresh local Ray instance.

- trial compute = training loop with its round evaluations + final evaluation, measured in the
  trial itself (MLflow metric timestamps of its child run), so process start, imports, data
  preparation and MLflow set-up count as overhead (``mean_run_training_s`` also shows what
  ``run_training`` measured, which includes preparation and first-call import costs);
- efficiency = sum(trial compute) / (sweep wall x concurrency), sweep wall = Tuner.fit() (what
  ``run_sweep`` reports as fit_s), so it excludes Ray start-up and the final report;
- per-trial overhead = (sweep wall x concurrency - sum(trial compute)) / trials: actor start,
  imports, MLflow run creation, checkpoints and reports, scheduling;
- ``phases_s``: the mean over trials of every ``time/<phase>_s`` metric of the child runs
  (``process`` start-up of a fresh worker, ``imports``, ``setup`` of the trial: checkpoint
  lookup and MLflow run creation, ``config`` validation, ``env``, ``data`` read and chunking,
  ``sampler`` table, ``model``, ``tracker`` reopening, ``log`` of params, inputs and final
  metrics/artifacts, ``plots``, ``fit`` = training with its round evaluations and reports,
  ``checkpoint`` of the final state, ``eval``); ``nested_s`` the parts of those
  (``fit/report``: Tune reports, ``fit/checkpoint``: round checkpoints, ``<phase>/mlflow``:
  MLflow calls inside a phase); ``slot_s`` = sweep wall x concurrency / trials and
  ``unexplained_s`` = slot minus the sum of the phases (Tune scheduling, the final report,
  closing the run). ``load`` is the 1-minute load average before and after the variant.

``warm`` is the same table over the trials that ran on a process an earlier trial had started
(what each trial after the first costs with actor reuse). ``process`` counts from the worker
process's start, which may include time it idled in Ray's worker pool.

Usage: .venv/bin/python benchmarks/sweep_overhead.py [--short 5] [--long 60] [--trials 6]
       [--long-trials 4] [--concurrency 2] [--only short|long] [--reuse on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "sweeps" / "smoke.yaml"
#: Totals run_training logs next to the phases (they overlap them).
TOTALS = ("time/train_s", "time/eval_s")


def _calibrate(spec_overrides: list[str]) -> tuple[float, float]:
    """Seconds of one tiny trial as a + b * steps (in-process, untracked, one thread)."""
    import torch

    from ambient_platform.config import RunConfig
    from ambient_platform.config.sweep import load_sweep
    from jobs.train import ensure_generated, run_training

    torch.set_num_threads(1)
    sweep = load_sweep(SPEC, spec_overrides)
    points = []
    for steps in (60, 300):
        data = sweep.trial_dict({"train.lr": 3e-3, "data.corrupt.0.sigma_max": 0.4616}, 0)
        data["train"]["steps"] = steps
        cfg = RunConfig.model_validate(data)
        ensure_generated(cfg)
        run_training(cfg, track=False)  # warm-up (imports, first allocations)
        res = run_training(cfg, track=False)
        points.append((steps, res["time/train_s"] + res["time/eval_s"]))
    (s0, t0), (s1, t1) = points
    b = (t1 - t0) / (s1 - s0)
    return t0 - b * s0, b


def _variant(
    name: str, steps: int, trials: int, concurrency: int, reuse: bool, home: Path
) -> dict[str, float]:
    from mlflow import MlflowClient

    from ambient_platform.ray_runtime import ensure_ray
    from orchestrator.sweep import run_sweep

    lrs = [3e-3 * (0.9**i) for i in range(trials)]  # distinct configs, same cost
    overrides = [
        f"name={name}",
        "scheduler.kind=none",
        "constraints=[]",
        f"space={{train.lr: {{grid: {json.dumps(lrs)}}}}}",
        f"max_concurrent={concurrency}",
        f"reuse_actors={str(reuse).lower()}",
        "overrides="
        + json.dumps(
            [
                *_base_overrides(),
                f"train.steps={steps}",
                f"train.log_every={max(1, steps // 6)}",
            ]
        ),
    ]
    import ray

    ensure_ray(num_cpus=concurrency)
    t0 = time.perf_counter()
    res = run_sweep(SPEC, overrides, storage_path=str(home / "sweeps"), progress=False)
    total = time.perf_counter() - t0
    ray.shutdown()
    client = MlflowClient(res["tracking_uri"])
    exp = client.get_experiment_by_name("sweep-smoke")
    assert exp is not None
    found = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.sweep = '{name}'", max_results=1000
    )
    runs = [r for r in found if r.data.tags.get("ambient.kind") == "trial"]
    compute = [_compute_s(client, r) for r in runs]
    inside = [r.data.metrics["time/train_s"] + r.data.metrics["time/eval_s"] for r in runs]
    wall = res["fit_s"]
    return {
        "trials": len(runs),
        "finished": res["counts"].get("finished", 0),
        "steps": steps,
        "reuse_actors": reuse,
        "concurrency": concurrency,
        "mean_trial_compute_s": round(sum(compute) / len(compute), 2),
        "mean_run_training_s": round(sum(inside) / len(inside), 2),
        "sum_trial_compute_s": round(sum(compute), 1),
        "sweep_wall_s": round(wall, 1),
        "run_sweep_wall_s": round(total, 1),
        "efficiency": round(sum(compute) / (wall * concurrency), 3),
        "overhead_per_trial_s": round((wall * concurrency - sum(compute)) / len(runs), 2),
        **_phase_table(runs, wall * concurrency / len(runs)),
        "warm": _warm_table(runs),
    }


def _warm_table(runs: list[Any]) -> dict[str, Any]:
    """Mean phases of the trials that ran on a worker process an earlier trial had started
    (no ``process`` phase): what every trial after the first costs with actor reuse."""
    warm = [r for r in runs if "time/process_s" not in r.data.metrics]
    if not warm:
        return {"trials": 0}
    table = _phase_table(warm, 0.0)
    return {
        "trials": len(warm),
        "phases_s": table["phases_s"],
        "nested_s": table["nested_s"],
        "sum_phases_s": table["sum_phases_s"],
    }


def _phase_table(runs: list[Any], slot_s: float) -> dict[str, Any]:
    """Mean seconds per phase over the trials (a phase a trial lacks counts 0), the nested
    parts apart, and what the top-level phases leave unexplained of a trial's slot."""
    top: dict[str, float] = {}
    nested: dict[str, float] = {}
    for r in runs:
        for k, v in r.data.metrics.items():
            if k.startswith("time/") and k.endswith("_s") and k not in TOTALS:
                name = k[len("time/") : -len("_s")]
                into = nested if "/" in name else top
                into[name] = into.get(name, 0.0) + v / len(runs)
    explained = sum(top.values())
    return {
        "slot_s": round(slot_s, 2),
        "phases_s": {k: round(v, 3) for k, v in sorted(top.items(), key=lambda kv: -kv[1])},
        "nested_s": {k: round(v, 3) for k, v in sorted(nested.items(), key=lambda kv: -kv[1])},
        "sum_phases_s": round(explained, 2),
        "unexplained_s": round(slot_s - explained, 2),
    }


def _compute_s(client: object, run: object) -> float:
    """Training loop + evaluations of one trial, from its MLflow metric timestamps: first loss
    window (extrapolated back to step 0 with its steps/s) to the final evaluation metric."""
    rid = run.info.run_id  # type: ignore[attr-defined]
    loss = client.get_metric_history(rid, "loss")  # type: ignore[attr-defined]
    sps = client.get_metric_history(rid, "steps_per_s")  # type: ignore[attr-defined]
    final = client.get_metric_history(rid, "eval/n")  # type: ignore[attr-defined]
    first = min(loss, key=lambda m: m.step)
    rate = min(sps, key=lambda m: m.step).value
    start_ms = first.timestamp - 1000.0 * first.step / rate
    return (final[-1].timestamp - start_ms) / 1000.0


def _base_overrides() -> list[str]:
    import yaml

    return list(yaml.safe_load(SPEC.read_text())["overrides"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=float, default=5.0, help="compute seconds of a short trial")
    p.add_argument("--long", type=float, default=60.0, help="compute seconds of a long trial")
    p.add_argument("--trials", type=int, default=6, help="short trials per variant")
    p.add_argument("--long-trials", type=int, default=4, help="long trials per variant")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--only", choices=("short", "long"), help="run one trial length only")
    p.add_argument("--reuse", choices=("on", "off"), help="run one reuse setting only")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sweep-bench-", dir=ROOT / ".work"))
    os.environ["AMBIENT_HOME"] = str(home)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))
    from ambient_platform.settings import configure_environment

    configure_environment()
    a0, b = _calibrate([])
    variants: list[dict[str, object]] = []
    out: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "calibration": {"fixed_s": round(a0, 2), "per_step_ms": round(1000 * b, 2)},
        "variants": variants,
    }
    lengths = (("short", a.short, a.trials), ("long", a.long, a.long_trials))
    for label, secs, n in [x for x in lengths if a.only in (None, x[0])]:
        steps = max(30, int((secs - a0) / b))
        for reuse in [r for r in (False, True) if a.reuse in (None, "on" if r else "off")]:
            name = f"bench-{label}-{'reuse' if reuse else 'fresh'}"
            load0 = os.getloadavg()[0]
            r = _variant(name, steps, n, a.concurrency, reuse, home)
            load = [round(load0, 2), round(os.getloadavg()[0], 2)]
            variants.append({"trial": label, "target_compute_s": secs, "load": load, **r})
            print(json.dumps(variants[-1]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
