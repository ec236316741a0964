"""``StorageRoot``: one API for a local directory and an ``s3://`` prefix.

Why: datasets, manifests, score curves and leases live on a laptop disk or in S3, and jobs must
not care which. The root validates every key (``keys``), hands the work to its backend
(``local`` or ``s3``), adds JSON and leases on top, and pickles as its URI only, so it can be
shipped to Ray workers, which rebuild their S3 client from their own environment.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ambient_core.errors import DataError
from ambient_platform.storage import leases
from ambient_platform.storage.backend import Backend, FileInfo
from ambient_platform.storage.keys import check_prefix, join_key, parse_uri
from ambient_platform.storage.leases import Lease
from ambient_platform.storage.local import LocalBackend
from ambient_platform.storage.s3 import S3Backend

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs

__all__ = ["StorageRoot"]


class StorageRoot:
    """A directory or ``s3://bucket/prefix`` that keys are resolved against.

    Construct from a local path (absolute, relative, ``~``), a ``file://`` URI or
    ``s3://bucket[/prefix]``. Bad URIs and keys raise ConfigError, missing files NotFoundError
    (a FileNotFoundError) naming the full URI, backend failures StorageError naming the bucket,
    endpoint or URI.
    """

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        location = parse_uri(uri)
        self._backend: Backend
        if isinstance(location, Path):
            self._backend = LocalBackend(location)
        else:
            self._backend = S3Backend(location.bucket, location.prefix)

    @classmethod
    def _of(cls, backend: Backend) -> StorageRoot:
        new = cls.__new__(cls)
        new._backend = backend
        return new

    # ----------------------------------------------------------------------------- identity

    @property
    def uri(self) -> str:
        """Canonical URI: ``s3://bucket/prefix`` or ``file:///abs/path``."""
        return self._backend.uri

    @property
    def local_path(self) -> Path | None:
        """The absolute directory for a local root; None for S3."""
        return self._backend.path if isinstance(self._backend, LocalBackend) else None

    @property
    def is_s3(self) -> bool:
        return isinstance(self._backend, S3Backend)

    def __repr__(self) -> str:
        return f"StorageRoot({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageRoot) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self) -> tuple[type[StorageRoot], tuple[str]]:
        # Only the URI travels; clients are rebuilt from the receiving process's environment.
        return (StorageRoot, (self.uri,))

    # --------------------------------------------------------------------------------- keys

    def join(self, *parts: str) -> str:
        """A validated key (``a/b/c``) from parts; parts may themselves contain ``/``."""
        return join_key(*parts)

    def child(self, *parts: str) -> StorageRoot:
        """The root one or more levels below this one (shares this root's S3 client)."""
        return StorageRoot._of(self._backend.child(join_key(*parts)))

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (for messages, MLflow inputs and manifests)."""
        return self._backend.uri_for(join_key(key))

    # ---------------------------------------------------------------------------- bytes

    def read_bytes(self, key: str) -> bytes:
        """The whole content of ``key``; NotFoundError naming the full URI if absent."""
        return self._backend.read_bytes(join_key(key))

    def write_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Replace ``key`` atomically: readers see the old content or the new, never a mix."""
        self._backend.write_bytes(join_key(key), bytes(data))

    def write_bytes_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Create ``key`` only if it does not exist; True if this call created it.

        This is how manifests are committed exactly once (local: hard link of a complete temp
        file; S3: ``If-None-Match: *``).
        """
        return self._backend.write_if_absent(join_key(key), bytes(data))

    def exists(self, key: str) -> bool:
        """Whether a file/object is stored at ``key`` (directories do not count)."""
        return self._backend.exists(join_key(key))

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting an absent key is not an error (as on S3)."""
        self._backend.delete(join_key(key))

    def list(self, prefix: str = "", suffix: str | None = None) -> builtins.list[FileInfo]:
        """Files under the root whose key starts with ``prefix`` (a plain string prefix, as on
        S3: ``shards/part-`` matches ``shards/part-0001.parquet``) and ends with ``suffix``;
        sorted by key. S3 directory-marker objects and in-flight local temp files are skipped.
        """
        check_prefix(prefix)
        found = self._backend.listing(prefix)
        if suffix:
            found = [info for info in found if info.key.endswith(suffix)]
        return sorted(found, key=lambda info: info.key)

    # ----------------------------------------------------------------------------- JSON

    def read_json(self, key: str) -> Any:
        """Parsed JSON at ``key``; DataError (a ValueError) naming the URI if it is not JSON."""
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise DataError(f"{self.uri_for(key)} is not valid JSON: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> None:
        """Atomically write ``obj`` as indented, key-sorted JSON (NaN/inf rejected)."""
        self.write_bytes(key, self._json_bytes(key, obj))

    def write_json_if_absent(self, key: str, obj: Any) -> bool:
        """Create-only JSON write (manifest commits); True if this call created ``key``."""
        return self.write_bytes_if_absent(key, self._json_bytes(key, obj))

    def _json_bytes(self, key: str, obj: Any) -> bytes:
        """Serialise before touching storage, so a bad object never leaves a partial file."""
        try:
            text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
        except ValueError as exc:  # NaN or infinity somewhere in obj
            raise DataError(f"cannot write {self.uri_for(key)}: {exc}") from exc
        return (text + "\n").encode()

    # --------------------------------------------------------------------------- streams

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """A pyarrow filesystem and this root's path in it, for pyarrow.parquet (and Ray tasks).

        S3: ``S3FileSystem`` pointed at the environment's endpoint and ``bucket/prefix`` with no
        scheme (pass both as ``filesystem=``/path). Local: ``LocalFileSystem`` and the absolute
        path; pyarrow does not create parent directories there, so ``create_dir`` first.
        """
        return self._backend.arrow_filesystem()

    def open_input(self, key: str) -> pyarrow.NativeFile:
        """A seekable pyarrow input file (range reads on S3, so Parquet footers are cheap)."""
        return self._backend.open_input(join_key(key))

    @contextlib.contextmanager
    def open_output(self, key: str) -> Iterator[IO[bytes]]:
        """A writable binary file whose content appears at ``key`` only when the block exits
        cleanly; on an exception nothing is written."""
        with self._backend.open_output(join_key(key)) as f:
            yield f

    # ---------------------------------------------------------------------------- leases

    def read_lease(self, key: str) -> Lease | None:
        """The lease stored at ``key``, or None if nobody holds one; DataError if corrupt."""
        current = self._backend.read_versioned(join_key(key))
        if current is None:
            return None
        lease = leases.parse(current[0])
        if lease is None:
            raise DataError(f"{self.uri_for(key)} is not a valid lease file")
        return lease

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew) the lease at ``key`` for ``ttl_s`` seconds; False if another owner
        holds an unexpired one.

        Creation is create-if-absent; an expired (or unreadable) lease is taken over with a
        compare-and-swap on the version seen expired (S3: ``IfMatch`` ETag; local: under a
        directory flock). The holder renews by calling again before expiry. Expiry uses wall
        clocks: keep ``ttl_s`` far above the clock skew between machines.
        """
        return leases.acquire(self._backend, join_key(key), owner, ttl_s)

    def release_lease(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s lease at ``key``; False (and nothing deleted) if it is held by
        someone else or already gone."""
        return leases.release(self._backend, join_key(key), owner)
