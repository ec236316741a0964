"""One storage API for local directories and ``s3://`` prefixes.

Why: datasets, manifests, score curves and leases live on a laptop disk or in S3, and jobs must
not care which. Every write is atomic (no reader ever sees half a file), create-only writes commit
manifests exactly once, and leases keep two watchers off the same shards. The S3 endpoint and the
credentials come only from the environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and the
default boto3 / AWS SDK chain), never from a URI or a config file, so nothing loggable holds them.

Keys are ``/``-separated paths relative to a root; they are validated so that no user-supplied
name can leave the root (``..``, absolute parts, backslashes, NUL). Symlinks the owner of a local
root puts inside it are followed: the confinement is lexical, which is what matters for names that
arrive from configs and CLIs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ambient_core.errors import LeaseError, StorageError

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs

__all__ = [
    "ENDPOINT_ENV_VARS",
    "FileInfo",
    "Lease",
    "LeaseKeeper",
    "LeaseLost",
    "StorageError",
    "StorageRoot",
    "s3_endpoint_from_env",
    "validate_name",
]

#: Environment variables naming the S3 endpoint, most specific first (same order as botocore).
ENDPOINT_ENV_VARS: tuple[str, ...] = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_NAME_MAX = 128
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
# Temporary files of in-flight local writes; list() hides them and keys may not use the prefix.
_TMP_PREFIX = ".~tmp-"
# Errors of os.link that mean "this filesystem has no hard links", not "the key exists".
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_S3_SPOOL_BYTES = 8 * 1024 * 1024
_CONFLICT_RETRIES = 5
_LEASE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One stored file: ``key`` relative to the root, size in bytes, and a change token.

    ``etag_or_mtime`` is the S3 ETag (quotes stripped) or the local ``st_mtime_ns``; compare it
    for equality only, to notice that a file changed.
    """

    key: str
    size: int
    etag_or_mtime: str


@dataclass(frozen=True, slots=True)
class Lease:
    """The content of a lease file: who holds it and until when (Unix seconds, wall clock)."""

    owner: str
    acquired_at: float
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        """True once the lease may be taken over by another owner."""
        return (time.time() if now is None else now) >= self.expires_at


def validate_name(name: str, what: str = "dataset name") -> str:
    """Check a user-supplied dataset/run name and return it unchanged.

    Names become path segments and S3 keys, so they are restricted to ASCII letters, digits,
    ``.``, ``_`` and ``-``, 1..128 characters, and must not start with ``.`` (hidden files,
    ``..``). Raises ValueError naming ``what`` and the offending part.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > _NAME_MAX:
        raise ValueError(
            f"{what} {name[:32]!r}... is {len(name)} characters long; at most {_NAME_MAX} allowed"
        )
    if name.startswith("."):
        raise ValueError(f"{what} {name!r} must not start with '.'")
    if not _NAME_RE.fullmatch(name):
        bad = "".join(sorted({c for c in name if not _NAME_RE.fullmatch(c)}))
        raise ValueError(
            f"{what} {name!r} contains {bad!r}; only ASCII letters, digits, '.', '_' and '-' "
            "are allowed"
        )
    return name


def s3_endpoint_from_env() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS's own endpoints."""
    for var in ENDPOINT_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _key_segments(parts: tuple[str, ...]) -> list[str]:
    """Split and validate key parts; every rejection says which part and why."""
    if not parts:
        raise ValueError("a key needs at least one part")
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"key part {part!r} must be a string, got {type(part).__name__}")
        if not part:
            raise ValueError("empty key part")
        if "\\" in part:
            raise ValueError(f"key part {part!r} contains a backslash; use '/' to separate")
        if any(ord(c) < 32 or c == "\x7f" for c in part):
            raise ValueError(f"key part {part!r} contains NUL or another control character")
        if part.startswith("/"):
            raise ValueError(f"key part {part!r} is absolute; keys are relative to the root")
        for seg in part.split("/"):
            if not seg:
                raise ValueError(
                    f"key part {part!r} has an empty segment (double or trailing '/')"
                )
            if seg in (".", ".."):
                raise ValueError(
                    f"key part {part!r} contains {seg!r}; keys may not leave the root"
                )
            if seg.startswith(_TMP_PREFIX):
                raise ValueError(f"key part {part!r} uses the reserved prefix {_TMP_PREFIX!r}")
            segments.append(seg)
    return segments


