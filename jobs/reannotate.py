"""One re-annotation pass over sources where new corrupt shards keep landing (``ambient watch``).

A pass, under a lease in the annotation root so two watchers never annotate the same shards:
list every ``data/*.parquet`` of each source (local directory or s3:// prefix), diff against the
latest committed manifest by (dataset, key) + size + ETag/mtime, annotate only new or changed
shards with the configured classifier (the same Ray tasks as ``ambient annotate``),
commit manifest v+1 create-only with lineage (previous manifest; new, changed, removed and
quarantined shards), log an MLflow annotation run, and optionally run a follow-up sweep pinned
to the new version.

Faults:
- kill -9 mid-pass: annotated shards have done markers; the next pass resumes them and annotates
  the rest, so every new shard lands in exactly one manifest, once.
- A shard without a valid Parquet footer is what a file still being written looks like: it is
  retried on later passes and quarantined only after ``quarantine_after`` passes unchanged.
- A complete shard that cannot be used (missing columns, NaN or ragged rows, episode indices that
  another shard of the dataset already has) is quarantined at once. Quarantined shards are listed
  in every manifest and retried only when the file changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import Field

from ambient_platform.config.base import StrictModel
from ambient_platform.config.watch import WatchConfig
from ambient_platform.manifest import (
    Lineage,
    Manifest,
    QuarantinedShard,
    latest_manifest,
    manifest_key,
    manifest_versions,
    parse_record,
    read_manifest,
    utc_now,
)
from ambient_platform.settings import configure_environment
from ambient_platform.storage import LeaseKeeper, StorageRoot
from ambient_platform.tracking import RunTracker, resolve_tracking_uri
from jobs.annotate import log_annotation
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
from jobs.score_shards import execute

logger = logging.getLogger(__name__)

STATE_KEY = "watch/state.json"
FollowUpFn = Callable[[WatchConfig, int, StorageRoot], dict[str, Any]]


def _name(dataset: str, key: str) -> str:
    return f"{dataset}/{key}"


class Unreadable(StrictModel):
    """A shard without a valid footer, and how many passes saw the same file so."""

    size: int
    etag: str
    passes: int
    error: str


class WatchState(StrictModel):
    """``watch/state.json``: what a watcher remembers between passes."""

    unreadable: dict[str, Unreadable] = Field(default_factory=dict)
    follow_up_done: int = 0  # the version the last follow-up sweep ran on
    logged_version: int = 0  # the last watch manifest whose MLflow run is complete


def read_state(root: StorageRoot) -> WatchState:
    if not root.exists(STATE_KEY):
        return WatchState()
    state: WatchState = parse_record(
        WatchState, root.read_json(STATE_KEY), root.uri_for(STATE_KEY)
    )
    return state


def write_state(root: StorageRoot, state: WatchState) -> None:
    root.write_json(STATE_KEY, state.model_dump(mode="json"))


class _Triage:
    """Sorts a plan's pending shards into run / retry later / quarantine."""

    def __init__(self, plan: Plan, cfg: WatchConfig, state: WatchState) -> None:
        self.plan, self.cfg, self.state = plan, cfg, state
        previous = plan.manifest.quarantined if plan.manifest else []
        listed = {inp.name: inp for inp in plan.inputs}
        # Quarantine outlives a pass only while the very same file is still there.
        self.quarantined: dict[str, QuarantinedShard] = {}
        self.released: list[QuarantinedShard] = []
        for q in previous:
            inp = listed.get(_name(*q.id))
            if inp is not None and (q.input_size, q.input_etag) == (inp.size, inp.etag):
                self.quarantined[_name(*q.id)] = q
            else:
                self.released.append(q)
        self.new_quarantine: list[QuarantinedShard] = []
        self.retry: list[dict[str, Any]] = []
        self.spans: dict[str, list[tuple[int, int, str]]] = {}
        for e in plan.done.values():
            if e.episodes is not None:
                self.spans.setdefault(e.dataset, []).append((*e.episodes, e.input_key))
        for k in [k for k in state.unreadable if k not in listed]:
            del state.unreadable[k]

    def quarantine(self, inp: ShardInput, error: str) -> None:
        q = QuarantinedShard(
            dataset=inp.dataset,
            input_key=inp.key,
            input_size=inp.size,
            input_etag=inp.etag,
            error=error,
            since=utc_now(),
        )
        self.quarantined[inp.name] = q
        self.new_quarantine.append(q)
        self.state.unreadable.pop(inp.name, None)
        logger.warning("quarantined %s: %s", inp.name, error)

    def defer(self, inp: ShardInput, problem: str) -> None:
        """Retry on a later pass; quarantine once the same unreadable file was seen
        ``quarantine_after`` times (a writer that died mid-file, not one still writing)."""
        seen = self.state.unreadable.get(inp.name)
        same = seen is not None and (seen.size, seen.etag) == (inp.size, inp.etag)
        passes = seen.passes + 1 if seen is not None and same else 1
        if passes >= self.cfg.quarantine_after:
            self.quarantine(inp, f"{problem} (unchanged for {passes} passes)")
            return
        self.state.unreadable[inp.name] = Unreadable(
            size=inp.size, etag=inp.etag, passes=passes, error=problem
        )
        self.retry.append({"dataset": inp.dataset, "input_key": inp.key, "passes": passes})

    def _clash(self, inp: ShardInput, lo: int, hi: int) -> str | None:
        """Another shard of the dataset with overlapping episode indices, as a message."""
        spans = self.spans.setdefault(inp.dataset, [])
        clash = next((s for s in spans if s[2] != inp.key and s[0] <= hi and lo <= s[1]), None)
        if clash is None:
            spans.append((lo, hi, inp.key))
            return None
        return (
            f"episode_index {lo}..{hi} overlaps {clash[2]} ({clash[0]}..{clash[1]}) of "
            f"dataset {inp.dataset!r}; episode indices must be unique within a dataset"
        )

    def sort(self, columns: list[str]) -> list[ShardInput]:
        runnable = []
        for inp in self.plan.pending:
            if inp.name in self.quarantined:
                continue
            check = check_shard(inp, columns, episodes=True)
            if check.problem is not None and check.retryable:
                self.defer(inp, check.problem)
                continue
            self.state.unreadable.pop(inp.name, None)
            problem = check.problem
            if problem is None and check.episodes is not None:
                problem = self._clash(inp, *check.episodes)
            if problem is not None:
                self.quarantine(inp, problem)
                continue
            runnable.append(inp)
        return runnable


