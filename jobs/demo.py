"""``make demo`` / ``ambient demo``: the main job end to end on embedded defaults.

Generates a small maze dataset (50 clean plans, 300 RRT plans), trains an ambient policy
(sigma_min = 0.074 for the RRT data) for a short while on the local machine, evaluates it
closed-loop, logs everything to the local MLflow store and prints where to look.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.train import run_training
from orchestrator.config import load_run_config
from orchestrator.settings import ambient_home
from orchestrator.tracking import resolve_tracking_uri

CONFIG = Path(__file__).resolve().parents[1] / "sweeps" / "train" / "maze_ambient.yaml"


def run_demo(steps: int = 600, tracking_uri: str | None = None) -> dict:
    home = ambient_home()
    data = home / "data" / "maze-demo"
    cfg = load_run_config(
        CONFIG,
        [
            f"data.clean.0.path={data / 'clean'}",
            f"data.corrupt.0.path={data / 'corrupt'}",
            "data.generate.corrupt=300",
            f"train.steps={steps}",
            f"train.log_every={max(steps // 10, 1)}",
            "train.warmup_steps=50",
            "eval.episodes=20",
            "tracking.experiment=demo",
            "name=demo-maze-ambient",
        ],
    )
    print(f"[demo] data: {data} (generated on first run)", flush=True)
    res = run_training(cfg, tracking_uri, verbose=True)
    uri = resolve_tracking_uri(tracking_uri)
    print("\n[demo] training loss (every log window):")
    for h in res["history"]:
        print(
            f"  step {int(h['step']):>5}  loss {h['loss']:.4f}  corrupt share "
            f"{h['corrupt_share']:.2f}"
        )
    print("\n[demo] closed-loop evaluation on 20 goals:")
    print(json.dumps(res["metrics"], indent=2))
    print(f"\n[demo] run dir: {res['dir']} (rollouts.png, sampler.png, checkpoint/)")
    print(f"[demo] MLflow run {res['run_id']} in {uri}")
    print("[demo] open the UI with:  .venv/bin/ambient ui   (then http://127.0.0.1:5000)")
    return res
