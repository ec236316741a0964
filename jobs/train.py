"""Train, evaluate and track one run (``ambient train``); the unit every sweep trial reuses.

Wires ambient_core (data, sampler, policy, training loop, env evaluation) to storage and MLflow:
params once (the resolved config, flattened), losses and corrupt share per sigma bucket, round
and final evaluation metrics, a rollout plot, the sampler plot, config and checkpoint artifacts.
A corrupt dataset that refers to an annotation gets its per-chunk sigma_min derived from the
annotation's score curves at load time (``jobs.annotated_data``); its distribution is logged as
``sigma_min/*`` metrics, since the config's ``sigma_min`` (0.0) is only a placeholder then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ambient_core.data import ChunkDataset, ChunkSpec, Frames
from ambient_core.envs.registry import EvalResult, Task, get_task
from ambient_core.errors import ConfigError
from ambient_core.policy import DiffusionPolicy, Normalizer, PolicyRunner, PolicySpec
from ambient_core.sampler import Buffer, LinearRamp, MixingRule, NoiseFirstSampler, PoolDatasets
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import (
    Callback,
    TrainConfig,
    TrainState,
    load_policy,
    make_state,
    read_checkpoint_meta,
    restore_state,
    save_checkpoint,
    train,
)
from ambient_core.vision import VisionDiffusionPolicy
from ambient_core.vision_data import ImageChunkDataset
from ambient_platform.config import DatasetRef, RunConfig, flatten
from ambient_platform.datasets import META_FILE, read_frames, read_meta
from ambient_platform.lerobot import INFO_PATH as LEROBOT_INFO
from ambient_platform.settings import (
    ambient_home,
    configure_environment,
    resolve_local,
    resolve_location,
)
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import RunTracker, resolve_tracking_uri, retry_locked
from jobs.annotated_data import (
    annotated_shards,
    annotated_sigma_min,
    load_annotation,
    sigma_min_metrics,
)
from jobs.generate import generate
from jobs.pixel_data import image_chunk_dataset, image_keys, vision_spec
from jobs.worker_cache import CHUNKS, DATASETS, TASKS, Phases

__all__ = ["PreparedRun", "ensure_generated", "load_annotation", "prepare", "run_training"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything built from a config before the first step."""

    task: Task
    state: TrainState
    data: ChunkDataset
    datasets: list[dict[str, Any]]  # name, uri, digest, kind, chunks[, annotation]
    #: Per-chunk sigma_min of each annotated corrupt dataset (in config order).
    derived_sigma_min: list[np.ndarray] = field(default_factory=list)


def ensure_generated(cfg: RunConfig) -> None:
    """Generate <dir>/clean and <dir>/corrupt when the config asks for it and they are missing."""
    gen = cfg.data.generate
    if gen is None:
        return
    refs = [*cfg.data.clean[:1], *cfg.data.corrupt[:1]]
    if all(_dataset_exists(StorageRoot(resolve_location(r.path))) for r in refs):
        return
    clean = resolve_location(cfg.data.clean[0].path) if cfg.data.clean else None
    corrupt = resolve_location(cfg.data.corrupt[0].path) if cfg.data.corrupt else None
    parents = {p.rsplit("/", 1)[0] for p in (clean, corrupt) if p}
    if (
        clean is None
        or clean.rsplit("/", 1)[-1] != "clean"
        or (corrupt and corrupt.rsplit("/", 1)[-1] != "corrupt")
        or len(parents) != 1
    ):
        raise ConfigError(
            "data.generate writes <dir>/clean and <dir>/corrupt: point data.clean.0.path and "
            "data.corrupt.0.path at such a pair"
        )
    generate(cfg.task, gen.clean, gen.corrupt if corrupt else 0, parents.pop(), gen.seed)


def _dataset_exists(root: StorageRoot) -> bool:
    """A platform dataset (meta.json) or a LeRobot v3 one (meta/info.json) is there."""
    return root.exists(META_FILE) or root.exists(LEROBOT_INFO)


