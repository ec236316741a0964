"""Train the noise-conditioned clean-vs-corrupt classifier (``ambient classifier train``).

c(x_s, k) on normalised action chunks (optionally with the observation history), BCE on balanced
batches at uniform DDPM levels. Every epoch is saved as ``<out>/epoch_<E>/`` so the classifier
epoch is a sweep knob, and logged to MLflow: accuracy and BCE per sigma bucket, and a plot of
accuracy vs sigma (the empirical D(p_s, q_s) curve). A run kept in S3 is trained in a local
cache directory and uploaded epoch by epoch (weights first: ``classifier.json`` marks a complete
epoch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambient_core.classifier import (
    CLASSIFIER_FILE,
    CLASSIFIER_META,
    ClassifierSpec,
    save_classifier,
)
from ambient_core.classifier_training import (
    ClassifierState,
    ClassifierTraining,
    DatasetPool,
    plot_accuracy_vs_sigma,
    train_classifier,
)
from ambient_core.data import ChunkDataset, ChunkSpec
from ambient_core.errors import NotFoundError
from ambient_core.policy import Normalizer
from ambient_platform.config.annotation import ClassifierTrainConfig
from ambient_platform.datasets import read_frames
from ambient_platform.settings import ambient_home, configure_environment, resolve_location
from ambient_platform.storage import StorageRoot
from ambient_platform.tracking import RunTracker, resolve_tracking_uri

logger = logging.getLogger(__name__)

RUN_FILE = "classifier_run.json"
PLOT_FILE = "accuracy_vs_sigma.png"


def epoch_dir(root: str | Path, epoch: int) -> Path:
    """Where epoch ``epoch`` of a classifier run lives."""
    return Path(root) / f"epoch_{epoch}"


def _cache_dir(uri: str) -> Path:
    """Local copy of a classifier run kept in S3 (one per URI and node)."""
    return ambient_home() / "cache" / "classifiers" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def local_epoch_dir(classifier: str, epoch: int) -> Path:
    """A local directory holding ``epoch`` of a classifier run given as a path or an s3:// URI.

    S3 runs are downloaded once per node and version into the cache (keyed by the objects'
    ETags, so a retrained classifier is fetched anew); concurrent actors on one node each
    download and the first rename wins.
    """
    if "://" not in classifier:
        return epoch_dir(classifier, epoch)
    remote = StorageRoot(classifier)
    objects = {i.key.rsplit("/", 1)[-1]: i for i in remote.list(f"epoch_{epoch}/")}
    if CLASSIFIER_META not in objects or CLASSIFIER_FILE not in objects:
        have = sorted({i.key.split("/")[0] for i in remote.list("epoch_")})
        raise NotFoundError(
            remote.uri_for(f"epoch_{epoch}/"),
            f"classifier epoch {epoch} not found under {classifier} (has {have})",
        )
    tag = hashlib.sha256(
        "".join(objects[n].etag_or_mtime for n in (CLASSIFIER_FILE, CLASSIFIER_META)).encode()
    ).hexdigest()[:12]
    local = _cache_dir(classifier) / f"epoch_{epoch}-{tag}"
    if (local / CLASSIFIER_META).exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for name in (CLASSIFIER_FILE, CLASSIFIER_META):
            (tmp / name).write_bytes(remote.read_bytes(f"epoch_{epoch}/{name}"))
        try:
            tmp.rename(local)
        except OSError:  # another actor on this node renamed its copy first
            if not (local / CLASSIFIER_META).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def _upload(local: Path, remote: StorageRoot, names: Sequence[str], prefix: str = "") -> None:
    for name in names:
        remote.write_bytes(prefix + name, (local / name).read_bytes())


@dataclass
class _Data:
    """The classifier's training data: chunked datasets, pools, normaliser, spec, inputs."""

    chunk: ChunkSpec
    normalizer: Normalizer
    clean: DatasetPool
    corrupt: DatasetPool
    spec: ClassifierSpec
    inputs: list[dict[str, Any]]


def _load_data(cfg: ClassifierTrainConfig) -> _Data:
    keys = ["action", *cfg.obs_keys]
    frames, inputs = [], []
    for kind, refs in (("clean", cfg.clean), ("corrupt", cfg.corrupt)):
        for ref in refs:
            root = StorageRoot(resolve_location(ref))
            f, meta = read_frames(root, keys)
            frames.append(f)
            inputs.append(
                {"kind": kind, "name": f.name, "uri": root.uri, "digest": meta["digest"]}
            )
    chunk = ChunkSpec(cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps)
    data = ChunkDataset(frames, chunk, list(cfg.obs_keys))
    ranges = data.dataset_chunk_ranges
    n_clean = len(cfg.clean)
    normalizer = Normalizer.fit(data.features)
    clean = DatasetPool.from_range(data, ranges[:n_clean], normalizer, cfg.obs_keys)
    corrupt = DatasetPool.from_range(data, ranges[n_clean:], normalizer, cfg.obs_keys)
    spec = ClassifierSpec(
        action_dim=data.feature_dims()["action"],
        horizon=cfg.horizon,
        obs_dim=clean.obs_dim,
        channels=tuple(cfg.channels),
        obs_keys=tuple(cfg.obs_keys),
        n_obs_steps=cfg.n_obs_steps if cfg.obs_keys else 0,
    )
    return _Data(chunk, normalizer, clean, corrupt, spec, inputs)


