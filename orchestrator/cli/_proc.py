"""Child servers the CLI starts end with it.

Why a process group: ``mlflow ui`` starts a server that starts workers (uvicorn/gunicorn and
huey job runners). Signalling only the direct child leaves the grandchildren serving, so the
child gets a session (and process group) of its own and the whole group is ended: SIGTERM
first, SIGKILL for whatever is still there after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from ambient_core.errors import ServiceError

GRACE_S = 10.0


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run_in_own_group(cmd: Sequence[str], grace_s: float = GRACE_S) -> int:
    """Run ``cmd`` in a new process group until it exits; whatever ends this call early
    (KeyboardInterrupt, SystemExit from SIGTERM, an error) ends the whole group first."""
    try:
        proc = subprocess.Popen(list(cmd), start_new_session=True)
    except OSError as exc:
        raise ServiceError(f"cannot start {cmd[0]}: {exc}") from exc
    try:
        return proc.wait()
    finally:
        end_group(proc, grace_s)


def end_group(proc: subprocess.Popen[bytes], grace_s: float = GRACE_S) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL what is left after ``grace_s``."""
    pgid = proc.pid
    if not _group_alive(pgid):
        proc.poll()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or it stays a zombie member of the group
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
