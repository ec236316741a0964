"""Train the noise-conditioned clean-vs-corrupt classifier (``ambient classifier train``).

c(x_s, k) on normalised action chunks (optionally with the observation history), BCE on balanced
batches at uniform DDPM levels. Every epoch is saved as ``<out>/epoch_<E>/`` so the classifier
epoch is a sweep knob, and logged to MLflow: accuracy and BCE per sigma bucket, and a plot of
accuracy vs sigma (the empirical D(p_s, q_s) curve).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ambient_core.classifier import (
    CLASSIFIER_FILE,
    CLASSIFIER_META,
    ClassifierSpec,
    ClassifierState,
    DatasetPool,
    plot_accuracy_vs_sigma,
    save_classifier,
    train_classifier,
)
from ambient_core.data import ChunkDataset, ChunkSpec
from ambient_core.policy import Normalizer
from ambient_platform.datasets import read_frames
from ambient_platform.settings import ambient_home, configure_environment, resolve_location
from ambient_platform.storage import StorageRoot, validate_name
from ambient_platform.tracking import RunTracker, resolve_tracking_uri

RUN_FILE = "classifier_run.json"


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
        raise FileNotFoundError(
            f"classifier epoch {epoch} not found under {classifier}; has {have}"
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


def run_classifier_training(
    clean: Sequence[str],
    corrupt: Sequence[str],
    *,
    name: str = "classifier",
    out: str | None = None,
    obs_keys: Sequence[str] = (),
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    channels: Sequence[int] = (32, 64, 128),
    epochs: int = 5,
    steps_per_epoch: int = 300,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "classifier",
    track: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train on the given clean and corrupt datasets; returns the run dir and per-epoch metrics."""
    configure_environment()
    validate_name(name, "classifier name")
    if not clean or not corrupt:
        raise ValueError("classifier training needs at least one clean and one corrupt dataset")
    keys = ["action", *obs_keys]
    frames, inputs = [], []
    for kind, refs in (("clean", clean), ("corrupt", corrupt)):
        for ref in refs:
            root = StorageRoot(resolve_location(ref))
            f, meta = read_frames(root, keys)
            frames.append(f)
            inputs.append(
                {"kind": kind, "name": f.name, "uri": root.uri, "digest": meta["digest"]}
            )
    spec_c = ChunkSpec(horizon, n_obs_steps, n_action_steps)
    data = ChunkDataset(frames, spec_c, list(obs_keys))
    ranges = data.dataset_chunk_ranges
    n_clean_sets = len(clean)
    normalizer = Normalizer.fit(data.features)
    pool_c = DatasetPool.from_range(data, ranges[:n_clean_sets], normalizer, obs_keys)
    pool_q = DatasetPool.from_range(data, ranges[n_clean_sets:], normalizer, obs_keys)
    spec = ClassifierSpec(
        action_dim=data.feature_dims()["action"],
        horizon=horizon,
        obs_dim=pool_c.obs_dim,
        channels=tuple(channels),
        obs_keys=tuple(obs_keys),
        n_obs_steps=n_obs_steps if obs_keys else 0,
    )
    uri = resolve_tracking_uri(tracking_uri)
    tracker = (
        RunTracker.start(uri, experiment, name, tags={"kind": "classifier"}) if track else None
    )
    tag = tracker.run_id[:8] if tracker else str(int(time.time()))
    location = resolve_location(out or f"classifiers/{name}-{tag}")
    remote = StorageRoot(location) if "://" in location else None
    out_dir = _cache_dir(location) if remote else Path(location)
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def on_epoch(epoch: int, state: ClassifierState, metrics: dict[str, float]) -> None:
        save_classifier(
            epoch_dir(out_dir, epoch),
            state.model,
            state.spec,
            normalizer,
            {"epoch": epoch, "metrics": metrics, "chunk": vars(spec_c), "inputs": inputs},
        )
        if remote is not None:  # weights first: classifier.json marks a complete epoch
            _upload(
                epoch_dir(out_dir, epoch),
                remote,
                [CLASSIFIER_FILE, CLASSIFIER_META],
                f"epoch_{epoch}/",
            )
        history.append({"epoch": float(epoch), **metrics})
        if tracker is not None:
            tracker.log_metrics(metrics, epoch)
        if verbose:
            print(
                f"[{name}] epoch {epoch}/{epochs} acc {metrics.get('acc', float('nan')):.3f} "
                f"bce {metrics.get('bce', float('nan')):.4f} "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )

    params = {
        "clean": ",".join(clean),
        "corrupt": ",".join(corrupt),
        "obs_keys": ",".join(obs_keys),
        "horizon": horizon,
        "n_obs_steps": n_obs_steps,
        "n_action_steps": n_action_steps,
        "channels": list(channels),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }

    def body() -> None:
        if tracker is not None:
            tracker.log_params(params)
            for d in inputs:
                tracker.log_dataset(d["name"], d["digest"], d["uri"], d["kind"])
        train_classifier(
            pool_c,
            pool_q,
            spec,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            on_epoch=on_epoch,
        )
        plot_accuracy_vs_sigma(history, out_dir / "accuracy_vs_sigma.png")
        run_info = {
            "run_id": tracker.run_id if tracker else None,
            "params": params,
            "epochs": [int(h["epoch"]) for h in history],
            "inputs": inputs,
            "train_s": round(time.perf_counter() - t0, 2),
        }
        (out_dir / RUN_FILE).write_text(json.dumps(run_info, indent=2))
        if remote is not None:
            _upload(out_dir, remote, ["accuracy_vs_sigma.png", RUN_FILE])
        if tracker is not None:
            tracker.log_artifact(out_dir / "accuracy_vs_sigma.png")
            tracker.log_artifact(out_dir / RUN_FILE)
            tracker.log_metrics({"time/train_s": time.perf_counter() - t0})

    if tracker is None:
        body()
    else:
        with tracker.active():
            body()
    return {"dir": location, "run_id": tracker.run_id if tracker else None, "history": history}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clean", action="append", required=True)
    p.add_argument("--corrupt", action="append", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args(argv)
    res = run_classifier_training(a.clean, a.corrupt, epochs=a.epochs, out=a.out, verbose=True)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