# ------------------------------------------------------------------------------ preparing


@dataclass
class _Loaded:
    """One dataset as read: frames, its reference (annotation version pinned) and info."""

    kind: str
    ref: DatasetRef
    frames: Frames
    info: dict[str, Any]


def _load_dataset(kind: str, ref: DatasetRef, keys: list[str]) -> _Loaded:
    root = StorageRoot(resolve_location(ref.path))
    shards = digest = None
    if kind == "corrupt" and ref.annotation is not None:
        # Pin the version read now, so shards and curves come from the same manifest.
        shards, version, digest = annotated_shards(ref.annotation, root)
        pinned = ref.annotation.model_copy(update={"version": version})
        ref = ref.model_copy(update={"annotation": pinned})
    content = read_meta(root).get("digest")

    def read() -> tuple[Frames, dict[str, Any]]:
        return read_frames(root, keys, ref.name, ref.max_episodes, shards)

    if content is None:  # no content digest, no safe cache key
        f, meta = read()
    else:
        key = (root.uri, content, digest, tuple(keys), ref.name, ref.max_episodes)
        f, meta = DATASETS.get_or_build((*key, tuple(shards or ())), read)
    info = {
        "kind": kind,
        "name": f.name,
        "uri": root.uri,
        "digest": digest or meta["digest"],
        "episodes": len(f.episode_bounds),
        "meta_name": str(meta.get("name") or f.name),
    }
    return _Loaded(kind, ref, f, info)


def _load_datasets(cfg: RunConfig, task: Task) -> list[_Loaded]:
    """The datasets the mixing settings use, clean first."""
    groups = []
    if cfg.mixing.use_clean:
        groups += [("clean", r) for r in cfg.data.clean]
    if cfg.mixing.use_corrupt:
        groups += [("corrupt", r) for r in cfg.data.corrupt]
    if not groups:
        raise ConfigError("the mixing settings leave no dataset to train on")
    keys = [*task.obs_keys, "action"]
    return [_load_dataset(kind, ref, keys) for kind, ref in groups]


@dataclass
class _Thresholds:
    n_clean: int
    sigma_min: np.ndarray | None  # per corrupt chunk
    sigma_max: np.ndarray | None
    derived: list[np.ndarray]  # per annotated dataset, the derived sigma_min
    clean: PoolDatasets  # chunk counts and sampling weights of the clean datasets
    corrupt: PoolDatasets


def _pool(loaded: list[_Loaded], kind: str) -> PoolDatasets:
    """Chunk counts and weights of one pool's datasets (config order = chunk id order)."""
    refs = [ds for ds in loaded if ds.kind == kind]
    w = [ds.ref.weight for ds in refs if ds.ref.weight is not None]  # all or none (config)
    sizes = tuple(int(ds.info["chunks"]) for ds in refs)
    return PoolDatasets(sizes, tuple(w) if w and len(w) == len(refs) else None)


def _thresholds(cfg: RunConfig, loaded: list[_Loaded], data: ChunkDataset) -> _Thresholds:
    """Per-chunk thresholds of the corrupt datasets: fixed, or derived from an annotation."""
    n_clean = 0
    sm_parts, sx_parts, derived = [], [], []
    for ds, (lo, hi) in zip(loaded, data.dataset_chunk_ranges, strict=True):
        ds.info["chunks"] = hi - lo
        if ds.kind == "clean":
            n_clean += hi - lo
            continue
        ann = ds.ref.annotation
        if ann is not None:
            per_chunk, ds.info["annotation"] = annotated_sigma_min(
                ann, ds.info["meta_name"], data, (lo, hi), cfg.train.seed
            )
            derived.append(per_chunk)
            sm_parts.append(per_chunk)
        else:
            sm_parts.append(np.full(hi - lo, ds.ref.sigma_min))
        sx_parts.append(np.full(hi - lo, ds.ref.sigma_max))

    def cat(parts: list[np.ndarray]) -> np.ndarray | None:
        return np.concatenate(parts) if parts else None

    pools = _pool(loaded, "clean"), _pool(loaded, "corrupt")
    return _Thresholds(n_clean, cat(sm_parts), cat(sx_parts), derived, *pools)


