"""The CLI's one error handler, its logging, and the child processes it must not leave behind:
``ambient ui``'s MLflow server (a process group) and a local Ray (bounded start-up retries, shut
down on SIGTERM)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import psutil
import pytest
from click.testing import CliRunner
from conftest import free_port, kill_tree

from ambient_core.errors import DataError, ServiceError
from ambient_platform import ray_runtime
from orchestrator.cli import main as cli
from orchestrator.cli._app import THIRD_PARTY_LOGGERS, one_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def extra_command() -> Iterator[click.Group]:
    """Lets a test add a command to the real group and removes it afterwards."""
    before = set(cli.commands)
    yield cli
    for name in set(cli.commands) - before:
        cli.commands.pop(name)


def test_user_errors_bugs_and_interrupts_get_their_exit_codes(extra_command: click.Group) -> None:
    @extra_command.command("t-user")
    def user() -> None:
        raise DataError("dataset 'x': shard s.parquet: column 'action' is missing\n(second line)")

    @extra_command.command("t-bug")
    def bug() -> None:
        raise KeyError("a bug")

    @extra_command.command("t-interrupt")
    def interrupt() -> None:
        raise KeyboardInterrupt

    @extra_command.command("t-wrapped")
    def wrapped() -> None:
        class RayTaskError(Exception):  # what Ray raises around a failed task
            __module__ = "ray.exceptions"

        try:
            raise DataError("shard s: NaN at episode 3, row 7")
        except DataError as exc:
            raise RayTaskError("remote traceback ...") from exc

    runner = CliRunner()
    res = runner.invoke(cli, ["t-user"])
    assert res.exit_code == 2 and res.exception is not None
    assert res.stderr == (
        "error: dataset 'x': shard s.parquet: column 'action' is missing; (second line)\n"
    )
    res = runner.invoke(cli, ["t-bug"])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)  # traceback, not a line
    res = runner.invoke(cli, ["t-interrupt"])
    assert res.exit_code == 130 and res.stderr.strip() == "interrupted"
    res = runner.invoke(cli, ["t-wrapped"])
    assert res.exit_code == 2 and res.stderr == "error: shard s: NaN at episode 3, row 7\n"
    res = runner.invoke(cli, ["--debug", "t-user"])
    assert res.exit_code == 2 and "Traceback" in res.stderr and "DataError" in res.stderr
    assert one_line("a\n\n b \n") == "a; b"


def test_logging_is_configured_once_and_quiet_unless_verbose(extra_command: click.Group) -> None:
    @extra_command.command("t-log")
    def log_something() -> None:
        logging.getLogger("jobs.something").info("our info")
        logging.getLogger("mlflow.store").info("their info")
        logging.getLogger("botocore.client").warning("their warning")

    runner = CliRunner()
    res = runner.invoke(cli, ["t-log"])
    assert res.exit_code == 0
    assert "jobs.something: our info" in res.stderr and "their info" not in res.stderr
    assert "botocore.client: their warning" in res.stderr
    for name in THIRD_PARTY_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
    res = runner.invoke(cli, ["-v", "t-log"])
    assert "mlflow.store: their info" in res.stderr
    res = runner.invoke(cli, ["t-log"])  # back to quiet, and still one handler
    assert res.stderr.count("our info") == 1 and "their info" not in res.stderr


# ------------------------------------------------------------------------ local Ray start


class FlakyRay:
    """Stands in for the ``ray`` module: ``init`` fails ``failures`` times, then works."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or Exception("The current node timed out during startup.")
        self.calls = 0
        self.shutdowns = 0

    def init(self, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error

    def shutdown(self) -> None:
        self.shutdowns += 1


FAST = ray_runtime.StartPolicy(attempts=3, budget_s=60.0, backoff_s=0.01, max_backoff_s=0.05)


def test_local_ray_start_retries_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ambient-test-ray")
    ray = FlakyRay(failures=2)
    ray_runtime.start_local(ray, 1, {}, FAST)
    assert ray.calls == 3 and ray.shutdowns == 2  # cleaned up after each failed attempt


def test_local_ray_start_gives_up_with_one_line_that_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ambient-test-ray")
    ray = FlakyRay(failures=99)
    with pytest.raises(ServiceError) as err:
        ray_runtime.start_local(ray, 1, {}, FAST)
    msg = str(err.value)
    assert ray.calls == 3 and "\n" not in msg
    assert "did not start in 3 attempts" in msg and "--ray-address" in msg
    assert "/tmp/ambient-test-ray/session_latest/logs" in msg
    # A wrong argument is a bug: no retries, no ServiceError.
    bad = FlakyRay(failures=99, error=TypeError("unexpected keyword"))
    with pytest.raises(TypeError):
        ray_runtime.start_local(bad, 1, {}, FAST)
    assert bad.calls == 1


def test_start_policy_fits_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_runtime, "load_per_core", lambda: 6.0)
    busy = ray_runtime.StartPolicy.for_this_machine()
    busy_pause = [busy.backoff(1), busy.backoff(3)]
    monkeypatch.setattr(ray_runtime, "load_per_core", lambda: 0.2)
    calm = ray_runtime.StartPolicy.for_this_machine()
    assert busy.budget_s > calm.budget_s >= 180.0 and busy.attempts == calm.attempts
    assert busy_pause[0] > calm.backoff(1) and busy_pause[1] <= busy.max_backoff_s * 1.2
    monkeypatch.setenv(ray_runtime.ENV_ATTEMPTS, "1")
    assert ray_runtime.StartPolicy.for_this_machine().attempts == 1


