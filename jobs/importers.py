"""Import LeRobot (v2.x, v3.0) datasets and diffusion_policy zarr replay buffers.

Why: most public demonstrations ship in one of these two layouts. Importers map THEIR columns
onto OUR feature names, flatten every low-dim feature to (L, D) float32, reject what training
would silently choke on (missing columns, NaN/inf, frame gaps, truncated downloads) with a
message naming the file, column and episode, and re-index episodes to 0..E-1 (the original ids
are kept as ``source_episode_index``). Low-dim data is written in our layout (Parquet shards +
meta.json, ``write_dataset``). Cameras are kept: a source with cameras (zarr ``(N, H, W, 3)``
uint8 arrays, LeRobot v2.x videos or images) is written as a LeRobot v3 dataset with MP4 videos
(``jobs.import_cameras``), which every reader here takes in place. A LeRobot v3 source with
cameras is not copied at all: it is read in place (``--low-dim-only`` imports its low-dim
columns alone).

Examples (the CLI is ``ambient data import``)::

    ambient data import lerobot PATH --out DIR \\
        --map observation.goal=observation.environment_state
    ambient data import zarr pusht_cchi_v7_replay.zarr --out s3://bucket/pusht

The zarr importer is ``jobs.import_zarr`` (it shares this module's checks).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_core.data import INDEX_COLUMNS, DataError, episode_bounds
from ambient_core.envs.base import Episode
from ambient_platform.datasets import META_FILE, write_dataset
from ambient_platform.storage import StorageRoot, validate_name
from jobs.import_cameras import (
    CameraEpisode,
    check_camera_names,
    import_result,
    v2_camera_loaders,
    whole_fps,
    write_with_cameras,
)

__all__ = ["LEROBOT_DEFAULTS", "import_lerobot", "parse_mapping"]

log = logging.getLogger(__name__)

#: OUR feature name -> THEIR LeRobot column, used unless ``features`` overrides or drops it.
LEROBOT_DEFAULTS: dict[str, str] = {"observation.state": "observation.state", "action": "action"}
#: LeRobot dtypes that hold pixels (cameras).
PIXEL_DTYPES = frozenset({"video", "image"})
SUPPORTED_LEROBOT = ("v2.0", "v2.1", "v3.0")
_RESERVED = frozenset({*INDEX_COLUMNS, "source"})
_DEFAULT_DATA_PATH = {
    "v2": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
    "v3": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
}

FeatureMap = Mapping[str, str | None]


# ------------------------------------------------------------------------------- helpers


def parse_mapping(items: Sequence[str]) -> dict[str, str | None]:
    """``["ours=theirs", "ours="]`` -> ``{ours: theirs, ours: None}`` (empty drops a default)."""
    mapping: dict[str, str | None] = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip():
            raise DataError(f"--map {item!r}: expected OURS=THEIRS, e.g. observation.goal=target")
        mapping[ours.strip()] = theirs.strip() or None
    return mapping


def _resolve_features(defaults: Mapping[str, str], features: FeatureMap | None) -> dict[str, str]:
    """Defaults overridden by ``features``; a None/empty value drops that default."""
    merged: dict[str, str] = dict(defaults)
    for ours, theirs in (features or {}).items():
        try:
            validate_name(ours, "feature name")
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        if ours in _RESERVED:
            raise DataError(f"feature name {ours!r} is reserved for the dataset layout")
        if theirs is None or theirs == "":
            merged.pop(ours, None)
        else:
            merged[ours] = theirs
    if not merged:
        raise DataError("no features to import: the mapping is empty")
    return merged


def _default_source(path: Path) -> str:
    """A dataset name from the input's directory name, made safe for keys and paths."""
    name = path.name
    for suffix in (".zarr.zip", ".zip", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._")[:128]
    return name or "imported"


def _check_source(source: str | None, path: Path) -> str:
    if source is None:
        return _default_source(path)
    try:
        return validate_name(source, "source (dataset name)")
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def _arrow_matrix(arr: pa.Array, where: str) -> np.ndarray:
    """Scalar, list, large_list or fixed_size_list (nested too) -> dense (N, D) float32."""
    if arr.null_count:
        raise DataError(f"{where}: {arr.null_count} null values")
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if lengths.size and np.any(lengths != lengths[0]):
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(
                f"{where}: ragged lists (length {int(lengths[row])} at row {row}, "
                f"{int(lengths[0])} at row 0)"
            )
        k = int(lengths[0]) if lengths.size else 0
        inner = _arrow_matrix(arr.flatten(), where)
        return inner.reshape(len(arr), k * inner.shape[1])
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        values = arr.to_numpy(zero_copy_only=False)
        return values.astype(np.float32).reshape(-1, 1)
    raise DataError(f"{where}: type {t} is not numeric (low-dim features only)")


def _check_finite(
    label: str, ours: str, theirs: str, x: np.ndarray, ep: np.ndarray, fr: np.ndarray
) -> None:
    """NaN/inf would poison normalisation statistics; say how many and where."""
    bad_values = ~np.isfinite(x)
    if not bad_values.any():
        return
    rows = bad_values.any(axis=1)
    first = int(np.flatnonzero(rows)[0])
    episodes = np.unique(ep[rows])
    raise DataError(
        f"{label}: column {theirs!r} (-> {ours!r}) has {int(bad_values.sum())} NaN/inf values "
        f"in {int(rows.sum())} frames of {len(episodes)} episodes "
        f"(episodes {episodes[:10].tolist()}{'...' if len(episodes) > 10 else ''}); "
        f"first at episode {int(ep[first])} frame {int(fr[first])}"
    )


def _split_episodes(
    label: str, ep: np.ndarray, fr: np.ndarray, feats: dict[str, np.ndarray]
) -> tuple[list[Episode], list[int]]:
    """Sort rows by (episode, frame), require frames 0..L-1, cut into episodes."""
    order = np.lexsort((fr, ep))
    ep, fr = ep[order], fr[order]
    starts, ends = episode_bounds(ep, fr, label)
    sorted_feats = {k: v[order] for k, v in feats.items()}
    episodes = [
        {k: v[s:e] for k, v in sorted_feats.items()} for s, e in zip(starts, ends, strict=True)
    ]
    return episodes, [int(i) for i in ep[starts]]


def _write(
    out: str | os.PathLike[str],
    episodes: list[Episode],
    source: str,
    task: str,
    fps: float,
    overwrite: bool,
    extra: dict[str, Any],
) -> tuple[StorageRoot, dict[str, Any]]:
    root = StorageRoot(out)
    if not overwrite and root.exists(META_FILE):
        raise DataError(
            f"{root.uri_for(META_FILE)} already exists; pass overwrite=True (--overwrite) to "
            "replace that dataset"
        )
    return root, write_dataset(root, episodes, source, task, fps=fps, extra=extra)


# ------------------------------------------------------------------------------- LeRobot


def _lerobot_info(path: Path) -> tuple[dict[str, Any], str, str]:
    """info.json, its codebase_version and the layout family ("v2" or "v3")."""
    info_path = path / "meta" / "info.json"
    if not info_path.is_file():
        raise DataError(
            f"{info_path} not found: {path} is not a LeRobot v2/v3 dataset (v1.x datasets must "
            "first be converted with lerobot's conversion scripts)"
        )
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise DataError(f"{info_path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: expected a JSON object")
    version = str(info.get("codebase_version", ""))
    if version not in SUPPORTED_LEROBOT:
        raise DataError(
            f"{info_path}: unsupported codebase_version {version or None!r}; supported: "
            f"{', '.join(SUPPORTED_LEROBOT)} (convert other versions with lerobot first)"
        )
    return info, version, version[:2]


def _data_files(path: Path, info: dict[str, Any], family: str, info_path: Path) -> list[Path]:
    """Parquet files matching the info.json data_path template (placeholders -> '*')."""
    template = str(info.get("data_path") or _DEFAULT_DATA_PATH[family])
    parts = template.split("/")
    if template.startswith("/") or ".." in parts:
        raise DataError(f"{info_path}: data_path {template!r} must stay inside the dataset")
    pattern = re.sub(r"\{[^}]*\}", "*", template)
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"{path}: no data files match {pattern!r} (data_path in {info_path})")
    return files


