"""A multi-node Ray cluster on this machine, for tests, benchmarks and cluster features.

``local_cluster(workers=1)`` runs ``ray start --head --block`` plus one ``ray start --address
... --block`` per worker node, each with its own ``--num-cpus``, on 127.0.0.1, and yields a
``LocalCluster`` (GCS address for ``--ray-address`` / ``ray.init(address=...)``, dashboard URL
for the Jobs API, node count). Why this shape:

- clients reach it on 127.0.0.1 (GCS, dashboard); the nodes of a multi-node cluster advertise
  the machine's address (Ray's rule once more than one node may join), all the same one;
- every port Ray would otherwise take from a fixed default (GCS, dashboard, agents, metrics,
  runtime-env agent, client server, worker ports) is a free one, so the cluster never collides
  with another Ray on the machine (a test session's own ``ray.init``, a colleague's cluster);
- each node is started in a process group of its own and stopped by SIGKILL of that group plus
  every process below it and every process naming its temp dir (agents reparented to init):
  never ``ray stop``, which ends every Ray instance of the user;
- the caller may already have a Ray session (pytest's), so readiness is read from the head's
  dashboard HTTP API (``/api/v0/nodes``), never through ``ray.init`` here;
- on a loaded machine a node can fail to start ("The current node timed out during startup":
  the raylet gives the dashboard agent a fixed 15 s); a node whose ``ray start`` exits is
  started again, a bounded number of times within a time budget that grows with the load, and
  a node that never comes up ends in one ``ServiceError`` naming it, with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ambient_core.errors import ServiceError
from ambient_platform.settings import QUIET_ENV

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
HEAD = "head"
#: Object store per node: plenty for tests and benchmarks, and several nodes fit in /dev/shm.
DEFAULT_OBJECT_STORE_BYTES = 256 * 2**20
#: ``ray start`` attempts per node (a second node needed up to 4 on a machine at load 10-20).
DEFAULT_ATTEMPTS = 4
_POLL_S = 0.5
_LOG_TAIL_LINES = 8
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_budget_s() -> float:
    """Seconds the whole cluster may take to come up: 180 s per unit of load per core (at least
    180 s, at most 15 min; ``AMBIENT_CLUSTER_START_BUDGET_S`` overrides)."""
    try:
        pressure = os.getloadavg()[0] / max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pressure = 1.0
    budget = min(900.0, 180.0 * max(1.0, pressure))
    return float(os.environ.get("AMBIENT_CLUSTER_START_BUDGET_S") or budget)


@dataclass
class _Node:
    """One ``ray start --block`` process (and everything it starts) of the cluster."""

    name: str
    cpus: int
    gpus: int
    temp_dir: str
    proc: subprocess.Popen[bytes] | None = None
    attempts: int = 0
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return Path(self.temp_dir).parent / f"{self.name}.log"

    def start(self, args: list[str], env: Mapping[str, str]) -> None:
        self.attempts += 1
        os.makedirs(self.temp_dir, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the node
        self._log.write(f"--- attempt {self.attempts}: {' '.join(args)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            args,
            start_new_session=True,  # its own process group, killed as one
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        tail = (_ANSI.sub("", s).strip() for s in lines[-_LOG_TAIL_LINES:])
        return " | ".join(s for s in tail if s)

    def kill(self) -> None:
        """SIGKILL the node's process group, every process below it and every process that
        names its temp dir; wait until they are gone."""
        if self.proc is None:
            return
        _kill_processes(self.proc.pid, self.temp_dir)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None


def _kill_processes(pgid: int, temp_dir: str) -> None:
    import psutil  # vendored by Ray and installed with it

    doomed: dict[int, Any] = {}
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pgid)
        doomed[pgid] = leader
        for child in leader.children(recursive=True):
            doomed[child.pid] = child
    # The node's temp dir as a whole path component (``.../w1`` must not match ``.../w10``).
    names_dir = re.compile(re.escape(temp_dir.rstrip("/")) + r"(?![\w.-])")
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and (
                os.getpgid(proc.pid) == pgid
                or any(names_dir.search(arg) for arg in proc.info["cmdline"] or ())
            ):
                doomed[proc.pid] = proc
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for proc in doomed.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(doomed.values()), timeout=30)


@dataclass
class LocalCluster:
    """A running local cluster: ``address`` (GCS, host:port) for ``--ray-address``,
    ``dashboard_url`` for the Jobs API and the state API."""

    address: str
    dashboard_url: str
    nodes: list[_Node] = field(repr=False)
    root: str = field(repr=False)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def alive_nodes(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The ALIVE nodes as the state API lists them (``node_id``, ``node_name``,
        ``node_ip``, ``resources_total``, ...); [] when the dashboard does not answer."""
        nodes = _state_nodes(self.dashboard_url, timeout_s)
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def stop(self, keep_logs: bool = False) -> None:
        """Kill every node (workers first), then remove the temp dirs (but the nodes'
        ``ray start`` logs with ``keep_logs``: a failed start names them)."""
        for node in reversed(self.nodes):
            node.kill()
        if not keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _state_nodes(dashboard_url: str, timeout_s: float) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/v0/nodes", timeout=timeout_s) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return []
    data = body.get("data", {}).get("result", {}) if isinstance(body, dict) else {}
    nodes = data.get("result", []) if isinstance(data, dict) else data
    return [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []


def _node_env(extra: Mapping[str, str] | None, multi_node: bool) -> dict[str, str]:
    """The nodes' environment (their workers inherit it): this process's, plus ``extra``,
    quiet and local; ``python`` and ``ray`` are this interpreter's, as on a cluster image."""
    env = {**os.environ, **(extra or {})}
    for k, v in QUIET_ENV.items():
        env.setdefault(k, v)
    env.pop("RAY_ADDRESS", None)  # ray start would join it instead of the head
    # QUIET_ENV's "0" keeps a single node on loopback but makes `ray start --address` refuse
    # to add a node. With "1" Ray turns --node-ip-address=127.0.0.1 into the machine's own
    # address, which every node then advertises (its servers listen on all interfaces either
    # way); callers keep using the 127.0.0.1 addresses handed out here.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1" if multi_node else "0"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _common_args(node: _Node, object_store_bytes: int) -> list[str]:
    return [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        f"--node-ip-address={HOST}",
        f"--node-name={node.name}",
        f"--num-cpus={node.cpus}",
        f"--num-gpus={node.gpus}",
        f"--object-store-memory={object_store_bytes}",
        # Every port Ray would take from a fixed default, so two clusters never collide.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--min-worker-port=0",  # workers on ports the OS picks, not 10002-19999
        "--max-worker-port=0",
        f"--temp-dir={node.temp_dir}",
        "--disable-usage-stats",
    ]


class _Starter:
    """Starts the nodes and waits for them (see the module docstring)."""

    def __init__(self, cluster: LocalCluster, env: dict[str, str], store: int, attempts: int):
        self.cluster, self.env, self.store, self.attempts = cluster, env, store, attempts
        self.budget_s = start_budget_s()
        self.deadline = time.monotonic() + self.budget_s
        self.gcs_port = self.dash_port = 0

    def head_args(self, node: _Node) -> list[str]:
        self.gcs_port, self.dash_port = free_port(), free_port()
        return [
            *_common_args(node, self.store),
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={self.dash_port}",
            f"--ray-client-server-port={free_port()}",
        ]

    def worker_args(self, node: _Node) -> list[str]:
        return [*_common_args(node, self.store), f"--address={self.cluster.address}"]

    def start_head(self) -> None:
        head = self.cluster.nodes[0]
        head.start(self.head_args(head), self.env)
        self._set_addresses()
        self.wait([head])

    def _set_addresses(self) -> None:
        self.cluster.address = f"{HOST}:{self.gcs_port}"
        self.cluster.dashboard_url = f"http://{HOST}:{self.dash_port}"

    def start_workers(self) -> None:
        workers = self.cluster.nodes[1:]
        for node in workers:
            node.start(self.worker_args(node), self.env)
        self.wait(workers)

    def wait(self, nodes: list[_Node]) -> None:
        """Until every node of ``nodes`` is ALIVE; a node whose ``ray start`` exited is started
        again (the head with new ports) while attempts and time are left."""
        while True:
            alive = {n.get("node_name") for n in self.cluster.alive_nodes()}
            missing = [n for n in nodes if n.name not in alive]
            if not missing:
                return
            for node in missing:
                code = node.exited()
                if code is None:
                    continue
                if node.attempts >= self.attempts or time.monotonic() >= self.deadline:
                    self.fail(node, f"`ray start` exited with {code} after {node.attempts} tries")
                log.warning(
                    "local Ray cluster: node %s did not start (attempt %d, exit %s); again",
                    node.name,
                    node.attempts,
                    code,
                )
                node.kill()
                if node.name == HEAD:
                    node.start(self.head_args(node), self.env)
                    self._set_addresses()
                else:
                    node.start(self.worker_args(node), self.env)
            if time.monotonic() >= self.deadline:
                self.fail(missing[0], f"not ALIVE after {self.budget_s:.0f} s")
            time.sleep(_POLL_S)

    def fail(self, node: _Node, why: str) -> None:
        up = sorted(str(n.get("node_name")) for n in self.cluster.alive_nodes())
        raise ServiceError(
            f"local Ray cluster at {self.cluster.address}: node {node.name} ({node.cpus} CPU) did "
            f"not come up: {why}; alive: {up or 'none'}; its log {node.log_path}: "
            f"{node.log_tail()}"
        )


def _short_root() -> str:
    """A short temp dir: Ray's unix socket paths (about 60 characters below it) must fit the
    107 characters of AF_UNIX."""
    base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="rlc-", dir=base if len(base) <= 20 else "/tmp")


