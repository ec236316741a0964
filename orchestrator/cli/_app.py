"""The ``ambient`` group, the options every command shares, the one error handler and logging.

Why one handler: every user-caused failure raises an ``AmbientError`` (``ambient_core.errors``)
whose message names the file, field, dataset, shard or row. Commands do not catch anything;
``AmbientGroup.invoke`` turns those errors into one ``error: <message>`` line and exit code 2,
so a bad input never ends in a traceback and a bug always does (exit 1). ``--debug`` or
``AMBIENT_DEBUG=1`` prints the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

import click

from ambient_core.errors import AmbientError
from ambient_platform.settings import configure_environment

#: Exit codes of the ``ambient`` command (documented in ``ambient --help``).
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: Loggers of libraries that talk a lot at INFO; WARNING and up only, unless ``--verbose``.
THIRD_PARTY_LOGGERS = (
    "ray",
    "ray.tune",
    "ray.data",
    "ray.train",
    "mlflow",
    "alembic",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "optuna",
    "matplotlib",
    "filelock",
    "git",
)
_OUR_PACKAGES = ("ambient_core", "ambient_platform", "jobs", "orchestrator")
_LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (click's test runner and
    pytest swap it), never to a stream captured when logging was configured."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))


def configure_logging(verbose: bool = False) -> None:
    """INFO to stderr in a short format; third-party chatter only with ``verbose``.

    Idempotent (one handler on the root logger however often the group runs). Ray Data
    configures its own loggers on import, so its level also goes through RAY_DATA_LOG_LEVEL,
    which Ray reads then (and which Ray workers inherit).
    """
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    root.setLevel(logging.INFO)
    for name in _OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    if verbose:
        if os.environ.get("RAY_DATA_LOG_LEVEL") == "WARNING":
            os.environ.pop("RAY_DATA_LOG_LEVEL")
    else:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")


def _debug_wanted(ctx: click.Context | None) -> bool:
    if os.environ.get("AMBIENT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def _user_error(exc: BaseException) -> AmbientError | None:
    """The ``AmbientError`` behind ``exc``: itself, or the cause a Ray wrapper carries (a task,
    actor or Ray Data UDF that raised one is still the user's input at fault)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, AmbientError):
            return cause
        if isinstance(current, AmbientError):
            return current
        if not type(current).__module__.startswith("ray."):
            return None
        current = current.__cause__
    return None


def one_line(message: str) -> str:
    """A message as one line: its non-empty lines joined with '; '."""
    return "; ".join(s.strip() for s in message.splitlines() if s.strip()) or "(no message)"


def _report(exc: AmbientError, original: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(original, file=sys.stderr)
    click.secho(f"error: {one_line(str(exc))}", fg="red", err=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C does, so ``finally`` blocks and atexit handlers end
    child processes (the MLflow UI server, a local Ray) instead of orphaning them."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    if not _in_main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in saved:
        signal.signal(s, _terminate)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class AmbientGroup(click.Group):
    """The root group: one place where errors become exit codes (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _signals_unwind():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            user = _user_error(exc)
            if user is None:
                raise  # a bug: traceback, exit 1
            _report(user, exc, _debug_wanted(ctx))
            raise click.exceptions.Exit(EXIT_USER_ERROR) from None


def fail(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as a user error (for commands that still catch and re-raise): the group's
    handler prints the one ``error:`` line and exits 2."""
    if isinstance(exc, AmbientError):
        raise exc
    raise AmbientError(str(exc)) from exc


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


@click.group(cls=AmbientGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    help="Show the traceback of user errors too (env AMBIENT_DEBUG=1).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging, and Ray/MLflow/S3 chatter.")
def main(debug: bool, verbose: bool) -> None:
    """Ambient Diffusion Policy research platform.

    Generate or import data, train policies that use corrupt data only where it is
    indistinguishable from clean data (sigma >= sigma_min) or only local (sigma <= sigma_max),
    evaluate them, and reproduce the paper's tables. Runs are tracked in MLflow (a local SQLite
    store under ./.ambient unless --tracking-uri or MLFLOW_TRACKING_URI says otherwise).

    \b
    Exit codes: 0 done; 1 internal error (a bug: traceback); 2 bad input, usage or an
    unreachable service (one `error:` line; --debug adds the traceback); 130 interrupted.
    """
    del debug  # read by the error handler from the context
    configure_environment()
    configure_logging(verbose)
