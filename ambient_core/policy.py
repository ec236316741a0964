"""Diffusion policy around a denoiser: min-max normaliser, DDPM/DDIM inference, EMA.

Inference runs on the same DDPM grid as training (T = 100, squaredcos_cap_v2); the network is
conditioned on the level index k and on the flattened, normalised observation history.
``predict_action`` executes actions[T_o - 1 : T_o - 1 + T_a] of the predicted horizon, as
diffusion_policy and LeRobot do.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ambient_core.device import resolve_device
from ambient_core.losses import PREDICTIONS
from ambient_core.networks import build_network
from ambient_core.schedule import ddpm_alphas_cumprod

RANGE_EPS = 1e-4


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")


class Normalizer(nn.Module):
    """Per-feature min-max map to [-1, 1] (diffusion_policy's 'limits' mode), saved with the model.

    A dimension whose range is below 1e-4 is centred on 0 instead of being blown up.
    """

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.keys = list(dims)
        for key, d in dims.items():
            self.register_buffer(f"{_buffer_name(key)}_scale", torch.ones(d))
            self.register_buffer(f"{_buffer_name(key)}_offset", torch.zeros(d))

    @classmethod
    def fit(cls, data: dict[str, np.ndarray]) -> Normalizer:
        """Fit limits from arrays of shape (N, D) per key (every frame of every dataset)."""
        norm = cls({k: int(v.shape[-1]) for k, v in data.items()})
        for key, arr in data.items():
            flat = np.asarray(arr, dtype=np.float64).reshape(-1, arr.shape[-1])
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            rng = hi - lo
            flat_dim = rng < RANGE_EPS
            scale = np.where(flat_dim, 1.0, 2.0 / np.where(flat_dim, 1.0, rng))
            offset = np.where(flat_dim, -lo, -1.0 - scale * lo)
            getattr(norm, f"{_buffer_name(key)}_scale").copy_(torch.from_numpy(scale))
            getattr(norm, f"{_buffer_name(key)}_offset").copy_(torch.from_numpy(offset))
        return norm

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, f"{_buffer_name(key)}_scale")
        return x * scale + getattr(self, f"{_buffer_name(key)}_offset")

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, f"{_buffer_name(key)}_scale")
        return (x - getattr(self, f"{_buffer_name(key)}_offset")) / scale


@dataclass
class PolicySpec:
    """Everything needed to rebuild a policy from a checkpoint (plain JSON)."""

    obs_dims: dict[str, int]
    action_dim: int
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    prediction: Literal["x0", "eps"] = "eps"
    num_train_steps: int = 100
    network: str = "unet"
    network_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 1 <= self.n_obs_steps <= self.horizon:
            raise ValueError(f"need 1 <= n_obs_steps <= horizon, got {self.n_obs_steps}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps}"
                f" exceeds horizon {self.horizon}"
            )

    @property
    def global_cond_dim(self) -> int:
        return self.n_obs_steps * sum(self.obs_dims.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiffusionPolicy(nn.Module):
    """Denoiser + normaliser + sampler; ``predict_action`` works on unnormalised batches."""

    alphas_cumprod: torch.Tensor  # buffer (T,), not saved: rebuilt from the schedule

    def __init__(self, spec: PolicySpec, normalizer: Normalizer | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = build_network(
            spec.network,
            spec.action_dim,
            spec.horizon,
            spec.global_cond_dim,
            **spec.network_kwargs,
        )
        dims = {**spec.obs_dims, "action": spec.action_dim}
        self.normalizer = normalizer if normalizer is not None else Normalizer(dims)
        ac = torch.from_numpy(ddpm_alphas_cumprod(spec.num_train_steps)).float()
        self.register_buffer("alphas_cumprod", ac, persistent=False)

    def global_cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flatten the normalised obs history (B, T_o, D_key) over keys into (B, T_o * sum D)."""
        To = self.spec.n_obs_steps
        parts = [obs[k][:, :To].reshape(obs[k].shape[0], -1) for k in self.spec.obs_dims]
        return torch.cat(parts, dim=-1)

    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in self.spec.obs_dims if k not in obs]
        if missing:
            raise KeyError(
                f"observation is missing keys {missing}; expected {list(self.spec.obs_dims)}"
            )
        return {k: self.normalizer.normalize(k, obs[k].float()) for k in self.spec.obs_dims}

    def forward(self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, k, cond)

    def _x0_eps(
        self, out: torch.Tensor, x: torch.Tensor, ab: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped x0 estimate and the noise consistent with it."""
        if self.spec.prediction == "eps":
            x0 = (x - torch.sqrt(1 - ab) * out) / torch.sqrt(ab)
        else:
            x0 = out
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - torch.sqrt(ab) * x0) / torch.sqrt(1 - ab)
        return x0, eps

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        method: Literal["ddpm", "ddim"] = "ddim",
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw normalised action chunks (B, H, Da) given the global condition."""
        T = self.spec.num_train_steps
        n = num_inference_steps or (T if method == "ddpm" else 10)
        if not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}], got {n}")
        stride = T // n
        steps = list(range(0, n * stride, stride))[::-1]
        shape = (cond.shape[0], self.spec.horizon, self.spec.action_dim)
        x = torch.randn(shape, generator=generator, device=cond.device)
        ac = self.alphas_cumprod.to(cond.device)
        for k in steps:
            kk = torch.full((shape[0],), k, device=cond.device, dtype=torch.long)
            out = self.model(x, kk, cond)
            ab = ac[k]
            ab_prev = ac[k - stride] if k - stride >= 0 else torch.ones((), device=cond.device)
            x0, eps = self._x0_eps(out, x, ab)
            if method == "ddim":
                x = torch.sqrt(ab_prev) * x0 + torch.sqrt(1 - ab_prev) * eps
            elif method == "ddpm":
                beta = 1 - ab / ab_prev
                mean = (
                    torch.sqrt(ab_prev) * beta * x0 + torch.sqrt(1 - beta) * (1 - ab_prev) * x
                ) / (1 - ab)
                if k - stride >= 0:
                    var = torch.clamp((1 - ab_prev) / (1 - ab) * beta, min=1e-20)
                    z = torch.randn(shape, generator=generator, device=cond.device)
                    x = mean + torch.sqrt(var) * z
                else:
                    x = mean
            else:
                raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
        return x

    @torch.no_grad()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        method: Literal["ddpm", "ddim"] = "ddim",
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Unnormalised obs history (B, T_o, D) per key -> actions to execute (B, T_a, Da)."""
        cond = self.global_cond(self.normalize_obs(obs))
        chunk = self.sample(cond, method, num_inference_steps, generator)
        start = self.spec.n_obs_steps - 1
        actions = chunk[:, start : start + self.spec.n_action_steps]
        return self.normalizer.unnormalize("action", actions)


class PolicyRunner:
    """numpy adapter that makes a DiffusionPolicy a ``ChunkPolicy`` for env rollouts."""

    def __init__(
        self,
        policy: DiffusionPolicy,
        method: Literal["ddpm", "ddim"] = "ddim",
        num_inference_steps: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = resolve_device(device)
        self.policy = policy.to(self.device).eval()
        self.method, self.steps = method, num_inference_steps
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.n_obs_steps = policy.spec.n_obs_steps

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        t_obs = {
            k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in obs.items()
        }
        act = self.policy.predict_action(t_obs, self.method, self.steps, self.generator)
        return act.cpu().numpy()


@dataclass
class _EmaPairs:
    """Averaged tensors and their sources, plus the tensors that are copied (buffers, frozen
    parameters), for one source model."""

    model_id: int
    averaged: list[torch.Tensor]
    source: list[torch.Tensor]
    copy_to: list[torch.Tensor]
    copy_from: list[torch.Tensor]


class EMA:
    """Exponential moving average of weights with diffusion_policy's warm-up schedule.

    decay(step) = 1 - (1 + step / inv_gamma) ** -power, clipped to [min_value, max_value], and 0
    for the first update (so the average starts as a copy). Buffers (e.g. normaliser, norms) are
    copied, not averaged.
    """

    def __init__(
        self,
        model: nn.Module,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_value: float = 0.0,
        max_value: float = 0.9999,
        update_after_step: int = 0,
    ) -> None:
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_value, self.max_value = min_value, max_value
        self.update_after_step = update_after_step
        self.optimization_step = 0
        self._cache: _EmaPairs | None = None

    def decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    def _pairs(self, model: nn.Module) -> _EmaPairs:
        """The tensor lists of one update, built once per source model (walking the module
        tree every step cost about 5% of a small U-Net's CPU step)."""
        if self._cache is None or self._cache.model_id != id(model):
            pairs = list(zip(self.averaged.parameters(), model.parameters(), strict=True))
            bufs = list(zip(self.averaged.buffers(), model.buffers(), strict=True))
            frozen = [(e, p) for e, p in pairs if not p.requires_grad] + bufs
            self._cache = _EmaPairs(
                id(model),
                [e for e, p in pairs if p.requires_grad],
                [p for _, p in pairs if p.requires_grad],
                [e for e, _ in frozen],
                [p for _, p in frozen],
            )
        return self._cache

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * param in one fused pass; buffers are copied."""
        d = self.decay(self.optimization_step)
        c = self._pairs(model)
        if c.averaged:  # lerp with weight 1 - d; weight 1 (the first update) copies exactly
            torch._foreach_lerp_(c.averaged, c.source, 1.0 - d)
        if c.copy_to:
            torch._foreach_copy_(c.copy_to, c.copy_from)
        self.optimization_step += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "optimization_step": self.optimization_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.optimization_step = int(state["optimization_step"])
