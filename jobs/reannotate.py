"""One re-annotation pass over sources where new corrupt shards keep landing (``ambient watch``).

A pass, under a lease in the annotation root so two watchers never annotate the same shards:
list every ``data/*.parquet`` of each source (local directory or s3:// prefix), diff against the
latest committed manifest by key + size + ETag/mtime, annotate only new or changed shards with the
configured classifier (the same Ray Data pipeline as ``ambient annotate``), commit manifest v+1
create-only with lineage (previous manifest; new, changed, removed and quarantined shards), log an
MLflow annotation run, and optionally run a follow-up sweep pinned to the new version.

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

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ambient_core.data import DataError
from ambient_platform.settings import configure_environment
from ambient_platform.storage import LeaseKeeper, StorageRoot
from ambient_platform.watch_config import WatchConfig, load_watch_config
from jobs.annotate import (
    DEFAULT_GRID,
    LEASE_KEY,
    MANIFEST_DIR,
    Plan,
    _Input,
    annotation_columns,
    annotation_root,
    check_shard,
    commit_manifest,
    commit_shard,
    execute,
    latest_manifest,
    log_annotation,
    make_settings,
    manifest_digest,
    plan_annotation,
)

STATE_KEY = "watch/state.json"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(dataset: str, key: str) -> str:
    return f"{dataset}/{key}"


class _Triage:
    """Sorts a plan's pending shards into run / retry later / quarantine."""

    def __init__(self, plan: Plan, cfg: WatchConfig, state: dict[str, Any]) -> None:
        self.plan, self.cfg = plan, cfg
        self.unreadable: dict[str, Any] = state.setdefault("unreadable", {})
        previous = (plan.manifest or {}).get("quarantined", [])
        listed = {_key(*inp.id): inp for inp in plan.inputs}
        # Quarantine outlives a pass only while the very same file is still there.
        self.quarantined = {
            _key(q["dataset"], q["input_key"]): q
            for q in previous
            if (inp := listed.get(_key(q["dataset"], q["input_key"]))) is not None
            and (q["input_size"], q["input_etag"]) == (inp.size, inp.etag)
        }
        self.released = [
            q for q in previous if _key(q["dataset"], q["input_key"]) not in self.quarantined
        ]
        self.new_quarantine: list[dict[str, Any]] = []
        self.retry: list[dict[str, Any]] = []
        self.spans: dict[str, list[tuple[int, int, str]]] = {}
        for e in plan.done.values():
            if "episodes" in e:
                lo, hi = e["episodes"]
                self.spans.setdefault(e["dataset"], []).append((lo, hi, e["input_key"]))
        for k in list(self.unreadable):
            if k not in listed:
                del self.unreadable[k]

    def quarantine(self, inp: _Input, error: str) -> None:
        q = {
            "dataset": inp.dataset,
            "input_key": inp.key,
            "input_size": inp.size,
            "input_etag": inp.etag,
            "error": error,
            "since": _now(),
        }
        self.quarantined[_key(*inp.id)] = q
        self.new_quarantine.append(q)
        self.unreadable.pop(_key(*inp.id), None)

    def defer(self, inp: _Input, problem: str) -> None:
        """Retry on a later pass; quarantine once the same unreadable file was seen
        ``quarantine_after`` times (a writer that died mid-file, not one still writing)."""
        k = _key(*inp.id)
        seen = self.unreadable.get(k)
        same = seen is not None and (seen["size"], seen["etag"]) == (inp.size, inp.etag)
        passes = seen["passes"] + 1 if same else 1
        if passes >= self.cfg.quarantine_after:
            self.quarantine(inp, f"{problem} (unchanged for {passes} passes)")
            return
        self.unreadable[k] = {
            "size": inp.size,
            "etag": inp.etag,
            "passes": passes,
            "error": problem,
        }
        self.retry.append({"dataset": inp.dataset, "input_key": inp.key, "passes": passes})

    def sort(self, columns: list[str]) -> list[_Input]:
        runnable = []
        for inp in self.plan.pending:
            k = _key(*inp.id)
            if k in self.quarantined:
                continue
            check = check_shard(inp, columns, episodes=True)
            if check.problem is not None and check.retryable:
                self.defer(inp, check.problem)
                continue
            self.unreadable.pop(k, None)
            if check.problem is not None:
                self.quarantine(inp, check.problem)
                continue
            assert check.episodes is not None
            lo, hi = check.episodes
            spans = self.spans.setdefault(inp.dataset, [])
            clash = next((s for s in spans if s[2] != inp.key and s[0] <= hi and lo <= s[1]), None)
            if clash is not None:
                self.quarantine(
                    inp,
                    f"episode_index {lo}..{hi} overlaps {clash[2]} ({clash[0]}..{clash[1]}) of "
                    f"dataset {inp.dataset!r}; episode indices must be unique within a dataset",
                )
                continue
            spans.append((lo, hi, inp.key))
            runnable.append(inp)
        return runnable