def _sampler(cfg: RunConfig, th: _Thresholds, total: int) -> NoiseFirstSampler:
    m = cfg.mixing
    soft = None
    if m.pool == "soft":
        share = m.soft.max_share if m.soft.max_share is not None else (total - th.n_clean) / total
        soft = LinearRamp(m.soft.low, m.soft.high, share)
    return NoiseFirstSampler(
        th.n_clean,
        th.sigma_min,
        th.sigma_max,
        sigmas=ddpm_sigmas(),
        rule=MixingRule(
            Buffer(m.buffer_mult, m.buffer_add), m.pool, m.alpha, soft, th.clean, th.corrupt
        ),
        seed=cfg.train.seed,
    )


def _policy(cfg: RunConfig, task: Task, data: ChunkDataset) -> DiffusionPolicy:
    p = cfg.policy
    dims = data.feature_dims()
    spec = PolicySpec(
        obs_dims={k: dims[k] for k in task.obs_keys},
        action_dim=dims["action"],
        horizon=p.horizon,
        n_obs_steps=p.n_obs_steps,
        n_action_steps=p.n_action_steps,
        prediction=p.prediction,
        network=p.network,
        network_kwargs=p.network_kwargs(),
    )
    torch.manual_seed(cfg.train.seed)
    if isinstance(data, ImageChunkDataset):  # a task with cameras: the vision policy
        vision = vision_spec(asdict(spec), p.vision, data)
        return VisionDiffusionPolicy(vision, Normalizer.fit(data.features))
    return DiffusionPolicy(spec, Normalizer.fit(data.features))


def _train_config(cfg: RunConfig) -> TrainConfig:
    t = cfg.train
    return TrainConfig(
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        grad_clip=t.grad_clip,
        ema_power=t.ema_power,
        corrupt_loss=cfg.mixing.corrupt_loss,
        noise_seed=t.noise_seed,
        seed=t.seed,
        log_every=t.log_every,
        rounds=t.rounds,
        device=t.device,
    )


def _chunks(task: Task, loaded: list[_Loaded], spec_c: ChunkSpec, cache_gb: float) -> ChunkDataset:
    """The chunked dataset: cached per worker (by content) for low-dimensional tasks."""
    frames = [ds.frames for ds in loaded]
    if image_keys(task):  # cameras: LeRobot v3 videos, decoded ahead in the background
        uris = [ds.info["uri"] for ds in loaded]
        return image_chunk_dataset(task, frames, uris, spec_c, int(cache_gb * 2**30))
    if any(ds.info["digest"] is None for ds in loaded):
        return ChunkDataset(frames, spec_c, task.obs_keys)
    parts = tuple(
        (d.kind, d.info["uri"], d.info["digest"], d.ref.name, d.ref.max_episodes) for d in loaded
    )
    key = (parts, spec_c, tuple(task.obs_keys))
    return CHUNKS.get_or_build(key, lambda: ChunkDataset(frames, spec_c, task.obs_keys))


def prepare(cfg: RunConfig, phases: Phases | None = None) -> PreparedRun:
    """Load data, build sampler, normaliser, policy and optimiser state."""
    ph = phases or Phases()
    with ph("env"):
        task = TASKS.get_or_build(cfg.task, lambda: get_task(cfg.task))
    with ph("data"):
        ensure_generated(cfg)
        loaded = _load_datasets(cfg, task)
        p = cfg.policy
        spec_c = ChunkSpec(p.horizon, p.n_obs_steps, p.n_action_steps)
        data = _chunks(task, loaded, spec_c, p.vision.cache_gb)
    with ph("sampler"):
        th = _thresholds(cfg, loaded, data)
        sampler = _sampler(cfg, th, len(data))
        for ds, shares in zip(loaded, sampler.dataset_share_summary(), strict=True):
            ds.info.update(weight=ds.ref.weight, **shares)  # logged as dataset_shares.json
    with ph("model"):
        state = make_state(_policy(cfg, task, data), sampler, _train_config(cfg))
    return PreparedRun(task, state, data, [ds.info for ds in loaded], th.derived)