def _lerobot_mapping(
    info: dict[str, Any], info_path: Path, features: FeatureMap | None, low_dim_only: bool
) -> tuple[dict[str, str], dict[str, str], dict[str, Any], dict[str, str]]:
    """OUR -> THEIR low-dim columns, OUR -> THEIR cameras (each camera under its own name unless
    ``--map`` renames or drops it), info.json's declared features and the cameras skipped."""
    declared: dict[str, Any] = info.get("features") or {}
    if not isinstance(declared, dict):
        raise DataError(f"{info_path}: 'features' must be an object")
    pixels = {
        k: str(v.get("dtype"))
        for k, v in declared.items()
        if isinstance(v, dict) and v.get("dtype") in PIXEL_DTYPES
    }
    renamed = {t for t in (features or {}).values() if t in pixels}
    defaults = {k: k for k in pixels if k not in renamed and not low_dim_only}
    mapping = _resolve_features({**LEROBOT_DEFAULTS, **defaults}, features)
    cameras = {o: t for o, t in mapping.items() if t in pixels}
    check_camera_names(cameras, "column", str(info_path))
    if cameras and low_dim_only:
        raise DataError(
            f"{info_path}: --map names camera features {sorted(cameras.values())}, but "
            "--low-dim-only imports low-dim columns only"
        )
    skipped = {k: v for k, v in pixels.items() if k not in cameras.values()}
    lowdim = {o: t for o, t in mapping.items() if o not in cameras}
    if not lowdim:
        raise DataError(f"{info_path}: no low-dim features to import (action is needed)")
    return lowdim, cameras, declared, skipped


