"""The ``ambient`` command line: data, training, evaluation, annotation, sweeps, re-annotation
watch, cluster submission, reproduction, demo, UI.

One module per command group; importing them registers their commands on ``main``.
"""

from orchestrator.cli import annotation, cluster, data, runs, sweep  # noqa: F401  (registers)
from orchestrator.cli._app import main

__all__ = ["main"]
