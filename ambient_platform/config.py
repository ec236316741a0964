"""The one run-config schema: pydantic models loaded from YAML (safe_load) with dotted overrides.

A bad key or value fails with its dotted path and the file it came from, e.g.
``sweeps/train/maze_ambient.yaml: mixing.alpha: Input should be less than or equal to 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ambient_core.errors import ConfigError

TaskName = Literal["maze", "bin_sorting"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AnnotationRef(_Strict):
    """Per-chunk sigma_min from a committed annotation (score curves), derived at load time.

    Sweeping tau, epoch, granularity or buckets re-derives thresholds without the classifier.
    """

    path: str
    version: int | None = Field(None, ge=1)
    epoch: int = Field(..., ge=0)
    tau: float = Field(0.45, gt=0.0, lt=1.0)
    granularity: Literal["chunk", "episode", "bucket", "dataset"] = "chunk"
    n_buckets: int | None = Field(None, ge=1)
    bucket_mode: Literal["random", "score"] = "random"
    smoothing: float | None = Field(None, ge=1.0)
    dataset: str | None = None

    @model_validator(mode="after")
    def _buckets(self) -> AnnotationRef:
        if self.granularity == "bucket" and self.n_buckets is None:
            raise ValueError("granularity 'bucket' needs n_buckets")
        return self


class DatasetRef(_Strict):
    """A dataset directory or s3:// prefix (shards + meta.json), with its thresholds.

    sigma_min / sigma_max are sigma-space thresholds (VP, in [0, 1]) applied to every chunk of
    the dataset; clean datasets ignore them (always 0).
    """

    path: str
    name: str | None = None
    sigma_min: float = Field(0.0, ge=0.0, le=1.0)
    sigma_max: float = Field(0.0, ge=0.0, le=1.0)
    max_episodes: int | None = Field(None, ge=1)
    annotation: AnnotationRef | None = None

    @model_validator(mode="after")
    def _one_source_of_sigma_min(self) -> DatasetRef:
        if self.annotation is not None and self.sigma_min > 0:
            raise ValueError("give either sigma_min or annotation, not both")
        return self


class GenerateConfig(_Strict):
    """Generate the task's datasets into data.clean[0] / data.corrupt[0] when they are missing."""

    clean: int = Field(50, ge=1)
    corrupt: int = Field(500, ge=0)
    seed: int = 0


class DataConfig(_Strict):
    clean: list[DatasetRef] = Field(default_factory=list)
    corrupt: list[DatasetRef] = Field(default_factory=list)
    generate: GenerateConfig | None = None

    @model_validator(mode="after")
    def _some_data(self) -> DataConfig:
        if not self.clean and not self.corrupt:
            raise ValueError("give at least one clean or corrupt dataset")
        return self


class PolicyConfig(_Strict):
    horizon: int = Field(16, ge=1)
    n_obs_steps: int = Field(2, ge=1)
    n_action_steps: int = Field(8, ge=1)
    prediction: Literal["eps", "x0"] = "eps"
    network: Literal["unet", "mlp"] = "unet"
    down_dims: list[int] = Field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = Field(3, ge=1)
    step_embed_dim: int = Field(64, ge=2)
    mlp_hidden: int = Field(256, ge=1)
    mlp_depth: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _horizon(self) -> PolicyConfig:
        if self.network == "unet" and self.horizon % 2 ** (len(self.down_dims) - 1):
            raise ValueError(
                f"horizon {self.horizon} must be divisible by 2^(len(down_dims)-1) = "
                f"{2 ** (len(self.down_dims) - 1)}"
            )
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError("n_obs_steps - 1 + n_action_steps must not exceed horizon")
        return self

    def network_kwargs(self) -> dict[str, Any]:
        if self.network == "unet":
            return {
                "down_dims": list(self.down_dims),
                "kernel_size": self.kernel_size,
                "diffusion_step_embed_dim": self.step_embed_dim,
            }
        return {"hidden": self.mlp_hidden, "depth": self.mlp_depth}


class SoftConfig(_Strict):
    low: float = Field(0.0, ge=0.0, le=1.0)
    high: float = Field(1.0, ge=0.0, le=1.0)
    max_share: float | None = Field(None, ge=0.0, le=1.0)


class MixingConfig(_Strict):
    """How clean and corrupt data are mixed per diffusion level (DESIGN.md "Noise-first sampler").

    ``use_corrupt: false`` is filtering (clean only); ``use_clean: false`` is corrupt only;
    co-training is every corrupt sigma_min = 0 (usually with ``pool: fixed`` and ``alpha``).
    """

    use_clean: bool = True
    use_corrupt: bool = True
    pool: Literal["proportional", "fixed", "soft"] = "proportional"
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    soft: SoftConfig = Field(default_factory=SoftConfig)
    corrupt_loss: Literal["denoising", "ambient"] = "denoising"
    buffer_mult: float = Field(1.0, ge=1.0)
    buffer_add: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> MixingConfig:
        if self.pool == "fixed" and self.alpha is None:
            raise ValueError("pool 'fixed' needs alpha (the clean share)")
        if not self.use_clean and not self.use_corrupt:
            raise ValueError("use_clean and use_corrupt cannot both be false")
        if self.soft.low >= self.soft.high:
            raise ValueError("soft.low must be below soft.high")
        return self


class TrainSection(_Strict):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    ema_power: float | None = Field(0.75, gt=0)
    rounds: int = Field(1, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    noise_seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)


class EvalConfig(_Strict):
    episodes: int = Field(100, ge=1)
    round_episodes: int = Field(32, ge=1)
    method: Literal["ddim", "ddpm"] = "ddim"
    inference_steps: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    seed: int = 100_000
    plot: bool = True


class TrackingConfig(_Strict):
    uri: str | None = None
    experiment: str = "ambient"
    run_name: str | None = None


class RunConfig(_Strict):
    """One training run: data, mixing, policy, optimisation, evaluation, tracking."""

    name: str = "run"
    task: TaskName = "maze"
    data: DataConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    mixing: MixingConfig = Field(default_factory=MixingConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str | None = None

    @model_validator(mode="after")
    def _rounds(self) -> RunConfig:
        if self.train.rounds > self.train.steps:
            raise ValueError("train.rounds cannot exceed train.steps")
        if self.mixing.use_corrupt and self.mixing.corrupt_loss == "ambient":
            amb = [d for d in self.data.corrupt if d.sigma_min > 0]
            if amb and not (self.mixing.buffer_mult > 1.0 or self.mixing.buffer_add > 0.0):
                # Without a buffer, sigma_t may sit right above sigma_min where the target
                # variance ~ 1 / (st^2 - sm^2) explodes.
                raise ValueError(
                    "the ambient loss needs a buffer: set mixing.buffer_mult > 1 "
                    "(e.g. 1.15) or mixing.buffer_add > 0"
                )
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key segment")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted paths in a nested dict/list structure (list items by index)."""
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} is not an index of the list")
                node = node[int(p)]
            elif isinstance(node, dict):
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
            else:
                raise ConfigError(f"override {item!r}: {where} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {last} is not an index of the list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


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


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Load, override and validate a run config from a file (or a dict)."""
    data = load_yaml(path) if path is not None else dict(base or {})
    source = str(path) if path is not None else "<config>"
    apply_overrides(data, list(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value}, lists by index (for MLflow params)."""
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
