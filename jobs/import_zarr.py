"""Import a diffusion_policy zarr ReplayBuffer (``data/*`` arrays + ``meta/episode_ends``).

Low-dim arrays (``state`` / ``agent_pos``, ``action``, anything ``--map`` names) are checked and
written in our layout like every import (``jobs.importers``). Camera arrays, (N, H, W, 3) uint8
such as PushT's ``data/img`` or real PushT's ``data/camera_0``, are kept: a buffer with cameras
is written as a LeRobot v3 dataset with one MP4 per camera (``jobs.import_cameras``), read one
episode at a time so a large buffer is never loaded whole.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ambient_core.data import DataError
from ambient_core.envs.base import Episode
from jobs.import_cameras import (
    CAMERA_PREFIX,
    CameraEpisode,
    check_camera_names,
    import_result,
    is_camera,
    whole_fps,
    write_with_cameras,
)
from jobs.importers import (
    FeatureMap,
    _check_finite,
    _check_source,
    _resolve_features,
    _split_episodes,
    _write,
)

__all__ = ["ZARR_STATE_KEYS", "import_zarr"]

log = logging.getLogger(__name__)

#: Candidates for OUR ``observation.state`` in a zarr replay buffer, first present wins.
ZARR_STATE_KEYS: tuple[str, ...] = ("state", "agent_pos")


def _array(path: Path, data: Any, key: str) -> Any:
    """``data/key`` opened; a compressor zarr cannot load (diffusion_policy's image buffers may
    use imagecodecs' Jpeg2k, registered by its own code) is a user-side gap, said by name."""
    try:
        return data[key]
    except (ValueError, KeyError, RuntimeError) as exc:
        raise DataError(
            f"{path}: cannot open data/{key}: {exc} (install the codec it was written with, "
            "e.g. imagecodecs, or drop it with --map)"
        ) from exc


def _zarr_mapping(
    path: Path, data: Any, features: FeatureMap | None, low_dim_only: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """Defaults for a ReplayBuffer (state, else agent_pos; action; every (N, H, W, 3) uint8
    array as camera ``observation.images.<key>``) merged with ``features``; returns the
    low-dim mapping and the camera mapping (OUR -> THEIR key under data/)."""
    available = sorted(data.array_keys())
    state = next((k for k in ZARR_STATE_KEYS if k in available), None)
    if state is None and not (features and "observation.state" in features):
        raise DataError(
            f"{path}: no data/state or data/agent_pos for observation.state; map one "
            f"explicitly (observation.state=KEY) from data/ arrays {available}"
        )
    arrays = {k: _array(path, data, k) for k in available}
    pixels = {k for k, a in arrays.items() if is_camera(a.shape, a.dtype)}
    renamed = {t for t in (features or {}).values() if t in pixels}
    defaults = {f"{CAMERA_PREFIX}{k}": k for k in sorted(pixels - renamed) if not low_dim_only}
    if state is not None:
        defaults["observation.state"] = state
    mapping = _resolve_features({**defaults, "action": "action"}, features)
    for ours, key in mapping.items():
        if key not in available:
            raise DataError(
                f"{path}: array data/{key} (mapped to {[ours]}) not found; data/ has {available}"
            )
        arr = arrays[key]
        if arr.dtype.kind not in "biuf" or arr.ndim < 1:
            raise DataError(
                f"{path}: data/{key} has dtype {arr.dtype} and shape {arr.shape}; need a "
                "numeric array of shape (N, ...)"
            )
        if arr.ndim >= 4 and key not in pixels:
            raise DataError(
                f"{path}: data/{key} has shape {arr.shape} and dtype {arr.dtype}, which looks "
                "like images; cameras must be (N, H, W, 3) uint8"
            )
    cameras = {o: t for o, t in mapping.items() if t in pixels}
    check_camera_names(cameras, "array", str(path))
    if cameras and low_dim_only:
        raise DataError(
            f"{path}: --map names camera arrays {sorted(cameras.values())}, but --low-dim-only "
            "imports low-dim arrays only"
        )
    return {o: t for o, t in mapping.items() if o not in cameras}, cameras


@contextlib.contextmanager
def _open_zarr(path: Path) -> Iterator[Any]:
    """A ReplayBuffer's root group (directory or .zip), open while the import runs: camera
    arrays are read one episode at a time."""
    import zarr

    if not path.exists():
        raise DataError(f"{path}: no such zarr store")
    if path.is_dir() and (path / "zarr.json").exists() and not (path / ".zgroup").exists():
        raise DataError(
            f"{path}: zarr format 3 store; diffusion_policy ReplayBuffers are zarr format 2"
        )
    store: Any = None
    try:
        if path.is_file():
            store = zarr.storage.ZipStore(str(path), mode="r")
            group = zarr.open_group(store, mode="r")
        else:
            group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several unrelated types for "not a group"
        if store is not None:
            store.close()
        raise DataError(f"{path}: not a zarr (format 2) group: {exc}") from exc
    try:
        if "data" not in group or "meta" not in group or "episode_ends" not in group["meta"]:
            raise DataError(
                f"{path}: not a diffusion_policy ReplayBuffer (needs data/ and "
                f"meta/episode_ends; has {sorted(group.keys())})"
            )
        yield group
    finally:
        if store is not None:
            store.close()


def _episode_steps(path: Path, ends: np.ndarray, arrays: dict[str, Any]) -> np.ndarray:
    """Frames per episode from meta/episode_ends, checked against every mapped array."""
    if ends.ndim != 1 or ends.dtype.kind not in "iu" or ends.size == 0:
        raise DataError(
            f"{path}: meta/episode_ends must be a non-empty 1-D integer array, got dtype "
            f"{ends.dtype} and shape {ends.shape}"
        )
    steps = np.diff(np.r_[0, ends.astype(np.int64)])
    if np.any(steps < 0):
        i = int(np.flatnonzero(steps < 0)[0])
        raise DataError(
            f"{path}: meta/episode_ends must be non-decreasing from 0; episode {i} ends at "
            f"{int(ends[i])}, before its start"
        )
    for key, arr in arrays.items():
        if len(arr) != int(ends[-1]):
            raise DataError(
                f"{path}: data/{key} has {len(arr)} rows but meta/episode_ends[-1] = "
                f"{int(ends[-1])}"
            )
    return steps


def _read_slice(arr: Any, start: int, n: int, where: str) -> np.ndarray:
    """One episode of a camera array; a chunk that cannot be decompressed names the array."""
    try:
        return np.asarray(arr[start : start + n])
    except (ValueError, RuntimeError, OSError) as exc:
        raise DataError(f"{where} rows {start}..{start + n}: cannot read: {exc}") from exc


def _zarr_cameras(
    path: Path,
    episodes: list[Episode],
    source_ids: list[int],
    steps: np.ndarray,
    data: Any,
    cams: FeatureMap,
) -> list[CameraEpisode]:
    """Episodes whose camera frames are zarr slices, read when the writer reaches them."""
    starts = np.cumsum(steps) - steps
    return [
        CameraEpisode(
            e,
            {
                ours: functools.partial(
                    _read_slice,
                    data[theirs],
                    int(starts[src]),
                    int(steps[src]),
                    f"{path}: data/{theirs}",
                )
                for ours, theirs in cams.items()
                if theirs
            },
        )
        for e, src in zip(episodes, source_ids, strict=True)
    ]


def import_zarr(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    features: FeatureMap | None = None,
    source: str | None = None,
    task: str = "imported",
    fps: float = 10.0,
    overwrite: bool = False,
    low_dim_only: bool = False,
) -> dict[str, Any]:
    """Import a diffusion_policy ReplayBuffer (``.zarr`` directory or ``.zarr.zip``).

    Defaults: ``observation.state`` <- ``data/state`` (else ``data/agent_pos``), ``action`` <-
    ``data/action``, and each (N, H, W, 3) uint8 array ``data/K`` (``img``, ``camera_0``, ...)
    <- camera ``observation.images.K``; ``features`` (OUR -> THEIR key under data/) is merged
    over them, a None value drops one. Trailing low-dim dims are flattened to D. The buffer has
    no frame rate: ``fps`` (PushT's 10 Hz by default) is recorded as given. Without cameras the
    output is our layout; with cameras it is a LeRobot v3 dataset with one MP4 per camera.
    ``low_dim_only`` skips the cameras (our layout).
    """
    path = Path(path).expanduser().resolve()
    label = f"zarr replay buffer {path}"
    with _open_zarr(path) as group:
        data = group["data"]
        mapping, cams = _zarr_mapping(path, data, features, low_dim_only)
        arrays = {k: np.asarray(data[k][:]) for k in dict.fromkeys(mapping.values())}
        ends = np.asarray(group["meta"]["episode_ends"][:])
        steps = _episode_steps(path, ends, {**arrays, **{t: data[t] for t in cams.values()}})
        n_total = int(ends[-1])
        ep = np.repeat(np.arange(len(ends), dtype=np.int64), steps)
        fr = np.arange(n_total, dtype=np.int64) - np.repeat(np.cumsum(steps) - steps, steps)
        feats: dict[str, np.ndarray] = {}
        for ours, theirs in mapping.items():
            x = arrays[theirs].reshape(n_total, -1).astype(np.float32)
            if x.shape[1] == 0:
                raise DataError(f"{path}: data/{theirs} (-> {ours!r}) has zero width")
            _check_finite(label, ours, f"data/{theirs}", x, ep, fr)
            feats[ours] = x
        if n_total == 0:
            raise DataError(f"{label}: every episode is empty")
        episodes, source_ids = _split_episodes(label, ep, fr, feats)
        notes: list[str] = []
        if np.any(steps == 0):
            notes.append(f"skipped {int((steps == 0).sum())} empty episodes")
        used = {*mapping.values(), *cams.values()}
        unused = [k for k in sorted(data.array_keys()) if k not in used]
        if unused:
            notes.append(f"unused arrays under data/: {unused}")
        imported_from = {"format": "zarr", "path": str(path), "features": {**mapping, **cams}}
        if cams:
            lineage = {
                **imported_from,
                "source_episode_index": source_ids,
                "source": _check_source(source, path),
            }
            root, meta = write_with_cameras(
                out,
                _zarr_cameras(path, episodes, source_ids, steps, data, cams),
                task,
                whole_fps(float(fps), label),
                overwrite,
                lineage,
                (),
                notes,
            )
            log.info("imported %s with cameras %s -> %s", label, sorted(cams), root.uri)
            return import_result("zarr", root, meta, {**mapping, **cams}, notes)
    extra = {"source_episode_index": source_ids, "imported_from": imported_from}
    src = _check_source(source, path)
    root, meta = _write(out, episodes, src, task, float(fps), overwrite, extra)
    log.info("imported %s: %d episodes, %d frames -> %s", label, len(episodes), n_total, root.uri)
    return import_result("zarr", root, meta, mapping, notes)
