"""Shared fixtures: environment hygiene and one moto S3 server per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# AMBIENT_TEST_WORK lets two suites run side by side without sharing state (default .work).
WORK = Path(os.environ.get("AMBIENT_TEST_WORK", ROOT / ".work")).resolve()

# Nothing may be written outside the project or sent anywhere: set before ray/mlflow import.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MPLCONFIGDIR", str(WORK / "mpl"))
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
# Relative data paths, SQLite store and run dirs of tests live here, never in ./.ambient.
os.environ["AMBIENT_HOME"] = str(WORK / "home")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import torch  # noqa: E402

# Tiny test models run fastest single-threaded, and 2 cores are shared with Ray workers.
torch.set_num_threads(1)


def free_port() -> int:
    """Ask the OS for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-protocol server (moto, threaded) on 127.0.0.1; yields its endpoint URL.

    Sets dummy credentials and AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL for the session so boto3,
    pyarrow, Ray and MLflow all talk to it and never to AWS.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
)


@pytest.fixture()
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test; yields its name."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-")
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_session(s3_server: str) -> Iterator[object]:
    """One local Ray instance (2 CPUs, loopback) per test session.

    Started after the S3 server so its workers inherit the endpoint and dummy credentials.
    """
    from ambient_platform.ray_runtime import ensure_ray

    ray = ensure_ray(num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()