def _check_prefix(prefix: str) -> None:
    """Validate a list() prefix: a key, a key plus '/', or a key with a partial last name."""
    if not prefix:
        return
    *dirs, last = prefix.split("/")
    if dirs:
        _key_segments(("/".join(dirs),))
    if last:
        if last == "..":
            raise ValueError(f"list prefix {prefix!r} contains '..'; keys may not leave the root")
        if "\\" in last or any(ord(c) < 32 for c in last):
            raise ValueError(f"list prefix {prefix!r} contains a backslash or control character")


def _missing(uri: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such file or object", uri)


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(directory: Path) -> None:
    """Make a rename/link in ``directory`` durable (the entry, not just the file data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(directory: Path) -> tuple[Path, IO[bytes]]:
    """A fresh temp file next to the destination (same filesystem, so os.replace is atomic).

    Created with mode 0o666 minus the umask, like a plain open(), rather than mkstemp's 0o600,
    so shared datasets stay readable by the group.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return tmp, os.fdopen(fd, "wb")


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive flock on a directory: serialises lease compare-and-swap across processes.

    flock locks belong to the open file description, so two threads of one process that each
    open the directory also exclude each other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lease_payload(owner: str, ttl_s: float) -> bytes:
    now = time.time()
    body = {
        "owner": owner,
        "acquired_at": now,
        "expires_at": now + ttl_s,
        # A fresh nonce makes every lease write distinct, so compare-and-swap on its version
        # (bytes locally, ETag on S3) can never confuse an old lease with a renewed one.
        "nonce": uuid.uuid4().hex,
    }
    return json.dumps(body, sort_keys=True).encode()


def _parse_lease(data: bytes) -> Lease | None:
    try:
        body = json.loads(data)
        return Lease(
            owner=str(body["owner"]),
            acquired_at=float(body["acquired_at"]),
            expires_at=float(body["expires_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _json_bytes(obj: Any) -> bytes:
    """Serialise before touching storage, so a bad object never leaves a partial file."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


class _S3Handles:
    """Lazily created boto3 client and pyarrow filesystem, shared by a root and its children.

    The endpoint is read from the environment when the root is built (also when it is unpickled
    on a Ray worker); clients are built at first use, never pickled, never printed: they are the
    only objects that see credentials.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: Any = None
        self._arrow: pyarrow.fs.S3FileSystem | None = None
        self.endpoint: str | None = s3_endpoint_from_env()
        self.checked_buckets: set[str] = set()

    @property
    def endpoint_label(self) -> str:
        return self.endpoint or "the default AWS endpoint (AWS_ENDPOINT_URL is not set)"

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32
                )
                session = boto3.session.Session()
                self._client = session.client("s3", endpoint_url=self.endpoint, config=config)
            return self._client

    def arrow(self) -> pyarrow.fs.S3FileSystem:
        with self._lock:
            if self._arrow is None:
                from pyarrow.fs import S3FileSystem

                kwargs: dict[str, Any] = {}
                if self.endpoint:
                    # pyarrow does not read AWS_ENDPOINT_URL itself: without this it goes to AWS.
                    split = urlsplit(self.endpoint)
                    if not split.netloc or split.path not in ("", "/"):
                        raise ValueError(
                            f"S3 endpoint {self.endpoint!r} must look like scheme://host[:port]"
                        )
                    kwargs["endpoint_override"] = split.netloc
                    kwargs["scheme"] = split.scheme or "https"
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    kwargs["region"] = region
                self._arrow = S3FileSystem(**kwargs)
            return self._arrow


class StorageRoot:
    """A directory or ``s3://bucket/prefix`` that keys are resolved against.

    Construct from a local path (absolute, relative, ``~``), a ``file://`` URI or
    ``s3://bucket[/prefix]``. Pickles as its URI only, so it can be shipped to Ray workers,
    which rebuild their S3 client from their own environment.
    """

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self._bucket: str | None = None
        self._prefix = ""
        self._path: Path | None = None
        self._handles: _S3Handles | None = None
        if isinstance(uri, os.PathLike):
            self._path = Path(os.path.abspath(os.path.expanduser(os.fspath(uri))))
            return
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
        if "\x00" in uri:
            raise ValueError("storage URI contains NUL")
        match = _SCHEME_RE.match(uri)
        scheme = match.group(1).lower() if match else ""
        if scheme == "s3":
            self._parse_s3(uri)
        elif scheme == "file":
            self._parse_file(uri)
        elif scheme:
            raise ValueError(
                f"unsupported storage scheme {scheme!r} in {uri!r}; use a local path, "
                "file:// or s3://"
            )
        elif re.match(r"(?i)(s3|file):", uri):
            raise ValueError(f"malformed storage URI {uri!r}; expected s3://bucket/prefix")
        else:
            self._path = Path(os.path.abspath(os.path.expanduser(uri)))

    def _parse_s3(self, uri: str) -> None:
        split = urlsplit(uri)
        if "@" in split.netloc:
            raise ValueError(
                "credentials in a storage URI are not allowed; provide them through the "
                "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)"
            )
        if split.query or split.fragment:
            raise ValueError(
                f"query strings and fragments are not supported in {uri!r}; set the endpoint "
                "with AWS_ENDPOINT_URL instead of ?endpoint_override="
            )
        bucket = split.netloc
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ValueError(
                f"invalid S3 bucket name {bucket!r} in {uri!r}: 3-63 characters, lowercase "
                "letters, digits, '.' and '-'"
            )
        prefix = split.path.strip("/")
        self._bucket = bucket
        self._prefix = "/".join(_key_segments((prefix,))) if prefix else ""
        self._handles = _S3Handles()

    def _parse_file(self, uri: str) -> None:
        split = urlsplit(uri)
        if split.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names host {split.netloc!r}; only local files")
        if split.query or split.fragment:
            raise ValueError(f"query strings and fragments are not supported in {uri!r}")
        path = unquote(split.path)
        if not path.startswith("/"):
            raise ValueError(f"file URI {uri!r} must hold an absolute path")
        self._path = Path(os.path.normpath(path))

    # ----------------------------------------------------------------------------- identity

    @property
    def uri(self) -> str:
        """Canonical URI: ``s3://bucket/prefix`` or ``file:///abs/path``."""
        if self._path is not None:
            return self._path.as_uri()
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    @property
    def local_path(self) -> Path | None:
        """The absolute directory for a local root; None for S3."""
        return self._path

    @property
    def is_s3(self) -> bool:
        return self._bucket is not None

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
        return "/".join(_key_segments(parts))

    def child(self, *parts: str) -> StorageRoot:
        """The root one or more levels below this one (shares this root's S3 client)."""
        key = self.join(*parts)
        new = StorageRoot.__new__(StorageRoot)
        new._bucket = self._bucket
        new._handles = self._handles
        if self._path is not None:
            new._path = self._path.joinpath(*key.split("/"))
            new._prefix = ""
        else:
            new._path = None
            new._prefix = f"{self._prefix}/{key}" if self._prefix else key
        return new

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (for messages, MLflow inputs and manifests)."""
        key = self.join(key)
        if self._path is not None:
            return self._path.joinpath(*key.split("/")).as_uri()
        return f"s3://{self._bucket}/{self._s3_key(key)}"

    def _s3_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _local(self, key: str) -> Path:
        assert self._path is not None
        return self._path.joinpath(*_key_segments((key,)))

    # ------------------------------------------------------------------------ S3 plumbing

    def _s3(self) -> tuple[Any, str, _S3Handles]:
        assert self._handles is not None and self._bucket is not None
        return self._handles.client(), self._bucket, self._handles

    def _bucket_missing(self) -> StorageError:
        assert self._handles is not None
        return StorageError(
            f"S3 bucket {self._bucket!r} does not exist at {self._handles.endpoint_label}; "
            "create it or fix the storage URI"
        )

    def _translate(self, exc: Exception, uri: str) -> OSError:
        """Turn a botocore error into FileNotFoundError / PermissionError / StorageError."""
        from botocore.exceptions import ClientError, NoCredentialsError

        assert self._handles is not None
        endpoint = self._handles.endpoint_label
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no AWS credentials found for {uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or configure a profile"
            )
        if not isinstance(exc, ClientError):
            return StorageError(f"S3 request for {uri} failed at {endpoint}: {exc}")
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            return self._bucket_missing()
        if code in ("NoSuchKey", "404", "NotFound"):
            return _missing(uri)
        if code in (
            "AccessDenied",
            "403",
            "Forbidden",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
        ):
            return PermissionError(
                errno.EACCES,
                f"S3 denied access ({code}) at {endpoint}; check the AWS credentials in the "
                "environment",
                uri,
            )
        return StorageError(
            f"S3 request for {uri} failed at {endpoint}: {code} {error.get('Message', '')}"
        )

    @contextlib.contextmanager
    def _s3_errors(self, uri: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, uri) from exc

    def _check_bucket(self) -> None:
        """Raise StorageError if the bucket is missing (HEAD answers a bare 404 for both)."""
        from botocore.exceptions import ClientError

        client, bucket, handles = self._s3()
        if bucket in handles.checked_buckets:
            return
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise self._bucket_missing() from exc
            if status != 403:  # 403: exists, but we may not list it; objects may still work
                raise self._translate(exc, f"s3://{bucket}") from exc
        handles.checked_buckets.add(bucket)

    @staticmethod
    def _code(exc: Any) -> tuple[str, int | None]:
        response = exc.response or {}
        code = str(response.get("Error", {}).get("Code", ""))
        return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")

    # ---------------------------------------------------------------------------- bytes

    def read_bytes(self, key: str) -> bytes:
        """The whole content of ``key``; FileNotFoundError naming the full URI if absent."""
        uri = self.uri_for(key)
        if self._path is not None:
            try:
                return self._local(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise _missing(uri) from exc
        client, bucket, _ = self._s3()
        with self._s3_errors(uri):
            response = client.get_object(Bucket=bucket, Key=self._s3_key(self.join(key)))
            with contextlib.closing(response["Body"]) as body:
                return body.read()

    def write_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Replace ``key`` atomically: readers see the old content or the new, never a mix."""
        if self._path is not None:
            with self._local_atomic(self._local(key)) as f:
                f.write(data)
            return
        client, bucket, _ = self._s3()
        with self._s3_errors(self.uri_for(key)):
            client.put_object(Bucket=bucket, Key=self._s3_key(self.join(key)), Body=bytes(data))

    @contextlib.contextmanager
    def _local_atomic(self, path: Path) -> Iterator[IO[bytes]]:
        """Temp file in the same directory + fsync + os.replace; the temp never survives."""
        tmp, f = _open_temp(path.parent)
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            _unlink_quiet(tmp)

    def write_bytes_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Create ``key`` only if it does not exist; True if this call created it.

        This is how manifests are committed exactly once. Local: the content goes to a temp file
        first and is hard-linked into place (link fails if the name exists), so the file appears
        complete. S3: ``put_object(IfNoneMatch="*")``, which AWS S3, MinIO and moto honour; a
        store that silently ignores the header would overwrite, so use a compliant one.
        """
        if self._path is not None:
            return self._local_create(self._local(key), bytes(data))
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket, _ = self._s3()
        uri = self.uri_for(key)
        s3_key = self._s3_key(self.join(key))
        for attempt in range(_CONFLICT_RETRIES):
            try:
                client.put_object(Bucket=bucket, Key=s3_key, Body=bytes(data), IfNoneMatch="*")
                return True
            except ClientError as exc:
                code, status = self._code(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                if code != "ConditionalRequestConflict" and status != 409:
                    raise self._translate(exc, uri) from exc
                # AWS answers 409 while a racing conditional write is in flight: retry.
                time.sleep(0.05 * (attempt + 1))
            except BotoCoreError as exc:
                raise self._translate(exc, uri) from exc
        raise StorageError(f"conditional write to {uri} kept conflicting with other writers")

    def _local_create(self, path: Path, data: bytes) -> bool:
        if path.exists():
            return False
        tmp, f = _open_temp(path.parent)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                return _exclusive_create(path, data)
            _fsync_dir(path.parent)
            return True
        finally:
            _unlink_quiet(tmp)

    def exists(self, key: str) -> bool:
        """Whether a file/object is stored at ``key`` (directories do not count)."""
        if self._path is not None:
            return self._local(key).is_file()
        from botocore.exceptions import ClientError

        client, bucket, _ = self._s3()
        uri = self.uri_for(key)
        try:
            client.head_object(Bucket=bucket, Key=self._s3_key(self.join(key)))
            return True
        except ClientError as exc:
            _, status = self._code(exc)
            if status != 404:
                raise self._translate(exc, uri) from exc
        self._check_bucket()
        return False

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting an absent key is not an error (as on S3)."""
        if self._path is not None:
            self._local(key).unlink(missing_ok=True)
            return
        client, bucket, _ = self._s3()
        with self._s3_errors(self.uri_for(key)):
            client.delete_object(Bucket=bucket, Key=self._s3_key(self.join(key)))

    def list(self, prefix: str = "", suffix: str | None = None) -> list[FileInfo]:
        """Files under the root whose key starts with ``prefix`` (a plain string prefix, as on
        S3: ``shards/part-`` matches ``shards/part-0001.parquet``) and ends with ``suffix``;
        sorted by key. S3 directory-marker objects and in-flight local temp files are skipped.
        """
        _check_prefix(prefix)
        found = self._list_local(prefix) if self._path is not None else self._list_s3(prefix)
        if suffix:
            found = [info for info in found if info.key.endswith(suffix)]
        return sorted(found, key=lambda info: info.key)

    def _list_local(self, prefix: str) -> list[FileInfo]:
        assert self._path is not None
        base = prefix.split("/")[:-1]
        start = self._path.joinpath(*base)
        found: list[FileInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self._path).as_posix()
            rel = "" if rel == "." else rel + "/"
            # Descend only into directories that can hold matching keys.
            dirnames[:] = [
                d
                for d in dirnames
                if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")
            ]
            for name in filenames:
                key = rel + name
                if name.startswith(_TMP_PREFIX) or not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # removed meanwhile, or a dangling symlink
                    continue
                found.append(FileInfo(key, st.st_size, str(st.st_mtime_ns)))
        return found

    def _list_s3(self, prefix: str) -> list[FileInfo]:
        client, bucket, _ = self._s3()
        base = f"{self._prefix}/" if self._prefix else ""
        found: list[FileInfo] = []
        with self._s3_errors(self.uri + "/" + prefix):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base) :]
                    if key and not key.endswith("/"):
                        found.append(FileInfo(key, int(obj["Size"]), obj["ETag"].strip('"')))
        return found

    # ----------------------------------------------------------------------------- JSON

    def read_json(self, key: str) -> Any:
        """Parsed JSON at ``key``; ValueError naming the URI if it is not valid JSON."""
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ValueError(f"{self.uri_for(key)} is not valid JSON: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> None:
        """Atomically write ``obj`` as indented, key-sorted JSON (NaN/inf rejected)."""
        self.write_bytes(key, _json_bytes(obj))

    def write_json_if_absent(self, key: str, obj: Any) -> bool:
        """Create-only JSON write (manifest commits); True if this call created ``key``."""
        return self.write_bytes_if_absent(key, _json_bytes(obj))

    # --------------------------------------------------------------------------- streams

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """A pyarrow filesystem and this root's path in it, for pyarrow.parquet and Ray Data.

        S3: ``S3FileSystem`` pointed at the environment's endpoint and ``bucket/prefix`` with no
        scheme (pass both as ``filesystem=``/path). Local: ``LocalFileSystem`` and the absolute
        path; pyarrow does not create parent directories there, so ``create_dir`` first.
        """
        if self._path is not None:
            from pyarrow.fs import LocalFileSystem

            return LocalFileSystem(), str(self._path)
        assert self._handles is not None
        path = f"{self._bucket}/{self._prefix}" if self._prefix else str(self._bucket)
        return self._handles.arrow(), path

    def open_input(self, key: str) -> pyarrow.NativeFile:
        """A seekable pyarrow input file (range reads on S3, so Parquet footers are cheap)."""
        fs, root = self.arrow_filesystem()
        uri = self.uri_for(key)
        try:
            return fs.open_input_file(f"{root}/{self.join(key)}")
        except (FileNotFoundError, IsADirectoryError) as exc:
            if self.is_s3:
                self._check_bucket()
            raise _missing(uri) from exc

    @contextlib.contextmanager
    def open_output(self, key: str) -> Iterator[IO[bytes]]:
        """A writable binary file whose content appears at ``key`` only when the block exits
        cleanly; on an exception nothing is written. Local: temp file + os.replace. S3: spooled
        to memory/disk, then one put_object (up to S3's 5 GB single-PUT limit).
        """
        if self._path is not None:
            with self._local_atomic(self._local(key)) as f:
                yield f
            return
        uri = self.uri_for(key)
        s3_key = self._s3_key(self.join(key))
        with tempfile.SpooledTemporaryFile(max_size=_S3_SPOOL_BYTES) as spool:
            yield spool
            spool.seek(0)
            client, bucket, _ = self._s3()
            with self._s3_errors(uri):
                client.put_object(Bucket=bucket, Key=s3_key, Body=spool)

    # ---------------------------------------------------------------------------- leases

    def read_lease(self, key: str) -> Lease | None:
        """The lease stored at ``key``, or None if nobody holds one; ValueError if corrupt."""
        current = self._read_versioned(key)
        if current is None:
            return None
        lease = _parse_lease(current[0])
        if lease is None:
            raise ValueError(f"{self.uri_for(key)} is not a valid lease file")
        return lease

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew) the lease at ``key`` for ``ttl_s`` seconds; False if another owner
        holds an unexpired one.

        Creation is create-if-absent. An expired (or unreadable) lease is taken over with a
        compare-and-swap on the exact version that was seen expired (S3: ``IfMatch`` ETag;
        local: under a directory flock), so two contenders can never both win a takeover. The
        holder renews by calling again before expiry. Expiry uses wall clocks: keep ``ttl_s``
        far above the clock skew between machines.
        """
        if not isinstance(owner, str) or not owner:
            raise ValueError("lease owner must be a non-empty string")
        if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"lease ttl_s must be a positive number of seconds, got {ttl_s!r}")
        for _ in range(_LEASE_ATTEMPTS):
            payload = _lease_payload(owner, float(ttl_s))
            if self.write_bytes_if_absent(key, payload):
                return True
            current = self._read_versioned(key)
            if current is None:  # released between our create and our read: try again
                continue
            data, version = current
            lease = _parse_lease(data)
            if lease is not None and lease.owner != owner and not lease.expired():
                return False
            if self._replace_if(key, payload, version):
                return True
        return False

    def release_lease(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s lease at ``key``; False (and nothing deleted) if it is held by
        someone else or already gone."""
        current = self._read_versioned(key)
        if current is None:
            return False
        data, version = current
        lease = _parse_lease(data)
        if lease is None or lease.owner != owner:
            return False
        return self._delete_if(key, version)

    def _read_versioned(self, key: str) -> tuple[bytes, str | bytes] | None:
        """Content plus a version token for compare-and-swap (S3 ETag; local: the bytes)."""
        if self._path is not None:
            try:
                data = self.read_bytes(key)
            except FileNotFoundError:
                return None
            return data, data
        client, bucket, _ = self._s3()
        try:
            with self._s3_errors(self.uri_for(key)):
                response = client.get_object(Bucket=bucket, Key=self._s3_key(self.join(key)))
                with contextlib.closing(response["Body"]) as body:
                    return body.read(), str(response["ETag"])
        except FileNotFoundError:
            return None

    def _replace_if(self, key: str, data: bytes, version: str | bytes) -> bool:
        """Overwrite ``key`` only if it still holds ``version``."""
        if self._path is not None:
            path = self._local(key)
            with _dir_lock(path.parent):
                try:
                    if path.read_bytes() != version:
                        return False
                except FileNotFoundError:
                    return False
                with self._local_atomic(path) as f:
                    f.write(data)
            return True
        return self._s3_conditional(key, version, data)

    def _delete_if(self, key: str, version: str | bytes) -> bool:
        """Delete ``key`` only if it still holds ``version``."""
        if self._path is not None:
            path = self._local(key)
            with _dir_lock(path.parent):
                try:
                    if path.read_bytes() != version:
                        return False
                    path.unlink()
                except FileNotFoundError:
                    return False
            return True
        return self._s3_conditional(key, version, None)

    def _s3_conditional(self, key: str, etag: str | bytes, data: bytes | None) -> bool:
        """put_object / delete_object with ``IfMatch``; False if the object changed or went."""
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket, _ = self._s3()
        s3_key = self._s3_key(self.join(key))
        try:
            if data is None:
                client.delete_object(Bucket=bucket, Key=s3_key, IfMatch=str(etag))
            else:
                client.put_object(Bucket=bucket, Key=s3_key, Body=data, IfMatch=str(etag))
            return True
        except ClientError as exc:
            code, status = self._code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or (
                status in (404, 409, 412) and code != "NoSuchBucket"
            ):
                return False
            raise self._translate(exc, self.uri_for(key)) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, self.uri_for(key)) from exc