@dataclass
class _Output:
    """Where epochs go: a local directory, mirrored to S3 when the run lives there."""

    location: str
    out_dir: Path
    remote: StorageRoot | None
    tracker: RunTracker | None
    history: list[dict[str, float]] = field(default_factory=list)

    def upload(self, names: Sequence[str], prefix: str = "") -> None:
        if self.remote is not None:
            _upload(self.out_dir / prefix, self.remote, names, prefix)


def _output(cfg: ClassifierTrainConfig, tracker: RunTracker | None) -> _Output:
    tag = tracker.run_id[:8] if tracker else str(int(time.time()))
    location = resolve_location(cfg.out or f"classifiers/{cfg.name}-{tag}")
    remote = StorageRoot(location) if "://" in location else None
    out_dir = _cache_dir(location) if remote else Path(location)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Output(location, out_dir, remote, tracker)


def _params(cfg: ClassifierTrainConfig) -> dict[str, Any]:
    """MLflow params: the settings, dataset lists joined."""
    d = cfg.model_dump(exclude={"name", "out", "experiment"})
    for k in ("clean", "corrupt", "obs_keys"):
        d[k] = ",".join(d[k])
    return d


def run_classifier_training(
    cfg: ClassifierTrainConfig, *, tracking_uri: str | None = None, track: bool = True
) -> dict[str, Any]:
    """Train on the configured clean and corrupt datasets; returns the run location, MLflow run
    id and per-epoch metrics."""
    configure_environment()
    data = _load_data(cfg)
    tracker = None
    if track:
        uri = resolve_tracking_uri(tracking_uri)
        tracker = RunTracker.start(uri, cfg.experiment, cfg.name, tags={"kind": "classifier"})
    out = _output(cfg, tracker)
    t0 = time.perf_counter()

    def on_epoch(epoch: int, state: ClassifierState, metrics: dict[str, float]) -> None:
        extra = {"epoch": epoch, "metrics": metrics, "chunk": vars(data.chunk)}
        save_classifier(
            epoch_dir(out.out_dir, epoch),
            state.model,
            state.spec,
            data.normalizer,
            {**extra, "inputs": data.inputs},
        )
        out.upload([CLASSIFIER_FILE, CLASSIFIER_META], f"epoch_{epoch}/")
        out.history.append({"epoch": float(epoch), **metrics})
        if tracker is not None:
            tracker.log_metrics(metrics, epoch)
        logger.info(
            "%s: epoch %d/%d acc %.3f bce %.4f (%.0fs)",
            cfg.name,
            epoch,
            cfg.epochs,
            metrics.get("acc", float("nan")),
            metrics.get("bce", float("nan")),
            time.perf_counter() - t0,
        )

    training = ClassifierTraining(
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    with tracker.active() if tracker is not None else contextlib.nullcontext():
        if tracker is not None:
            tracker.log_params(_params(cfg))
            for d in data.inputs:
                tracker.log_dataset(d["name"], d["digest"], d["uri"], d["kind"])
        train_classifier(data.clean, data.corrupt, data.spec, training, on_epoch=on_epoch)
        _finish(cfg, out, data, time.perf_counter() - t0)
    run_id = tracker.run_id if tracker else None
    return {"dir": out.location, "run_id": run_id, "history": out.history}


def _finish(cfg: ClassifierTrainConfig, out: _Output, data: _Data, train_s: float) -> None:
    """The accuracy-vs-sigma plot and the run file, next to the epochs and in MLflow."""
    plot_accuracy_vs_sigma(out.history, out.out_dir / PLOT_FILE)
    run_info = {
        "run_id": out.tracker.run_id if out.tracker else None,
        "params": _params(cfg),
        "epochs": [int(h["epoch"]) for h in out.history],
        "inputs": data.inputs,
        "train_s": round(train_s, 2),
    }
    (out.out_dir / RUN_FILE).write_text(json.dumps(run_info, indent=2))
    out.upload([PLOT_FILE, RUN_FILE])
    if out.tracker is not None:
        out.tracker.log_artifact(out.out_dir / PLOT_FILE)
        out.tracker.log_artifact(out.out_dir / RUN_FILE)
        out.tracker.log_metrics({"time/train_s": train_s})
