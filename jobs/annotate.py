"""Annotate datasets with classifier score curves on Ray tasks (``ambient annotate``).

A run, under the annotation root's lease (the same one ``ambient watch`` takes): plan (the
shards each dataset's meta.json names, diffed against the latest manifest and the done markers
of a crashed run, ``jobs.annotation_plan``), check footers, score the rest with Ray tasks
(``jobs.score_shards``; their workers warm up while MLflow starts) writing one output shard per
input shard plus a done marker, commit manifest ``manifests/v<N+1>.json`` last and create-only
(``ambient_platform.manifest``), and log an MLflow annotation run.

A score curve is, for the chunk whose current frame is a row, the mean P(clean) over
``num_draws`` noise draws at each level of the annotation grid, per classifier epoch. sigma_min is
derived later, without the classifier (``ambient_core.classifier.derive_sigma_min``), so sweeps
over tau, epoch and granularity annotate once.

Crash safety: a re-run after kill -9 skips shards the latest manifest has and resumes shards
whose done marker matches the same input (size + etag) and the same settings; it annotates the
rest, so every input row is annotated exactly once in the next manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ambient_core.errors import DataError, LeaseError
from ambient_platform.config.annotation import AnnotateConfig, AnnotationConfig
from ambient_platform.manifest import (
    MANIFEST_DIR,
    Manifest,
    SkippedShard,
    curve_column,
    read_curves,
)
from ambient_platform.settings import configure_environment
from ambient_platform.storage import LeaseKeeper, StorageRoot
from ambient_platform.tracking import (
    RunTracker,
    close_abandoned_runs,
    resolve_tracking_uri,
    scratch_dir,
)
from jobs.annotation_plan import (
    LEASE_KEY,
    Plan,
    ShardInput,
    annotation_columns,
    annotation_root,
    check_shard,
    commit_plan,
    commit_shard,
    curve_settings,
    next_manifest,
    plan_annotation,
)
from jobs.score_shards import Scoring, execute, start_scoring

logger = logging.getLogger(__name__)

LEASE_TTL_S = 600.0
#: Tag naming the annotation root an annotation run writes (one live run per root, by lease).
ROOT_TAG = "ambient.annotation_root"


def annotate(
    cfg: AnnotateConfig,
    *,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Annotate every shard the latest manifest lacks; commit manifest v+1; return a summary."""
    configure_environment()
    settings = curve_settings(cfg)
    root = annotation_root(cfg)
    owner = LeaseKeeper.new_owner()
    with LeaseKeeper(root, LEASE_KEY, owner, LEASE_TTL_S) as lease:
        if not lease.held:
            holder = lease.holder()
            raise LeaseError(
                f"annotation {root.uri} is being written by {holder.owner if holder else '?'} "
                f"({LEASE_KEY}); wait for it to finish, or use another --name"
            )
        run = _AnnotateRun(cfg, plan_annotation(cfg.data, settings, root), lease, owner)
        readable = run.check()
        # Workers start, import torch and load the classifier while MLflow starts.
        scoring = start_scoring(readable, cfg, settings, ray_address) if readable else None
        tracker = None
        if track:
            uri = resolve_tracking_uri(tracking_uri)
            tags = {"kind": "annotation", ROOT_TAG: root.uri}
            close_abandoned_runs(
                uri, cfg.experiment, ROOT_TAG, root.uri, "abandoned: its annotate was killed"
            )
            tracker = RunTracker.start(uri, cfg.experiment, f"annotate-{cfg.name}", tags=tags)
        with tracker.active() if tracker is not None else contextlib.nullcontext():
            manifest, summary = run.execute(readable, scoring)
            if tracker is not None:
                log_annotation(tracker, root, manifest, summary, cfg)
        return summary