# ------------------------------------------------------------------------------ running


def evaluate_policy(
    task: Task, policy: DiffusionPolicy, cfg: RunConfig, episodes: int, seed: int | None = None
) -> EvalResult:
    runner = PolicyRunner(
        policy,
        cfg.eval.method,
        cfg.eval.inference_steps,
        seed=cfg.train.seed,
        device=cfg.train.device,
    )
    return task.evaluate(
        runner, episodes, cfg.eval.seed if seed is None else seed, cfg.eval.max_steps
    )


class MlflowLogger(Callback):
    """Training metrics to MLflow, and evaluation at the end of every round but the last."""

    def __init__(
        self, tracker: RunTracker | None, run: PreparedRun, cfg: RunConfig, report: Any = None
    ) -> None:
        self.tracker, self.run, self.cfg, self.report = tracker, run, cfg, report
        self.stopped_early = False
        self.last_round: dict[str, float] = {}

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)

    def on_round_end(self, state: TrainState) -> bool:
        if state.round >= state.config.rounds:
            return False  # the final evaluation happens after training
        res = evaluate_policy(
            self.run.task,
            state.eval_policy,
            self.cfg,
            self.cfg.eval.round_episodes,
            self.cfg.eval.seed + 7919,
        )
        metrics = {f"round/{k}": v for k, v in res.metrics.items()}
        self.last_round = dict(res.metrics)
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, state.step)
        if self.report is not None and self.report(state, res.metrics):
            self.stopped_early = True
            return True
        return False


class ProgressBar(Callback):
    """A tqdm bar over training steps with the latest loss and corrupt share (only where this
    module logs at INFO: the CLI, not a sweep's Ray workers)."""

    def __init__(self, name: str, total: int) -> None:
        self.bar = tqdm(total=total, desc=name, unit="step", disable=None)
        self.step = 0

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.step)
        self.step = step
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", corrupt=metrics["corrupt_share"])

    def close(self) -> None:
        self.bar.close()


