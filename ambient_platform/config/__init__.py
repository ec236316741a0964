"""Config schemas (pydantic), one module per file format, on one strict base.

- ``base``: the strict base model, finite-number types, YAML loading with ``base:``
  inheritance, the one dotted-path helper (``--set`` overrides, sweep spaces, constraints);
- ``run``: run configs (``sweeps/train/*.yaml``, ``ambient train``);
- ``space`` and ``sweep``: sweep specs (``sweeps/*.yaml``) and their search space;
- ``annotation``: annotation and classifier-training settings (``ambient annotate``,
  ``ambient classifier train``);
- ``watch``: watch files (``sweeps/watch/*.yaml``), an annotation config plus a schedule.

The run-config names are re-exported here because nearly every caller wants them.
"""

from ambient_core.errors import ConfigError
from ambient_platform.config.base import (
    apply_overrides,
    flatten,
    format_validation_error,
    load_yaml,
)
from ambient_platform.config.run import AnnotationRef, DatasetRef, RunConfig, load_run_config

__all__ = [
    "AnnotationRef",
    "ConfigError",
    "DatasetRef",
    "RunConfig",
    "apply_overrides",
    "flatten",
    "format_validation_error",
    "load_run_config",
    "load_yaml",
]
