"""Process-wide settings: the project's working directory and a quiet, local environment."""

from __future__ import annotations

import os
from pathlib import Path

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
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


def resolve_location(path: str) -> str:
    """Config locations: URIs (s3://, file://) and absolute paths as given; relative paths live
    under ``storage_root()`` so configs work from any directory, on a laptop or a cluster."""
    if _is_absolute(path):
        return os.path.expanduser(path) if path.startswith("~") else path
    root = storage_root()
    return f"{root}/{path}" if "://" in root else str(Path(root) / path)


def resolve_local(path: str) -> Path:
    """Locations that are always local files (run outputs, checkpoints): relative paths live
    under ``ambient_home()`` whatever the shared storage is."""
    if "://" in path:
        raise ValueError(f"{path} must be a local path (run outputs are local files)")
    return Path(os.path.expanduser(path) if path.startswith("~") else ambient_home() / path)
