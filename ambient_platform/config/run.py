"""The one run-config schema (``ambient train``, every sweep trial, ``ambient reproduce``).

Loaded from YAML (``base:`` inheritance, dotted ``--set`` overrides); a bad key or value fails
with its dotted path and the file it came from, e.g.
``sweeps/train/maze_ambient.yaml: mixing.alpha: Input should be less than or equal to 1``.
Task names come from the task registry, the horizon rules from the policy and network code
that enforce them at run time, so the schema never disagrees with what would run.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ambient_core.envs.registry import task_names
from ambient_platform.config.base import (
    NonNegativeFloat,
    PositiveFloat,
    StrictModel,
    UnitFloat,
    apply_overrides,
    load_yaml,
    validate,
)


class AnnotationRef(StrictModel):
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


class DatasetRef(StrictModel):
    """A dataset directory or s3:// prefix (shards + meta.json), with its thresholds.

    sigma_min / sigma_max are sigma-space thresholds (VP, in [0, 1]) applied to every chunk of
    the dataset; clean datasets ignore them (always 0). With ``annotation`` the per-chunk
    sigma_min is derived from score curves instead and ``sigma_min`` must stay 0.

    ``weight`` is the dataset's sampling weight inside its pool (clean, or corrupt at a level):
    None (the default) draws a pool's eligible chunks uniformly, so a dataset's share follows
    its size; weights (all datasets of the pool, or none) give every chunk of dataset d the
    mass weight_d / chunks_d, conditioned on eligibility at each noise level. With one
    sigma_min per dataset the datasets eligible at a level split the pool by weight. Only the
    ratio of weights within a pool matters; ``mixing.alpha`` (pool ``fixed``) stays the clean
    share. ``ambient_core.sampler`` has the exact rule and how ``proportional`` uses weights.
    """

    path: str
    name: str | None = None
    sigma_min: UnitFloat = 0.0
    sigma_max: UnitFloat = 0.0
    max_episodes: int | None = Field(None, ge=1)
    annotation: AnnotationRef | None = None
    weight: PositiveFloat | None = None

    @model_validator(mode="after")
    def _one_source_of_sigma_min(self) -> DatasetRef:
        if self.annotation is not None and self.sigma_min > 0:
            raise ValueError("give either sigma_min or annotation, not both")
        return self


class GenerateConfig(StrictModel):
    """Generate the task's datasets into data.clean[0] / data.corrupt[0] when they are missing."""

    clean: int = Field(50, ge=1)
    corrupt: int = Field(500, ge=0)
    seed: int = 0


class DataConfig(StrictModel):
    clean: list[DatasetRef] = Field(default_factory=list)
    corrupt: list[DatasetRef] = Field(default_factory=list)
    generate: GenerateConfig | None = None

    @field_validator("clean", "corrupt")
    @classmethod
    def _weights_all_or_none(
        cls, refs: list[DatasetRef], info: ValidationInfo
    ) -> list[DatasetRef]:
        """A weight on some datasets of a pool but not others has no meaning (weights are
        relative; sizes are not): name the first dataset that lacks one."""
        given = [r.weight is not None for r in refs]
        if any(given) and not all(given):
            i, j = given.index(True), given.index(False)
            pool = info.field_name
            raise ValueError(
                f"data.{pool}.{j}.weight is missing but data.{pool}.{i}.weight is set: give "
                f"every {pool} dataset a weight, or none (shares follow dataset sizes)"
            )
        return refs

    @model_validator(mode="after")
    def _some_data(self) -> DataConfig:
        if not self.clean and not self.corrupt:
            raise ValueError("give at least one clean or corrupt dataset")
        return self


class VisionConfig(StrictModel):
    """The image encoder of tasks with cameras (diffusion_policy / LeRobot defaults).

    ``crop_shape`` (H, W) defaults to 7/8 of the image (84 of 96): random crops while training,
    the centre crop in evaluation. ``backbone_width`` is ResNet-18's first-stage width (64; less
    trains faster on CPU). ``cache_gb`` bounds the decoded frames kept in memory.
    """

    crop_shape: list[int] | None = Field(None, min_length=2, max_length=2)
    num_keypoints: int = Field(32, ge=1)
    backbone_width: int = Field(64, ge=1)
    shared_encoder: bool = False
    cache_gb: PositiveFloat = 4.0


