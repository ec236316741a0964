"""The S3 backend: boto3/pyarrow handles, botocore error translation, conditional writes.

Why: S3 has no rename and no locks, so create-only writes are ``PUT If-None-Match: *`` and
compare-and-swap is ``PUT/DELETE If-Match: <ETag>`` (AWS S3, MinIO and moto honour both). The
endpoint and the credentials come only from the environment (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` and the default AWS SDK chain), never from a URI or a config file, so
nothing loggable holds them; every botocore error becomes a one-line ``StorageError`` (or
``NotFoundError``) naming the bucket, endpoint or URI and never a credential.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ambient_core.errors import ConfigError, NotFoundError, StorageError
from ambient_platform.storage.backend import FileInfo, Version

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs

__all__ = ["ENDPOINT_ENV_VARS", "S3Backend", "S3Handles", "s3_endpoint_from_env"]

#: Environment variables naming the S3 endpoint, most specific first (same order as botocore).
ENDPOINT_ENV_VARS: tuple[str, ...] = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_SPOOL_BYTES = 8 * 1024 * 1024
_CONFLICT_RETRIES = 5
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
    }
)
_USERINFO_RE = re.compile(r"//[^/@\s]+@")
# Answers to a conditional PUT/DELETE that mean "the object is not the version you saw".
_CHANGED_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


def s3_endpoint_from_env() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS's own endpoints."""
    for var in ENDPOINT_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _redact(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    split = urlsplit(url)
    if "@" not in split.netloc:
        return url
    return urlunsplit(split._replace(netloc=split.netloc.rsplit("@", 1)[1]))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _code(exc: Any) -> tuple[str, int | None]:
    """The S3 error code and HTTP status of a botocore ClientError."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3Handles:
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
        """The endpoint for messages (never with credentials in it)."""
        if self.endpoint:
            return _redact(self.endpoint)
        return "the default AWS endpoint (AWS_ENDPOINT_URL is not set)"

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

                self._arrow = S3FileSystem(**self._arrow_options())
            return self._arrow

    def _arrow_options(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.endpoint:
            # pyarrow does not read AWS_ENDPOINT_URL itself: without this it goes to AWS.
            split = urlsplit(self.endpoint)
            if not split.netloc or split.path not in ("", "/"):
                raise ConfigError(
                    f"S3 endpoint {self.endpoint_label!r} (from {' or '.join(ENDPOINT_ENV_VARS)})"
                    " must look like scheme://host[:port]"
                )
            kwargs["endpoint_override"] = split.netloc
            kwargs["scheme"] = split.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return kwargs


class S3Backend:
    """``s3://bucket/prefix``; see ``backend.Backend``."""

    def __init__(self, bucket: str, prefix: str, handles: S3Handles | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.handles = handles or S3Handles()

    # ----------------------------------------------------------------------------- names

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def child(self, key: str) -> S3Backend:
        return S3Backend(self.bucket, self.object_key(key), self.handles)

    # ----------------------------------------------------------------------------- errors

    def _bucket_missing(self) -> StorageError:
        return StorageError(
            f"S3 bucket {self.bucket!r} does not exist at {self.handles.endpoint_label}; "
            "create it or fix the storage URI"
        )

    def translate(self, exc: Exception, uri: str) -> StorageError:
        """A botocore error as NotFoundError / StorageError naming the URI and endpoint."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        endpoint = self.handles.endpoint_label
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no AWS credentials found for {uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or configure a profile"
            )
        if isinstance(exc, EndpointConnectionError):
            return StorageError(
                f"cannot connect to the S3 endpoint {endpoint} (for {uri}); check that it is "
                f"running and that {' or '.join(ENDPOINT_ENV_VARS)} names it"
            )
        if not isinstance(exc, ClientError):
            return StorageError(f"S3 request for {uri} failed at {endpoint}: {self._scrub(exc)}")
        code, _ = _code(exc)
        if code == "NoSuchBucket":
            return self._bucket_missing()
        if code in _NOT_FOUND_CODES:
            return NotFoundError(uri)
        if code in _DENIED_CODES:
            return StorageError(
                f"S3 denied access ({code}) to {uri} at {endpoint}; check the AWS credentials "
                "in the environment"
            )
        message = self._scrub(exc.response.get("Error", {}).get("Message", ""))
        return StorageError(f"S3 request for {uri} failed at {endpoint}: {code} {message}")

    @staticmethod
    def _scrub(text: object) -> str:
        """One line of third-party error text with the endpoint's userinfo (if any) removed."""
        return _USERINFO_RE.sub("//", _one_line(text))

    @contextlib.contextmanager
    def errors(self, uri: str) -> Iterator[None]:
        """Translate botocore errors raised in the block (see ``translate``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, uri) from exc

    def check_bucket(self) -> None:
        """Raise StorageError if the bucket is missing (HEAD answers a bare 404 for both)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.bucket in self.handles.checked_buckets:
            return
        try:
            self.handles.client().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            _, status = _code(exc)
            if status == 404:
                raise self._bucket_missing() from exc
            if status != 403:  # 403: exists, but we may not list it; objects may still work
                raise self.translate(exc, f"s3://{self.bucket}") from exc
        except BotoCoreError as exc:
            raise self.translate(exc, f"s3://{self.bucket}") from exc
        self.handles.checked_buckets.add(self.bucket)

    # ------------------------------------------------------------------------------ bytes

    def read_bytes(self, key: str) -> bytes:
        with self.errors(self.uri_for(key)):
            response = self.handles.client().get_object(
                Bucket=self.bucket, Key=self.object_key(key)
            )
            with contextlib.closing(response["Body"]) as body:
                return bytes(body.read())

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.errors(self.uri_for(key)):
            self.handles.client().put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data
            )

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """``put_object(IfNoneMatch="*")``; a store that silently ignores the header would
        overwrite, so use a compliant one (AWS S3, MinIO, moto)."""
        from botocore.exceptions import BotoCoreError, ClientError

        uri = self.uri_for(key)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.handles.client().put_object(
                    Bucket=self.bucket, Key=self.object_key(key), Body=data, IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                code, status = _code(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                if code != "ConditionalRequestConflict" and status != 409:
                    raise self.translate(exc, uri) from exc
                # AWS answers 409 while a racing conditional write is in flight: retry.
                time.sleep(0.05 * (attempt + 1))
            except BotoCoreError as exc:
                raise self.translate(exc, uri) from exc
        raise StorageError(f"conditional write to {uri} kept conflicting with other writers")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.handles.client().head_object(Bucket=self.bucket, Key=self.object_key(key))
            return True
        except ClientError as exc:
            if _code(exc)[1] != 404:
                raise self.translate(exc, self.uri_for(key)) from exc
        except BotoCoreError as exc:
            raise self.translate(exc, self.uri_for(key)) from exc
        self.check_bucket()  # HEAD answers 404 for a missing bucket too
        return False

    def delete(self, key: str) -> None:
        with self.errors(self.uri_for(key)):
            self.handles.client().delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def listing(self, prefix: str) -> list[FileInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[FileInfo] = []
        with self.errors(f"{self.uri}/{prefix}"):
            paginator = self.handles.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base) :]
                    if key and not key.endswith("/"):  # skip directory markers
                        found.append(FileInfo(key, int(obj["Size"]), obj["ETag"].strip('"')))
        return found

    # ---------------------------------------------------------------------------- streams

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``S3FileSystem`` at the environment's endpoint and ``bucket/prefix`` (no scheme)."""
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return self.handles.arrow(), path

    def open_input(self, key: str) -> pyarrow.NativeFile:
        fs, root = self.arrow_filesystem()
        uri = self.uri_for(key)
        try:
            return fs.open_input_file(f"{root}/{key}")
        except (FileNotFoundError, IsADirectoryError) as exc:
            self.check_bucket()
            raise NotFoundError(uri) from exc
        except OSError as exc:
            self.check_bucket()
            endpoint = self.handles.endpoint_label
            raise StorageError(f"cannot open {uri} at {endpoint}: {self._scrub(exc)}") from exc

    @contextlib.contextmanager
    def open_output(self, key: str) -> Iterator[IO[bytes]]:
        """Spooled to memory/disk, then one put_object (up to S3's 5 GB single-PUT limit)."""
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            yield spool
            spool.seek(0)
            with self.errors(self.uri_for(key)):
                self.handles.client().put_object(
                    Bucket=self.bucket, Key=self.object_key(key), Body=spool
                )

    # -------------------------------------------------------------------- compare-and-swap

    def read_versioned(self, key: str) -> tuple[bytes, Version] | None:
        """Content plus its ETag, or None if there is no object at ``key``."""
        try:
            with self.errors(self.uri_for(key)):
                response = self.handles.client().get_object(
                    Bucket=self.bucket, Key=self.object_key(key)
                )
                with contextlib.closing(response["Body"]) as body:
                    return bytes(body.read()), str(response["ETag"])
        except NotFoundError:
            return None

    def replace_if(self, key: str, data: bytes, version: Version) -> bool:
        return self._conditional(key, version, data)

    def delete_if(self, key: str, version: Version) -> bool:
        return self._conditional(key, version, None)

    def _conditional(self, key: str, etag: Version, data: bytes | None) -> bool:
        """put_object / delete_object with ``IfMatch``; False if the object changed or went."""
        from botocore.exceptions import BotoCoreError, ClientError

        client, s3_key = self.handles.client(), self.object_key(key)
        try:
            if data is None:
                client.delete_object(Bucket=self.bucket, Key=s3_key, IfMatch=str(etag))
            else:
                client.put_object(Bucket=self.bucket, Key=s3_key, Body=data, IfMatch=str(etag))
            return True
        except ClientError as exc:
            code, status = _code(exc)
            if code in _CHANGED_CODES or (status in (404, 409, 412) and code != "NoSuchBucket"):
                return False
            raise self.translate(exc, self.uri_for(key)) from exc
        except BotoCoreError as exc:
            raise self.translate(exc, self.uri_for(key)) from exc
