"""Planning and committing an annotation: what to score, what is done, what the manifest holds.

Shared by ``ambient annotate`` (``jobs.annotate``) and a watch pass (``jobs.reannotate``):

1. ``plan_annotation`` lists the input shards (those meta.json names, or with ``discover``
   every ``data/*.parquet`` file) and diffs them, by (dataset, key) + size + ETag/mtime, against
   the latest manifest and the done markers a crashed run left;
2. ``check_shard`` looks at a shard's Parquet footer before any Ray work is spent on it;
3. ``commit_shard`` writes one annotated shard atomically, then its done marker;
4. ``commit_plan`` commits manifest v+1 create-only, then drops the markers it covers.

Shards are always keyed by (dataset, key): two datasets annotated together may both have
``data/shard-00000.parquet``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_core.data import INDEX_COLUMNS
from ambient_core.errors import ConfigError, NotFoundError
from ambient_platform.config.annotation import AnnotationConfig
from ambient_platform.datasets import read_meta
from ambient_platform.manifest import (
    CurveSettings,
    DatasetEntry,
    Lineage,
    Manifest,
    QuarantinedShard,
    ShardEntry,
    SkippedShard,
    commit_manifest,
    dataset_digest,
    latest_manifest,
    read_marker,
)
from ambient_platform.settings import resolve_location
from ambient_platform.storage import StorageRoot, validate_name

logger = logging.getLogger(__name__)

LEASE_KEY = "leases/watch.json"  # one writer per annotation root: `annotate` and `watch` alike
DONE_DIR = "done"
SHARD_DIR = "shards"
ShardId = tuple[str, str]  # (dataset, input key)


@dataclass
class ShardInput:
    """One input shard as listed now."""

    dataset: str
    root: StorageRoot
    key: str  # shard key relative to the dataset root
    rows: int
    size: int
    etag: str

    @property
    def id(self) -> ShardId:
        return (self.dataset, self.key)

    @property
    def name(self) -> str:
        """``<dataset>/<key>``, how lineage and messages name a shard."""
        return f"{self.dataset}/{self.key}"

    @property
    def out_key(self) -> str:
        return f"{SHARD_DIR}/{self.dataset}/{self.key.removeprefix('data/')}"

    @property
    def marker_key(self) -> str:
        return self.out_key.replace(SHARD_DIR, DONE_DIR, 1).removesuffix(".parquet") + ".json"

    @property
    def uri(self) -> str:
        return self.root.uri_for(self.key)

    def skipped(self, error: str) -> SkippedShard:
        return SkippedShard(dataset=self.dataset, input_key=self.key, error=error)


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
    settings: CurveSettings
    version: int
    manifest: Manifest | None
    inputs: list[ShardInput]
    datasets: dict[str, DatasetEntry]
    discover: bool
    done: dict[ShardId, ShardEntry] = field(default_factory=dict)  # what v+1 keeps or resumes
    pending: list[ShardInput] = field(default_factory=list)  # new or changed, to annotate
    kept: int = 0  # inputs the latest manifest already has, unchanged
    resumed: int = 0  # inputs a crashed run annotated (done markers), not yet committed
    removed: list[ShardEntry] = field(default_factory=list)  # entries whose input is gone


# ------------------------------------------------------------------------------ settings


def epoch_dir(classifier_dir: str, epoch: int) -> str:
    """The local directory of a classifier epoch (downloaded once per node from s3://)."""
    from jobs.train_classifier import local_epoch_dir

    path = local_epoch_dir(classifier_dir, epoch)
    if not (path / "classifier.json").exists():
        have = sorted(p.name for p in Path(path).parent.glob("epoch_*"))
        raise NotFoundError(
            str(path), f"classifier epoch {epoch} not found under {classifier_dir} (has {have})"
        )
    return str(path)


def curve_settings(cfg: AnnotationConfig) -> CurveSettings:
    """The curve settings of a config, with the classifier location resolved and every
    requested epoch checked to exist."""
    clf_dir = resolve_location(cfg.classifier)
    for e in cfg.epochs:
        epoch_dir(clf_dir, e)
    return CurveSettings(
        classifier_dir=clf_dir,
        epochs=list(cfg.epochs),
        grid_levels=list(cfg.grid_levels),
        num_draws=cfg.num_draws,
        seed=cfg.seed,
    )


def annotation_root(cfg: AnnotationConfig) -> StorageRoot:
    """``out``, else ``<storage>/annotations/<name>`` (the name cannot escape that root)."""
    validate_name(cfg.name, "annotation name")
    return StorageRoot(resolve_location(cfg.out or f"annotations/{cfg.name}"))


def annotation_columns(obs_keys: Sequence[str]) -> list[str]:
    """The input columns a shard must have to be annotated."""
    return [*INDEX_COLUMNS, "action", *obs_keys]


def grid_sigmas(levels: Sequence[int]) -> list[float]:
    from ambient_core.schedule import ddpm_sigmas

    s = ddpm_sigmas()
    return [float(s[k]) for k in levels]


# ------------------------------------------------------------------------------ planning


def _dataset_inputs(root: StorageRoot, name: str, meta: dict, discover: bool) -> list[ShardInput]:
    """Shards of one dataset: those meta.json names, or (``discover``) every ``data/*.parquet``
    listed now, so shards that land after meta.json was written are seen too."""
    listing = {f.key: f for f in root.list("data/", suffix=".parquet")}
    rows = {s["key"]: int(s.get("rows", -1)) for s in meta["shards"]}
    if discover:
        return [
            ShardInput(name, root, k, rows.get(k, -1), f.size, f.etag_or_mtime)
            for k, f in listing.items()
        ]
    out = []
    for key, n in rows.items():
        info = listing.get(key)
        if info is None:
            raise NotFoundError(root.uri_for(key), "named in meta.json but missing")
        out.append(ShardInput(name, root, key, n, info.size, info.etag_or_mtime))
    return out


def list_inputs(
    datasets: Sequence[str], discover: bool
) -> tuple[list[ShardInput], dict[str, DatasetEntry]]:
    """Every input shard of ``datasets`` and each dataset's manifest entry."""
    inputs: list[ShardInput] = []
    entries: dict[str, DatasetEntry] = {}
    for uri in datasets:
        root = StorageRoot(resolve_location(uri))
        meta = read_meta(root)
        name = validate_name(str(meta.get("name") or root.uri.rstrip("/").rsplit("/", 1)[-1]))
        if name in entries:
            raise ConfigError(f"two datasets are both named {name!r}; annotate them separately")
        entries[name] = DatasetEntry(
            uri=root.uri, digest=str(meta.get("digest", "")), features=meta.get("features", {})
        )
        inputs += _dataset_inputs(root, name, meta, discover)
    return inputs, entries


def _resumable(plan: Plan, inp: ShardInput) -> ShardEntry | None:
    """The done marker of a crashed run for this very input and these settings, if any."""
    marker = read_marker(plan.root, inp.marker_key)
    if marker is None or marker.settings_digest != plan.settings.digest():
        return None
    if not marker.same_input(inp.size, inp.etag) or not plan.root.exists(marker.output_key):
        return None
    return marker


def plan_annotation(
    datasets: Sequence[str],
    settings: CurveSettings,
    root: StorageRoot,
    discover: bool = False,
) -> Plan:
    """Diff the inputs against the latest manifest and the done markers of a crashed run."""
    version, manifest = latest_manifest(root)
    if manifest is not None and manifest.settings_digest != settings.digest():
        raise ConfigError(
            f"annotation {root.uri} v{version} was made with other settings "
            f"({manifest.settings.model_dump()}); use a new --name/--out for these"
        )
    inputs, entries = list_inputs(datasets, discover)
    plan = Plan(root, settings, version, manifest, inputs, entries, discover)
    current = {inp.id for inp in inputs}
    for old in manifest.shards if manifest else []:
        if old.dataset in entries and old.id not in current:
            plan.removed.append(old)
        else:
            plan.done[old.id] = old  # listed now, or a dataset this run does not touch
    for inp in inputs:
        entry = plan.done.get(inp.id)
        if entry is not None and entry.same_input(inp.size, inp.etag):
            plan.kept += 1
            continue
        plan.done.pop(inp.id, None)
        marker = _resumable(plan, inp)
        if marker is not None:
            plan.done[inp.id] = marker
            plan.resumed += 1
        else:
            plan.pending.append(inp)
    return plan


def check_shard(inp: ShardInput, columns: Sequence[str], episodes: bool = False) -> ShardCheck:
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
    if not episodes:
        return ShardCheck(None)
    try:
        ep = pq.read_table(path, filesystem=fs, columns=["episode_index"]).column(0)
    except (pa.ArrowInvalid, OSError) as exc:
        return ShardCheck(f"shard {inp.uri} is not readable Parquet: {exc}", retryable=True)
    if ep.null_count:
        return ShardCheck(f"shard {inp.uri}: episode_index has {ep.null_count} nulls")
    lo, hi = pc.min_max(ep).values()
    return ShardCheck(None, episodes=(int(lo.as_py()), int(hi.as_py())))


# ------------------------------------------------------------------------------ commits


def commit_shard(
    root: StorageRoot, inp: ShardInput, table: pa.Table, settings: CurveSettings, owner: str
) -> ShardEntry:
    """Write the annotated shard (atomic), then its done marker; returns the manifest entry."""
    table = table.drop_columns(["path", "error"]).sort_by(
        [("episode_index", "ascending"), ("frame_index", "ascending")]
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    root.write_bytes(inp.out_key, data)
    lo, hi = pc.min_max(table["episode_index"]).values()
    entry = ShardEntry(
        dataset=inp.dataset,
        input_uri=inp.root.uri,
        input_key=inp.key,
        input_size=inp.size,
        input_etag=inp.etag,
        output_key=inp.out_key,
        rows=table.num_rows,
        episodes=(int(lo.as_py()), int(hi.as_py())),
        sha256=hashlib.sha256(data).hexdigest(),
        settings_digest=settings.digest(),
        writer=owner,
    )
    root.write_json(inp.marker_key, entry.model_dump(mode="json"))
    return entry


def next_manifest(
    plan: Plan,
    skipped: Sequence[SkippedShard] = (),
    quarantined: Sequence[QuarantinedShard] = (),
    lineage: Lineage | None = None,
) -> Manifest:
    """Manifest v+1 of a plan: every done entry, sorted by (dataset, key)."""
    shards = sorted(plan.done.values(), key=lambda e: e.id)
    datasets = dict(plan.datasets)
    if plan.discover:  # the dataset is what was annotated, not what meta.json listed
        datasets = {
            name: d.model_copy(
                update={"digest": dataset_digest([e for e in shards if e.dataset == name])}
            )
            for name, d in datasets.items()
        }
    return Manifest(
        version=plan.version + 1,
        previous=plan.version or None,
        settings=plan.settings,
        settings_digest=plan.settings.digest(),
        grid_sigmas=grid_sigmas(plan.settings.grid_levels),
        datasets=datasets,
        shards=shards,
        skipped=list(skipped),
        quarantined=list(quarantined),
        lineage=lineage,
        trigger="watch" if lineage is not None else "annotate",
    )


def commit_plan(plan: Plan, manifest: Manifest) -> str:
    """Commit ``manifest`` (create-only), then drop the done markers it covers; its digest."""
    digest = commit_manifest(plan.root, manifest)
    for inp in plan.inputs:
        if inp.id in plan.done and plan.root.exists(inp.marker_key):
            plan.root.delete(inp.marker_key)
    return digest
