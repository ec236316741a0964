"""Shared fixtures and helpers: environment hygiene, free ports, process-tree kills, one moto S3
server and one Ray instance per test session.

Test modules import the helpers directly: ``from conftest import free_port, kill_tree``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# AMBIENT_TEST_WORK lets two suites run side by side without sharing state (default .work).
WORK = Path(os.environ.get("AMBIENT_TEST_WORK", ROOT / ".work")).resolve()

# Nothing may be written outside the project or sent anywhere: set before ray/mlflow import.
# Relative data paths, SQLite store and run dirs of tests live here, never in ./.ambient.
os.environ["AMBIENT_HOME"] = str(WORK / "home")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Tests have no instance role: boto3 must not probe the EC2 metadata service for credentials.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from ambient_platform.local_cluster import free_port  # noqa: E402
from ambient_platform.settings import configure_environment  # noqa: E402

configure_environment()  # settings.QUIET_ENV, MPLCONFIGDIR under AMBIENT_HOME, MPLBACKEND=Agg

import torch  # noqa: E402

# Tiny test models run fastest single-threaded, and 2 cores are shared with Ray workers.
torch.set_num_threads(1)


def _group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (includes children already reparented to init)."""
    import psutil

    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def kill_tree(pid: int, timeout: float = 30.0) -> list[int]:
    """kill -9 ``pid`` and every process it started, wait until they are gone; returns the
    PIDs still alive after ``timeout`` (normally none). A process already gone is fine, and
    the caller's ``Popen`` still reaps its own child (returncode -9).

    Descendants are collected before the kill, since they are reparented once their parent
    dies. When ``pid`` leads its own process group (``start_new_session=True``), the whole group
    goes too, which also catches grandchildren reparented earlier (Ray's agents, say).
    """
    import psutil

    pids = {pid}
    with contextlib.suppress(psutil.NoSuchProcess):
        pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pid != os.getpgrp() and os.getpgid(pid) == pid:
            pids.update(_group_members(pid))
            os.killpg(pid, signal.SIGKILL)
    procs = []
    for p in sorted(pids):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc = psutil.Process(p)
            proc.kill()
            procs.append(proc)
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [proc for proc in procs if _running(proc)]
        if procs:
            time.sleep(0.05)
    return [proc.pid for proc in procs]


def _running(proc: Any) -> bool:
    """Alive and not a zombie. Zombies are left for their parent to reap, so a caller's
    ``Popen.wait()`` still sees the real exit status (-9)."""
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


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
