"""``make demo`` / ``ambient demo``: the main job end to end, sized to answer in minutes.

Bin sorting (50 clean demos, 200 with the opposite sorting logic) through every platform stage:

1. data: generate both datasets (``dataset.png`` shows them);
2. classifier: the noise-conditioned clean-vs-corrupt classifier on action chunks plus the
   observation history (the logic is visible only next to the block colours), 2 epochs;
3. annotation: score curves of every wrong-logic chunk (classifier tasks on Ray);
4. sweep: ``sweeps/demo.yaml`` on Ray Tune, co-training vs ambient (annotation-derived
   sigma_min + sigma_max = 0.46), three training seeds each, every trial an MLflow child run;
5. answer: the ranked table, the gap between the best ambient configuration and co-training
   against the spread of their seeds, and where the time went (wall and CPU seconds per stage).

``seed`` picks the data seed (and the classifier's); each seed has its own data, classifier and
annotation under AMBIENT_HOME, reused by a re-run, and every run is a new sweep.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ambient_platform.config.annotation import (
    AnnotateConfig,
    AnnotationResources,
    ClassifierTrainConfig,
)
from ambient_platform.manifest import latest_manifest
from ambient_platform.settings import resolve_location
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import resolve_tracking_uri
from jobs.annotate import annotate
from jobs.generate import generate
from jobs.train_classifier import RUN_FILE, run_classifier_training

logger = logging.getLogger(__name__)

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml"
PREFIX = "bin-sorting-demo"  # the locations sweeps/demo.yaml names (data seed 0)
OBS_KEYS = ["observation.state"]
#: Annotation levels: every tenth DDPM level plus k = 29 (sigma_max) and 99; the classifier's
#: curves are flat in sigma here, so a coarse grid loses nothing and halves the scoring work.
GRID = [0, 10, 20, 29, 40, 50, 60, 70, 80, 90, 99]
CLASSIFIER_EPOCH = 2
N_CLEAN, N_CORRUPT = 50, 200


@dataclass(frozen=True)
class DemoPaths:
    """Relative locations (under the storage root) of one data seed's inputs."""

    seed: int
    name: str

    @classmethod
    def for_seed(cls, seed: int) -> DemoPaths:
        return cls(seed, PREFIX if seed == 0 else f"{PREFIX}-seed{seed}")

    @property
    def data(self) -> str:
        return f"data/{self.name}"

    @property
    def classifier(self) -> str:
        return f"classifiers/{self.name}"

    @property
    def annotation(self) -> str:
        return f"annotations/{self.name}"


@dataclass
class Stage:
    """Wall and CPU seconds of one stage; CPU covers this process and its children (Ray's
    workers included), sampled, so it is a lower bound when short-lived workers come and go."""

    name: str
    wall_s: float
    cpu_s: float | None


@dataclass
class DemoResult:
    summary: dict[str, Any]
    stages: list[Stage] = field(default_factory=list)
    text: str = ""


