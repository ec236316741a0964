"""Annotate datasets with classifier score curves on Ray Data (``ambient annotate``).

Pipeline: a Ray Dataset with one block per shard that each dataset's meta.json names (local or
s3://) -> ``map_batches`` with a callable class on an actor pool (one classifier load per actor;
the actor reads its shard with pyarrow, re-chunks it per episode exactly as training chunks it
and scores it) -> the driver streams the annotated shards and writes one output shard per input
shard atomically, plus a small done marker -> manifest ``manifests/v<N+1>.json`` committed last,
create-only. Streaming keeps memory flat in the dataset size: an actor holds one shard at a time.
(``read_parquet`` packs many small files into one block, so results arrived in bursts and a crash
lost whole bursts; one block per shard keeps commits per shard.)

A score curve is, for the chunk whose current frame is a row, the mean P(clean) over
``num_draws`` noise draws at each level of the annotation grid, per classifier epoch. sigma_min is
derived later, without the classifier (``ambient_core.classifier.derive_sigma_min``), so sweeps
over tau, epoch and granularity annotate once.

Crash safety: a re-run after kill -9 skips shards the latest manifest has and shards whose done
marker matches the same input (size + etag) and the same settings; it annotates the rest, so every
input row is annotated exactly once in the next manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_core.data import INDEX_COLUMNS, DataError
from ambient_platform.settings import configure_environment, resolve_location
from ambient_platform.storage import LeaseKeeper, StorageRoot, validate_name

MANIFEST_DIR = "manifests"
LEASE_KEY = "leases/watch.json"  # one writer per annotation root: `annotate` and `watch` alike
LEASE_TTL_S = 600.0
DONE_DIR = "done"
SHARD_DIR = "shards"
DEFAULT_GRID = tuple(range(0, 100, 3)) + (99,)
CURVE_PREFIX = "curve_e"


def curve_column(epoch: int) -> str:
    return f"{CURVE_PREFIX}{epoch}"


@dataclass
class AnnotationSettings:
    """Everything that determines the curves; its digest guards re-runs and resumption."""

    classifier_dir: str
    epochs: list[int]
    grid_levels: list[int] = field(default_factory=lambda: list(DEFAULT_GRID))
    num_draws: int = 4
    seed: int = 0
    score_batch: int = 64

    def digest(self) -> str:
        d = {k: v for k, v in vars(self).items() if k != "score_batch"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _epoch_dir(classifier_dir: str, epoch: int) -> str:
    from jobs.train_classifier import local_epoch_dir

    path = local_epoch_dir(classifier_dir, epoch)
    if not (path / "classifier.json").exists():
        have = sorted(p.name for p in path.parent.glob("epoch_*"))
        raise FileNotFoundError(
            f"classifier epoch {epoch} not found under {classifier_dir}; has {have}"
        )
    return str(path)


class CurveAnnotator:
    """Ray Data actor: loads the classifier checkpoints once, scores whole shards (blocks)."""

    def __init__(
        self,
        settings: dict[str, Any],
        obs_keys: list[str],
        threads: int = 1,
        fs_root: str | None = None,
        columns: list[str] | None = None,
    ) -> None:
        import torch

        from ambient_core.classifier import load_classifier, read_classifier_meta
        from ambient_core.data import ChunkSpec

        torch.set_num_threads(threads)
        self.s = AnnotationSettings(**settings)
        self.models = {}
        chunk = None
        for e in self.s.epochs:
            path = _epoch_dir(self.s.classifier_dir, e)
            self.models[e] = load_classifier(path)
            chunk = chunk or read_classifier_meta(path)["extra"]["chunk"]
        self.chunk = ChunkSpec(**chunk)
        self.obs_keys = obs_keys
        self.columns = columns
        self.fs = StorageRoot(fs_root).arrow_filesystem()[0] if fs_root else None

    def __call__(self, items: pa.Table) -> pa.Table:
        """Read and score the shards named in ``items`` (column ``path``)."""
        tables = []
        for path in items.column("path").to_pylist():
            try:
                t = pq.read_table(path, filesystem=self.fs, columns=self.columns)
            except (pa.ArrowInvalid, OSError) as exc:
                tables.append(_error_row(path, f"cannot read: {exc}", self.s.epochs))
                continue
            try:
                tables.append(self.annotate_table(t.append_column("path", [[path] * t.num_rows])))
            except Exception as exc:  # a bad shard must be reported, not kill the pipeline
                tables.append(_error_row(path, f"{type(exc).__name__}: {exc}", self.s.epochs))
        return pa.concat_tables(tables) if tables else _empty(self.s.epochs)

    def annotate_table(self, block: pa.Table) -> pa.Table:
        """Score rows of one or more whole shards (column ``path`` names the shard)."""
        paths = block.column("path").unique().to_pylist()
        return (
            pa.concat_tables([self._shard(block, p) for p in paths])
            if paths
            else _empty(self.s.epochs)
        )

    def _shard(self, block: pa.Table, path: str) -> pa.Table:
        from ambient_core.classifier import normalized_chunks, score_curves
        from ambient_core.data import ChunkDataset, frames_from_table

        rows = block.filter(pa.compute.equal(block.column("path"), path))
        try:
            frames = frames_from_table(rows, ["action", *self.obs_keys], path)
            data = ChunkDataset([frames], self.chunk, self.obs_keys)
        except DataError as exc:
            return _error_row(path, str(exc), self.s.epochs)
        bounds = frames.episode_bounds
        counts = np.bincount(
            np.searchsorted(bounds[:, 0], data.chunk_start + self.chunk.pad_before, "right") - 1,
            minlength=len(bounds),
        )
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        lengths = bounds[:, 1] - bounds[:, 0]
        ep_of_frame = np.repeat(np.arange(len(bounds)), lengths)
        frame_in_ep = np.arange(bounds[-1, 1]) - np.repeat(bounds[:, 0], lengths)
        ids = first[ep_of_frame] + np.minimum(frame_in_ep, counts[ep_of_frame] - 1)
        cols: dict[str, pa.Array] = {
            "path": pa.array([path] * len(ids)),
            "episode_index": pa.array(np.repeat(frames.episode_index, lengths)),
            "frame_index": pa.array(frame_in_ep.astype(np.int64)),
            "error": pa.nulls(len(ids), pa.string()),
        }
        for e, (model, spec, norm) in self.models.items():
            if norm is None:
                raise ValueError(f"classifier epoch {e} has no normaliser saved with it")
            act, obs = normalized_chunks(data, ids, norm, spec.obs_keys)
            curves = score_curves(
                model,
                act,
                obs,
                self.s.grid_levels,
                self.s.num_draws,
                self.s.seed,
                self.s.score_batch,
                ids=ids,
            )
            flat = pa.array(curves.astype(np.float32).reshape(-1))
            cols[curve_column(e)] = pa.FixedSizeListArray.from_arrays(flat, curves.shape[1])
        return pa.table(cols)


def _curve_type(n: int | None = None) -> pa.DataType:
    return pa.list_(pa.float32()) if n is None else pa.list_(pa.float32(), n)


def _empty(epochs: Sequence[int]) -> pa.Table:
    return _error_row("", None, epochs).slice(0, 0)


def _error_row(path: str, msg: str | None, epochs: Sequence[int]) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "path": pa.array([path]),
        "episode_index": pa.array([-1], pa.int64()),
        "frame_index": pa.array([-1], pa.int64()),
        "error": pa.array([msg], pa.string()),
    }
    for e in epochs:
        cols[curve_column(e)] = pa.array([[]], _curve_type())
    return pa.table(cols)


@dataclass
class _Input:
    dataset: str
    root: StorageRoot
    key: str  # shard key relative to the dataset root
    rows: int
    size: int
    etag: str

    @property
    def id(self) -> tuple[str, str]:
        return (self.dataset, self.key)

    @property
    def out_key(self) -> str:
        return f"{SHARD_DIR}/{self.dataset}/{self.key.removeprefix('data/')}"

    @property
    def marker_key(self) -> str:
        return self.out_key.replace(SHARD_DIR, DONE_DIR, 1).removesuffix(".parquet") + ".json"

    @property
    def uri(self) -> str:
        return self.root.uri_for(self.key)


@dataclass
class ShardCheck:
    """What a footer-level look at a shard found before any Ray work is spent on it.

    ``retryable`` problems (no valid Parquet footer) are what a shard still being written looks
    like; the others (missing columns) cannot go away without the file changing.
    """

    problem: str | None
    retryable: bool = False
    episodes: tuple[int, int] | None = None


@dataclass
class Plan:
    """The diff between the inputs as they are now and the latest committed manifest."""

    root: StorageRoot
    settings: AnnotationSettings
    version: int
    manifest: dict[str, Any] | None
    inputs: list[_Input]
    metas: dict[str, dict[str, Any]]
    done: dict[tuple[str, str], dict[str, Any]]  # entries the next manifest keeps or resumes
    pending: list[_Input]  # new or changed shards, not yet annotated
    resumed: int
    removed: list[dict[str, Any]]  # manifest entries whose input shard is gone
    discover: bool


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The content digest a manifest is known by (MLflow inputs, lineage)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def latest_manifest(root: StorageRoot) -> tuple[int, dict[str, Any] | None]:
    """(version, manifest) of the newest committed manifest, (0, None) when there is none."""
    versions = []
    for info in root.list(MANIFEST_DIR + "/", suffix=".json"):
        name = info.key.rsplit("/", 1)[-1]
        if name.startswith("v") and name[1:-5].isdigit():
            versions.append(int(name[1:-5]))
    if not versions:
        return 0, None
    v = max(versions)
    return v, root.read_json(f"{MANIFEST_DIR}/v{v}.json")


def _list_inputs(
    datasets: Sequence[str], discover: bool
) -> tuple[list[_Input], dict[str, dict[str, Any]]]:
    """Shards of each dataset: those meta.json names, or (``discover``) every ``data/*.parquet``
    file listed now, so shards that land after meta.json was written are seen too."""
    from ambient_platform.datasets import read_meta

    inputs, meta_by_name = [], {}
    for uri in datasets:
        root = StorageRoot(resolve_location(uri))
        meta = read_meta(root)
        name = validate_name(str(meta.get("name") or root.uri.rstrip("/").rsplit("/", 1)[-1]))
        if name in meta_by_name:
            raise ValueError(f"two datasets are both named {name!r}; annotate them separately")
        meta_by_name[name] = {
            "uri": root.uri,
            "digest": meta["digest"],
            "features": meta["features"],
        }
        listing = {f.key: f for f in root.list("data/", suffix=".parquet")}
        if discover:
            rows = {s["key"]: int(s["rows"]) for s in meta["shards"]}
            inputs += [
                _Input(name, root, k, rows.get(k, -1), f.size, f.etag_or_mtime)
                for k, f in listing.items()
            ]
            continue
        for shard in meta["shards"]:
            info = listing.get(shard["key"])
            if info is None:
                raise FileNotFoundError(
                    f"{root.uri_for(shard['key'])} is named in meta.json but missing"
                )
            inputs.append(
                _Input(name, root, shard["key"], int(shard["rows"]), info.size, info.etag_or_mtime)
            )
    return inputs, meta_by_name


def plan_annotation(
    datasets: Sequence[str],
    settings: AnnotationSettings,
    root: StorageRoot,
    discover: bool = False,
) -> Plan:
    """Diff the inputs against the latest manifest and the done markers of a crashed run."""
    version, manifest = latest_manifest(root)
    if manifest is not None and manifest["settings_digest"] != settings.digest():
        raise ValueError(
            f"annotation {root.uri} v{version} was made with other settings "
            f"({manifest['settings']}); use a new --name/--out for these"
        )
    inputs, metas = _list_inputs(datasets, discover)
    current = {inp.id for inp in inputs}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    removed = []
    for entry in (manifest or {}).get("shards", []):
        key = (entry["dataset"], entry["input_key"])
        if entry["dataset"] in metas and key not in current:
            removed.append(entry)
        else:
            done[key] = entry
    pending, resumed = [], 0
    for inp in inputs:
        entry = done.get(inp.id)
        if entry and (entry["input_size"], entry["input_etag"]) == (inp.size, inp.etag):
            continue
        done.pop(inp.id, None)
        if root.exists(inp.marker_key):
            marker = root.read_json(inp.marker_key)
            if (marker["settings_digest"], marker["input_size"], marker["input_etag"]) == (
                settings.digest(),
                inp.size,
                inp.etag,
            ) and root.exists(marker["output_key"]):
                done[inp.id] = marker
                resumed += 1
                continue
        pending.append(inp)
    return Plan(
        root, settings, version, manifest, inputs, metas, done, pending, resumed, removed, discover
    )


def check_shard(inp: _Input, columns: Sequence[str], episodes: bool = False) -> ShardCheck:
    """Footer-level check before Ray reads a shard; fills in its row count from the footer and,
    with ``episodes``, reads its episode_index range."""
    fs, base = inp.root.arrow_filesystem()
    path = f"{base.rstrip('/')}/{inp.key}"
    try:
        meta = pq.read_metadata(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        return ShardCheck(f"shard {inp.uri} is not readable Parquet: {exc}", retryable=True)
    names = meta.schema.to_arrow_schema().names
    missing = [c for c in columns if c not in names]
    if missing:
        return ShardCheck(f"shard {inp.uri} lacks columns {missing} (has {names})")
    inp.rows = meta.num_rows
    if inp.rows == 0:
        return ShardCheck(f"shard {inp.uri} has no rows")
    span = None
    if episodes:
        try:
            ep = pq.read_table(path, filesystem=fs, columns=["episode_index"]).column(0)
        except (pa.ArrowInvalid, OSError) as exc:
            return ShardCheck(f"shard {inp.uri} is not readable Parquet: {exc}", retryable=True)
        if ep.null_count:
            return ShardCheck(f"shard {inp.uri}: episode_index has {ep.null_count} nulls")
        lo, hi = pa.compute.min_max(ep).values()
        span = (int(lo.as_py()), int(hi.as_py()))
    return ShardCheck(None, episodes=span)


ShardHandler = Callable[[_Input, pa.Table | None, str | None], None]


def execute(
    shards: Sequence[_Input],
    settings: AnnotationSettings,
    columns: Sequence[str],
    obs_keys: Sequence[str],
    on_shard: ShardHandler,
    *,
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0.0,
    ray_address: str | None = None,
    verbose: bool = False,
) -> None:
    """Score ``shards`` on a Ray Data actor pool; ``on_shard(input, table, error)`` is called
    in the driver once per shard, as soon as all of its rows (or its error) have arrived."""
    from ambient_platform.ray_runtime import ensure_ray

    if not shards:
        return
    roots = {inp.root.uri.split("://")[0] for inp in shards}
    if len(roots) > 1:
        raise ValueError("annotate local and s3:// datasets in separate runs")
    ray = ensure_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = verbose
    # Small shards would otherwise be bundled into one task whose results all arrive at the
    # end; one shard per bundle keeps commits (and crash recovery) per shard.
    ctx.target_min_block_size = 1
    by_path = {}
    for inp in shards:
        fs, base = inp.root.arrow_filesystem()
        by_path[f"{base.rstrip('/')}/{inp.key}"] = inp
    ds = ray.data.from_items([{"path": p} for p in by_path], override_num_blocks=len(by_path))
    ds = ds.map_batches(
        CurveAnnotator,
        fn_constructor_kwargs={
            "settings": vars(settings),
            "obs_keys": list(obs_keys),
            "fs_root": shards[0].root.uri,
            "columns": list(columns),
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    parts: dict[str, list[pa.Table]] = {}
    got: dict[str, int] = {}
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for p in block.column("path").unique().to_pylist():
            sub = block.filter(pa.compute.equal(block.column("path"), p))
            inp = by_path[p]
            err = [e for e in sub.column("error").to_pylist() if e]
            if err:
                parts.pop(p, None)
                on_shard(inp, None, err[0])
                continue
            parts.setdefault(p, []).append(sub)
            got[p] = got.get(p, 0) + sub.num_rows
            if got[p] == inp.rows:
                on_shard(inp, pa.concat_tables(parts.pop(p)), None)
    incomplete = [by_path[p].key for p in parts]
    if incomplete:
        raise RuntimeError(f"annotation produced partial shards {incomplete}")


def commit_manifest(
    plan: Plan, skipped: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """Write ``manifests/v<N+1>.json`` create-only (the commit point), then drop the done
    markers it covers. Returns (manifest, digest); RuntimeError if another writer won."""
    metas = {k: dict(v) for k, v in plan.metas.items()}
    shards = sorted(plan.done.values(), key=lambda e: (e["dataset"], e["input_key"]))
    if plan.discover:  # the dataset is what was annotated, not what meta.json listed
        for name, meta in metas.items():
            ident = [
                (e["input_key"], e["input_size"], e["input_etag"])
                for e in shards
                if e["dataset"] == name
            ]
            meta["digest"] = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    version = plan.version + 1
    new = {
        "format": "ambient-annotation/1",
        "version": version,
        "previous": plan.version or None,
        "settings": vars(plan.settings),
        "settings_digest": plan.settings.digest(),
        "grid_sigmas": _grid_sigmas(plan.settings.grid_levels),
        "datasets": metas,
        "shards": shards,
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    key = f"{MANIFEST_DIR}/v{version}.json"
    if not plan.root.write_json_if_absent(key, new):
        raise RuntimeError(
            f"{plan.root.uri_for(key)} was committed by another writer meanwhile; "
            "re-run to annotate what is still missing"
        )
    for inp in plan.inputs:
        if inp.id in plan.done and plan.root.exists(inp.marker_key):
            plan.root.delete(inp.marker_key)
    return new, manifest_digest(new)


def annotate(
    datasets: Sequence[str],
    classifier_dir: str,
    epochs: Sequence[int],
    *,
    out: str | None = None,
    name: str = "annotation",
    grid_levels: Sequence[int] = DEFAULT_GRID,
    num_draws: int = 4,
    seed: int = 0,
    obs_keys: Sequence[str] = (),
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0.0,
    skip_bad_shards: bool = False,
    tau: float = 0.45,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "annotation",
    track: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Annotate every shard the latest manifest lacks; commit manifest v+1; return a summary."""

    configure_environment()
    settings = make_settings(classifier_dir, epochs, grid_levels, num_draws, seed)
    root = annotation_root(name, out)
    owner = LeaseKeeper.new_owner()
    with LeaseKeeper(root, LEASE_KEY, owner, LEASE_TTL_S) as lease:
        if not lease.held:
            holder = lease.holder()
            raise RuntimeError(
                f"annotation {root.uri} is being written by {holder.owner if holder else '?'} "
                f"({LEASE_KEY}); wait for it to finish, or use another --name"
            )
        return _annotate(
            datasets,
            settings,
            root,
            lease,
            owner,
            obs_keys=obs_keys,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            skip_bad_shards=skip_bad_shards,
            tau=tau,
            ray_address=ray_address,
            tracking_uri=tracking_uri,
            experiment=experiment,
            name=name,
            track=track,
            verbose=verbose,
        )


def _annotate(
    datasets: Sequence[str],
    settings: AnnotationSettings,
    root: StorageRoot,
    lease: LeaseKeeper,
    owner: str,
    *,
    obs_keys: Sequence[str],
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    skip_bad_shards: bool,
    tau: float,
    ray_address: str | None,
    tracking_uri: str | None,
    experiment: str,
    name: str,
    track: bool,
    verbose: bool,
) -> dict[str, Any]:
    from ambient_platform.tracking import RunTracker, resolve_tracking_uri

    plan = plan_annotation(datasets, settings, root)
    if plan.manifest is not None and plan.manifest.get("trigger") == "watch":
        raise ValueError(
            f"annotation {root.uri} is kept by `ambient watch` (it lists shards meta.json does "
            "not name); run a watch pass (ambient watch --once) instead"
        )
    columns = annotation_columns(obs_keys)
    skipped: list[dict[str, str]] = []
    readable = []
    for inp in plan.pending:
        problem = check_shard(inp, columns).problem
        if problem is None:
            readable.append(inp)
        elif skip_bad_shards:
            skipped.append({"dataset": inp.dataset, "input_key": inp.key, "error": problem})
        else:
            raise DataError(problem + " (use --skip-bad-shards to annotate the rest)")
    if verbose:
        print(
            f"[annotate] {len(plan.inputs)} shards: "
            f"{len(plan.inputs) - len(plan.pending)} already annotated, {plan.resumed} resumed, "
            f"{len(readable)} to annotate, {len(skipped)} skipped",
            flush=True,
        )
    tracker = (
        RunTracker.start(
            resolve_tracking_uri(tracking_uri),
            experiment,
            f"annotate-{name}",
            tags={"kind": "annotation"},
        )
        if track
        else None
    )
    t0 = time.perf_counter()
    rows_done = 0

    def on_shard(inp: _Input, table: pa.Table | None, error: str | None) -> None:
        nonlocal rows_done
        lease.check()
        if table is None:
            if not skip_bad_shards:
                raise DataError(f"shard {inp.uri}: {error}")
            skipped.append({"dataset": inp.dataset, "input_key": inp.key, "error": str(error)})
            return
        plan.done[inp.id] = commit_shard(root, inp, table, settings, owner)
        rows_done += inp.rows
        if verbose:
            _progress(inp, rows_done, t0)

    def body() -> dict[str, Any]:
        execute(
            readable,
            settings,
            columns,
            obs_keys,
            on_shard,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            ray_address=ray_address,
            verbose=verbose,
        )
        wall = time.perf_counter() - t0
        lease.check()
        manifest, digest = commit_manifest(plan, skipped)
        skipped_keys = {s["input_key"] for s in skipped}
        summary = {
            "annotation": root.uri,
            "version": manifest["version"],
            "manifest_digest": digest,
            "shards_total": len(plan.inputs),
            "shards_annotated": len([r for r in readable if r.key not in skipped_keys]),
            "shards_resumed": plan.resumed,
            "shards_skipped": len(skipped),
            "rows_annotated": rows_done,
            "rows_per_s": rows_done / wall if wall > 0 else 0.0,
            "wall_s": wall,
        }
        if tracker is not None:
            log_annotation(tracker, root, manifest, digest, summary, settings, tau)
        return summary

    if tracker is None:
        return body()
    with tracker.active():
        return body()


def make_settings(
    classifier_dir: str,
    epochs: Sequence[int],
    grid_levels: Sequence[int] = DEFAULT_GRID,
    num_draws: int = 4,
    seed: int = 0,
) -> AnnotationSettings:
    """Validated settings: the classifier epochs exist and the grid is made of DDPM levels."""
    clf_dir = resolve_location(classifier_dir)
    settings = AnnotationSettings(
        clf_dir,
        sorted(set(int(e) for e in epochs)),
        sorted(set(int(k) for k in grid_levels)),
        num_draws,
        seed,
    )
    for e in settings.epochs:
        _epoch_dir(clf_dir, e)
    if any(not 0 <= k < 100 for k in settings.grid_levels):
        raise ValueError("grid levels must be DDPM indices in [0, 99]")
    return settings


def annotation_root(name: str, out: str | None = None) -> StorageRoot:
    """``out``, else ``<storage>/annotations/<name>`` (the name cannot escape that root)."""
    validate_name(name, "annotation name")
    return StorageRoot(resolve_location(out) if out else resolve_location(f"annotations/{name}"))


def annotation_columns(obs_keys: Sequence[str]) -> list[str]:
    return [*INDEX_COLUMNS, "action", *obs_keys]


def _progress(inp: _Input, rows_done: int, t0: float) -> None:
    rate = rows_done / max(time.perf_counter() - t0, 1e-9)
    print(
        f"[annotate {time.strftime('%H:%M:%S')}] {inp.dataset}/{inp.key}: {inp.rows} rows "
        f"({rate:.0f} rows/s)",
        flush=True,
    )


def _grid_sigmas(levels: Sequence[int]) -> list[float]:
    from ambient_core.schedule import ddpm_sigmas

    s = ddpm_sigmas()
    return [float(s[k]) for k in levels]


def commit_shard(
    root: StorageRoot, inp: _Input, table: pa.Table, settings: AnnotationSettings, owner: str
) -> dict[str, Any]:
    """Write the annotated shard (atomic), then its done marker; returns the manifest entry."""
    table = table.drop_columns(["path", "error"]).sort_by(
        [("episode_index", "ascending"), ("frame_index", "ascending")]
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    root.write_bytes(inp.out_key, data)
    entry = {
        "dataset": inp.dataset,
        "input_uri": inp.root.uri,
        "input_key": inp.key,
        "input_size": inp.size,
        "input_etag": inp.etag,
        "output_key": inp.out_key,
        "rows": table.num_rows,
        "episodes": [int(v.as_py()) for v in pa.compute.min_max(table["episode_index"]).values()],
        "sha256": hashlib.sha256(data).hexdigest(),
        "settings_digest": settings.digest(),
        "writer": owner,
    }
    root.write_json(inp.marker_key, entry)
    return entry


def read_curves(root: StorageRoot, manifest: dict[str, Any], dataset: str, epoch: int) -> pa.Table:
    """episode_index, frame_index and the epoch's curve for one dataset of a manifest."""
    col = curve_column(epoch)
    if epoch not in manifest["settings"]["epochs"]:
        raise ValueError(f"annotation has epochs {manifest['settings']['epochs']}, not {epoch}")
    fs, base = root.arrow_filesystem()
    tables = [
        pq.read_table(
            f"{base.rstrip('/')}/{e['output_key']}",
            filesystem=fs,
            columns=["episode_index", "frame_index", col],
        )
        for e in manifest["shards"]
        if e["dataset"] == dataset
    ]
    if not tables:
        raise DataError(f"annotation {root.uri} has no shards of dataset {dataset!r}")
    return pa.concat_tables(tables)


def log_annotation(
    tracker: Any,
    root: StorageRoot,
    manifest: dict[str, Any],
    digest: str,
    summary: dict[str, Any],
    settings: AnnotationSettings,
    tau: float,
) -> None:
    from ambient_core.classifier import derive_sigma_min, plot_sigma_min_hist
    from ambient_platform.tracking import scratch_dir

    tracker.log_params(
        {
            "classifier_dir": settings.classifier_dir,
            "epochs": settings.epochs,
            "grid_levels": settings.grid_levels,
            "num_draws": settings.num_draws,
            "seed": settings.seed,
            "summary_tau": tau,
            "annotation": root.uri,
            "datasets": ",".join(sorted(manifest["datasets"])),
        }
    )
    tracker.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float)})
    tracker.log_dataset(
        f"annotation-v{manifest['version']}",
        digest,
        f"{root.uri}/{MANIFEST_DIR}/v{manifest['version']}.json",
        "annotation",
    )
    for name, meta in manifest["datasets"].items():
        tracker.log_dataset(name, meta["digest"], meta["uri"], "annotated")
    grid = np.asarray(manifest["grid_sigmas"])
    with scratch_dir() as d:
        for e in settings.epochs:
            values = {}
            for name in manifest["datasets"]:
                try:
                    t = read_curves(root, manifest, name, e)
                except DataError:
                    continue
                curves = np.stack(t.column(curve_column(e)).to_numpy(zero_copy_only=False))
                values[name] = derive_sigma_min(curves, grid, tau)
            if values:
                plot_sigma_min_hist(values, d / f"sigma_min_hist_e{e}.png")
                tracker.log_artifact(d / f"sigma_min_hist_e{e}.png")
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
        tracker.log_artifact(d / "manifest.json")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--epoch", type=int, action="append", required=True)
    p.add_argument("--out")
    p.add_argument("--name", default="annotation")
    a = p.parse_args(argv)
    print(
        json.dumps(
            annotate(a.data, a.classifier, a.epoch, out=a.out, name=a.name, verbose=True), indent=2
        )
    )


if __name__ == "__main__":
    main()
