"""What every config schema shares: the strict base model, YAML loading, dotted paths, errors.

One base model (``StrictModel``) so every schema refuses unknown keys and non-finite numbers the
same way (``.inf`` and ``.nan`` are valid YAML floats, so a typo-free file can still carry them;
they used to pass validation and fail steps later). One dotted-path walker serves ``--set``
overrides, sweep spaces and sweep constraints, so ``a.b.0.c`` means the same thing everywhere.
Every error names the file (or ``<config>``) and the dotted path, e.g.
``sweeps/train/maze_ambient.yaml: mixing.alpha: Input should be less than or equal to 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ambient_core.errors import ConfigError


class StrictModel(BaseModel):
    """Base of every schema and typed record: unknown keys, NaN and +-inf are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: Finite floats with the bounds the schemas use most (finiteness comes from ``StrictModel``;
#: the aliases also state it for readers of a single field).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]

M = TypeVar("M", bound=BaseModel)


class PathError(ConfigError):
    """A dotted path that does not lead anywhere in a nested config."""


# ------------------------------------------------------------------------------ dotted paths


def split_path(path: str) -> list[str]:
    """``"a.b.0.c"`` -> ``["a", "b", "0", "c"]``; empty segments are an error."""
    parts = path.strip().split(".")
    if not all(parts):
        raise PathError(f"{path!r} has an empty key segment")
    return parts


def _child(node: Any, parts: list[str], i: int, create: bool) -> Any:
    """The child ``parts[i]`` of ``node`` (the value at ``parts[:i]``)."""
    part, where, parent = parts[i], ".".join(parts[: i + 1]), ".".join(parts[:i])
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise PathError(f"{where}: {part} is not an index of the list (length {len(node)})")
        return node[int(part)]
    if isinstance(node, dict):
        if create and node.get(part) is None:
            node[part] = {}
        if part not in node:
            raise PathError(f"{where} does not exist")
        return node[part]
    if node is None:
        raise PathError(f"{parent} is null (set it in `overrides` first)")
    raise PathError(f"{parent} is a {type(node).__name__}, not a mapping")


def get_path(data: Any, path: str) -> Any:
    """Value at a dotted path of nested dicts/lists (list items by index); PathError if absent."""
    parts = split_path(path)
    node = data
    for i in range(len(parts)):
        node = _child(node, parts, i, create=False)
    return node


def set_path(data: Any, path: str, value: Any, *, create: bool = False) -> None:
    """Set a dotted path. Its parent must exist unless ``create`` makes missing (or null)
    mappings on the way; list items are addressed by an existing index only."""
    parts = split_path(path)
    node = data
    for i in range(len(parts) - 1):
        node = _child(node, parts, i, create)
    last = parts[-1]
    if isinstance(node, list):
        _child(node, parts, len(parts) - 1, create=False)  # the index must exist
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise PathError(f"{'.'.join(parts[:-1])} is a {type(node).__name__}, not a mapping")


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b.0.c=value`` -> (``"a.b.0.c"``, YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    try:
        split_path(key)
        value = yaml.safe_load(raw) if raw.strip() else ""
    except PathError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key.path=value`` items in a nested dict/list structure (list items by index)."""
    for item in overrides:
        key, value = parse_override(item)
        try:
            set_path(data, key, value, create=True)
        except PathError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
    return data


# ------------------------------------------------------------------------------ loading


def format_validation_error(err: ValidationError, source: str) -> str:
    """One ``source: dotted.path: message`` line per pydantic error."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, source: str) -> M:
    """``model.model_validate(data)`` with errors as one ConfigError naming ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | os.PathLike[str], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """safe_load a YAML mapping; errors name the file.

    A top-level ``base: other.yaml`` (relative to the file) is loaded first and deep-merged
    under this file, so variants state only what differs from their base.
    """
    p = Path(path)
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: 'base' chain loops back to itself")
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{p}: base must be a file name")
        data = _merge(load_yaml(p.parent / base, (*_seen, p.resolve())), data)
    return data


def load_model(
    model: type[M], path: str | os.PathLike[str], overrides: list[str] | None = None
) -> M:
    """Load a YAML file (with ``base:``), apply ``--set`` overrides, validate against ``model``."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides or []))
    return validate(model, data, str(path))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value}, lists of mappings by index (for MLflow params)."""
    out: dict[str, Any] = {}
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and obj and any(isinstance(v, dict | list) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out
