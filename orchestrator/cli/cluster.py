"""``ambient submit|job``: commands on a Ray cluster through the Ray Jobs API."""

from __future__ import annotations

import sys

import click

from ambient_core.errors import SubmitError
from orchestrator.cli._app import EXIT_INTERRUPTED, main


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="Dashboard URL of the cluster head, e.g. http://HEAD:8265 (env RAY_API_SERVER_ADDRESS).",
)
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI the job logs to (forwarded as MLFLOW_TRACKING_URI).",
)
@click.option(
    "--storage", help="Storage root for the job (forwarded as AMBIENT_STORAGE), e.g. s3://b/p."
)
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Forward a variable.")
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    default=".",
    show_default=True,
    help="Uploaded as the job's working directory (.gitignore'd files stay behind).",
)
@click.option("--submission-id", help="Job id (default: digest of command, settings and code).")
@click.option("--retry", is_flag=True, help="Run again if the same job already failed/stopped.")
@click.option("--no-wait", is_flag=True, help="Print the id and return; do not stream logs.")
@click.option("--timeout", type=float, help="Stop following after this many seconds.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def submit(
    address: str,
    tracking_uri: str | None,
    storage: str | None,
    env_items: tuple[str, ...],
    working_dir: str,
    submission_id: str | None,
    retry: bool,
    no_wait: bool,
    timeout: float | None,
    command: tuple[str, ...],
) -> None:
    """Run an ambient COMMAND on a Ray cluster through the Ray Jobs API.

    \b
    ambient submit --address http://HEAD:8265 --tracking-uri http://mlflow:5000 \\
        --storage s3://lab/ambient -- sweep run sweeps/maze_sigma_min.yaml

    The same command (and settings and code) gets the same submission id, so submitting it
    twice follows the first job instead of starting a second. Exits 0 when the job succeeds.
    """
    from pathlib import Path

    from orchestrator.submit import JobClient, Submission

    env = {}
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {item!r} must look like KEY=VALUE")
        env[key] = value
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        env["AMBIENT_STORAGE"] = storage
    sub = Submission.build(list(command), Path(working_dir).resolve(), env, submission_id)
    client = JobClient(address)
    sid, created = client.submit(sub, retry=retry)
    verb = "submitted" if created else f"already submitted ({client.status(sid)}); following"
    click.echo(f"[submit] {verb}: {sid}  ({sub.entrypoint})", err=True)
    if no_wait:
        click.echo(sid)
        return
    try:
        status = client.follow(sid, click.echo, timeout_s=timeout)
    except KeyboardInterrupt:
        click.echo(f"\n[submit] still running: ambient job logs {sid} --address {address}")
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"[submit] {sid}: {status}", err=True)
    sys.exit(0 if status == "SUCCEEDED" else 1)


@main.group()
def job() -> None:
    """Status, logs and stopping of jobs started with `ambient submit`."""


_ADDRESS = click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="Dashboard URL of the cluster head (env RAY_API_SERVER_ADDRESS).",
)


@job.command("status")
@_ADDRESS
@click.argument("submission_id")
def job_status(address: str, submission_id: str) -> None:
    """Print the status of SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    click.echo(JobClient(address).status(submission_id) or "no such job")


@job.command("logs")
@_ADDRESS
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.argument("submission_id")
def job_logs(address: str, follow: bool, submission_id: str) -> None:
    """Print the log of SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    client = JobClient(address)
    if follow:
        click.echo(f"[job] {client.follow(submission_id, click.echo)}", err=True)
    else:
        click.echo(client.logs(submission_id), nl=False)


@job.command("stop")
@_ADDRESS
@click.argument("submission_id")
def job_stop(address: str, submission_id: str) -> None:
    """Ask the cluster to stop SUBMISSION_ID."""
    from orchestrator.submit import JobClient

    click.echo("stopping" if JobClient(address).stop(submission_id) else "not running")
