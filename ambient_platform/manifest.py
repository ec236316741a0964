"""The annotation manifest format: ``<annotation root>/manifests/v<N>.json``, one typed model.

An annotation root holds annotated shards (``shards/<dataset>/...parquet``: ``episode_index``,
``frame_index`` and one score-curve column per classifier epoch), per-shard done markers of a
run in progress (``done/...json``) and the manifests. A manifest is committed last and
create-only (the commit point; two writers cannot both create ``v<N+1>``), and readers trust only
the shards a manifest names. It records:

- ``settings`` (the curve settings) and their digest: a re-run with other settings is refused;
- ``grid_sigmas``: the sigma of every annotation-grid level, so sigma_min needs no schedule;
- ``datasets``: each annotated dataset's URI, content digest and features;
- ``shards``: per input shard its key, size and ETag/mtime (to notice a changed file), the
  output key, rows, episode range and the output's sha256;
- ``skipped`` (``annotate --skip-bad-shards``) and ``quarantined`` (watch) shards;
- ``lineage`` (watch): the previous manifest and the new, changed, removed, quarantined and
  released shards.

This module owns the format: ``jobs.annotate``, ``jobs.reannotate`` and ``jobs.train`` read it
only through these models, never by dict lookups.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, ValidationError

from ambient_core.errors import DataError, LeaseError
from ambient_platform.config.base import StrictModel, format_validation_error
from ambient_platform.storage import StorageRoot

FORMAT: Final = "ambient-annotation/1"
MANIFEST_DIR = "manifests"
CURVE_PREFIX = "curve_e"


def curve_column(epoch: int) -> str:
    """The score-curve column of classifier epoch ``epoch`` in annotated shards."""
    return f"{CURVE_PREFIX}{epoch}"


def manifest_key(version: int) -> str:
    return f"{MANIFEST_DIR}/v{version}.json"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CurveSettings(StrictModel):
    """Everything that determines the curves; its digest guards re-runs and resumption."""

    classifier_dir: str
    epochs: list[int]
    grid_levels: list[int]
    num_draws: int = 4
    seed: int = 0
    score_batch: int = 64  # how many chunks per forward pass: speed only, not in the digest

    def digest(self) -> str:
        d = self.model_dump(exclude={"score_batch"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class DatasetEntry(StrictModel):
    """An annotated dataset: where it is, its content digest, its features (from meta.json)."""

    uri: str
    digest: str
    features: dict[str, Any]


class ShardEntry(StrictModel):
    """One annotated input shard (also the content of its done marker)."""

    dataset: str
    input_uri: str
    input_key: str
    input_size: int
    input_etag: str
    output_key: str
    rows: int
    episodes: tuple[int, int] | None = None
    sha256: str
    settings_digest: str
    writer: str | None = None

    @property
    def id(self) -> tuple[str, str]:
        """Shards are known by (dataset, key): two datasets may both have ``data/x.parquet``."""
        return (self.dataset, self.input_key)

    def same_input(self, size: int, etag: str) -> bool:
        """Whether the input file is still the one this entry annotated."""
        return (self.input_size, self.input_etag) == (size, etag)


class SkippedShard(StrictModel):
    """A shard ``annotate --skip-bad-shards`` left out, and why."""

    dataset: str
    input_key: str
    error: str


class QuarantinedShard(StrictModel):
    """A shard the watcher will not retry until the file changes."""

    dataset: str
    input_key: str
    input_size: int
    input_etag: str
    error: str
    since: str

    @property
    def id(self) -> tuple[str, str]:
        return (self.dataset, self.input_key)


class Lineage(StrictModel):
    """What a watch pass changed, as ``<dataset>/<key>`` names."""

    previous_manifest: str | None
    new: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    quarantined: list[str] = Field(default_factory=list)
    released: list[str] = Field(default_factory=list)

    @property
    def adds_data(self) -> bool:
        return bool(self.new or self.changed)

    @property
    def is_empty(self) -> bool:
        """Nothing changed: a pass with such a lineage commits nothing."""
        return not (self.new or self.changed or self.removed or self.quarantined or self.released)


class Manifest(StrictModel):
    """``manifests/v<N>.json``."""

    format: Literal["ambient-annotation/1"] = FORMAT
    version: int = Field(..., ge=1)
    previous: int | None = None
    settings: CurveSettings
    settings_digest: str
    grid_sigmas: list[float]
    datasets: dict[str, DatasetEntry]
    shards: list[ShardEntry]
    skipped: list[SkippedShard] = Field(default_factory=list)
    quarantined: list[QuarantinedShard] = Field(default_factory=list)
    lineage: Lineage | None = None
    trigger: Literal["annotate", "watch"] = "annotate"
    created: str = Field(default_factory=utc_now)

    def shards_of(self, dataset: str) -> list[ShardEntry]:
        return [e for e in self.shards if e.dataset == dataset]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """The content digest a manifest is known by (MLflow inputs, lineage)."""
        return manifest_digest(self)


def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest.to_json(), sort_keys=True).encode()).hexdigest()


def parse_record(model: type[StrictModel], data: Any, uri: str) -> Any:
    """Validate a stored JSON record; DataError naming the file and field when it is not one."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DataError(format_validation_error(exc, uri).replace("\n", "; ")) from None


