"""The one error hierarchy of the project.

Every failure a user can cause (a bad config, a bad or empty dataset, a missing file, an
unreachable service, a lease held by someone else) raises an ``AmbientError`` subclass whose
message names the file, field, dataset, shard or row. The CLI turns exactly these into one
``error:`` line and exit code 2; anything else is a bug and keeps its traceback (exit 1).

Each subclass also derives from the builtin it refines (``ValueError``, ``OSError``,
``RuntimeError``) so callers that catch the builtin keep working. The module is pure Python so
the lowest layer (``ambient_core``) can raise these too.
"""

from __future__ import annotations

import errno


class AmbientError(Exception):
    """Root of every user-facing error: the CLI prints ``error: <message>`` and exits 2."""


class ConfigError(AmbientError, ValueError):
    """A config file, override or CLI value is invalid; the message names file and dotted path."""


class DataError(AmbientError, ValueError):
    """Bad input data; the message names the dataset, shard, episode, column or row."""


class StorageError(AmbientError, OSError):
    """A storage backend failure, worded to say which bucket, endpoint or URI was involved."""


class NotFoundError(StorageError, FileNotFoundError):
    """A file, object or dataset that should exist does not; the message names its URI."""

    def __init__(self, uri: str, what: str = "no such file or object") -> None:
        super().__init__(errno.ENOENT, what, uri)

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


class LeaseError(AmbientError, RuntimeError):
    """A lease is held by another owner, or was taken over while this holder worked."""


class SweepError(AmbientError, RuntimeError):
    """A sweep cannot start, resume or be read (the message says what to do)."""


class SubmitError(AmbientError, ValueError):
    """A cluster submission cannot be made as asked (bad command, secret in env, ...)."""


class ServiceError(AmbientError, RuntimeError):
    """A service the command needs (Ray, MLflow, S3 endpoint) cannot be started or reached."""
