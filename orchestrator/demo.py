"""``make demo`` / ``ambient demo``: the main job end to end on embedded defaults.

1. generate a small maze set (50 smooth GCS plans, 300 jagged RRT plans);
2. train the noise-conditioned classifier (3 epochs, one checkpoint each);
3. annotate the RRT data with score curves on Ray Data (classifier actors);
4. run a small sweep (sweeps/demo.yaml) over tau x granularity of the annotation-derived
   per-chunk sigma_min, every trial an MLflow child run of the sweep's parent run;
5. print the results table and how to open the MLflow UI.
Everything lands under AMBIENT_HOME (default ./.ambient); re-running reuses data and annotation.
"""

from __future__ import annotations

import time
from pathlib import Path

from ambient_platform.config.annotation import AnnotateConfig, ClassifierTrainConfig
from ambient_platform.manifest import latest_manifest
from ambient_platform.settings import ambient_home
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import resolve_tracking_uri
from jobs.annotate import annotate
from jobs.generate import generate
from jobs.train_classifier import RUN_FILE, run_classifier_training

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml"
GRID = list(range(0, 100, 6)) + [99]


def _step(i: int, text: str) -> float:
    print(f"\n[demo {i}/5] {text}", flush=True)
    return time.perf_counter()


def run_demo(tracking_uri: str | None = None) -> dict:
    from orchestrator.sweep import run_sweep

    home = ambient_home()
    data, clf, ann = (
        home / "data" / "maze-demo",
        home / "classifiers" / "demo",
        home / "annotations" / "demo",
    )
    uri = resolve_tracking_uri(tracking_uri)
    t = _step(1, f"maze data -> {data}")
    if not (data / "corrupt" / "meta.json").exists():
        print(generate("maze", 50, 300, str(data), seed=0))
    print(f"  ready ({time.perf_counter() - t:.0f}s); dataset.png shows clean vs RRT plans")
    t = _step(2, f"classifier (3 epochs) -> {clf}")
    if not (clf / RUN_FILE).exists():
        clf_cfg = ClassifierTrainConfig(
            clean=[str(data / "clean")],
            corrupt=[str(data / "corrupt")],
            name="demo",
            out=str(clf),
            epochs=3,
            steps_per_epoch=100,
            batch_size=128,
            experiment="demo",
        )
        res = run_classifier_training(clf_cfg, tracking_uri=uri)
        last = res["history"][-1]
        print(
            f"  accuracy by sigma bucket: acc/s0.0-0.1={last.get('acc/s0.0-0.1', 0):.2f} "
            f"acc/s0.9-1.0={last.get('acc/s0.9-1.0', 0):.2f}"
        )
    print(f"  ready ({time.perf_counter() - t:.0f}s); accuracy_vs_sigma.png in {clf}")
    t = _step(3, f"annotate RRT data with Ray Data -> {ann}")
    if latest_manifest(StorageRoot(str(ann)))[1] is None:
        print(
            annotate(
                AnnotateConfig(
                    data=[str(data / "corrupt")],
                    classifier=str(clf),
                    epochs=[3],
                    out=str(ann),
                    name="demo",
                    grid_levels=GRID,
                    num_draws=2,
                    experiment="demo",
                ),
                tracking_uri=uri,
            )
        )
    print(f"  ready ({time.perf_counter() - t:.0f}s)")
    t = _step(4, "sweep tau x granularity (4 trials, 2 at a time) on Ray Tune")
    # A fresh sweep name per demo run, so `make demo` can be run again and again.
    summary = run_sweep(
        SPEC, tracking_uri=uri, name=time.strftime("demo-%Y%m%d-%H%M%S"), verbose=0
    )
    print(f"  done ({time.perf_counter() - t:.0f}s)")
    _step(5, f"results ({summary['metric']}, {summary['mode']}):")
    for c in summary["configs"]:
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in c.items() if "." in k)
        mean = c.get("mean")
        print(f"  {params:<40} {summary['metric']} = {'n/a' if mean is None else f'{mean:.2f}'}")
    best = summary.get("best") or {}
    print(f"  best: {best.get('params')}")
    print(f"\nMLflow: {uri} (experiment 'demo': classifier, annotation, sweep parent + children)")
    print("open the UI with:  .venv/bin/ambient ui   (then http://127.0.0.1:5000)")
    return summary
