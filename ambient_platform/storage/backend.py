"""What a storage backend must do, so that ``StorageRoot`` is the same on a disk and on S3.

Why: the local and the S3 backend differ in every detail (temp files and flocks vs conditional
PUTs), but jobs, manifests and leases need exactly one contract: atomic whole-file writes,
create-only writes, compare-and-swap on a version token, listings by plain string prefix and
errors from ``ambient_core.errors``. Keys reaching a backend are already validated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs

__all__ = ["Backend", "FileInfo", "Version"]

#: A compare-and-swap token: the S3 ETag, or the local file's bytes.
Version = str | bytes


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One stored file: ``key`` relative to the root, size in bytes, and a change token.

    ``etag_or_mtime`` is the S3 ETag (quotes stripped) or the local ``st_mtime_ns``; compare it
    for equality only, to notice that a file changed.
    """

    key: str
    size: int
    etag_or_mtime: str


class Backend(Protocol):
    """The operations of one root; ``key`` arguments are validated keys (``a/b/c``)."""

    @property
    def uri(self) -> str: ...

    def uri_for(self, key: str) -> str: ...

    def child(self, key: str) -> Backend: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def write_if_absent(self, key: str, data: bytes) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def listing(self, prefix: str) -> list[FileInfo]: ...

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]: ...

    def open_input(self, key: str) -> pyarrow.NativeFile: ...

    def open_output(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def read_versioned(self, key: str) -> tuple[bytes, Version] | None: ...

    def replace_if(self, key: str, data: bytes, version: Version) -> bool: ...

    def delete_if(self, key: str, version: Version) -> bool: ...
