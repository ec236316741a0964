"""Process-wide settings: the working directory, a quiet local environment, and where relative
locations resolve.

Why here: every command, job, test and benchmark needs the same answers, and a relative location
from a config (``data.corrupt.0.path=...``) must never reach outside the root it is meant for.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ambient_core.errors import ConfigError

#: The one list of environment defaults that keep every process quiet and local (no telemetry,
#: Ray on loopback without token auth); tests, benchmarks and the CLI all apply it through
#: ``configure_environment()``.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # MLflow prints "View run ... at: <url>" to stdout for HTTP stores: it would break --json.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def ambient_home() -> Path:
    """Working directory for local state: SQLite store, artifacts, data, runs (``AMBIENT_HOME``,
    default ``./.ambient``)."""
    return Path(os.environ.get("AMBIENT_HOME", Path.cwd() / ".ambient")).resolve()


def configure_environment() -> None:
    """No telemetry, Ray on loopback without token auth (unless a token is given: then the
    Jobs API client sends it), matplotlib cache inside the project."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MPLCONFIGDIR", str(ambient_home() / "mpl"))
    os.environ.setdefault("MPLBACKEND", "Agg")


def storage_root() -> str:
    """Where relative data locations live (datasets, annotations, classifiers, sweeps):
    ``AMBIENT_STORAGE`` (a directory or ``s3://bucket/prefix``, set by ``--storage``) or
    ``ambient_home()``. One setting moves a laptop workflow onto shared storage unchanged."""
    value = os.environ.get("AMBIENT_STORAGE", "").strip()
    if not value:
        return str(ambient_home())
    if "://" in value:
        return value.rstrip("/")
    return str(Path(os.path.expanduser(value)).resolve())


def _is_absolute(path: str) -> bool:
    return "://" in path or os.path.isabs(path) or path.startswith("~")


def _display(location: str) -> str:
    """``location`` for messages: a URI loses any ``user:password@`` part."""
    split = urlsplit(location)
    if "://" not in location or "@" not in split.netloc:
        return location
    return urlunsplit(split._replace(netloc=split.netloc.rsplit("@", 1)[1]))


def _confined(path: str, root: str, root_name: str) -> str:
    """``path`` normalised, or ConfigError if it climbs out of ``root`` with ``..``.

    Lexical, like the key rules of ``ambient_platform.storage``: what matters is that a name
    from a config or a ``--set`` cannot point outside the root it is meant for.
    """
    rel = posixpath.normpath(path)
    if rel.split("/", 1)[0] == "..":
        raise ConfigError(
            f"location {path!r} leaves the {root_name} {_display(root)}; relative locations "
            "must stay inside it (give an absolute path or a URI to go elsewhere)"
        )
    return rel


def resolve_location(path: str) -> str:
    """Config locations: URIs (s3://, file://) and absolute paths as given; relative paths live
    under ``storage_root()`` so configs work from any directory, on a laptop or a cluster, and
    may not leave it (ConfigError naming the path and the root)."""
    if _is_absolute(path):
        return os.path.expanduser(path) if path.startswith("~") else path
    root = storage_root()
    rel = _confined(path, root, "storage root")
    if "://" in root:
        return root if rel == "." else f"{root}/{rel}"
    return str(Path(root) / rel)


def resolve_local(path: str) -> Path:
    """Locations that are always local files (run outputs, checkpoints): relative paths live
    under ``ambient_home()`` whatever the shared storage is, and may not leave it."""
    if "://" in path:
        raise ConfigError(f"{path} must be a local path (run outputs are local files)")
    if _is_absolute(path):
        return Path(os.path.expanduser(path))
    home = ambient_home()
    return home / _confined(path, str(home), "AMBIENT_HOME directory")
