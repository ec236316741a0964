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
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_core.data import INDEX_COLUMNS, DataError
from orchestrator.settings import ambient_home, configure_environment, resolve_location
from orchestrator.storage import StorageRoot, validate_name

MANIFEST_DIR = "manifests"
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
    from jobs.train_classifier import epoch_dir

    path = epoch_dir(classifier_dir, epoch)
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
            tables.append(self.annotate_table(t.append_column("path", [[path] * t.num_rows])))
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
    def out_key(self) -> str:
        stem = self.key.rsplit("/", 1)[-1].removesuffix(".parquet")
        return f"{SHARD_DIR}/{self.dataset}/{stem}.parquet"

    @property
    def marker_key(self) -> str:
        return self.out_key.replace(SHARD_DIR, DONE_DIR, 1).removesuffix(".parquet") + ".json"


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


def _list_inputs(datasets: Sequence[str]) -> tuple[list[_Input], dict[str, dict[str, Any]]]:
    from jobs.datasets import read_meta

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
        listing = {f.key: f for f in root.list("data/")}
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


def _check_shard(inp: _Input, columns: Sequence[str]) -> str | None:
    """Footer-level check before Ray reads it: unreadable or schema-mismatched -> message."""
    fs, base = inp.root.arrow_filesystem()
    path = f"{base.rstrip('/')}/{inp.key}"
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"shard {inp.root.uri_for(inp.key)} is not readable Parquet: {exc}"
    missing = [c for c in columns if c not in schema.names]
    if missing:
        return f"shard {inp.root.uri_for(inp.key)} lacks columns {missing} (has {schema.names})"
    return None


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
    from orchestrator.ray_runtime import ensure_ray
    from orchestrator.tracking import RunTracker, resolve_tracking_uri

    configure_environment()
    validate_name(name, "annotation name")
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
    root = StorageRoot(
        resolve_location(out) if out else str(ambient_home() / "annotations" / name)
    )
    version, manifest = latest_manifest(root)
    if manifest is not None and manifest["settings_digest"] != settings.digest():
        raise ValueError(
            f"annotation {root.uri} v{version} was made with other settings "
            f"({manifest['settings']}); use a new --name/--out for these"
        )
    inputs, metas = _list_inputs(datasets)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in (manifest or {}).get("shards", []):
        done[(entry["dataset"], entry["input_key"])] = entry
    pending, resumed = [], 0
    for inp in inputs:
        entry = done.get((inp.dataset, inp.key))
        if entry and (entry["input_size"], entry["input_etag"]) == (inp.size, inp.etag):
            continue
        if root.exists(inp.marker_key):
            marker = root.read_json(inp.marker_key)
            if (marker["settings_digest"], marker["input_size"], marker["input_etag"]) == (
                settings.digest(),
                inp.size,
                inp.etag,
            ) and root.exists(marker["output_key"]):
                done[(inp.dataset, inp.key)] = marker
                resumed += 1
                continue
        pending.append(inp)
    columns = [*INDEX_COLUMNS, "action", *obs_keys]
    skipped: list[dict[str, str]] = []
    readable = []
    for inp in pending:
        problem = _check_shard(inp, columns)
        if problem is None:
            readable.append(inp)
        elif skip_bad_shards:
            skipped.append({"dataset": inp.dataset, "input_key": inp.key, "error": problem})
        else:
            raise DataError(problem + " (use --skip-bad-shards to annotate the rest)")
    if verbose:
        print(
            f"[annotate] {len(inputs)} shards: {len(inputs) - len(pending)} already annotated, "
            f"{resumed} resumed, {len(readable)} to annotate, {len(skipped)} skipped",
            flush=True,
        )
    uri = resolve_tracking_uri(tracking_uri)
    tracker = (
        RunTracker.start(uri, experiment, f"annotate-{name}", tags={"kind": "annotation"})
        if track
        else None
    )
    t0 = time.perf_counter()
    rows_done = 0
    owner = f"{socket.gethostname()}-{os.getpid()}"

    def body() -> dict[str, Any]:
        nonlocal rows_done
        if readable:
            ray = ensure_ray(ray_address)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = verbose
            # Small shards would otherwise be bundled into one task whose results all arrive at
            # the end; one shard per bundle keeps commits (and crash recovery) per shard.
            ctx.target_min_block_size = 1
            by_path = {}
            paths = []
            for inp in readable:
                fs, base = inp.root.arrow_filesystem()
                p = f"{base.rstrip('/')}/{inp.key}"
                by_path[p] = inp
                paths.append(p)
            roots = {inp.root.uri.split("://")[0] for inp in readable}
            if len(roots) > 1:
                raise ValueError("annotate local and s3:// datasets in separate runs")
            ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
            ds = ds.map_batches(
                CurveAnnotator,
                fn_constructor_kwargs={
                    "settings": vars(settings),
                    "obs_keys": list(obs_keys),
                    "fs_root": readable[0].root.uri,
                    "columns": columns,
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
                        if not skip_bad_shards:
                            raise DataError(f"shard {inp.root.uri_for(inp.key)}: {err[0]}")
                        skipped.append(
                            {"dataset": inp.dataset, "input_key": inp.key, "error": err[0]}
                        )
                        continue
                    parts.setdefault(p, []).append(sub)
                    got[p] = got.get(p, 0) + sub.num_rows
                    if got[p] == inp.rows:
                        entry = _commit_shard(
                            root, inp, pa.concat_tables(parts.pop(p)), settings, owner
                        )
                        done[(inp.dataset, inp.key)] = entry
                        rows_done += inp.rows
                        if verbose:
                            rate = rows_done / max(time.perf_counter() - t0, 1e-9)
                            print(
                                f"[annotate {time.strftime('%H:%M:%S')}] "
                                f"{inp.dataset}/{inp.key}: {inp.rows} rows "
                                f"({rate:.0f} rows/s)",
                                flush=True,
                            )
            incomplete = [by_path[p].key for p in parts]
            if incomplete:
                raise RuntimeError(f"annotation produced partial shards {incomplete}")
        wall = time.perf_counter() - t0
        new = {
            "format": "ambient-annotation/1",
            "version": version + 1,
            "previous": version or None,
            "settings": vars(settings),
            "settings_digest": settings.digest(),
            "grid_sigmas": _grid_sigmas(settings.grid_levels),
            "datasets": metas,
            "shards": sorted(done.values(), key=lambda e: (e["dataset"], e["input_key"])),
            "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        blob = json.dumps(new, sort_keys=True).encode()
        new_digest = hashlib.sha256(blob).hexdigest()
        if not root.write_json_if_absent(f"{MANIFEST_DIR}/v{version + 1}.json", new):
            raise RuntimeError(
                f"{root.uri_for(f'{MANIFEST_DIR}/v{version + 1}.json')} was committed by another "
                "writer meanwhile; re-run to annotate what is still missing"
            )
        for inp in inputs:
            if (inp.dataset, inp.key) in done and root.exists(inp.marker_key):
                root.delete(inp.marker_key)
        summary = {
            "annotation": root.uri,
            "version": version + 1,
            "manifest_digest": new_digest,
            "shards_total": len(inputs),
            "shards_annotated": len(readable)
            - len([s for s in skipped if any(s["input_key"] == r.key for r in readable)]),
            "shards_resumed": resumed,
            "shards_skipped": len(skipped),
            "rows_annotated": rows_done,
            "rows_per_s": rows_done / wall if wall > 0 else 0.0,
            "wall_s": wall,
        }
        if tracker is not None:
            _log_annotation(tracker, root, new, new_digest, summary, settings, tau)
        return summary

    if tracker is None:
        return body()
    with tracker.active():
        return body()


def _grid_sigmas(levels: Sequence[int]) -> list[float]:
    from ambient_core.schedule import ddpm_sigmas

    s = ddpm_sigmas()
    return [float(s[k]) for k in levels]


def _commit_shard(
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


def _log_annotation(
    tracker: Any,
    root: StorageRoot,
    manifest: dict[str, Any],
    digest: str,
    summary: dict[str, Any],
    settings: AnnotationSettings,
    tau: float,
) -> None:
    from ambient_core.classifier import derive_sigma_min, plot_sigma_min_hist
    from orchestrator.tracking import scratch_dir

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
