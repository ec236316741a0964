"""Annotation and classifier-training settings: one object each, from CLI flags or YAML.

``AnnotationConfig`` is what every annotation is made with (classifier, epochs, grid, draws,
seed, observation keys, actor resources, tracking). ``ambient annotate`` builds an
``AnnotateConfig`` (plus the datasets and ``skip_bad_shards``) from its flags, a watch file is a
``WatchConfig`` (plus sources and a schedule, ``ambient_platform.config.watch``), and the
``jobs.annotate`` functions take either, so the settings are declared and validated once.
``ClassifierTrainConfig`` does the same for ``ambient classifier train``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ambient_core.schedule import DEFAULT_NUM_STEPS
from ambient_platform.config.base import NonNegativeFloat, PositiveFloat, StrictModel
from ambient_platform.storage import validate_name

#: Every third DDPM level and the last (99 is both): 34 levels, fine enough for sigma_min.
DEFAULT_GRID: tuple[int, ...] = tuple(
    sorted({*range(0, DEFAULT_NUM_STEPS, 3), DEFAULT_NUM_STEPS - 1})
)


class AnnotationResources(StrictModel):
    """The scoring tasks: ``actors`` run at once (each on a reused worker that keeps its
    classifier), each reserving ``cpus_per_actor`` CPUs (its torch threads: the whole part,
    at least 1) and ``gpus_per_actor`` GPUs."""

    actors: int = Field(1, ge=1)
    cpus_per_actor: PositiveFloat = 0.5
    gpus_per_actor: NonNegativeFloat = 0.0


class AnnotationConfig(StrictModel):
    """What an annotation is made with; the settings digest of a manifest covers the curve
    settings (classifier, epochs, grid, draws, seed), the rest only says how to run."""

    name: str = "annotation"
    out: str | None = None
    classifier: str
    epochs: list[int] = Field(..., min_length=1)
    grid_levels: list[int] = Field(
        default_factory=lambda: list(DEFAULT_GRID), min_length=1, validate_default=True
    )
    num_draws: int = Field(4, ge=1)
    seed: int = 0
    obs_keys: list[str] = Field(default_factory=list)
    resources: AnnotationResources = Field(default_factory=AnnotationResources)
    tau: float = Field(0.45, gt=0.0, lt=1.0)  # for the logged sigma_min histograms only
    experiment: str = "annotation"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "annotation name")

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: list[int]) -> list[int]:
        if any(e < 0 for e in v):
            raise ValueError("classifier epochs are >= 0")
        return sorted(set(v))

    @field_validator("grid_levels")
    @classmethod
    def _grid(cls, v: list[int]) -> list[int]:
        if any(not 0 <= k < DEFAULT_NUM_STEPS for k in v):
            raise ValueError(f"grid levels must be DDPM indices in [0, {DEFAULT_NUM_STEPS - 1}]")
        return sorted(set(v))


class AnnotateConfig(AnnotationConfig):
    """``ambient annotate``: the datasets meta.json describes, annotated once each."""

    data: list[str] = Field(..., min_length=1)
    skip_bad_shards: bool = False


class ClassifierTrainConfig(StrictModel):
    """``ambient classifier train``: data, chunking, network width and optimisation."""

    clean: list[str] = Field(..., min_length=1)
    corrupt: list[str] = Field(..., min_length=1)
    name: str = "classifier"
    out: str | None = None
    obs_keys: list[str] = Field(default_factory=list)
    horizon: int = Field(16, ge=1)
    n_obs_steps: int = Field(2, ge=1)
    n_action_steps: int = Field(8, ge=1)
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    epochs: int = Field(5, ge=1)
    steps_per_epoch: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: PositiveFloat = 1e-3
    seed: int = 0
    experiment: str = "classifier"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "classifier name")

    @model_validator(mode="after")
    def _shapes(self) -> ClassifierTrainConfig:
        # The network's own rule (channels divisible by its group count), imported lazily so
        # loading settings does not import torch.
        from ambient_core.classifier import ClassifierSpec

        ClassifierSpec(action_dim=1, horizon=self.horizon, channels=tuple(self.channels))
        return self
