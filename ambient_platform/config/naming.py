"""How swept parameters and trials are named, in MLflow and in the CLI and report.

Pure functions of a sweep's dotted paths and values, kept apart from the trial (which pulls in
torch and MLflow) so ``ambient sweep status`` can label rows without importing either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

#: The trial config's seed key (a sweep's `seeds` are not part of its space).
SEED_KEY = "seed"
#: Tune config key of a trial's point: {dotted path: value, ..., "seed": s}.
PARAM_SPACE_KEY = "trial"

__all__ = ["PARAM_SPACE_KEY", "SEED_KEY", "format_value", "short_keys", "trial_label"]


def short_keys(paths: Iterable[str]) -> dict[str, str]:
    """Shortest unique dotted suffix of each swept path (``data.corrupt.0.annotation.tau`` ->
    ``tau``; two ``sigma_min`` leaves keep one more segment each), so MLflow columns read."""
    paths = list(paths)
    # A list index alone says nothing (``data.corrupt.0`` -> ``corrupt.0``, not ``0``).
    depth = {p: 2 if p.rsplit(".", 1)[-1].isdigit() and "." in p else 1 for p in paths}
    for _ in range(max((p.count(".") for p in paths), default=0) + 1):
        keys = {p: ".".join(p.split(".")[-depth[p] :]) for p in paths}
        clash = {p for p in paths if list(keys.values()).count(keys[p]) > 1}
        if not clash:
            return keys
        for p in clash:
            depth[p] += 1
    return {p: p for p in paths}


def format_value(v: Any) -> str:
    """A parameter value as people write it: 0.074, chunk, [16,32] (no quotes); a swept block
    (a dict, e.g. a whole ``data.corrupt.0`` entry) by its ``name`` when it has one."""
    if isinstance(v, Mapping) and isinstance(v.get("name"), str):
        return str(v["name"])
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int | str):
        return str(v)
    return json.dumps(v, separators=(",", ":"))


def trial_label(params: Mapping[str, Any], labels: Mapping[str, str], seed: int | None) -> str:
    """``tau=0.45 granularity=chunk seed=1``: the run name of a trial."""
    parts = [f"{labels.get(p, p)}={format_value(v)}" for p, v in params.items() if p != SEED_KEY]
    if seed is not None:
        parts.append(f"seed={seed}")
    return " ".join(parts)
