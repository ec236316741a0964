"""LeRobot ``dtype: "image"`` cameras: one PNG/JPEG per frame inside the data Parquet files.

LeRobot stores a camera this way when videos are off (``use_videos=False``): a struct column
``{bytes: binary, path: string}`` per row (the Hugging Face ``datasets.Image`` layout), next to the
low-dim columns of the same frame. Frames are encoded and decoded with Pillow: it is already
installed (matplotlib depends on it), has no dependencies of its own (no torch, no CUDA) and reads
every format LeRobot writes; PyAV would need a demuxer round trip per still image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_FORMATS = ("PNG", "JPEG")
STRUCT_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encode_images(frames: np.ndarray, fmt: str = "PNG", first_frame: int = 0) -> pa.StructArray:
    """(L, H, W, 3) uint8 -> the LeRobot image column (encoded bytes, a frame file name)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}: expected one of {IMAGE_FORMATS}")
    blobs, names = [], []
    for j, img in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt)
        blobs.append(buf.getvalue())
        names.append(f"frame_{first_frame + j:06d}.{fmt.lower().replace('jpeg', 'jpg')}")
    return pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(names, pa.string())], fields=list(STRUCT_TYPE)
    )


def decode_image(blob: bytes) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8; ``ValueError`` says why they cannot be used."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            if img.mode != "RGB":
                raise ValueError(f"a {img.mode} image, expected RGB (3 channels)")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable PNG/JPEG image ({exc})") from exc


def image_blobs(column: pa.Array) -> pa.Array | None:
    """The bytes of an image column: the struct's ``bytes`` field (or a plain binary column);
    None when the column holds something else."""
    t = column.type
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return column.field("bytes")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return column
    return None


def image_paths(column: pa.Array) -> pa.Array | None:
    """The struct's ``path`` field, when it has one (names a frame whose bytes are missing)."""
    t = column.type
    if pa.types.is_struct(t) and t.get_field_index("path") >= 0:
        return column.field("path")
    return None


def read_rows(pf: pq.ParquetFile, column: str, rows: Sequence[int]) -> tuple[pa.Array, np.ndarray]:
    """Read ``column`` from only the row groups that hold ``rows`` (sorted file row numbers);
    returns the column and each row's position in it."""
    md = pf.metadata
    offsets = np.cumsum([0, *(md.row_group(i).num_rows for i in range(md.num_row_groups))])
    rows_arr = np.asarray(rows, dtype=np.int64)
    group_of = np.searchsorted(offsets, rows_arr, side="right") - 1
    groups = np.unique(group_of)
    sizes = np.diff(offsets)[groups]
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.searchsorted(groups, group_of)
    positions = rows_arr - offsets[group_of] + base[slot]
    table = pf.read_row_groups([int(g) for g in groups], columns=[column])
    return table.column(column).combine_chunks(), positions
