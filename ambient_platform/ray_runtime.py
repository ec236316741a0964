"""Start or join Ray the same way everywhere: local single node on loopback, or a cluster.

Why the retries: on a loaded machine (load 10-15 on 2 cores) a local ``ray.init`` fails often.
The raylet waits a fixed 15 s for the dashboard agent to write its port files and aborts when
the agent, which ``include_dashboard=False`` does not turn off and whose ports ``ray.init`` cannot
fix, needs longer to import; Ray then reports "The current node timed out during startup" after
about a minute. Measured here: Ray 2.60's raylet ignores ``RAY_agent_register_timeout_ms`` for
that wait, and setting the agents' ports in advance still leaves the listen-port wait. What helps
is another attempt once the first has warmed the page cache and the load has moved: so a local
start makes a bounded number of attempts within a time budget that grows with the load, cleans up
the half-started node between attempts, backs off longer the busier the machine is, and ends in
one ``ServiceError`` line that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ambient_core.errors import ServiceError
from ambient_platform.settings import ambient_home, configure_environment

log = logging.getLogger(__name__)

MAX_TMP_LEN = 40
#: Environment overrides of the start policy (seconds / count).
ENV_BUDGET = "AMBIENT_RAY_START_BUDGET_S"
ENV_ATTEMPTS = "AMBIENT_RAY_START_ATTEMPTS"


@dataclass(frozen=True)
class StartPolicy:
    """How hard a local start tries: ``attempts`` within ``budget_s``, sleeping ``backoff_s``
    times 2**(attempt-1) (times the load per core, at most ``max_backoff_s``) in between."""

    attempts: int = 4
    budget_s: float = 300.0
    backoff_s: float = 3.0
    max_backoff_s: float = 30.0

    @classmethod
    def for_this_machine(cls) -> StartPolicy:
        """Budget 180 s per unit of load per core (at least 180 s, at most 15 min)."""
        pressure = load_per_core()
        budget = min(900.0, 180.0 * max(1.0, pressure))
        budget = float(os.environ.get(ENV_BUDGET) or budget)
        attempts = int(os.environ.get(ENV_ATTEMPTS) or cls.attempts)
        return cls(attempts=max(1, attempts), budget_s=budget)

    def backoff(self, attempt: int) -> float:
        base = self.backoff_s * 2 ** (attempt - 1) * max(1.0, load_per_core())
        return min(self.max_backoff_s, base) * random.uniform(0.8, 1.2)


def load_per_core() -> float:
    """1-minute load average divided by the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
        return os.getloadavg()[0] / max(1, cores)
    except (AttributeError, OSError):
        return 1.0


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """``ray.init`` once per process: join ``address`` (or RAY_ADDRESS) or start a local node.

    Local nodes keep every server on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), no token
    auth, no usage stats, no dashboard, and write their session files under AMBIENT_HOME/ray.
    A node this process started is shut down at exit (Ray's atexit hook), also on SIGTERM.
    Raises ``ServiceError`` when Ray cannot be joined or started.
    """
    configure_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        # The CLI sets the "ray" logger's level (WARNING unless --verbose); ray.init would
        # otherwise reset it to INFO.
        "logging_level": logging.getLogger("ray").getEffectiveLevel(),
    }
    if address:
        _join(ray, address, kwargs)
    else:
        start_local(ray, num_cpus, kwargs, StartPolicy.for_this_machine())
    return ray


def _join(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ServiceError(
            f"cannot join the Ray cluster at {address} ({_first_line(exc)}); check --ray-address "
            "or RAY_ADDRESS (unset both to start a local Ray)"
        ) from exc


def ray_temp_dir() -> str:
    """Where a local node writes its session files (short: Ray's unix socket paths must fit)."""
    tmp = os.environ.get("RAY_TMPDIR") or str(ambient_home() / "ray")
    if len(tmp) > MAX_TMP_LEN:
        # Ray's unix sockets live ~60 characters below this and AF_UNIX paths stop at 107.
        tmp = os.path.join(tempfile.gettempdir(), f"ambient-ray-{os.getuid()}")
    os.makedirs(tmp, exist_ok=True)
    return tmp


def start_local(
    ray: Any, num_cpus: int | None, kwargs: dict[str, Any], policy: StartPolicy
) -> None:
    """Start a local node with bounded retries (see the module docstring)."""
    tmp = ray_temp_dir()
    deadline = time.monotonic() + policy.budget_s
    last: BaseException | None = None
    attempt = 0
    while attempt < policy.attempts:
        attempt += 1
        started = time.time()
        try:
            ray.init(num_cpus=num_cpus, _temp_dir=tmp, **kwargs)
            if attempt > 1:
                log.info("local Ray started on attempt %d", attempt)
            return
        except (TypeError, ValueError):
            raise  # a wrong argument is a bug, not a busy machine
        except Exception as exc:  # Ray raises a bare Exception for a start-up timeout
            last = exc
            log.warning(
                "local Ray did not start (attempt %d of %d, %.0f s, load %.1f per core): %s",
                attempt,
                policy.attempts,
                time.time() - started,
                load_per_core(),
                _first_line(exc),
            )
            cleanup_half_started(ray, started, tmp)
        pause = policy.backoff(attempt)
        if attempt >= policy.attempts or time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    raise ServiceError(
        f"local Ray did not start in {attempt} attempts (last: {_first_line(last)}; machine load "
        f"{load_per_core():.1f} per core). Retry when the machine is less busy, or join a running "
        f"cluster with --ray-address / RAY_ADDRESS; Ray's logs: {tmp}/session_latest/logs"
    )


def cleanup_half_started(ray: Any, since: float, temp_dir: str) -> None:
    """End what a failed ``ray.init`` left behind: Ray's global state and every process of the
    node this process tried to start. Those are children of this process, except agents whose
    raylet already died: they were reparented to init, so they are found by their session
    directory (``<temp_dir>/session_<time>_<this pid>``) instead."""
    try:
        ray.shutdown()
    except Exception as exc:  # the node was never fully up; shutdown is best effort
        log.debug("ray.shutdown after a failed start: %s", exc)
    import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is

    session = re.compile(re.escape(temp_dir.rstrip("/")) + rf"/session_[0-9_-]+_{os.getpid()}\b")
    doomed: dict[int, Any] = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            doomed[child.pid] = child
    for proc in psutil.process_iter(["cmdline"]):
        if any(session.search(arg) for arg in proc.info["cmdline"] or ()):
            doomed[proc.pid] = proc
    ours = [p for p in doomed.values() if _ray_process_since(p, since - 1.0)]
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(ours, timeout=10)  # also reaps the ones that are our children


def _ray_process_since(proc: Any, since: float) -> bool:
    """A Ray server or agent (named after Ray's binaries or started from Ray's install),
    started at ``since`` or later; zombies have no command line but keep their name."""
    import psutil

    try:
        if proc.create_time() < since:
            return False
        if proc.name() in ("raylet", "gcs_server"):
            return True
        return "/ray/" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