def test_joining_an_unreachable_cluster_is_a_service_error() -> None:
    ray = FlakyRay(failures=1, error=ConnectionError("Could not find any running Ray instance"))
    with pytest.raises(ServiceError, match="cannot join the Ray cluster at 127.0.0.1:1"):
        ray_runtime._join(ray, "127.0.0.1:1", {})


def _ray_processes_of(pid: int) -> list[psutil.Process]:
    """Processes of the Ray session a driver with this pid started (by session directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"_{pid}/" in arg and "session_" in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.slow
def test_sigterm_of_a_cli_that_started_ray_shuts_ray_down(tmp_path: Path) -> None:
    """A command that started a local Ray ends it when it is terminated."""
    script = textwrap.dedent(
        """
        import sys, time
        from orchestrator.cli import main
        from ambient_platform.ray_runtime import ensure_ray

        @main.command("hold-ray")
        def hold() -> None:
            ensure_ray(num_cpus=1)
            print("ray-up", flush=True)
            time.sleep(600)

        main(["hold-ray"])
        """
    )
    env = {
        **os.environ,
        "RAY_TMPDIR": str(Path("/tmp") / f"amb-t{os.getpid()}"),
        "RAY_ADDRESS": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until Ray is up (or the script died)
        assert line.strip() == "ray-up", proc.stderr.read() if proc.stderr else ""
        assert _ray_processes_of(proc.pid), "no Ray processes found for the driver"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _ray_processes_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in _ray_processes_of(proc.pid)]
        assert not left, f"Ray processes outlived the CLI: {left}"
    finally:
        kill_tree(proc.pid)


# ------------------------------------------------------------------------------ ambient ui


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _cmdline(proc: psutil.Process) -> str:
    """A process's command line; "" for one that ended (or is a zombie) since it was listed:
    the MLflow server starts short-lived helpers."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_of_ambient_ui_ends_the_whole_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "AMBIENT_HOME": str(tmp_path / "home")}
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("ambient")), "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300  # MLflow needs 40-90 s on a busy 2-core machine
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert ui.poll() is None, ui.stderr.read().decode() if ui.stderr else ""
            assert time.monotonic() < deadline, "ambient ui never answered"
            time.sleep(1)
        tree = psutil.Process(ui.pid).children(recursive=True)
        names = " ".join(_cmdline(p) for p in tree)
        assert "mlflow" in names and ("uvicorn" in names or "gunicorn" in names)
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"survived ambient ui: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
        assert not _answers(f"http://127.0.0.1:{port}/health")
    finally:
        kill_tree(ui.pid)