@dataclass
class _AnnotateRun:
    """One ``ambient annotate`` run after planning: check, score, commit, count."""

    cfg: AnnotateConfig
    plan: Plan
    lease: LeaseKeeper
    owner: str
    skipped: list[SkippedShard] = field(default_factory=list)
    annotated: int = 0
    rows: int = 0

    def check(self) -> list[ShardInput]:
        """Pending shards whose footer is fine; the others are skipped or fail the run."""
        if self.plan.manifest is not None and self.plan.manifest.trigger == "watch":
            raise DataError(
                f"annotation {self.plan.root.uri} is kept by `ambient watch` (it lists shards "
                "meta.json does not name); run a watch pass (ambient watch --once) instead"
            )
        columns = annotation_columns(self.cfg.obs_keys)
        readable = []
        for inp in self.plan.pending:
            problem = check_shard(inp, columns).problem
            if problem is None:
                readable.append(inp)
            elif self.cfg.skip_bad_shards:
                self.skipped.append(inp.skipped(problem))
            else:
                raise DataError(problem + " (use --skip-bad-shards to annotate the rest)")
        p = self.plan
        logger.info(
            "%s: %d shards: %d already annotated, %d resumed, %d to annotate, %d skipped",
            p.root.uri,
            len(p.inputs),
            p.kept,
            p.resumed,
            len(readable),
            len(self.skipped),
        )
        return readable

    def on_shard(self, inp: ShardInput, table: pa.Table | None, error: str | None) -> None:
        self.lease.check()
        if table is None:
            if not self.cfg.skip_bad_shards:
                raise DataError(f"shard {inp.uri}: {error}")
            self.skipped.append(inp.skipped(str(error)))
            return
        p = self.plan
        p.done[inp.id] = commit_shard(p.root, inp, table, p.settings, self.owner)
        self.annotated += 1
        self.rows += inp.rows
        logger.debug("annotated %s (%d rows)", inp.name, inp.rows)

    def execute(
        self, readable: list[ShardInput], scoring: Scoring | None
    ) -> tuple[Manifest, dict[str, Any]]:
        """Score, commit the manifest; (manifest, summary)."""
        t0 = time.perf_counter()
        timing = execute(readable, self.cfg, self.plan.settings, self.on_shard, scoring=scoring)
        wall = timing["wall_s"] or time.perf_counter() - t0  # from start_scoring
        self.lease.check()
        manifest = next_manifest(self.plan, self.skipped)
        digest = commit_plan(self.plan, manifest)
        summary = {
            "annotation": self.plan.root.uri,
            "version": manifest.version,
            "manifest_digest": digest,
            "shards_total": len(self.plan.inputs),
            "shards_already_annotated": self.plan.kept,
            "shards_annotated": self.annotated,
            "shards_resumed": self.plan.resumed,
            "shards_skipped": len(self.skipped),
            "rows_annotated": self.rows,
            "rows_per_s": self.rows / wall if wall > 0 else 0.0,
            "wall_s": wall,
            "first_shard_s": timing["first_shard_s"],
            "warm_wait_s": timing["warm_wait_s"],
            "ready_s": timing["ready_s"],
        }
        return manifest, summary


def log_annotation(
    tracker: RunTracker,
    root: StorageRoot,
    manifest: Manifest,
    metrics: dict[str, Any],
    cfg: AnnotationConfig,
) -> None:
    """The MLflow annotation run: settings, counts, inputs, sigma_min histograms at ``tau``."""
    s = manifest.settings
    tracker.log_params(
        {
            "classifier_dir": s.classifier_dir,
            "epochs": s.epochs,
            "grid_levels": s.grid_levels,
            "num_draws": s.num_draws,
            "seed": s.seed,
            "summary_tau": cfg.tau,
            "annotation": root.uri,
            "datasets": ",".join(sorted(manifest.datasets)),
        }
    )
    tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
    tracker.log_dataset(
        f"annotation-v{manifest.version}",
        manifest.digest(),
        f"{root.uri}/{MANIFEST_DIR}/v{manifest.version}.json",
        "annotation",
    )
    for name, meta in manifest.datasets.items():
        tracker.log_dataset(name, meta.digest, meta.uri, "annotated")
    with scratch_dir() as d:
        for e in s.epochs:
            path = _sigma_min_hist(root, manifest, e, cfg.tau, d / f"sigma_min_hist_e{e}.png")
            if path is not None:
                tracker.log_artifact(path)
        (d / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2))
        tracker.log_artifact(d / "manifest.json")


def _sigma_min_hist(
    root: StorageRoot, manifest: Manifest, epoch: int, tau: float, path: Path
) -> Path | None:
    """Per-dataset sigma_min histogram of one epoch at ``tau``; None if no dataset has shards."""
    from ambient_core.classifier import SigmaMinRule, derive_sigma_min, plot_sigma_min_hist

    grid = np.asarray(manifest.grid_sigmas)
    values = {}
    for name in manifest.datasets:
        try:
            t = read_curves(root, manifest, name, epoch)
        except DataError:
            continue
        curves = np.stack(t.column(curve_column(epoch)).to_numpy(zero_copy_only=False))
        values[name] = derive_sigma_min(curves, grid, SigmaMinRule(tau=tau))
    return plot_sigma_min_hist(values, path) if values else None
