"""Invariants the chaos run checks after every kill and recovery (see ``chaos.py``).

Each check reads only what the platform leaves on disk and in MLflow, and returns the
violations it found as readable strings, so a report names the shard, manifest or run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

Inputs = dict[tuple[str, str], tuple[int, int]]  # (dataset, key) -> (rows, bytes)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count(root: Path, **patterns: str) -> dict[str, int]:
    return {k: len(list(root.glob(p))) for k, p in patterns.items()}


# ------------------------------------------------------------------------------ invariants


def annotation_violations(root: Path, inputs: Inputs, seen: dict[str, str]) -> list[str]:
    """Manifests contiguous and create-only (``seen``: file -> sha256 when first checked);
    the latest names every input once, with matching digests, rows and unique rows."""
    mdir = root / "manifests"
    files = {int(f.stem[1:]): f for f in mdir.glob("v*.json") if f.stem[1:].isdigit()}
    versions = sorted(files)
    if not versions:
        return [f"{root.name}: no manifest committed"]
    bad = [] if versions == list(range(1, len(versions) + 1)) else [f"versions {versions}"]
    manifests = {}
    for v in versions:
        data = files[v].read_bytes()
        if seen.setdefault(str(files[v]), sha256(data)) != sha256(data):
            bad.append(f"v{v}.json changed after it was committed (not create-only)")
        m = manifests[v] = json.loads(data)
        if m.get("version") != v or m.get("previous") != (v - 1 or None):
            bad.append(f"v{v}.json says version {m.get('version')}, previous {m.get('previous')}")
        prev = (m.get("lineage") or {}).get("previous_manifest")
        if prev is not None and not str(prev).endswith(f"v{v - 1}.json"):
            bad.append(f"v{v}.json: lineage.previous_manifest is {prev}")
        if m.get("settings_digest") != manifests[versions[0]].get("settings_digest"):
            bad.append(f"v{v}.json: settings digest differs from v{versions[0]}")
    bad += shard_violations(root, manifests[versions[-1]], inputs)
    markers = sorted(str(p.relative_to(root)) for p in (root / "done").rglob("*.json"))
    if markers:
        bad.append(f"done markers left after the commit: {markers[:3]} ({len(markers)})")
    with contextlib.suppress(OSError):
        lease = (root / "leases" / "watch.json").read_text()[:200]
        bad.append(f"lease still held after the last run ended: {lease}")
    return [f"{root.name}: {b}" for b in bad]


def shard_violations(root: Path, m: dict[str, Any], inputs: Inputs) -> list[str]:
    bad, out_rows, dup_rows, v = [], 0, 0, f"v{m['version']}"
    keys: set[tuple[str, int, int]] = set()
    ids = [(e["dataset"], e["input_key"]) for e in m["shards"]]
    if len(ids) != len(set(ids)):
        bad.append(f"{v}: shards named twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    if set(ids) != set(inputs):
        missing, extra = sorted(set(inputs) - set(ids)), sorted(set(ids) - set(inputs))
        bad.append(f"{v}: inputs missing {missing[:5]}, unknown {extra[:5]}")
    for e in m["shards"]:
        path = root / e["output_key"]
        if not path.exists():
            bad.append(f"{e['output_key']} named in {v} does not exist")
            continue
        data = path.read_bytes()
        if sha256(data) != e["sha256"]:
            bad.append(f"{e['output_key']}: sha256 differs from {v}")
        t = pq.read_table(io.BytesIO(data), columns=["episode_index", "frame_index"])
        rows, size = inputs.get((e["dataset"], e["input_key"]), (t.num_rows, e["input_size"]))
        if not t.num_rows == e["rows"] == rows or size != e["input_size"]:
            bad.append(f"{e['output_key']}: {t.num_rows} rows, {v} {e['rows']}, input {rows}")
        ep, fr = (c.to_pylist() for c in t.columns)
        pairs = {(e["dataset"], a, b) for a, b in zip(ep, fr, strict=True)}
        dup_rows += len(pairs & keys) + t.num_rows - len(pairs)
        keys |= pairs
        out_rows += t.num_rows
    total = sum(r for r, _ in inputs.values())
    if out_rows != total or dup_rows:
        bad.append(f"annotated rows {out_rows} != input rows {total} ({dup_rows} duplicated)")
    return bad


def sweep_violations(uri: str, sweep_dir: Path) -> list[str]:
    """One FINISHED parent; one FINISHED child per trial (Ray trial id and configuration +
    seed unique), its final evaluation logged once; no stray run of the sweep."""
    from mlflow import MlflowClient

    name, info_file = sweep_dir.name, sweep_dir / "ambient_sweep.json"
    if not info_file.exists():
        return [f"sweep {name}: no {info_file.name} after recovery"]
    info = json.loads(info_file.read_text())
    parent_id, n = info["parent_run_id"], int(info["n_trials"])
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.sweep = '{name}'", max_results=5000)
    bad = []
    for r in runs:
        kind, parent = r.data.tags.get("kind"), r.data.tags.get("mlflow.parentRunId")
        if r.info.run_id == parent_id and r.info.status != "FINISHED":
            bad.append(f"parent run {parent_id} is {r.info.status}")
        elif r.info.run_id != parent_id and (kind == "sweep" or parent != parent_id):
            bad.append(f"stray run {r.info.run_id} ({r.info.run_name}, {kind}, {r.info.status})")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    ids = {k.data.tags.get("ray_trial_id") for k in kids}
    paths = info.get("paths", [])
    points = {(*(k.data.params.get(p) for p in paths), k.data.tags.get("seed")) for k in kids}
    if not len(kids) == len(ids) == len(points) == n:
        bad.append(f"{len(kids)} child runs, {len(ids)} trial ids, {len(points)} configurations")
    for k in kids:
        if k.info.status != "FINISHED":
            bad.append(f"trial run {k.info.run_id} ({k.info.run_name}) is {k.info.status}")
        if k.data.tags.get("stopped_early") == "true":
            continue
        for key in (m for m in k.data.metrics if m.startswith("eval/")):
            if (count := len(client.get_metric_history(k.info.run_id, key))) != 1:
                bad.append(f"trial run {k.info.run_id}: {key} logged {count} times")
    return [f"sweep {name} (expected {n} trials): {b}" for b in bad]


def running_runs(uri: str) -> dict[str, int]:
    """MLflow runs still RUNNING at the end, by kind tag: sweep runs are violations (checked
    above); annotation runs of killed annotators and watchers are what nothing closes."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    out: dict[str, int] = {}
    for r in client.search_runs(exps, "attributes.status = 'RUNNING'", max_results=5000):
        kind = r.data.tags.get("kind", "?")
        out[kind] = out.get(kind, 0) + 1
    return out