def _lineage(plan: Plan, triage: _Triage) -> Lineage:
    before = {e.id: e for e in (plan.manifest.shards if plan.manifest else [])}
    new, changed = [], []
    for k, e in sorted(plan.done.items()):
        old = before.get(k)
        if old is None:
            new.append(_name(*k))
        elif not old.same_input(e.input_size, e.input_etag):
            changed.append(_name(*k))
    return Lineage(
        previous_manifest=plan.root.uri_for(manifest_key(plan.version)) if plan.version else None,
        new=new,
        changed=changed,
        # Gone from the source, or changed and not annotatable now (retried or quarantined):
        # either way the old curves no longer describe the file, so the manifest drops them.
        removed=[_name(*k) for k in sorted(before) if k not in plan.done],
        quarantined=[_name(*q.id) for q in triage.new_quarantine],
        released=[_name(*q.id) for q in triage.released],
    )


def run_pass(
    cfg: WatchConfig,
    *,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    owner: str | None = None,
    track: bool = True,
    run_follow_up: FollowUpFn | None = None,
) -> dict[str, Any]:
    """One pass; returns a summary whose ``status`` is ``committed``, ``up-to-date`` or
    ``busy`` (another watcher holds the lease)."""
    configure_environment()
    settings = curve_settings(cfg)
    root = annotation_root(cfg)
    owner = owner or LeaseKeeper.new_owner()
    with LeaseKeeper(root, LEASE_KEY, owner, cfg.lease_ttl_s) as lease:
        if not lease.held:
            holder = lease.holder()
            return {
                "status": "busy",
                "annotation": root.uri,
                "holder": holder.owner if holder else None,
                "expires_at": holder.expires_at if holder else None,
            }
        plan = plan_annotation(cfg.sources, settings, root, discover=True)
        summary = _Pass(cfg, plan, lease, owner, read_state(root)).run(ray_address)
        if track:
            run_id = _log_unlogged(cfg, root, summary, tracking_uri)
            if run_id is not None:
                summary["run_id"] = run_id
        if cfg.on_new_data is not None and run_follow_up is not None:
            due = _follow_up_due(root)
            if due is not None:
                lease.check()
                summary["follow_up"] = run_follow_up(cfg, due, root)
                state = read_state(root)
                state.follow_up_done = due
                write_state(root, state)
        return summary