def plot_sampler(sampler: NoiseFirstSampler, path: Path) -> None:
    """Corrupt share per level (what the sampler implements) and the sigma_min histogram."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(sampler.sigmas, sampler.expected_corrupt_share(), color="tab:red")
    ax.set_xlabel("sigma")
    ax.set_ylabel("P(corrupt | sigma)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"pool: {sampler.pool}")
    ax2 = fig.add_subplot(1, 2, 2)
    if sampler.n_corrupt:
        ax2.hist(
            sampler.corrupt_sigma_min, bins=np.linspace(0, 1, 41).tolist(), color="tab:orange"
        )
    ax2.set_xlabel("sigma_min of corrupt chunks")
    ax2.set_ylabel("chunks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _open_tracker(
    cfg: RunConfig,
    tracking_uri: str | None,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    run_id: str | None,
) -> tuple[RunTracker, bool]:
    """(tracker, whether params and inputs still need logging): a new run, or ``run_id``
    reopened (a retried or resumed sweep trial) with params logged only if it has none."""
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri)
    if run_id is None:
        run_name = cfg.tracking.run_name or cfg.name
        all_tags = {"task": cfg.task, **(tags or {})}
        return RunTracker.start(
            uri, cfg.tracking.experiment, run_name, parent_run_id, all_tags
        ), True
    tracker = RunTracker(uri, run_id)
    retry_locked(tracker.client.update_run, run_id, status="RUNNING")
    log_params = not retry_locked(tracker.client.get_run, run_id).data.params
    if tags:
        tracker.set_tags(tags)
    return tracker, log_params


def _log_inputs(tracker: RunTracker, cfg: RunConfig, run: PreparedRun) -> None:
    """Params (the config as given), dataset and annotation inputs, the derived sigma_min."""
    tracker.log_params(flatten(cfg))
    for d in run.datasets:
        tracker.log_dataset(d["name"], d["digest"], d["uri"], d["kind"])
        if "annotation" in d:
            a = d["annotation"]
            tracker.log_dataset(f"{d['name']}-annotation", a["digest"], a["uri"], "annotation")
    sampler = run.state.sampler
    tracker.set_tags({"chunks_clean": sampler.n_clean, "chunks_corrupt": sampler.n_corrupt})
    keys = ("name", "kind", "chunks", "weight", "share", "share_by_sigma")
    tracker.log_dict([{k: d.get(k) for k in keys} for d in run.datasets], "dataset_shares.json")
    derived = run.derived_sigma_min
    if derived:
        # The thresholds the run really uses: data.corrupt.N.sigma_min is 0.0 in the params.
        tracker.set_tags({"sigma_min_source": "annotation"})
        for i, sm in enumerate(derived):
            prefix = "sigma_min" if len(derived) == 1 else f"sigma_min/{i}"
            tracker.log_metrics(sigma_min_metrics(sm, prefix), 0)


@dataclass
class _Training:
    """One run in progress: what ``run_training`` needs between its steps."""

    cfg: RunConfig
    run: PreparedRun
    tracker: RunTracker | None
    out_dir: Path
    t0: float
    phases: Phases = field(default_factory=Phases)

    def fit(self, report: Any) -> MlflowLogger:
        logger_cb = MlflowLogger(self.tracker, self.run, self.cfg, report)
        callbacks: list[Callback] = [logger_cb]
        bar = None
        if logger.isEnabledFor(logging.INFO):
            bar = ProgressBar(self.cfg.name, self.cfg.train.steps)
            callbacks.append(bar)
        try:
            train(self.run.state, self.run.data, callbacks)
        finally:
            if bar is not None:
                bar.close()
        return logger_cb

    def stopped(self, ckpt: Path, last_round: dict[str, float], train_s: float) -> dict:
        """ASHA stopped the run: no final evaluation, the last round's metrics stand."""
        state = self.run.state
        if self.tracker is not None:
            self.tracker.log_metrics({"time/train_s": train_s}, state.step)
            self.tracker.set_tags({"stopped_early": "true", "stopped_at_round": state.round})
        return {
            "metrics": last_round,
            "checkpoint": str(ckpt),
            "steps": state.step,
            "history": state.history,
            "stopped_early": True,
            "time/train_s": train_s,
            "time/eval_s": 0.0,
        }

    def evaluate(self, ckpt: Path, train_s: float) -> dict:
        """The final evaluation, its plot and metrics file, logged with the artifacts."""
        cfg, run, out_dir = self.cfg, self.run, self.out_dir
        t1 = time.perf_counter()
        res = evaluate_policy(run.task, run.state.eval_policy, cfg, cfg.eval.episodes)
        eval_s = time.perf_counter() - t1
        self.phases.add("eval", eval_s)
        if cfg.eval.plot:
            with self.phases("plots"):
                res.plot(out_dir / "rollouts.png")
        final = {f"eval/{k}": v for k, v in res.metrics.items()}
        timing = {"time/train_s": train_s, "time/eval_s": eval_s}
        (out_dir / "metrics.json").write_text(json.dumps({**final, **timing}, indent=2))
        if self.tracker is not None:
            with self.phases("log"):
                for name in ("config.yaml", "sampler.png", "rollouts.png", "metrics.json"):
                    if (out_dir / name).exists():
                        self.tracker.log_artifact(out_dir / name)
                self.tracker.log_artifact(ckpt, "checkpoint")
                # Last: a run holding eval/* has everything (a resumed trial relies on it).
                self.tracker.log_metrics({**final, **timing}, run.state.step)
        return {
            "metrics": res.metrics,
            "checkpoint": str(ckpt),
            "steps": run.state.step,
            "history": run.state.history,
            **timing,
        }

    def body(self, log_params: bool, report: Any) -> dict:
        cfg, run, ph = self.cfg, self.run, self.phases
        if self.tracker is not None and log_params:
            with ph("log"):
                _log_inputs(self.tracker, cfg, run)
        config = cfg.model_dump(mode="json")
        with ph("plots"):
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if cfg.eval.plot:  # off in sweeps of short trials: matplotlib costs ~1 s a run
                plot_sampler(run.state.sampler, self.out_dir / "sampler.png")
        with ph("fit"):
            cb = self.fit(report)
        train_s = time.perf_counter() - self.t0
        with ph("checkpoint"):
            ckpt = save_checkpoint(self.out_dir / "checkpoint", run.state, {"config": config})
        if cb.stopped_early:
            return self.stopped(ckpt, cb.last_round, train_s)
        return self.evaluate(ckpt, train_s)