def _exclusive_create(path: Path, data: bytes) -> bool:
    """Create-only write for filesystems without hard links (some FUSE/SMB mounts).

    O_EXCL still guarantees a single winner, but readers may briefly see the file while it is
    being written; on such filesystems readers must tolerate a short or empty manifest.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quiet(path)
        raise
    _fsync_dir(path.parent)
    return True


class LeaseLost(LeaseError):
    """The lease was taken over by another owner (this holder stalled past its TTL)."""


class LeaseKeeper:
    """Hold a lease for the length of a ``with`` block, renewing it from a daemon thread.

    ``held`` says whether it was acquired. Work that must not be done twice calls ``check()``
    before each commit: it raises LeaseLost once a renewal found another owner, so a stalled
    holder stops before it writes on top of its successor.
    """

    def __init__(self, root: StorageRoot, key: str, owner: str, ttl_s: float) -> None:
        self.root, self.key, self.owner, self.ttl_s = root, key, owner, float(ttl_s)
        self.held = False
        self._lost: str | None = None
        self._renewed = 0.0  # monotonic time of the last successful acquire or renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def new_owner() -> str:
        """``host/pid/nonce``: unique per holder, and tells a later process on the same host
        whether the holder is still alive."""
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    def _holder_died_here(self) -> bool:
        """True when the lease's holder was a process on this host that no longer exists
        (killed with -9, say): its lease need not be waited out."""
        holder = self.root.read_lease(self.key)
        parts = holder.owner.split("/") if holder else []
        if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
            return False
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return self.root.release_lease(self.key, holder.owner)  # type: ignore[union-attr]
        except PermissionError:
            return False
        return False

    def __enter__(self) -> LeaseKeeper:
        start = time.monotonic()
        self.held = self.root.acquire_lease(self.key, self.owner, self.ttl_s)
        if not self.held and self._holder_died_here():
            start = time.monotonic()
            self.held = self.root.acquire_lease(self.key, self.owner, self.ttl_s)
        self._renewed = start
        if self.held:
            self._thread = threading.Thread(target=self._renew, name="lease-renew", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            start = time.monotonic()
            try:
                if not self.root.acquire_lease(self.key, self.owner, self.ttl_s):
                    holder = self.root.read_lease(self.key)
                    self._lost = f"taken over by {holder.owner if holder else 'nobody'}"
                    return
                self._renewed = start
            except (OSError, ValueError):  # a storage hiccup: try again next period
                continue

    def check(self) -> None:
        """Raise LeaseLost if another owner holds the lease now, or may: renewals failed for
        so long that the lease could have expired (90% of its TTL, for clock slack)."""
        if self._lost is None and time.monotonic() - self._renewed > 0.9 * self.ttl_s:
            self._lost = f"not renewed for {time.monotonic() - self._renewed:.0f} s"
        if self._lost is not None:
            raise LeaseLost(f"lease {self.root.uri_for(self.key)} lost: {self._lost}")

    def holder(self) -> Lease | None:
        return self.root.read_lease(self.key)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and self._lost is None:
            self.root.release_lease(self.key, self.owner)
