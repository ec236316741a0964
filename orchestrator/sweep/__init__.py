"""Sweeps on Ray Tune (``ambient sweep run|resume|status|best|report``): the control plane.

One module per concept: ``state`` (where a sweep lives, the files ``status`` reads),
``searcher`` (grid/random/Optuna points, constraints, seed repeats, ASHA), ``driver`` (run,
resume, parent run, reconcile), ``callbacks`` (live progress, index, MLflow bookkeeping),
``results`` (rows from MLflow, intervals over seeds, ranking with ties, tables), ``stats``,
``figures``, ``parcoords`` and ``report`` (the HTML report), ``status`` (status, best, find a
sweep). The trial itself is a unit of work: ``jobs.trial``.

Importing this package is cheap: the Ray-backed names load on first use, so ``sweep status``
answers without importing Ray or MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ambient_core.errors import SweepError
from ambient_platform.config.naming import PARAM_SPACE_KEY
from orchestrator.sweep.state import sweep_started
from orchestrator.sweep.status import sweep_best, sweep_status

if TYPE_CHECKING:
    from orchestrator.sweep.driver import run_sweep
    from orchestrator.sweep.searcher import SweepSearcher

_LAZY = {"run_sweep": "orchestrator.sweep.driver", "SweepSearcher": "orchestrator.sweep.searcher"}

__all__ = [
    "PARAM_SPACE_KEY",
    "SweepError",
    "SweepSearcher",
    "run_sweep",
    "sweep_best",
    "sweep_started",
    "sweep_status",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