def run_training(
    cfg: RunConfig,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    report: Any = None,
    track: bool = True,
    run_id: str | None = None,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """Train + evaluate one config; returns final metrics, run id and checkpoint path.

    ``report(state, metrics)`` is called after every evaluation round but the last; a True
    return stops training: the final evaluation is skipped and the run ends FINISHED with the
    tag ``stopped_early=true`` (what a sweep scheduler such as ASHA asks for). ``run_id`` reopens
    an existing MLflow run (a retried or resumed sweep trial) instead of creating one; params
    and dataset inputs are logged only if the run has none yet. ``resume_from`` is a checkpoint
    directory (``save_checkpoint``) to continue from: weights, optimiser, schedule, EMA, sampler
    RNG, step and round. Progress is a tqdm bar where this module logs at INFO (the CLI).
    """
    configure_environment()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    phases = Phases()
    run = prepare(cfg, phases)
    if resume_from is not None:
        with phases("restore"):
            restore_state(resume_from, run.state)
    tracker, log_params = None, False
    if track:
        with phases("tracker"):
            tracker, log_params = _open_tracker(cfg, tracking_uri, parent_run_id, tags, run_id)
    base = resolve_local(cfg.output_dir) if cfg.output_dir else ambient_home() / "runs"
    tag = tracker.run_id[:8] if tracker else str(int(time.time()))
    out_dir = base / f"{cfg.name}-{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"run_id": tracker.run_id if tracker else None, "dir": str(out_dir)}
    job = _Training(cfg, run, tracker, out_dir, t0, phases)
    with tracker.active() if tracker is not None else contextlib.nullcontext():
        result.update(job.body(log_params, report))
        result["phases"] = dict(phases.seconds)
        if tracker is not None:  # one batch at the end: phase times cost no extra round trips
            tracker.log_metrics(phases.metrics(), run.state.step)
    logger.debug("phases of %s: %s", cfg.name, phases.seconds)
    return result


def run_eval(
    checkpoint: str,
    episodes: int | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    plot: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate a saved checkpoint (``ambient eval``), optionally as its own MLflow run."""
    configure_environment()
    meta = read_checkpoint_meta(checkpoint)
    cfg = RunConfig.model_validate(meta["extra"]["config"])
    task = get_task(cfg.task)
    policy = load_policy(checkpoint)
    n = episodes or cfg.eval.episodes
    res = evaluate_policy(task, policy, cfg, n, seed)
    if plot:
        res.plot(Path(plot))
    out: dict[str, Any] = {"metrics": res.metrics, "episodes": n}
    if track:
        uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri)
        tracker = RunTracker.start(
            uri,
            cfg.tracking.experiment,
            f"eval-{cfg.name}",
            tags={"task": cfg.task, "kind": "eval", "checkpoint": checkpoint},
        )
        with tracker.active():
            tracker.log_params(
                {"checkpoint": checkpoint, "episodes": n, "seed": seed or cfg.eval.seed}
            )
            tracker.log_metrics({f"eval/{k}": v for k, v in res.metrics.items()})
            if plot:
                tracker.log_artifact(plot)
        out["run_id"] = tracker.run_id
    return out