def _frame_order(ep: np.ndarray) -> np.ndarray:
    """Frame indices from row order within each episode (for files without frame_index)."""
    order = np.argsort(ep, kind="stable")
    grouped = ep[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    fr = np.empty_like(ep)
    fr[order] = np.arange(len(ep)) - np.repeat(starts, np.diff(np.r_[starts, len(ep)]))
    return fr


class _LeRobotRows:
    """Rows of every data file, accumulated file by file with each file's problems named."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self.columns = list(dict.fromkeys(mapping.values()))
        self.eps: list[np.ndarray] = []
        self.frs: list[np.ndarray] = []
        self.cols: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        self.notes: list[str] = []
        self._episode_file: dict[int, Path] = {}

    def _schema_names(self, f: Path) -> list[str]:
        try:
            names = list(pq.read_schema(f).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file: {exc}") from exc
        missing = [c for c in ["episode_index", *self.columns] if c not in names]
        if missing:
            ours_of = {v: k for k, v in self.mapping.items()}
            which = ", ".join(
                f"{c!r} (mapped to {ours_of[c]!r})" if c in ours_of else repr(c) for c in missing
            )
            raise DataError(f"{f}: missing column {which}; the file has {sorted(names)}")
        return names

    def add_file(self, f: Path) -> None:
        has_frame = "frame_index" in self._schema_names(f)
        read = ["episode_index", *(["frame_index"] if has_frame else []), *self.columns]
        try:
            table = pq.read_table(f, columns=read)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file: {exc}") from exc
        if table.num_rows == 0:
            return
        ep = _arrow_matrix(table.column("episode_index").combine_chunks(), f"{f}: episode_index")
        ep = ep[:, 0].astype(np.int64)
        if has_frame:
            fr = _arrow_matrix(table.column("frame_index").combine_chunks(), f"{f}: frame_index")
            fr = fr[:, 0].astype(np.int64)
        else:  # row order within the file is the only order there is
            fr = _frame_order(ep)
            self.notes.append(f"{f.name}: no frame_index column, row order used")
        self._claim_episodes(f, ep)
        self.eps.append(ep)
        self.frs.append(fr)
        for c in self.columns:
            x = _arrow_matrix(table.column(c).combine_chunks(), f"{f}: column {c!r}")
            if self.cols[c] and self.cols[c][0].shape[1] != x.shape[1]:
                raise DataError(
                    f"{f}: column {c!r} has {x.shape[1]} values per frame, earlier files have "
                    f"{self.cols[c][0].shape[1]}"
                )
            self.cols[c].append(x)

    def file_of(self, episode: int) -> Path:
        """The data file that holds an episode (LeRobot keeps an episode in one file)."""
        return self._episode_file[episode]

    def _claim_episodes(self, f: Path, ep: np.ndarray) -> None:
        """LeRobot keeps an episode in one file; one in two files is a duplicate id."""
        for e in np.unique(ep).tolist():
            other = self._episode_file.setdefault(int(e), f)
            if other != f:
                raise DataError(f"{f}: episode {e} is also in {other} (duplicate episode_index)")

    def features(
        self, label: str, declared: dict[str, Any], info_path: Path
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(episode, frame, OUR feature -> (N, D) float32), widths and values checked."""
        if not self.eps:
            raise DataError(f"{label}: the data files hold no rows")
        ep, fr = np.concatenate(self.eps), np.concatenate(self.frs)
        feats: dict[str, np.ndarray] = {}
        for ours, theirs in self.mapping.items():
            x = np.concatenate(self.cols[theirs])
            if x.shape[1] == 0:
                raise DataError(f"{label}: column {theirs!r} (-> {ours!r}) has zero width")
            spec = declared.get(theirs)
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if (
                isinstance(shape, list)
                and all(isinstance(s, int) for s in shape)
                and math.prod(shape) != x.shape[1]
            ):
                raise DataError(
                    f"{label}: column {theirs!r} has {x.shape[1]} values per frame but "
                    f"{info_path} declares shape {shape}"
                )
            _check_finite(label, ours, theirs, x, ep, fr)
            feats[ours] = x
        return ep, fr, feats


def _check_totals(
    label: str, info: dict[str, Any], info_path: Path, counts: dict[str, int], n_files: int
) -> None:
    """info.json's totals against what the files hold: catches incomplete downloads."""
    for key, found in counts.items():
        want = info.get(key)
        if isinstance(want, int) and want != found:
            raise DataError(
                f"{label}: found {found} {key.split('_')[1]} in {n_files} data files but "
                f"{info_path} says {key}={want} (incomplete download or stray files?)"
            )


def _refuse_v3_cameras(path: Path, cameras: dict[str, str]) -> None:
    """A LeRobot v3 dataset with cameras is what every reader here takes in place: copying it
    would only duplicate its videos."""
    raise DataError(
        f"LeRobot dataset {path} is LeRobot v3 with cameras {sorted(cameras.values())}: it is "
        f"read in place, not imported; use {path} (or its s3:// copy) as the dataset path "
        "(data.clean/corrupt path in a run config, --data/--corrupt), or pass --low-dim-only "
        "to import its low-dim columns alone"
    )


def import_lerobot(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    features: FeatureMap | None = None,
    source: str | None = None,
    task: str = "imported",
    fps: float | None = None,
    overwrite: bool = False,
    low_dim_only: bool = False,
) -> dict[str, Any]:
    """Import a local LeRobot v2.x/v3.0 dataset directory at ``out``.

    ``features`` maps OUR feature -> THEIR column and is merged over ``LEROBOT_DEFAULTS`` and
    the cameras (each under its own name; a None value drops a default). ``fps`` defaults to
    info.json's. Without cameras (or with ``low_dim_only``) the output is our layout; a v2.x
    source with cameras becomes a LeRobot v3 dataset (videos re-encoded per camera file, image
    features kept as Parquet images); a v3.0 source with cameras is refused: read it in place.
    Returns counts, feature (and camera) shapes, the out URI and the content digest.
    """
    path = Path(path).expanduser().resolve()
    info, version, family = _lerobot_info(path)
    info_path = path / "meta" / "info.json"
    label = f"LeRobot dataset {path}"
    mapping, cameras, declared, skipped = _lerobot_mapping(info, info_path, features, low_dim_only)
    if cameras and family == "v3":
        _refuse_v3_cameras(path, cameras)
    files = _data_files(path, info, family, info_path)
    rows = _LeRobotRows(mapping)
    for f in files:
        rows.add_file(f)
    ep, fr, feats = rows.features(label, declared, info_path)
    episodes, source_ids = _split_episodes(label, ep, fr, feats)
    counts = {"total_episodes": len(episodes), "total_frames": len(ep)}
    _check_totals(label, info, info_path, counts, len(files))
    notes = rows.notes
    if skipped:
        notes.append(f"skipped camera features (--low-dim-only or --map): {sorted(skipped)}")
    rate = float(fps if fps is not None else info.get("fps") or 10.0)
    imported_from = {
        "format": "lerobot",
        "codebase_version": version,
        "path": str(path),
        "features": {**mapping, **cameras},
        "robot_type": info.get("robot_type"),
    }
    if cameras:
        with_cams = [
            CameraEpisode(
                e,
                v2_camera_loaders(
                    path, info, cameras, src, len(next(iter(e.values()))), rows.file_of(src)
                ),
            )
            for e, src in zip(episodes, source_ids, strict=True)
        ]
        still = [o for o, t in cameras.items() if declared[t]["dtype"] == "image"]
        lineage = {
            **imported_from,
            "source_episode_index": source_ids,
            "source": _check_source(source, path),
        }
        root, meta = write_with_cameras(
            out, with_cams, task, whole_fps(rate, label), overwrite, lineage, still, notes
        )
        log.info("imported %s with cameras %s -> %s", label, sorted(cameras), root.uri)
        return import_result(
            "lerobot", root, meta, {**mapping, **cameras}, notes, codebase_version=version
        )
    extra = {"source_episode_index": source_ids, "imported_from": imported_from}
    root, meta = _write(out, episodes, _check_source(source, path), task, rate, overwrite, extra)
    log.info("imported %s: %d episodes, %d frames -> %s", label, len(episodes), len(ep), root.uri)
    return import_result("lerobot", root, meta, mapping, notes, skipped, codebase_version=version)