def _lineage(plan: Plan, root: StorageRoot) -> dict[str, Any]:
    before = {(e["dataset"], e["input_key"]): e for e in (plan.manifest or {}).get("shards", [])}
    new, changed = [], []
    for k, e in sorted(plan.done.items()):
        old = before.get(k)
        if old is None:
            new.append(_key(*k))
        elif (old["input_size"], old["input_etag"]) != (e["input_size"], e["input_etag"]):
            changed.append(_key(*k))
    return {
        "previous_manifest": (
            root.uri_for(f"{MANIFEST_DIR}/v{plan.version}.json") if plan.version else None
        ),
        "new": new,
        "changed": changed,
        # Gone from the source, or changed and not annotatable now (retried or quarantined):
        # either way the old curves no longer describe the file, so the manifest drops them.
        "removed": [_key(*k) for k in sorted(before) if k not in plan.done],
    }


def run_pass(
    cfg: WatchConfig,
    *,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    owner: str | None = None,
    track: bool = True,
    verbose: bool = True,
    run_follow_up: Callable[[WatchConfig, int, StorageRoot], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One pass; returns a summary whose ``status`` is ``committed``, ``up-to-date`` or
    ``busy`` (another watcher holds the lease)."""
    configure_environment()
    settings = make_settings(
        cfg.classifier,
        cfg.epochs,
        cfg.grid_levels or DEFAULT_GRID,
        cfg.num_draws,
        cfg.seed,
    )
    root = annotation_root(cfg.name, cfg.out)
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
        summary = _pass(
            cfg, root, settings, lease, owner, tracking_uri, ray_address, track, verbose
        )
        if cfg.on_new_data is not None and run_follow_up is not None:
            due = _follow_up_due(root)
            if due is not None:
                lease.check()
                summary["follow_up"] = run_follow_up(cfg, due, root)
                state = _read_state(root)
                state["follow_up_done"] = due
                root.write_json(STATE_KEY, state)
        return summary


def _follow_up_due(root: StorageRoot) -> int | None:
    """The latest version, if any version since the last follow-up added or changed shards.

    Derived from the committed manifests, not remembered: a crash between a commit and its
    sweep leaves the follow-up due, and the next pass runs (or resumes) it, pinned to the
    newest version, which holds everything the missed ones did.
    """
    done = int(_read_state(root).get("follow_up_done", 0))
    version, _ = latest_manifest(root)
    for v in range(version, done, -1):
        lineage = root.read_json(f"{MANIFEST_DIR}/v{v}.json").get("lineage") or {}
        if lineage.get("new") or lineage.get("changed"):
            return version
    return None


def _read_state(root: StorageRoot) -> dict[str, Any]:
    return root.read_json(STATE_KEY) if root.exists(STATE_KEY) else {}


def _pass(
    cfg: WatchConfig,
    root: StorageRoot,
    settings: Any,
    lease: LeaseKeeper,
    owner: str,
    tracking_uri: str | None,
    ray_address: str | None,
    track: bool,
    verbose: bool,
) -> dict[str, Any]:

    t0 = time.perf_counter()
    plan = plan_annotation(cfg.sources, settings, root, discover=True)
    state = _read_state(root)
    triage = _Triage(plan, cfg, state)
    columns = annotation_columns(cfg.obs_keys)
    runnable = triage.sort(columns)
    if verbose:
        print(
            f"[watch {time.strftime('%H:%M:%S')}] {root.uri} v{plan.version}: "
            f"{len(plan.inputs)} shards listed, {len(plan.pending)} new or changed, "
            f"{plan.resumed} resumed, {len(runnable)} to annotate, {len(triage.retry)} to "
            f"retry later, {len(triage.new_quarantine)} quarantined now, "
            f"{len(plan.removed)} removed",
            flush=True,
        )
    rows_done = annotated = 0

    def on_shard(inp: _Input, table: pa.Table | None, error: str | None) -> None:
        nonlocal rows_done, annotated
        lease.check()
        if table is None:
            if str(error).startswith("cannot read"):  # replaced or truncated since the check
                triage.defer(inp, f"shard {inp.uri}: {error}")
            else:
                triage.quarantine(inp, f"shard {inp.uri}: {error}")
            return
        plan.done[inp.id] = commit_shard(root, inp, table, settings, owner)
        rows_done += inp.rows
        annotated += 1
        if verbose:
            print(f"[watch] annotated {inp.uri} ({inp.rows} rows)", flush=True)

    execute(
        runnable,
        settings,
        columns,
        cfg.obs_keys,
        on_shard,
        actors=cfg.resources.actors,
        cpus_per_actor=cfg.resources.cpus_per_actor,
        gpus_per_actor=cfg.resources.gpus_per_actor,
        ray_address=ray_address,
        verbose=verbose,
    )
    lineage = _lineage(plan, root)
    lineage["quarantined"] = [_key(q["dataset"], q["input_key"]) for q in triage.new_quarantine]
    lineage["released"] = [_key(q["dataset"], q["input_key"]) for q in triage.released]
    quarantined = sorted(triage.quarantined.values(), key=lambda q: (q["dataset"], q["input_key"]))
    changed = any(lineage[k] for k in ("new", "changed", "removed", "quarantined", "released"))
    base = {
        "annotation": root.uri,
        "shards_listed": len(plan.inputs),
        "shards_annotated": annotated,
        "shards_resumed": plan.resumed,
        "shards_retry_later": len(triage.retry),
        "shards_quarantined": len(quarantined),
        "retry_later": triage.retry,
        "quarantined_now": triage.new_quarantine,
        "rows_annotated": rows_done,
    }
    if not changed:
        root.write_json(STATE_KEY, state)
        summary = {"status": "up-to-date", "version": plan.version, **base}
    else:
        lease.check()
        manifest, digest = commit_manifest(
            plan, [], {"quarantined": quarantined, "lineage": lineage, "trigger": "watch"}
        )
        root.write_json(STATE_KEY, state)
        wall = time.perf_counter() - t0
        summary = {
            "status": "committed",
            "version": manifest["version"],
            "manifest_digest": digest,
            **base,
            "new_shards": lineage["new"],
            "changed_shards": lineage["changed"],
            "removed_shards": lineage["removed"],
            "rows_per_s": rows_done / wall if wall > 0 else 0.0,
            "wall_s": wall,
        }
        if verbose:
            for q in triage.new_quarantine:
                print(f"[watch] QUARANTINED {q['dataset']}/{q['input_key']}: {q['error']}")
    if track:
        run_id = _log_unlogged(cfg, root, settings, summary, tracking_uri)
        if run_id is not None:
            summary["run_id"] = run_id
    return summary


def _log_unlogged(
    cfg: WatchConfig,
    root: StorageRoot,
    settings: Any,
    summary: dict[str, Any],
    tracking_uri: str | None,
) -> str | None:
    """Log the MLflow run of the latest watch manifest unless it was logged already.

    Remembered in the state only after the run is complete, so a pass that committed but
    died (or found MLflow down) before logging leaves the run to the next pass.
    """
    from ambient_platform.tracking import RunTracker, resolve_tracking_uri

    state = _read_state(root)
    version, manifest = latest_manifest(root)
    if manifest is None or manifest.get("trigger") != "watch":
        return None
    if version <= int(state.get("logged_version", 0)):
        return None
    lineage = manifest["lineage"]
    digest = manifest_digest(manifest)
    tracker = RunTracker.start(
        resolve_tracking_uri(tracking_uri),
        cfg.experiment,
        f"reannotate-{cfg.name}-v{version}",
        tags={
            "kind": "annotation",
            "ambient.trigger": "watch",
            "ambient.manifest_version": str(version),
            "ambient.previous_manifest": lineage["previous_manifest"] or "",
        },
    )
    with tracker.active():
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float)}
        if summary.get("version") != version:  # catching up: this pass did not commit it
            metrics = {}
        metrics["shards_new"] = len(lineage["new"])
        metrics["shards_changed"] = len(lineage["changed"])
        metrics["shards_removed"] = len(lineage["removed"])
        metrics["shards_quarantined"] = len(manifest.get("quarantined", []))
        log_annotation(tracker, root, manifest, digest, metrics, settings, cfg.tau)
        if manifest.get("previous"):
            prev_key = f"{MANIFEST_DIR}/v{manifest['previous']}.json"
            tracker.log_dataset(
                f"annotation-v{manifest['previous']}",
                manifest_digest(root.read_json(prev_key)),
                lineage["previous_manifest"],
                "previous",
            )
        tracker.log_dict(
            {**lineage, "quarantined_detail": manifest.get("quarantined", [])}, "lineage.json"
        )
    state["logged_version"] = version
    root.write_json(STATE_KEY, state)
    return str(tracker.run_id)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args(argv)
    try:
        cfg = load_watch_config(a.config, a.set)
        print(json.dumps(run_pass(cfg), indent=2, default=str))
    except (DataError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