@contextlib.contextmanager
def local_cluster(
    workers: int = 1,
    *,
    head_cpus: int = 1,
    worker_cpus: int = 1,
    gpus: int = 0,
    env: Mapping[str, str] | None = None,
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Iterator[LocalCluster]:
    """A head with ``head_cpus`` CPUs plus ``workers`` worker nodes of ``worker_cpus`` CPUs
    each (``gpus`` per node), all on 127.0.0.1; yields once every node is ALIVE and kills them
    all on exit. ``env`` is added to the nodes' environment, which their Ray workers inherit
    (S3 endpoint and credentials, say). Raises ``ServiceError`` when a node does not come up."""
    if workers < 0 or head_cpus < 0 or worker_cpus < 0:
        raise ValueError("workers and CPU counts must be >= 0")
    root = _short_root()
    nodes = [_Node(HEAD, head_cpus, gpus, os.path.join(root, "h"))]
    nodes += [
        _Node(f"worker-{i}", worker_cpus, gpus, os.path.join(root, f"w{i}"))
        for i in range(1, workers + 1)
    ]
    cluster = LocalCluster("", "", nodes, root)
    t0 = time.monotonic()
    try:
        starter = _Starter(cluster, _node_env(env, workers > 0), object_store_bytes, attempts)
        starter.start_head()
        starter.start_workers()
    except BaseException:
        cluster.stop(keep_logs=True)
        raise
    log.info(
        "local Ray cluster up in %.0f s: %d nodes, GCS %s, dashboard %s",
        time.monotonic() - t0,
        cluster.num_nodes,
        cluster.address,
        cluster.dashboard_url,
    )
    try:
        yield cluster
    finally:
        cluster.stop()
