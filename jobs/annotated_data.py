"""Training data that refers to an annotation: which shards, and each chunk's sigma_min.

A run config's corrupt dataset may name an annotation instead of a fixed threshold
(``data.corrupt.N.annotation``). Training then reads exactly the shards that manifest names
(shards that landed later are not annotated yet; a shard changed since it was annotated is an
error, not a silent mismatch of curves and frames) and derives sigma_min per chunk from the
stored score curves with the reference's rule, without the classifier
(``ambient_core.classifier.derive_sigma_min``). ``sigma_min_metrics`` summarises the result for
MLflow (the sweep report reads it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ambient_core.classifier import SigmaMinRule, derive_sigma_min
from ambient_core.data import ChunkDataset
from ambient_core.errors import DataError
from ambient_core.schedule import ddpm_sigmas
from ambient_platform.config import AnnotationRef
from ambient_platform.datasets import read_meta
from ambient_platform.manifest import (
    Manifest,
    curve_column,
    latest_manifest,
    manifest_key,
    read_curves,
    read_manifest,
)
from ambient_platform.settings import resolve_location
from ambient_platform.storage import StorageRoot


def load_annotation(ann: AnnotationRef) -> tuple[StorageRoot, int, Manifest]:
    """(root, version, manifest) of the annotation a config names (latest if no version)."""
    root = StorageRoot(resolve_location(ann.path))
    if ann.version is not None:
        return root, ann.version, read_manifest(root, ann.version)
    version, manifest = latest_manifest(root)
    if manifest is None:
        raise DataError(f"{root.uri} has no committed annotation manifest")
    return root, version, manifest


def annotated_shards(ann: AnnotationRef, data: StorageRoot) -> tuple[list[str], int, str]:
    """(shard keys, version, dataset digest) of a corrupt dataset that its annotation manifest
    names; a shard that changed since it was annotated is an error."""
    root, version, manifest = load_annotation(ann)
    meta_name = read_meta(data).get("name") or data.uri.rstrip("/").rsplit("/", 1)[-1]
    dataset = ann.dataset or str(meta_name)
    entries = manifest.shards_of(dataset)
    if not entries:
        raise DataError(
            f"annotation {root.uri} v{version} has no shards of dataset {dataset!r} "
            f"(it has {sorted(manifest.datasets)})"
        )
    listing = {f.key: f for f in data.list("data/")}
    for e in entries:
        now = listing.get(e.input_key)
        if now is None or not e.same_input(now.size, now.etag_or_mtime):
            raise DataError(
                f"{data.uri_for(e.input_key)} is {'gone' if now is None else 'changed'} "
                f"since annotation {root.uri} v{version}; re-annotate (ambient watch) first"
            )
    entry = manifest.datasets.get(dataset)
    return [e.input_key for e in entries], version, entry.digest if entry else ""


def sigma_min_rule(ann: AnnotationRef, seed: int) -> SigmaMinRule:
    """The core rule a config's annotation reference asks for."""
    return SigmaMinRule(
        tau=ann.tau,
        granularity=ann.granularity,
        n_buckets=ann.n_buckets,
        bucket_mode=ann.bucket_mode,
        smoothing=ann.smoothing,
        seed=seed,
    )


def annotated_sigma_min(
    ann: AnnotationRef, dataset: str, data: ChunkDataset, chunks: tuple[int, int], seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-chunk sigma_min of chunks [lo, hi) from an annotation's score curves (no classifier),
    and the annotation's MLflow input (manifest URI and digest).

    A chunk is matched to the annotated row of its current frame (start + T_o - 1).
    """
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
        np.asarray(manifest.grid_sigmas),
        sigma_min_rule(ann, seed),
        groups=data.chunk_episode[lo:hi],
    )
    info = {
        "uri": root.uri_for(manifest_key(version)),
        "digest": manifest.digest(),
        "mean_sigma_min": float(sm.mean()),
    }
    return sm, info


def sigma_min_metrics(sigma_min: np.ndarray, prefix: str = "sigma_min") -> dict[str, float]:
    """Mean, quantiles, the eligible corrupt share (mean over DDPM levels of the share of
    corrupt chunks with sigma_k >= sigma_min) and the share never eligible (sigma_min = 1)."""
    sm = np.asarray(sigma_min, dtype=float).reshape(-1)
    if sm.size == 0:
        return {}
    sig = np.asarray(ddpm_sigmas(), dtype=float)
    q = np.quantile(sm, [0.1, 0.5, 0.9])
    return {
        f"{prefix}/mean": float(sm.mean()),
        f"{prefix}/p10": float(q[0]),
        f"{prefix}/p50": float(q[1]),
        f"{prefix}/p90": float(q[2]),
        f"{prefix}/eligible_share": float(np.searchsorted(np.sort(sm), sig, "right").mean())
        / sm.size,
        f"{prefix}/never_share": float((sm >= 1.0).mean()),
    }