def read_manifest(root: StorageRoot, version: int) -> Manifest:
    """Manifest ``version`` of an annotation; DataError if there is no such version."""
    key = manifest_key(version)
    if not root.exists(key):
        raise DataError(f"annotation {root.uri} has no version {version}")
    manifest: Manifest = parse_record(Manifest, root.read_json(key), root.uri_for(key))
    return manifest


def manifest_versions(root: StorageRoot) -> list[int]:
    """Committed versions, ascending."""
    versions = []
    for info in root.list(MANIFEST_DIR + "/", suffix=".json"):
        name = info.key.rsplit("/", 1)[-1]
        if name.startswith("v") and name[1:-5].isdigit():
            versions.append(int(name[1:-5]))
    return sorted(versions)


def latest_manifest(root: StorageRoot) -> tuple[int, Manifest | None]:
    """(version, manifest) of the newest committed manifest, (0, None) when there is none."""
    versions = manifest_versions(root)
    if not versions:
        return 0, None
    return versions[-1], read_manifest(root, versions[-1])


def commit_manifest(root: StorageRoot, manifest: Manifest) -> str:
    """Create ``manifests/v<N>.json`` (create-only: the commit point); returns its digest.

    LeaseError when another writer committed that version meanwhile (re-run to annotate what
    is still missing)."""
    key = manifest_key(manifest.version)
    if not root.write_json_if_absent(key, manifest.to_json()):
        raise LeaseError(
            f"{root.uri_for(key)} was committed by another writer meanwhile; "
            "re-run to annotate what is still missing"
        )
    return manifest.digest()


def read_marker(root: StorageRoot, key: str) -> ShardEntry | None:
    """The done marker at ``key`` (a shard annotated by a run that has not committed yet)."""
    if not root.exists(key):
        return None
    entry: ShardEntry = parse_record(ShardEntry, root.read_json(key), root.uri_for(key))
    return entry


def read_curves(root: StorageRoot, manifest: Manifest, dataset: str, epoch: int) -> pa.Table:
    """episode_index, frame_index and the epoch's curve for one dataset of a manifest."""
    col = curve_column(epoch)
    if epoch not in manifest.settings.epochs:
        raise DataError(
            f"annotation {root.uri} v{manifest.version} has classifier epochs "
            f"{manifest.settings.epochs}, not {epoch}"
        )
    fs, base = root.arrow_filesystem()
    tables = [
        pq.read_table(
            f"{base.rstrip('/')}/{e.output_key}",
            filesystem=fs,
            columns=["episode_index", "frame_index", col],
        )
        for e in manifest.shards_of(dataset)
    ]
    if not tables:
        raise DataError(f"annotation {root.uri} has no shards of dataset {dataset!r}")
    return pa.concat_tables(tables)


def dataset_digest(shards: Sequence[ShardEntry]) -> str:
    """Digest of a dataset by what was annotated (key, size, ETag of each shard): a watched
    source has no meta.json listing its shards."""
    ident = [(e.input_key, e.input_size, e.input_etag) for e in shards]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()
