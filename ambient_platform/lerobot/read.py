"""Read a LeRobot v3 dataset in place (local or ``s3://``): metadata, low-dim frames, cameras.

Parquet files are read with pyarrow on the storage root's filesystem; MP4 files are decoded with
PyAV, on S3 through a block cache over range reads, so nothing is copied to local disk first.
Cameras stored as encoded images inside the data Parquet (``dtype: "image"``) are read from only
the row groups of the episode and decoded with Pillow (``images.py``). Every check names the
dataset, episode and camera it failed on (and the row, for images).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_core.data import Frames, frames_from_table
from ambient_core.errors import DataError, NotFoundError
from ambient_platform.lerobot.images import decode_image, image_blobs, image_paths, read_rows
from ambient_platform.lerobot.layout import DEFAULT_FEATURES, IMPORT_PATH, INFO_PATH, VIDEO_PATH
from ambient_platform.storage import StorageRoot

_BLOCK = 1 << 20  # S3 range-read size for video files
_CACHED_BLOCKS = 32
_OPEN_FILES = 4  # per thread: open video containers, open data files (image cameras)


class _BlockReader(io.RawIOBase):
    """Seekable file over a pyarrow input file that reads whole blocks and keeps the last few:
    PyAV asks for many small reads, and on S3 each would otherwise be one HTTP range request."""

    def __init__(self, raw: Any, block: int = _BLOCK, max_blocks: int = _CACHED_BLOCKS) -> None:
        super().__init__()
        self.raw, self.block, self.max_blocks = raw, block, max_blocks
        self.size = int(raw.size())
        self.pos = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _get(self, n: int) -> bytes:
        if n not in self.blocks:
            self.raw.seek(n * self.block)
            self.blocks[n] = self.raw.read(self.block)
            if len(self.blocks) > self.max_blocks:
                self.blocks.popitem(last=False)
        self.blocks.move_to_end(n)
        return self.blocks[n]

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        parts = []
        while self.pos < end:
            n, off = divmod(self.pos, self.block)
            chunk = self._get(n)[off : off + end - self.pos]
            if not chunk:
                break
            parts.append(chunk)
            self.pos += len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode of one camera lives: an MP4 key and its [from, to) seconds."""

    key: str
    from_ts: float
    to_ts: float


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of meta/episodes: the episode's length, data file and video spans."""

    index: int
    length: int
    data_key: str
    row_from: int
    videos: dict[str, VideoSpan]


_EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)