class _TreeCpu:
    """CPU seconds used by this process tree, polled in the background so workers that exit
    between two readings are still counted (psutil ships with Ray)."""

    def __init__(self, every_s: float = 1.0) -> None:
        import psutil  # ImportError: the caller goes without CPU times

        self.psutil = psutil
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.every_s = every_s
        self.thread = threading.Thread(target=self._loop, name="demo-cpu", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        me = self.psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
            except self.psutil.Error:
                continue
            with self.lock:
                self.seen[key] = t.user + t.system

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            self._poll()

    def total(self) -> float:
        self._poll()
        with self.lock:
            return sum(self.seen.values())

    def close(self) -> None:
        self.stop.set()


class _Clock:
    def __init__(self) -> None:
        self.stages: list[Stage] = []
        try:
            self.cpu: _TreeCpu | None = _TreeCpu()
        except ImportError:  # no psutil: wall time only
            self.cpu = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        logger.info("[demo] %s ...", name)
        w0, c0 = time.perf_counter(), self.cpu.total() if self.cpu else None
        yield
        cpu = self.cpu.total() - c0 if self.cpu and c0 is not None else None
        self.stages.append(Stage(name, time.perf_counter() - w0, cpu))
        logger.info("[demo] %s done in %.0f s", name, self.stages[-1].wall_s)

    def close(self) -> None:
        if self.cpu:
            self.cpu.close()


# --------------------------------------------------------------------------------------------
# Stages


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _data(paths: DemoPaths) -> None:
    out = resolve_location(paths.data)
    if StorageRoot(f"{out}/corrupt").exists("meta.json"):
        logger.info("data: reusing %s", out)
        return
    generate("bin_sorting", N_CLEAN, N_CORRUPT, out, seed=paths.seed)


def _classifier(paths: DemoPaths, uri: str) -> None:
    out = resolve_location(paths.classifier)
    if StorageRoot(out).exists(RUN_FILE):
        logger.info("classifier: reusing %s", out)
        return
    data = resolve_location(paths.data)
    cfg = ClassifierTrainConfig(
        clean=[f"{data}/clean"],
        corrupt=[f"{data}/corrupt"],
        name=paths.name,
        out=out,
        obs_keys=OBS_KEYS,
        channels=[16, 32, 64],
        epochs=CLASSIFIER_EPOCH,
        steps_per_epoch=60,
        batch_size=128,
        seed=paths.seed,
        experiment="demo",
    )
    with _torch_threads(1):  # one thread: several spin-waiting ones cost more CPU than they save
        res = run_classifier_training(cfg, tracking_uri=uri)
    last = res["history"][-1]
    logger.info(
        "classifier: accuracy %.2f (sigma 0-0.1: %.2f, 0.9-1: %.2f)",
        last.get("acc", math.nan),
        last.get("acc/s0.0-0.1", math.nan),
        last.get("acc/s0.9-1.0", math.nan),
    )


def _annotation(paths: DemoPaths, uri: str) -> None:
    out = resolve_location(paths.annotation)
    if latest_manifest(StorageRoot(out))[1] is not None:
        logger.info("annotation: reusing %s", out)
        return
    cfg = AnnotateConfig(
        data=[f"{resolve_location(paths.data)}/corrupt"],
        classifier=resolve_location(paths.classifier),
        epochs=[CLASSIFIER_EPOCH],
        out=out,
        name=paths.name,
        grid_levels=GRID,
        num_draws=1,  # the dataset-level curve averages 17k chunks: one draw each is plenty
        seed=paths.seed,
        obs_keys=OBS_KEYS,
        resources=AnnotationResources(actors=1, cpus_per_actor=1.0),
        experiment="demo",
    )
    annotate(cfg, tracking_uri=uri)


def spec_overrides(paths: DemoPaths) -> list[str]:
    """Spec overrides that point sweeps/demo.yaml at this seed's data, classifier and
    annotation (the file names seed 0's)."""
    if paths.seed == 0:
        return []
    spec = yaml.safe_load(SPEC.read_text())

    def swap(v: Any) -> Any:
        if isinstance(v, str):
            return re.sub(rf"/{re.escape(PREFIX)}(?=/|$)", f"/{paths.name}", v)
        if isinstance(v, list):
            return [swap(x) for x in v]
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        return v

    base = [*swap(spec["overrides"]), f"data.generate.seed={paths.seed}"]
    return [f"overrides={json.dumps(base)}", f"space={json.dumps(swap(spec['space']))}"]


def _sweep(paths: DemoPaths, uri: str) -> dict[str, Any]:
    from orchestrator.sweep import run_sweep

    name = time.strftime(f"demo-seed{paths.seed}-%Y%m%d-%H%M%S")  # a new sweep per run
    return run_sweep(SPEC, spec_overrides(paths), tracking_uri=uri, name=name)


def run_demo(tracking_uri: str | None = None, seed: int = 0) -> DemoResult:
    """Run every stage for data seed ``seed``; the result's ``text`` is what to show."""
    paths = DemoPaths.for_seed(seed)
    uri = resolve_tracking_uri(tracking_uri)
    clock = _Clock()
    try:
        with clock.stage("data"):
            _data(paths)
        with clock.stage("classifier"):
            _classifier(paths, uri)
        with clock.stage("annotation"):
            _annotation(paths, uri)
        with clock.stage("sweep"):
            summary = _sweep(paths, uri)
    finally:
        clock.close()
    result = DemoResult(summary, clock.stages)
    result.text = answer_text(summary, clock.stages, paths, uri)
    return result


# --------------------------------------------------------------------------------------------
# The answer


def method_name(ref: Mapping[str, Any] | None) -> str:
    """What a swept corrupt-dataset reference means, in the paper's words."""
    ref = ref or {}
    ann, smax = ref.get("annotation"), float(ref.get("sigma_max") or 0.0)
    smin = float(ref.get("sigma_min") or 0.0)
    if ann is None and smin == 0.0 and smax == 0.0:
        return "co-training"
    parts = []
    if ann is not None:
        per = ann.get("granularity", "chunk")
        parts.append(f"annotated sigma_min per {per}, tau={ann.get('tau', 0.45)}")
    elif smin > 0:
        parts.append(f"sigma_min={smin:g}")
    if smax > 0:
        parts.append(f"sigma_max={smax:g}")
    return f"ambient ({', '.join(parts)})"


def _stats(values: Sequence[float | None]) -> tuple[float, float, float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (math.nan,) * 4
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
    return mean, std, min(vals), max(vals)


def method_table(summary: Mapping[str, Any], path: str = "data.corrupt.0") -> list[dict[str, Any]]:
    """Per configuration: method name, seeds, and mean/std/min/max of success, logic, motion."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for t in summary.get("trials", []):
        if t.get("outcome") == "finished":
            groups.setdefault(json.dumps(t.get(path), sort_keys=True), []).append(t)
    rows = []
    for key, trials in groups.items():
        row: dict[str, Any] = {
            "method": method_name(json.loads(key)),
            "seeds": sorted(int(t["seed"]) for t in trials),
        }
        for m in ("success", "logic", "motion"):
            row[m] = _stats([t.get(m) for t in trials])
        rows.append(row)
    return sorted(rows, key=lambda r: -r["success"][0] if math.isfinite(r["success"][0]) else 0)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Best ambient vs co-training on success, against the seeds' spread."""
    base = next((r for r in rows if r["method"] == "co-training"), None)
    amb = [r for r in rows if r["method"] != "co-training" and math.isfinite(r["success"][0])]
    if base is None or not amb:
        return "no verdict: the sweep lacks finished co-training or ambient trials"
    best = max(amb, key=lambda r: r["success"][0])
    gap = best["success"][0] - base["success"][0]
    margin = best["success"][2] - base["success"][3]  # worst ambient seed - best co-training
    spread = max(best["success"][3] - best["success"][2], base["success"][3] - base["success"][2])
    if margin > 0:
        return (
            f"{best['method']} beats co-training by {gap:+.2f} success (mean over seeds); its "
            f"worst seed is {margin:.2f} above co-training's best, and the largest seed spread "
            f"is {spread:.2f}: separated"
        )
    return (
        f"{best['method']} vs co-training: {gap:+.2f} success, within the seeds' spread "
        f"({spread:.2f}): not separated"
    )


def _fmt(stat: tuple[float, float, float, float]) -> str:
    mean, std, _, _ = stat
    return "n/a" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def answer_text(
    summary: Mapping[str, Any], stages: list[Stage], paths: DemoPaths, uri: str
) -> str:
    rows = method_table(summary)
    lines = [f"Bin sorting, data seed {paths.seed}: block success / logic / motion per method"]
    width = max([len("method"), *(len(r["method"]) for r in rows)])
    lines.append(f"  {'method':<{width}} {'seeds':<7} {'success':<15} {'logic':<15} motion")
    for r in rows:
        seeds = ",".join(str(s) for s in r["seeds"])
        lines.append(
            f"  {r['method']:<{width}} {seeds:<7} {_fmt(r['success']):<15} "
            f"{_fmt(r['logic']):<15} {_fmt(r['motion'])}"
        )
    lines += ["", verdict(rows), ""]
    if summary.get("headline"):
        lines += ["Sweep ranking (report headline):", str(summary["headline"]), ""]
    else:
        lines += [f"Configurations ({summary.get('metric')}):"]
        for c in summary.get("configs", []):
            lines.append(f"  {c.get('label', '?')}: mean {c.get('mean')}")
        lines.append("")
    if summary.get("report"):
        lines.append(f"Report: {summary['report']}")
    total = sum(s.wall_s for s in stages)
    lines.append(f"Time per stage (total {total:.0f} s wall):")
    for s in stages:
        cpu = "" if s.cpu_s is None else f", {s.cpu_s:.0f} s CPU"
        lines.append(f"  {s.name:<11} {s.wall_s:6.0f} s wall{cpu}")
    lines.append(f"MLflow: {uri} (experiment 'demo'); open it with .venv/bin/ambient ui")
    return "\n".join(lines)
