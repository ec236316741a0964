"""Run an ``ambient`` command on a Ray cluster through the Ray Jobs API (``ambient submit``).

The working directory travels as the job's runtime env (``working_dir``; .gitignore'd and local
state such as .ambient/ and .venv/ stay behind), so the same YAML files run on the cluster. The
submission id is a digest of the command, the forwarded settings and the code version: the same
job submitted twice is recognised and followed instead of started again. Credentials are never
forwarded; the cluster has its own (instance profile, Kubernetes secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ambient_core.errors import ServiceError, SubmitError
from ambient_platform.tracking import SECRET_MARKERS

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXCLUDES = [".ambient/", ".venv/", ".work/", ".git/", "*.egg-info/", "__pycache__/"]
ENTRYPOINT = "python -m orchestrator.cli"
_NOT_ON_A_CLUSTER = ("submit", "job", "ui")


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """Forwarded variables, refusing anything that looks like a credential."""
    for key, value in env.items():
        if any(m in key.lower() for m in SECRET_MARKERS):
            raise SubmitError(
                f"--env {key}: credentials are not forwarded to jobs (they would be visible in "
                "the Ray dashboard); give the cluster its own (instance profile, K8s secret)"
            )
        if "://" in value and urlsplit(value).password:
            raise SubmitError(f"--env {key}: the URI embeds a password; use the cluster's env")
    return dict(env)


def _git(working_dir: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(working_dir), *args], capture_output=True, check=True, timeout=30
    ).stdout


def code_version(working_dir: Path) -> str:
    """Git commit plus a digest of uncommitted changes under ``working_dir``, or a digest of
    its sources when it is not tracked by git (not in a repository, or an ignored directory
    inside one, whose HEAD says nothing about the files that travel)."""
    try:
        if (
            subprocess.run(
                ["git", "-C", str(working_dir), "check-ignore", "-q", "."], timeout=30, check=False
            ).returncode
            == 0
        ):
            return _files_version(working_dir)
        head = _git(working_dir, "rev-parse", "HEAD").decode().strip()
        diff = _git(working_dir, "diff", "HEAD", "--", ".")
        # Untracked, not ignored files travel with the job too (a new sweep YAML, say).
        untracked = _git(working_dir, "ls-files", "-z", "-o", "--exclude-standard", "--", ".")
        for name in sorted(n for n in untracked.split(b"\0") if n):
            path = working_dir / name.decode()
            if path.is_file():
                diff += name + b"\0" + path.read_bytes()
    except (OSError, subprocess.SubprocessError):
        return _files_version(working_dir)
    return head + ("+" + hashlib.sha256(diff).hexdigest()[:12] if diff else "")


def _files_version(working_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(working_dir.rglob("*.py")) + sorted(working_dir.rglob("*.yaml")):
        if not any(part.startswith(".") for part in p.relative_to(working_dir).parts):
            h.update(str(p.relative_to(working_dir)).encode() + b"\0" + p.read_bytes())
    return "files-" + h.hexdigest()[:12]


@dataclass(frozen=True)
class Submission:
    """One job as it will be submitted: entrypoint, runtime env and deterministic id."""

    args: tuple[str, ...]
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str

    @classmethod
    def build(
        cls,
        args: Sequence[str],
        working_dir: Path,
        env: Mapping[str, str],
        submission_id: str | None = None,
    ) -> Submission:
        if not args:
            raise SubmitError("give the ambient command to run after --, e.g. -- sweep run X")
        if args[0] in _NOT_ON_A_CLUSTER:
            raise SubmitError(f"`ambient {args[0]}` is not a job to run on a cluster")
        env = check_env(env)
        for arg in args:
            if "://" in arg and urlsplit(arg.split("=", 1)[-1]).password:
                raise SubmitError(f"{arg!r} embeds a password; use the cluster's environment")
        runtime_env = {
            "working_dir": str(working_dir),
            "excludes": EXCLUDES,
            "env_vars": env,
        }
        if submission_id is None:
            blob = json.dumps(
                {"args": list(args), "env": env, "code": code_version(working_dir)},
                sort_keys=True,
            )
            if args[0] == "watch":
                # A watch pass is meant to run again: one id per UTC minute, so a cron that
                # fires twice in a minute submits once, and the next slot runs anew.
                blob += time.strftime("%Y%m%d%H%M", time.gmtime())
            words = [a for a in args if not a.startswith("-")][:2]
            slug = re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-")[:40]
            submission_id = f"ambient-{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
        return cls(tuple(args), f"{ENTRYPOINT} {shlex.join(args)}", runtime_env, submission_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class JobClient:
    """A thin layer over ``ray.job_submission.JobSubmissionClient``; an unreachable cluster
    is a ``ServiceError`` and a refused request a ``SubmitError``, both naming the address."""

    def __init__(self, address: str) -> None:
        from ray.job_submission import JobSubmissionClient

        if not address.startswith(("http://", "https://")):
            raise SubmitError(
                f"--address {address!r}: give the dashboard URL of the head, e.g. http://HEAD:8265"
            )
        self.address = address
        with self._calling():
            self.client = JobSubmissionClient(address)
        self.agent_wait_s = 120.0

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        import requests

        try:
            yield
        except (ConnectionError, requests.exceptions.RequestException) as exc:
            raise ServiceError(
                f"cannot reach the Ray Jobs API at {self.address} ({_first_line(exc)}); is the "
                "head up and is this its dashboard URL?"
            ) from exc

    def status(self, submission_id: str) -> str | None:
        """The job's status, or None if there is no job with this id."""
        try:
            with self._calling():
                return str(self.client.get_job_status(submission_id).value)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "status code 404" in str(exc):
                return None
            raise SubmitError(f"{self.address}: job {submission_id}: {_first_line(exc)}") from exc

    def submit(self, sub: Submission, retry: bool = False) -> tuple[str, bool]:
        """(submission id, whether a new job was started). An existing pending, running or
        succeeded job with the same id is reused; a failed or stopped one needs ``retry``,
        which starts ``<id>-rN``."""
        sid = sub.submission_id
        n = 1
        while (status := self.status(sid)) is not None:
            if status not in ("FAILED", "STOPPED"):
                return sid, False
            if not retry:
                raise SubmitError(
                    f"job {sid} already ran and ended {status}; pass --retry to run it again "
                    f"(logs: ambient job logs {sid} --address {self.address})"
                )
            n += 1
            sid = f"{sub.submission_id}-r{n}"
        # A head that just started answers before its job agent is up: wait for it a while.
        deadline = time.monotonic() + self.agent_wait_s
        while True:
            try:
                with self._calling():
                    self.client.submit_job(
                        entrypoint=sub.entrypoint,
                        submission_id=sid,
                        runtime_env=sub.runtime_env,
                        metadata={"ambient.command": " ".join(sub.args)[:500]},
                    )
                return sid, True
            except RuntimeError as exc:
                if "already exists" in str(exc):  # an identical submit won the race
                    return sid, False
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise SubmitError(
                        f"{self.address} refused job {sid}: {_first_line(exc)}"
                    ) from exc
                log.info("the head's job agent is not up yet; retrying in 2 s")
                time.sleep(2.0)

    def logs(self, submission_id: str) -> str:
        try:
            with self._calling():
                return str(self.client.get_job_logs(submission_id))
        except RuntimeError as exc:
            raise SubmitError(f"{self.address}: job {submission_id}: {_first_line(exc)}") from exc

    def stop(self, submission_id: str) -> bool:
        try:
            with self._calling():
                return bool(self.client.stop_job(submission_id))
        except RuntimeError as exc:
            raise SubmitError(f"{self.address}: job {submission_id}: {_first_line(exc)}") from exc

    def follow(
        self,
        submission_id: str,
        echo: Callable[[str], None],
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> str:
        """Print the job's log as it grows until it ends; returns the final status."""
        shown = 0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status(submission_id)
            if status is None:  # deleted, or the cluster was replaced
                return "UNKNOWN"
            text = self.logs(submission_id)
            if len(text) > shown:
                echo(text[shown:].rstrip("\n"))
                shown = len(text)
            if status in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            time.sleep(poll_s)
