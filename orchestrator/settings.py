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
    """No telemetry, Ray on loopback without token auth, matplotlib cache inside the project."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MPLCONFIGDIR", str(ambient_home() / "mpl"))
    os.environ.setdefault("MPLBACKEND", "Agg")


def resolve_location(path: str) -> str:
    """Config locations: URIs (s3://, file://) and absolute paths as given; relative paths live
    under ``ambient_home()`` so configs work from any directory and tests can isolate them."""
    if "://" in path or os.path.isabs(path) or path.startswith("~"):
        return os.path.expanduser(path) if path.startswith("~") else path
    return str(ambient_home() / path)
