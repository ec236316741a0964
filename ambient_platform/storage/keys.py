"""Name, key and URI rules: the one place that decides what may become a path or an S3 key.

Why: dataset and run names, keys and storage URIs arrive from configs and CLIs. They are checked
here, lexically, so that none can leave its root (``..``, absolute parts, backslashes, NUL) and
none can smuggle credentials or an endpoint into a URI. Symlinks the owner of a local root puts
inside it are followed: the confinement is about names, not about the filesystem.
Every rejection is a ``ConfigError`` (a ``ValueError``) naming the offending part.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ambient_core.errors import ConfigError

__all__ = [
    "TMP_PREFIX",
    "S3Location",
    "check_prefix",
    "join_key",
    "key_segments",
    "parse_uri",
    "validate_name",
]

NAME_MAX = 128
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
#: Temporary files of in-flight local writes; listings hide them and keys may not use the prefix.
TMP_PREFIX = ".~tmp-"


def validate_name(name: str, what: str = "dataset name") -> str:
    """Check a user-supplied dataset/run/annotation name and return it unchanged.

    Names become path segments and S3 keys, so they are restricted to ASCII letters, digits,
    ``.``, ``_`` and ``-``, 1..128 characters, and must not start with ``.`` (hidden files,
    ``..``). Raises ConfigError naming ``what`` and the offending part.
    """
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise ConfigError(f"{what} must not be empty")
    if len(name) > NAME_MAX:
        raise ConfigError(
            f"{what} {name[:32]!r}... is {len(name)} characters long; at most {NAME_MAX} allowed"
        )
    if name.startswith("."):
        raise ConfigError(f"{what} {name!r} must not start with '.'")
    if not _NAME_RE.fullmatch(name):
        bad = "".join(sorted({c for c in name if not _NAME_RE.fullmatch(c)}))
        raise ConfigError(
            f"{what} {name!r} contains {bad!r}; only ASCII letters, digits, '.', '_' and '-' "
            "are allowed"
        )
    return name


def _check_part(part: object) -> str:
    """One key part as a whole (it may still hold several '/'-separated segments)."""
    if not isinstance(part, str):
        raise ConfigError(f"key part {part!r} must be a string, got {type(part).__name__}")
    if not part:
        raise ConfigError("empty key part")
    if "\\" in part:
        raise ConfigError(f"key part {part!r} contains a backslash; use '/' to separate")
    if any(ord(c) < 32 or c == "\x7f" for c in part):
        raise ConfigError(f"key part {part!r} contains NUL or another control character")
    if part.startswith("/"):
        raise ConfigError(f"key part {part!r} is absolute; keys are relative to the root")
    return part


def _check_segment(part: str, seg: str) -> str:
    if not seg:
        raise ConfigError(f"key part {part!r} has an empty segment (double or trailing '/')")
    if seg in (".", ".."):
        raise ConfigError(f"key part {part!r} contains {seg!r}; keys may not leave the root")
    if seg.startswith(TMP_PREFIX):
        raise ConfigError(f"key part {part!r} uses the reserved prefix {TMP_PREFIX!r}")
    return seg


def key_segments(parts: tuple[str, ...]) -> list[str]:
    """Split and validate key parts into path segments; every rejection names the part."""
    if not parts:
        raise ConfigError("a key needs at least one part")
    segments: list[str] = []
    for part in parts:
        checked = _check_part(part)
        segments.extend(_check_segment(checked, seg) for seg in checked.split("/"))
    return segments


def join_key(*parts: str) -> str:
    """A validated key (``a/b/c``) from parts; parts may themselves contain ``/``."""
    return "/".join(key_segments(parts))


def check_prefix(prefix: str) -> None:
    """Validate a listing prefix: a key, a key plus '/', or a key with a partial last name."""
    if not prefix:
        return
    *dirs, last = prefix.split("/")
    if dirs:
        key_segments(("/".join(dirs),))
    if last == "..":
        raise ConfigError(f"list prefix {prefix!r} contains '..'; keys may not leave the root")
    if "\\" in last or any(ord(c) < 32 for c in last):
        raise ConfigError(f"list prefix {prefix!r} contains a backslash or control character")


@dataclass(frozen=True, slots=True)
class S3Location:
    """A parsed ``s3://bucket/prefix``; ``prefix`` is a validated key or empty."""

    bucket: str
    prefix: str


def parse_uri(uri: str | os.PathLike[str]) -> Path | S3Location:
    """A storage location from a local path (absolute, relative, ``~``), a ``file://`` URI or
    ``s3://bucket[/prefix]``: an absolute Path or an S3Location."""
    if isinstance(uri, os.PathLike):
        return Path(os.path.abspath(os.path.expanduser(os.fspath(uri))))
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"storage URI must be a non-empty string, got {uri!r}")
    if "\x00" in uri:
        raise ConfigError("storage URI contains NUL")
    match = _SCHEME_RE.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        return _parse_s3(uri)
    if scheme == "file":
        return _parse_file(uri)
    if scheme:
        raise ConfigError(
            f"unsupported storage scheme {scheme!r} in {uri!r}; use a local path, file:// or s3://"
        )
    if re.match(r"(?i)(s3|file):", uri):
        raise ConfigError(f"malformed storage URI {uri!r}; expected s3://bucket/prefix")
    return Path(os.path.abspath(os.path.expanduser(uri)))


def _parse_s3(uri: str) -> S3Location:
    split = urlsplit(uri)
    if "@" in split.netloc:
        # Never echo the URI here: it holds the secret.
        raise ConfigError(
            "credentials in a storage URI are not allowed; provide them through the "
            "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)"
        )
    if split.query or split.fragment:
        raise ConfigError(
            f"query strings and fragments are not supported in {uri!r}; set the endpoint "
            "with AWS_ENDPOINT_URL instead of ?endpoint_override="
        )
    bucket = split.netloc
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"invalid S3 bucket name {bucket!r} in {uri!r}: 3-63 characters, lowercase "
            "letters, digits, '.' and '-'"
        )
    prefix = split.path.strip("/")
    return S3Location(bucket, join_key(prefix) if prefix else "")


def _parse_file(uri: str) -> Path:
    split = urlsplit(uri)
    if split.netloc not in ("", "localhost"):
        raise ConfigError(f"file URI {uri!r} names host {split.netloc!r}; only local files")
    if split.query or split.fragment:
        raise ConfigError(f"query strings and fragments are not supported in {uri!r}")
    path = unquote(split.path)
    if not path.startswith("/"):
        raise ConfigError(f"file URI {uri!r} must hold an absolute path")
    return Path(os.path.normpath(path))