class PolicyConfig(StrictModel):
    horizon: int = Field(16, ge=1)
    n_obs_steps: int = Field(2, ge=1)
    n_action_steps: int = Field(8, ge=1)
    prediction: Literal["eps", "x0"] = "eps"
    network: Literal["unet", "mlp"] = "unet"
    down_dims: list[int] = Field(default_factory=lambda: [64, 128, 256], min_length=1)
    kernel_size: int = Field(3, ge=1)
    step_embed_dim: int = Field(64, ge=2)
    mlp_hidden: int = Field(256, ge=1)
    mlp_depth: int = Field(3, ge=1)
    vision: VisionConfig = Field(default_factory=VisionConfig)  # used by tasks with cameras

    @model_validator(mode="after")
    def _horizon(self) -> PolicyConfig:
        # The rules live with the code that enforces them at run time (imported here, not at
        # module level, so loading a config does not import torch).
        from ambient_core.networks import check_unet_horizon
        from ambient_core.policy import PolicySpec

        if self.network == "unet":
            check_unet_horizon(self.horizon, len(self.down_dims))
        PolicySpec({}, 1, self.horizon, self.n_obs_steps, self.n_action_steps)
        return self

    def network_kwargs(self) -> dict[str, Any]:
        if self.network == "unet":
            return {
                "down_dims": list(self.down_dims),
                "kernel_size": self.kernel_size,
                "diffusion_step_embed_dim": self.step_embed_dim,
            }
        return {"hidden": self.mlp_hidden, "depth": self.mlp_depth}


class SoftConfig(StrictModel):
    low: UnitFloat = 0.0
    high: UnitFloat = 1.0
    max_share: UnitFloat | None = None


class MixingConfig(StrictModel):
    """How clean and corrupt data are mixed per diffusion level (DESIGN.md "Noise-first sampler").

    ``use_corrupt: false`` is filtering (clean only); ``use_clean: false`` is corrupt only;
    co-training is every corrupt sigma_min = 0 (usually with ``pool: fixed`` and ``alpha``).
    """

    use_clean: bool = True
    use_corrupt: bool = True
    pool: Literal["proportional", "fixed", "soft"] = "proportional"
    alpha: UnitFloat | None = None
    soft: SoftConfig = Field(default_factory=SoftConfig)
    corrupt_loss: Literal["denoising", "ambient"] = "denoising"
    buffer_mult: float = Field(1.0, ge=1.0)
    buffer_add: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> MixingConfig:
        if self.pool == "fixed" and self.alpha is None:
            raise ValueError("pool 'fixed' needs alpha (the clean share)")
        if not self.use_clean and not self.use_corrupt:
            raise ValueError("use_clean and use_corrupt cannot both be false")
        if self.soft.low >= self.soft.high:
            raise ValueError("soft.low must be below soft.high")
        return self


class TrainSection(StrictModel):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-6
    warmup_steps: int = Field(500, ge=0)
    grad_clip: PositiveFloat | None = None
    ema_power: PositiveFloat | None = 0.75
    rounds: int = Field(1, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    noise_seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)


class EvalConfig(StrictModel):
    episodes: int = Field(100, ge=1)
    round_episodes: int = Field(32, ge=1)
    method: Literal["ddim", "ddpm"] = "ddim"
    inference_steps: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    seed: int = 100_000
    plot: bool = True


class TrackingConfig(StrictModel):
    uri: str | None = None
    experiment: str = "ambient"
    run_name: str | None = None


class RunConfig(StrictModel):
    """One training run: data, mixing, policy, optimisation, evaluation, tracking."""

    name: str = "run"
    task: str = "maze"
    data: DataConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    mixing: MixingConfig = Field(default_factory=MixingConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in task_names():
            raise ValueError(f"unknown task {v!r}; known: {', '.join(task_names())}")
        return v

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


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Load, override and validate a run config from a file (or a dict)."""
    data = load_yaml(path) if path is not None else copy.deepcopy(base or {})  # overrides mutate
    apply_overrides(data, list(overrides or []))
    return validate(RunConfig, data, str(path) if path is not None else "<config>")
