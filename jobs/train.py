"""Train, evaluate and track one run (``ambient train``); the unit every sweep trial reuses.

Wires ambient_core (data, sampler, policy, training loop, env evaluation) to storage and MLflow:
params once (the resolved config, flattened), losses and corrupt share per sigma bucket, round
and final evaluation metrics, a rollout plot, the sampler plot, config and checkpoint artifacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ambient_core.classifier import derive_sigma_min
from ambient_core.data import ChunkDataset, ChunkSpec, DataError, Frames
from ambient_core.envs.registry import EvalResult, Task, get_task
from ambient_core.policy import DiffusionPolicy, Normalizer, PolicyRunner, PolicySpec
from ambient_core.sampler import Buffer, LinearRamp, NoiseFirstSampler
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
from ambient_platform.config import AnnotationRef, DatasetRef, RunConfig, flatten, load_run_config
from ambient_platform.datasets import META_FILE, read_frames
from ambient_platform.settings import (
    ambient_home,
    configure_environment,
    resolve_local,
    resolve_location,
)
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import RunTracker, _retry, resolve_tracking_uri
from jobs.generate import generate


@dataclass
class PreparedRun:
    """Everything built from a config before the first step."""

    task: Task
    state: TrainState
    data: ChunkDataset
    datasets: list[dict[str, Any]]  # name, uri, digest, kind, chunks


def _ensure_generated(cfg: RunConfig) -> None:
    """Generate <dir>/clean and <dir>/corrupt when the config asks for it and they are missing."""
    gen = cfg.data.generate
    if gen is None:
        return
    refs = [*cfg.data.clean[:1], *cfg.data.corrupt[:1]]
    if all(StorageRoot(resolve_location(r.path)).exists(META_FILE) for r in refs):
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
        raise ValueError(
            "data.generate writes <dir>/clean and <dir>/corrupt: point data.clean.0.path and "
            "data.corrupt.0.path at such a pair"
        )
    generate(cfg.task, gen.clean, gen.corrupt if corrupt else 0, parents.pop(), gen.seed)


def prepare(cfg: RunConfig) -> PreparedRun:
    """Load data, build sampler, normaliser, policy and optimiser state."""
    task = get_task(cfg.task)
    _ensure_generated(cfg)
    keys = [*task.obs_keys, "action"]
    frames: list[Frames] = []
    info: list[dict[str, Any]] = []
    thresholds: list[tuple[float, float]] = []
    groups = []
    if cfg.mixing.use_clean:
        groups += [("clean", r) for r in cfg.data.clean]
    if cfg.mixing.use_corrupt:
        groups += [("corrupt", r) for r in cfg.data.corrupt]
    pinned: list[tuple[str, DatasetRef]] = []
    if not groups:
        raise ValueError("the mixing settings leave no dataset to train on")
    for kind, ref in groups:
        root = StorageRoot(resolve_location(ref.path))
        shards = digest = None
        if kind == "corrupt" and ref.annotation is not None:
            # Pin the version read now, so shards and curves come from the same manifest.
            shards, version, digest = annotated_shards(ref.annotation, root)
            ref = ref.model_copy(
                update={"annotation": ref.annotation.model_copy(update={"version": version})}
            )
        f, meta = read_frames(root, keys, ref.name, ref.max_episodes, shards)
        frames.append(f)
        info.append(
            {
                "kind": kind,
                "name": f.name,
                "uri": root.uri,
                "digest": digest or meta["digest"],
                "episodes": len(f.episode_bounds),
                "meta_name": str(meta.get("name") or f.name),
            }
        )
        thresholds.append((ref.sigma_min, ref.sigma_max) if kind == "corrupt" else (0.0, 0.0))
        pinned.append((kind, ref))
    p = cfg.policy
    spec_c = ChunkSpec(p.horizon, p.n_obs_steps, p.n_action_steps)
    data = ChunkDataset(frames, spec_c, task.obs_keys)
    n_clean = 0
    sm_parts, sx_parts = [], []
    for (kind, ref), (lo, hi), (sm, sx), d in zip(
        pinned, data.dataset_chunk_ranges, thresholds, info, strict=True
    ):
        d["chunks"] = hi - lo
        if kind == "clean":
            n_clean += hi - lo
            continue
        if ref.annotation is not None:
            per_chunk, d["annotation"] = annotated_sigma_min(
                ref.annotation, d["meta_name"], data, (lo, hi), cfg.train.seed
            )
            sm_parts.append(per_chunk)
        else:
            sm_parts.append(np.full(hi - lo, sm))
        sx_parts.append(np.full(hi - lo, sx))
    m = cfg.mixing
    soft = None
    if m.pool == "soft":
        total = len(data)
        share = m.soft.max_share if m.soft.max_share is not None else (total - n_clean) / total
        soft = LinearRamp(m.soft.low, m.soft.high, share)
    sampler = NoiseFirstSampler(
        n_clean,
        np.concatenate(sm_parts) if sm_parts else None,
        np.concatenate(sx_parts) if sx_parts else None,
        sigmas=ddpm_sigmas(),
        buffer=Buffer(m.buffer_mult, m.buffer_add),
        pool=m.pool,
        alpha=m.alpha,
        soft_share=soft,
        seed=cfg.train.seed,
    )
    spec = PolicySpec(
        obs_dims={k: data.feature_dims()[k] for k in task.obs_keys},
        action_dim=data.feature_dims()["action"],
        horizon=p.horizon,
        n_obs_steps=p.n_obs_steps,
        n_action_steps=p.n_action_steps,
        prediction=p.prediction,
        network=p.network,
        network_kwargs=p.network_kwargs(),
    )
    torch.manual_seed(cfg.train.seed)
    policy = DiffusionPolicy(spec, Normalizer.fit(data.features))
    t = cfg.train
    tc = TrainConfig(
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        grad_clip=t.grad_clip,
        ema_power=t.ema_power,
        corrupt_loss=m.corrupt_loss,
        noise_seed=t.noise_seed,
        seed=t.seed,
        log_every=t.log_every,
        rounds=t.rounds,
        device=t.device,
    )
    return PreparedRun(task, make_state(policy, sampler, tc), data, info)


def load_annotation(ann: AnnotationRef) -> tuple[StorageRoot, int, dict[str, Any]]:
    """(root, version, manifest) of the annotation a config names (latest if no version)."""
    from jobs.annotate import MANIFEST_DIR, latest_manifest

    root = StorageRoot(resolve_location(ann.path))
    if ann.version is None:
        version, manifest = latest_manifest(root)
        if manifest is None:
            raise DataError(f"{root.uri} has no committed annotation manifest")
        return root, version, manifest
    key = f"{MANIFEST_DIR}/v{ann.version}.json"
    if not root.exists(key):
        raise DataError(f"annotation {root.uri} has no version {ann.version}")
    return root, ann.version, root.read_json(key)


def annotated_shards(ann: AnnotationRef, data: StorageRoot) -> tuple[list[str], int, str]:
    """The shard keys of a corrupt dataset that its annotation manifest names (readers trust
    only those: shards that landed later are not annotated yet); a shard that changed since
    it was annotated is an error, not a silent mismatch of curves and frames."""
    from ambient_platform.datasets import read_meta

    root, version, manifest = load_annotation(ann)
    meta_name = read_meta(data).get("name") or data.uri.rstrip("/").rsplit("/", 1)[-1]
    dataset = ann.dataset or str(meta_name)
    entries = [e for e in manifest["shards"] if e["dataset"] == dataset]
    if not entries:
        raise DataError(
            f"annotation {root.uri} v{version} has no shards of dataset {dataset!r} "
            f"(it has {sorted(manifest['datasets'])})"
        )
    listing = {f.key: f for f in data.list("data/")}
    for e in entries:
        now = listing.get(e["input_key"])
        if now is None or (now.size, now.etag_or_mtime) != (e["input_size"], e["input_etag"]):
            raise DataError(
                f"{data.uri_for(e['input_key'])} is {'gone' if now is None else 'changed'} "
                f"since annotation {root.uri} v{version}; re-annotate (ambient watch) first"
            )
    digest = manifest["datasets"].get(dataset, {}).get("digest", "")
    return [e["input_key"] for e in entries], version, digest


def annotated_sigma_min(
    ann: AnnotationRef, dataset: str, data: ChunkDataset, chunks: tuple[int, int], seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-chunk sigma_min of chunks [lo, hi) from an annotation's score curves (no classifier).

    A chunk is matched to the annotated row of its current frame (start + T_o - 1).
    """
    from jobs.annotate import MANIFEST_DIR, curve_column, manifest_digest, read_curves

    root, version, manifest = load_annotation(ann)
    name = ann.dataset or dataset
    table = read_curves(root, manifest, name, ann.epoch)
    key = (
        table.column("episode_index").to_numpy() * (1 << 32)
        + table.column("frame_index").to_numpy()
    )
    order = np.argsort(key)
    lo, hi = chunks
    want = data.chunk_episode[lo:hi] * (1 << 32) + data.chunk_frame[lo:hi] + data.spec.pad_before
    pos = np.clip(np.searchsorted(key[order], want), 0, len(key) - 1)
    found = key[order][pos] == want
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"annotation {root.uri} v{version} lacks dataset {name!r} episode "
            f"{int(data.chunk_episode[lo + i])} frame {int(want[i] % (1 << 32))} "
            f"({int((~found).sum())} chunks missing; skipped shards?)"
        )
    col = table.column(curve_column(ann.epoch)).combine_chunks()
    curves = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    sm = derive_sigma_min(
        curves[order[pos]],
        np.asarray(manifest["grid_sigmas"]),
        ann.tau,
        ann.granularity,
        groups=data.chunk_episode[lo:hi],
        n_buckets=ann.n_buckets,
        bucket_mode=ann.bucket_mode,
        smoothing=ann.smoothing,
        seed=seed,
    )
    digest = manifest_digest(manifest)
    info = {
        "uri": f"{root.uri}/{MANIFEST_DIR}/v{version}.json",
        "digest": digest,
        "mean_sigma_min": float(sm.mean()),
    }
    return sm, info


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


