"""The ``ambient`` group, the options every command shares and the output helpers."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ambient_platform.settings import configure_environment


def fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _apply_common(ray_address: str | None, tracking_uri: str | None, storage: str | None) -> None:
    """Export the three location settings so every layer (and every Ray worker started from
    here) sees them: RAY_ADDRESS, MLFLOW_TRACKING_URI, AMBIENT_STORAGE."""
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        os.environ["AMBIENT_STORAGE"] = storage if "://" in storage else os.path.abspath(storage)


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray-address``, ``--tracking-uri`` and ``--storage`` on a command, so the same YAML
    runs on a laptop and on a cluster by changing flags only."""
    wanted = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        ray_address: str | None,
        tracking_uri: str | None,
        storage: str | None,
        **kw: Any,
    ) -> Any:
        _apply_common(ray_address, tracking_uri, storage)
        if "tracking_uri" in wanted:
            kw["tracking_uri"] = tracking_uri
        if "ray_address" in wanted:
            kw["ray_address"] = ray_address
        return fn(*args, **kw)

    for opt in reversed(_COMMON_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper


_COMMON_OPTIONS = [
    click.option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Join this Ray cluster (ray://HOST:10001 or HOST:6379; env RAY_ADDRESS). "
        "Default: start a local one on 127.0.0.1.",
    ),
    click.option(
        "--tracking-uri",
        help="MLflow tracking URI, e.g. http://mlflow:5000 (env MLFLOW_TRACKING_URI). "
        "Default: SQLite under AMBIENT_HOME.",
    ),
    click.option(
        "--storage",
        help="Root of relative data locations (datasets, annotations, classifiers, sweeps): a "
        "directory or s3://bucket/prefix (env AMBIENT_STORAGE). Default: AMBIENT_HOME.",
    ),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Ambient Diffusion Policy research platform.

    Generate or import data, train policies that use corrupt data only where it is
    indistinguishable from clean data (sigma >= sigma_min) or only local (sigma <= sigma_max),
    evaluate them, and reproduce the paper's tables. Runs are tracked in MLflow (a local SQLite
    store under ./.ambient unless --tracking-uri or MLFLOW_TRACKING_URI says otherwise).
    """
    configure_environment()