@dataclass
class _Pass:
    """One watch pass after planning: triage, score, commit (or not), summarise."""

    cfg: WatchConfig
    plan: Plan
    lease: LeaseKeeper
    owner: str
    state: WatchState
    triage: _Triage = field(init=False)
    annotated: int = 0
    rows: int = 0

    def __post_init__(self) -> None:
        self.triage = _Triage(self.plan, self.cfg, self.state)

    def on_shard(self, inp: ShardInput, table: pa.Table | None, error: str | None) -> None:
        self.lease.check()
        if table is None:
            if str(error).startswith("cannot read"):  # replaced or truncated since the check
                self.triage.defer(inp, f"shard {inp.uri}: {error}")
            else:
                self.triage.quarantine(inp, f"shard {inp.uri}: {error}")
            return
        p = self.plan
        p.done[inp.id] = commit_shard(p.root, inp, table, p.settings, self.owner)
        self.rows += inp.rows
        self.annotated += 1
        logger.debug("annotated %s (%d rows)", inp.uri, inp.rows)

    def run(self, ray_address: str | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        p, triage = self.plan, self.triage
        runnable = triage.sort(annotation_columns(self.cfg.obs_keys))
        logger.info(
            "%s v%d: %d shards listed, %d new or changed, %d resumed, %d to annotate, "
            "%d to retry later, %d quarantined now, %d removed",
            p.root.uri,
            p.version,
            len(p.inputs),
            len(p.pending),
            p.resumed,
            len(runnable),
            len(triage.retry),
            len(triage.new_quarantine),
            len(p.removed),
        )
        execute(runnable, self.cfg, p.settings, self.on_shard, ray_address)
        lineage = _lineage(p, triage)
        quarantined = sorted(triage.quarantined.values(), key=lambda q: q.id)
        base = {
            "annotation": p.root.uri,
            "shards_listed": len(p.inputs),
            "shards_annotated": self.annotated,
            "shards_resumed": p.resumed,
            "shards_retry_later": len(triage.retry),
            "shards_quarantined": len(quarantined),
            "retry_later": triage.retry,
            "quarantined_now": [q.model_dump(mode="json") for q in triage.new_quarantine],
            "rows_annotated": self.rows,
        }
        if lineage.is_empty:
            write_state(p.root, self.state)
            return {"status": "up-to-date", "version": p.version, **base}
        self.lease.check()
        manifest = next_manifest(p, quarantined=quarantined, lineage=lineage)
        digest = commit_plan(p, manifest)
        write_state(p.root, self.state)
        wall = time.perf_counter() - t0
        return {
            "status": "committed",
            "version": manifest.version,
            "manifest_digest": digest,
            **base,
            "new_shards": lineage.new,
            "changed_shards": lineage.changed,
            "removed_shards": lineage.removed,
            "rows_per_s": self.rows / wall if wall > 0 else 0.0,
            "wall_s": wall,
        }


def _follow_up_due(root: StorageRoot) -> int | None:
    """The latest version, if any version since the last follow-up added or changed shards.

    Derived from the committed manifests, not remembered: a crash between a commit and its
    sweep leaves the follow-up due, and the next pass runs (or resumes) it, pinned to the
    newest version, which holds everything the missed ones did.
    """
    done = read_state(root).follow_up_done
    versions = [v for v in manifest_versions(root) if v > done]
    for v in reversed(versions):
        lineage = read_manifest(root, v).lineage
        if lineage is not None and lineage.adds_data:
            return versions[-1]
    return None


def _run_metrics(manifest: Manifest, summary: dict[str, Any]) -> dict[str, Any]:
    """This pass's counts when it committed ``manifest``, plus the manifest's lineage counts."""
    metrics = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    if summary.get("version") != manifest.version:  # catching up: this pass did not commit it
        metrics = {}
    lineage = manifest.lineage or Lineage(previous_manifest=None)
    metrics["shards_new"] = len(lineage.new)
    metrics["shards_changed"] = len(lineage.changed)
    metrics["shards_removed"] = len(lineage.removed)
    metrics["shards_quarantined"] = len(manifest.quarantined)
    return metrics


def _log_unlogged(
    cfg: WatchConfig,
    root: StorageRoot,
    summary: dict[str, Any],
    tracking_uri: str | None,
) -> str | None:
    """Log the MLflow run of the latest watch manifest unless it was logged already.

    Remembered in the state only after the run is complete, so a pass that committed but
    died (or found MLflow down) before logging leaves the run to the next pass.
    """
    state = read_state(root)
    version, manifest = latest_manifest(root)
    if manifest is None or manifest.trigger != "watch" or version <= state.logged_version:
        return None
    lineage = manifest.lineage or Lineage(previous_manifest=None)
    tracker = RunTracker.start(
        resolve_tracking_uri(tracking_uri),
        cfg.experiment,
        f"reannotate-{cfg.name}-v{version}",
        tags={
            "kind": "annotation",
            "ambient.trigger": "watch",
            "ambient.manifest_version": str(version),
            "ambient.previous_manifest": lineage.previous_manifest or "",
        },
    )
    with tracker.active():
        log_annotation(tracker, root, manifest, _run_metrics(manifest, summary), cfg)
        if manifest.previous and lineage.previous_manifest:
            tracker.log_dataset(
                f"annotation-v{manifest.previous}",
                read_manifest(root, manifest.previous).digest(),
                lineage.previous_manifest,
                "previous",
            )
        detail = [q.model_dump(mode="json") for q in manifest.quarantined]
        tracker.log_dict(
            {**lineage.model_dump(mode="json"), "quarantined_detail": detail}, "lineage.json"
        )
    state.logged_version = version
    write_state(root, state)
    return str(tracker.run_id)