class LeRobotDataset:
    """A LeRobot v3 dataset opened in place; metadata is read and checked on construction.

    ``name`` labels every error (defaults to the URI). Low-dim columns come back as validated
    ``Frames``; camera frames (MP4 videos or Parquet images alike, ``camera_keys``) are decoded
    per episode as (L, H, W, 3) uint8 arrays.
    """

    def __init__(self, root: StorageRoot | str, name: str | None = None) -> None:
        self.root = root if isinstance(root, StorageRoot) else StorageRoot(root)
        self.name = name or self.root.uri
        self.info = self._read_info()
        self.fps = int(self.info["fps"])
        feats: dict[str, Any] = self.info["features"]
        self.features = feats
        self.video_keys = [k for k, f in feats.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in feats.items() if f.get("dtype") == "image"]
        self.lowdim_keys = [
            k
            for k, f in feats.items()
            if k not in DEFAULT_FEATURES and f.get("dtype") in ("float32", "float64")
        ]
        self.episodes = self._read_episodes()
        self._local = threading.local()

    def _fail(self, what: str) -> DataError:
        return DataError(f"LeRobot dataset {self.name!r}: {what}")

    def _read_info(self) -> dict[str, Any]:
        try:
            info = self.root.read_json(INFO_PATH)
        except NotFoundError:
            raise self._fail(
                f"{self.root.uri_for(INFO_PATH)} is missing (not a LeRobot dataset)"
            ) from None
        except ValueError as exc:
            raise self._fail(str(exc)) from exc
        version = str(info.get("codebase_version", "")) if isinstance(info, dict) else ""
        if not version.startswith("v3"):
            raise self._fail(
                f"codebase_version {version or None!r} in {INFO_PATH}; only LeRobot v3 is read in "
                "place (convert v2.x with lerobot's convert_dataset_v21_to_v30)"
            )
        missing = [k for k in ("fps", "features", "data_path") if k not in info]
        if missing:
            raise self._fail(f"{INFO_PATH} lacks {missing}")
        for key, feat in info["features"].items():
            if not isinstance(feat, dict) or "dtype" not in feat or "shape" not in feat:
                raise self._fail(f"{INFO_PATH}: features.{key} needs dtype and shape")
            if feat["dtype"] in ("video", "image") and len(feat["shape"]) != 3:
                raise self._fail(f"{INFO_PATH}: features.{key}.shape must be (H, W, C)")
        return dict(info)

    def _read_episodes(self) -> list[EpisodeInfo]:
        files = self.root.list("meta/episodes/", suffix=".parquet")
        if not files:
            raise self._fail("meta/episodes/ holds no Parquet file")
        tables = []
        for f in files:
            try:
                with self.root.open_input(f.key) as fh:
                    tables.append(pq.read_table(fh))
            except (pa.ArrowInvalid, OSError) as exc:
                raise self._fail(f"cannot read {self.root.uri_for(f.key)}: {exc}") from exc
        table = pa.concat_tables(tables, promote_options="default")
        need = list(_EPISODE_COLUMNS)
        for key in self.video_keys:
            need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise self._fail(f"meta/episodes lacks columns {missing}")
        rows = table.select(need).to_pylist()
        out = []
        for r in sorted(rows, key=lambda r: int(r["episode_index"])):
            ep, n = int(r["episode_index"]), int(r["length"])
            if n < 1 or int(r["dataset_to_index"]) - int(r["dataset_from_index"]) != n:
                raise self._fail(
                    f"episode {ep}: length {n} disagrees with dataset_from_index/"
                    f"dataset_to_index {r['dataset_from_index']}..{r['dataset_to_index']}"
                )
            where = {
                "chunk_index": int(r["data/chunk_index"]),
                "file_index": int(r["data/file_index"]),
            }
            videos = {
                key: VideoSpan(
                    self.info.get("video_path", VIDEO_PATH).format(
                        video_key=key,
                        chunk_index=int(r[f"videos/{key}/chunk_index"]),
                        file_index=int(r[f"videos/{key}/file_index"]),
                    ),
                    float(r[f"videos/{key}/from_timestamp"]),
                    float(r[f"videos/{key}/from_timestamp"]) + n / self.fps,
                )
                for key in self.video_keys
            }
            out.append(
                EpisodeInfo(
                    ep,
                    n,
                    self.info["data_path"].format(**where),
                    int(r["dataset_from_index"]),
                    videos,
                )
            )
        if len({e.index for e in out}) != len(out):
            raise self._fail("meta/episodes lists an episode_index twice")
        return out

    @property
    def episode_indices(self) -> list[int]:
        return [e.index for e in self.episodes]

    def episode(self, index: int) -> EpisodeInfo:
        for e in self.episodes:
            if e.index == index:
                return e
        raise self._fail(f"has no episode {index}")

    @property
    def camera_keys(self) -> list[str]:
        """Every camera: MP4 videos first, then images stored inside the data Parquet."""
        return [*self.video_keys, *self.image_keys]

    def camera_storage(self, key: str) -> str:
        """How a camera is stored: "video" (MP4 per camera) or "image" (in the data Parquet)."""
        return "video" if key in self.video_keys else "image"

    @property
    def data_keys(self) -> list[str]:
        """The data Parquet files, in episode order (these are plain Parquet shards)."""
        return list(dict.fromkeys(e.data_key for e in self.episodes))

    def image_shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, C) of a camera, from info.json."""
        h, w, c = (int(v) for v in self.features[key]["shape"])
        return h, w, c

    # ----------------------------------------------------------------------------- low-dim

    def read_table(self, columns: Sequence[str]) -> pa.Table:
        """The named columns of every data file, concatenated."""
        fs, base = self.root.arrow_filesystem()
        tables = []
        for key in self.data_keys:
            try:
                tables.append(
                    pq.read_table(
                        f"{base.rstrip('/')}/{key}", filesystem=fs, columns=list(columns)
                    )
                )
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise self._fail(f"cannot read {self.root.uri_for(key)}: {exc}") from exc
        return pa.concat_tables(tables)

    def read_frames(self, keys: Sequence[str]) -> Frames:
        """Validated low-dim frames; every episode's row count must equal its meta length."""
        unknown = [k for k in keys if k not in self.lowdim_keys]
        if unknown:
            raise self._fail(f"has no low-dim features {unknown}; it has {self.lowdim_keys}")
        table = self.read_table(["episode_index", "frame_index", *keys])
        frames = frames_from_table(table, keys, self.name)
        got = dict(
            zip(
                frames.episode_index.tolist(),
                (frames.episode_bounds[:, 1] - frames.episode_bounds[:, 0]).tolist(),
                strict=True,
            )
        )
        for e in self.episodes:
            if got.get(e.index) != e.length:
                raise self._fail(
                    f"episode {e.index}: data has {got.get(e.index, 0)} rows, "
                    f"meta/episodes says length {e.length}"
                )
        extra = sorted(set(got) - set(self.episode_indices))
        if extra:
            raise self._fail(f"data holds episodes {extra[:5]} that meta/episodes does not list")
        return frames

    # ------------------------------------------------------------------------------ video

    def _container(self, key: str) -> Any:
        """An open PyAV container for a video file, one per thread and file (reused)."""
        cache: OrderedDict[str, Any] = getattr(self._local, "containers", None) or OrderedDict()
        self._local.containers = cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        local = self.root.local_path
        container: Any
        if local is not None:
            path = local.joinpath(*key.split("/"))
            if not path.is_file():
                raise NotFoundError(self.root.uri_for(key), "video file is missing")
            container = av.open(str(path))
        else:
            container = av.open(_BlockReader(self.root.open_input(key)))
        cache[key] = container
        while len(cache) > _OPEN_FILES:
            cache.popitem(last=False)[1].close()
        return container

    def _drop(self, key: str) -> None:
        cache = getattr(self._local, "containers", None) or {}
        container = cache.pop(key, None)
        if container is not None:
            container.close()

    def _decode_into(self, out: np.ndarray, span: VideoSpan, where: str) -> np.ndarray:
        """Decode the span's frames into ``out``; returns which frames were seen."""
        seen = np.zeros(len(out), dtype=bool)
        container = self._container(span.key)
        stream = container.streams.video[0]
        container.seek(int(span.from_ts / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None:
                raise self._fail(f"{where}: a frame has no timestamp")
            j = round((float(frame.time) - span.from_ts) * self.fps)
            if j < 0:
                continue
            if j >= len(out):
                break
            if (frame.height, frame.width) != out.shape[1:3]:
                h, w = out.shape[1:3]
                raise self._fail(
                    f"{where}: frames are {frame.height}x{frame.width}, info.json says {h}x{w}"
                )
            out[j] = frame.to_ndarray(format="rgb24")
            seen[j] = True
        return seen

    def decode_episode(self, key: str, episode: int) -> np.ndarray:
        """Every frame of one camera in one episode, (L, H, W, 3) uint8, validated."""
        if key in self.image_keys:
            return self._decode_images(key, self.episode(episode))
        if key not in self.video_keys:
            raise self._fail(f"has no camera {key!r}; cameras: {self.camera_keys}")
        ep = self.episode(episode)
        span = ep.videos[key]
        where = f"episode {episode} camera {key!r} ({self.root.uri_for(span.key)})"
        h, w, _ = self.image_shape(key)
        out = np.empty((ep.length, h, w, 3), dtype=np.uint8)
        try:
            seen = self._decode_into(out, span, where)
        except (av.error.FFmpegError, OSError) as exc:
            self._drop(span.key)
            raise self._fail(f"{where}: cannot read the video: {exc}") from exc
        if not seen.all():
            raise self._fail(
                f"{where}: decoded {int(seen.sum())} frames, the data has {ep.length} rows "
                f"(first missing frame {int(np.flatnonzero(~seen)[0])})"
            )
        return out

    # ---------------------------------------------------------------- images in Parquet

    def _data_file(self, key: str) -> tuple[pq.ParquetFile, np.ndarray, np.ndarray]:
        """An open data file with its episode_index and frame_index columns, one per thread and
        file (reused: an episode's images are then one row-group read away)."""
        cache: OrderedDict[str, Any] = getattr(self._local, "data_files", None) or OrderedDict()
        self._local.data_files = cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        fs, base = self.root.arrow_filesystem()
        pf = pq.ParquetFile(fs.open_input_file(f"{base.rstrip('/')}/{key}"))
        index = pf.read(columns=["episode_index", "frame_index"])
        entry = (
            pf,
            index.column("episode_index").to_numpy().astype(np.int64),
            index.column("frame_index").to_numpy().astype(np.int64),
        )
        cache[key] = entry
        while len(cache) > _OPEN_FILES:
            cache.popitem(last=False)
        return entry

    def _image_column(
        self, key: str, ep: EpisodeInfo, where: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
        """The episode's file row numbers and frame indices, and the camera column read from
        only the row groups that hold them, with each row's position in it."""
        try:
            pf, eps, frs = self._data_file(ep.data_key)
            rows = np.flatnonzero(eps == ep.index)
            if len(rows) != ep.length:
                raise self._fail(
                    f"{where}: the data file has {len(rows)} rows of this episode, "
                    f"meta/episodes says length {ep.length}"
                )
            if key not in pf.schema_arrow.names:
                raise self._fail(f"{where}: the data file has no column {key!r}")
            column, positions = read_rows(pf, key, rows.tolist())
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            (getattr(self._local, "data_files", None) or {}).pop(ep.data_key, None)
            raise self._fail(f"{where}: cannot read the image column: {exc}") from exc
        return rows, frs[rows], positions, column

    def _decode_images(self, key: str, ep: EpisodeInfo) -> np.ndarray:
        """One camera stored as encoded images in the data Parquet, (L, H, W, 3) uint8."""
        where = f"episode {ep.index} camera {key!r} ({self.root.uri_for(ep.data_key)})"
        rows, frames, positions, column = self._image_column(key, ep, where)
        blobs, paths = image_blobs(column), image_paths(column)
        if blobs is None:
            raise self._fail(
                f"{where}: column type {column.type}, expected an image struct<bytes, path>"
            )
        h, w, _ = self.image_shape(key)
        out = np.empty((ep.length, h, w, 3), dtype=np.uint8)
        seen = np.zeros(ep.length, dtype=bool)
        for row, j, pos in zip(rows.tolist(), frames.tolist(), positions.tolist(), strict=True):
            at = f"{where}: row {row} (frame {j})"
            if not 0 <= j < ep.length or seen[j]:
                raise self._fail(f"{at}: frame_index must run 0..{ep.length - 1}, once each")
            blob = blobs[pos].as_py()
            if not blob:
                path = paths[pos].as_py() if paths is not None else None
                raise self._fail(
                    f"{at}: the image has no bytes"
                    + (f" (path {path!r} was not embedded)" if path else "")
                )
            try:
                img = decode_image(blob)
            except ValueError as exc:
                raise self._fail(f"{at}: {exc}") from exc
            if img.shape != (h, w, 3):
                raise self._fail(
                    f"{at}: the image is {img.shape[0]}x{img.shape[1]}, info.json says {h}x{w}"
                )
            out[j], seen[j] = img, True
        return out

    def iter_episodes(
        self, keys: Sequence[str] | None = None, episodes: Sequence[int] | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Stream (episode index, {camera: frames}) in file order, one episode in memory."""
        keys = list(self.camera_keys if keys is None else keys)
        for e in self.episodes if episodes is None else [self.episode(i) for i in episodes]:
            yield e.index, {k: self.decode_episode(k, e.index) for k in keys}

    def validate(self, decode: bool = True) -> dict[str, Any]:
        """Check low-dim columns and (optionally) decode every frame of every camera."""
        frames = self.read_frames(self.lowdim_keys) if self.lowdim_keys else None
        n_decoded = 0
        if decode:
            for _, cams in self.iter_episodes():
                n_decoded += sum(len(v) for v in cams.values())
        return {
            "dataset": self.name,
            "episodes": len(self.episodes),
            "frames": frames.n_frames if frames is not None else None,
            "cameras": {k: self.camera_storage(k) for k in self.camera_keys},
            "decoded_frames": n_decoded,
        }

    def close(self) -> None:
        """Close this thread's open video and data files."""
        for container in (getattr(self._local, "containers", None) or {}).values():
            container.close()
        self._local.containers = None
        self._local.data_files = None


def ambient_meta(root: StorageRoot, name: str | None = None) -> dict[str, Any]:
    """The platform's dataset meta (``ambient_platform.datasets`` layout) of a LeRobot v3 root.

    LeRobot's data files are Parquet shards with ``episode_index``, ``frame_index`` and
    list-of-float feature columns, i.e. the shards every reader here already takes; so training,
    classifier training and annotation read the low-dim columns in place through this meta, and
    only cameras need ``LeRobotDataset`` (MP4 or Parquet images). The digest covers info.json
    and the size and ETag (mtime locally) of every data (image columns included), episode and
    video file. A dataset written by ``ambient data import`` also carries its ``imported_from``
    and ``source_episode_index`` (``meta/ambient_import.json``), as imports in our layout do.
    """
    ds = LeRobotDataset(root, name)
    rows: dict[str, int] = {}
    for e in ds.episodes:
        rows[e.data_key] = rows.get(e.data_key, 0) + e.length
    listed = {f.key: f for f in root.list("")}
    missing = [k for k in rows if k not in listed]
    if missing:
        raise ds._fail(f"data files {missing} named by meta/episodes are missing")
    h = hashlib.sha256(json.dumps(ds.info, sort_keys=True).encode())
    for key in sorted(k for k in listed if k.startswith(("data/", "meta/episodes/", "videos/"))):
        h.update(f"{key}:{listed[key].size}:{listed[key].etag_or_mtime}".encode())
    lineage: dict[str, Any] = {}
    if IMPORT_PATH in listed:
        try:
            imported = root.read_json(IMPORT_PATH)
        except ValueError as exc:
            raise ds._fail(f"{root.uri_for(IMPORT_PATH)}: {exc}") from exc
        if not isinstance(imported, dict):
            raise ds._fail(f"{root.uri_for(IMPORT_PATH)}: expected a JSON object")
        lineage["source_episode_index"] = imported.pop("source_episode_index", None)
        lineage["imported_from"] = imported
    return {
        "format": f"lerobot/{ds.info['codebase_version']}",
        "name": name or root.uri.rstrip("/").rsplit("/", 1)[-1],
        "fps": ds.fps,
        "robot_type": ds.info.get("robot_type"),
        "features": {
            k: {"dtype": "float32", "shape": ds.features[k]["shape"]} for k in ds.lowdim_keys
        },
        "cameras": {
            k: {"shape": list(ds.image_shape(k)), "storage": ds.camera_storage(k)}
            for k in ds.camera_keys
        },
        "episodes": len(ds.episodes),
        "frames": sum(rows.values()),
        "shards": [{"key": k, "rows": n} for k, n in rows.items()],
        "digest": h.hexdigest(),
        **lineage,
    }