class ProgressPrinter(Callback):
    """One line per logging window on stderr: step, loss, corrupt share, speed, ETA."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.t0 = name, total, time.perf_counter()

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        el = time.perf_counter() - self.t0
        eta = el / step * (self.total - step)
        print(
            f"[{self.name}] step {step}/{self.total} loss {metrics['loss']:.4f} "
            f"corrupt {metrics['corrupt_share']:.2f} {metrics['steps_per_s']:.1f} it/s "
            f"eta {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


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
        ax2.hist(sampler.corrupt_sigma_min, bins=np.linspace(0, 1, 41), color="tab:orange")
    ax2.set_xlabel("sigma_min of corrupt chunks")
    ax2.set_ylabel("chunks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_training(
    cfg: RunConfig,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    report: Any = None,
    track: bool = True,
    verbose: bool = False,
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
    RNG, step and round.
    """
    configure_environment()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    run = prepare(cfg)
    if resume_from is not None:
        restore_state(resume_from, run.state)
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri)
    tracker = None
    log_params = True
    if track and run_id is not None:
        tracker = RunTracker(uri, run_id)
        _retry(tracker.client.update_run, run_id, status="RUNNING")
        log_params = not _retry(tracker.client.get_run, run_id).data.params
        if tags:
            tracker.set_tags(tags)
    elif track:
        tracker = RunTracker.start(
            uri,
            cfg.tracking.experiment,
            cfg.tracking.run_name or cfg.name,
            parent_run_id,
            {"task": cfg.task, **(tags or {})},
        )
    base = resolve_local(cfg.output_dir) if cfg.output_dir else ambient_home() / "runs"
    out_dir = base / (
        f"{cfg.name}-{tracker.run_id[:8]}" if tracker else f"{cfg.name}-{int(time.time())}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"run_id": tracker.run_id if tracker else None, "dir": str(out_dir)}

    def body() -> None:
        if tracker is not None and log_params:
            tracker.log_params(flatten(cfg))
            for d in run.datasets:
                tracker.log_dataset(d["name"], d["digest"], d["uri"], d["kind"])
                if "annotation" in d:
                    a = d["annotation"]
                    tracker.log_dataset(
                        f"{d['name']}-annotation", a["digest"], a["uri"], "annotation"
                    )
            tracker.set_tags(
                {
                    "chunks_clean": run.state.sampler.n_clean,
                    "chunks_corrupt": run.state.sampler.n_corrupt,
                }
            )
        (out_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        plot_sampler(run.state.sampler, out_dir / "sampler.png")
        logger = MlflowLogger(tracker, run, cfg, report)
        callbacks: list[Callback] = [logger]
        if verbose:
            callbacks.append(ProgressPrinter(cfg.name, cfg.train.steps))
        train(run.state, run.data, callbacks)
        train_s = time.perf_counter() - t0
        ckpt = save_checkpoint(
            out_dir / "checkpoint", run.state, {"config": cfg.model_dump(mode="json")}
        )
        if logger.stopped_early:
            if tracker is not None:
                tracker.log_metrics({"time/train_s": train_s}, run.state.step)
                tracker.set_tags({"stopped_early": "true", "stopped_at_round": run.state.round})
            result.update(
                metrics=logger.last_round,
                checkpoint=str(ckpt),
                steps=run.state.step,
                history=run.state.history,
                stopped_early=True,
                **{"time/train_s": train_s, "time/eval_s": 0.0},
            )
            return
        t1 = time.perf_counter()
        res = evaluate_policy(run.task, run.state.eval_policy, cfg, cfg.eval.episodes)
        eval_s = time.perf_counter() - t1
        if cfg.eval.plot:
            res.plot(out_dir / "rollouts.png")
        final = {f"eval/{k}": v for k, v in res.metrics.items()}
        timing = {"time/train_s": train_s, "time/eval_s": eval_s}
        (out_dir / "metrics.json").write_text(json.dumps({**final, **timing}, indent=2))
        if tracker is not None:
            tracker.log_metrics({**final, **timing}, run.state.step)
            for name in ("config.yaml", "sampler.png", "rollouts.png", "metrics.json"):
                if (out_dir / name).exists():
                    tracker.log_artifact(out_dir / name)
            tracker.log_artifact(ckpt, "checkpoint")
        result.update(
            metrics=res.metrics,
            checkpoint=str(ckpt),
            steps=run.state.step,
            history=run.state.history,
            **timing,
        )

    if tracker is None:
        body()
    else:
        with tracker.active():
            body()
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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--tracking-uri")
    a = p.parse_args(argv)
    res = run_training(load_run_config(a.config, a.set), a.tracking_uri)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2, default=str))


if __name__ == "__main__":
    main()
