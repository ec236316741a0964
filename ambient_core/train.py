"""The one training loop: noise-first batches, the four loss variants, EMA, checkpoints.

No tracking code lives here: metrics leave through ``Callback.on_log`` and evaluation rounds
through ``Callback.on_round_end`` (which may ask to stop, e.g. for ASHA). jobs/ wires callbacks to
MLflow and Ray Tune.

One loop for every device (``TrainConfig.device``: ``cpu``, ``cuda[:i]`` or ``auto``): batches are
gathered where the weights live (``ChunkDataset.torch_batch``), the host only draws levels and
chunk ids, and losses are read back once per logging window or round end, never per step, so a
GPU is not stalled by the host inside a window. On the CPU the step is compute-bound in the
U-Net's convolutions (``benchmarks/train_speed.py`` prints the split per phase).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from ambient_core._io import atomic_directory
from ambient_core.data import ChunkDataset
from ambient_core.device import device_name
from ambient_core.errors import DataError
from ambient_core.losses import Prediction, denoising_target, training_pair
from ambient_core.noise import add_noise, fixed_noise
from ambient_core.policy import EMA, DiffusionPolicy
from ambient_core.sampler import NoiseFirstSampler, SamplerBatch
from ambient_core.vision import build_policy

CorruptLoss = Literal["denoising", "ambient"]
CHECKPOINT_FILE = "checkpoint.pt"
SPEC_FILE = "policy.json"


@dataclass
class TrainConfig:
    """Optimisation settings (diffusion_policy defaults, scaled down by the caller)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip: float | None = None
    ema_power: float | None = 0.75
    corrupt_loss: CorruptLoss = "denoising"
    noise_seed: int = 0
    seed: int = 0
    log_every: int = 50
    rounds: int = 1
    device: str = "cpu"  # "cpu", "cuda[:i]" or "auto" (CUDA when present)

    def __post_init__(self) -> None:
        if self.corrupt_loss not in ("denoising", "ambient"):
            raise ValueError(
                f"corrupt_loss must be 'denoising' or 'ambient', got {self.corrupt_loss!r}"
            )
        if self.steps < 1 or self.batch_size < 1 or self.rounds < 1 or self.rounds > self.steps:
            raise ValueError("need steps >= 1, batch_size >= 1 and 1 <= rounds <= steps")
        self.device = device_name(self.device)  # "auto" -> "cuda" or "cpu", checked once


def cosine_warmup_lambda(warmup_steps: int, total_steps: int) -> Any:
    """LR multiplier: linear warm-up then cosine decay to 0 (diffusers' cosine schedule)."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return float(step + 1) / float(max(1, warmup_steps))
        progress = (step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


@dataclass
class TrainState:
    """Everything a resumed run needs."""

    policy: DiffusionPolicy
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: NoiseFirstSampler
    config: TrainConfig
    step: int = 0
    round: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def eval_policy(self) -> DiffusionPolicy:
        """The EMA weights when EMA is on (diffusion_policy evaluates those)."""
        return cast(DiffusionPolicy, self.ema.averaged) if self.ema is not None else self.policy


class Callback:
    """Hooks of the training loop; subclass and override what you need."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Aggregated metrics of the last ``log_every`` steps."""

    def on_round_end(self, state: TrainState) -> bool:
        """End of an evaluation round; return True to stop training."""
        return False


def make_state(
    policy: DiffusionPolicy, sampler: NoiseFirstSampler, config: TrainConfig
) -> TrainState:
    """Fresh optimiser (AdamW), cosine warm-up schedule and EMA around ``policy``."""
    device = torch.device(config.device)
    policy.to(device)
    # The fused kernel (CPU and CUDA) updates all tensors in one pass: 5-10% of a small
    # U-Net's CPU step against foreach, which on the CPU loops over tensors op by op.
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(
        policy.model.parameters(),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        fused=fused,
        foreach=None if fused else True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_warmup_lambda(config.warmup_steps, config.steps)
    )
    ema = EMA(policy, power=config.ema_power) if config.ema_power is not None else None
    return TrainState(policy, ema, opt, sched, sampler, config)


class _Accumulator:
    """Loss and corrupt share per sigma bucket over a logging window.

    Per-element losses stay on the training device until the window is read (``pull``), so a
    GPU step never waits for the host: one device-to-host copy per window instead of per step.
    """

    def __init__(self, labels: Sequence[str], first_step: int) -> None:
        self.labels = list(labels)
        self.reset(first_step)

    def reset(self, first_step: int) -> None:
        nb = len(self.labels)
        self.first_step = first_step  # the window's steps are first_step + 1, ...
        self.pending: list[torch.Tensor] = []
        self._host: list[tuple[np.ndarray, np.ndarray]] = []
        self.steps = 0
        self.loss_sum, self.n = 0.0, 0
        self.bucket_loss = np.zeros(nb)
        self.bucket_n = np.zeros(nb)
        self.bucket_corrupt = np.zeros(nb)
        self.corrupt_loss_sum, self.corrupt_n = 0.0, 0
        self.t0 = time.perf_counter()

    def add(self, per_elem: torch.Tensor, buckets: np.ndarray, corrupt: np.ndarray) -> None:
        """Book one step: device losses (B,), and host-side sigma buckets and corrupt flags."""
        nb = len(self.labels)
        self.pending.append(per_elem)
        self.bucket_n += np.bincount(buckets, minlength=nb)
        self.bucket_corrupt += np.bincount(buckets[corrupt], minlength=nb)
        self.corrupt_n += int(corrupt.sum())
        self._host.append((buckets, corrupt))

    def pull(self) -> None:
        """Copy the pending losses to the host and book them; a NaN/inf names its step."""
        if not self.pending:
            return
        losses = torch.stack(self.pending).cpu().numpy().astype(np.float64)  # (steps, B)
        bad = np.flatnonzero(~np.isfinite(losses).all(axis=1))
        if bad.size:
            i = int(bad[0])
            value = losses[i][~np.isfinite(losses[i])][0]
            step = self.first_step + self.steps + i + 1
            raise FloatingPointError(f"training loss became {value} at step {step}")
        nb = len(self.labels)
        for row, (buckets, corrupt) in zip(losses, self._host, strict=True):
            self.loss_sum += float(row.sum())
            self.n += row.size
            self.bucket_loss += np.bincount(buckets, weights=row, minlength=nb)
            self.corrupt_loss_sum += float(row[corrupt].sum())
        self.steps += len(self.pending)
        self.pending, self._host = [], []

    def metrics(self) -> dict[str, float]:
        self.pull()
        out = {
            "loss": self.loss_sum / max(self.n, 1),
            "corrupt_share": self.corrupt_n / max(self.n, 1),
            "steps_per_s": self.steps / max(time.perf_counter() - self.t0, 1e-9),
        }
        if self.corrupt_n:
            out["loss_corrupt"] = self.corrupt_loss_sum / self.corrupt_n
        for i, lab in enumerate(self.labels):
            if self.bucket_n[i]:
                out[f"loss/{lab}"] = self.bucket_loss[i] / self.bucket_n[i]
                out[f"corrupt_share/{lab}"] = self.bucket_corrupt[i] / self.bucket_n[i]
        return out


def _noised_pair(
    cfg: TrainConfig, prediction: Prediction, b: SamplerBatch, x0: torch.Tensor, st: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for a sampled batch; the ambient pair only where sigma_min > 0.

    The sampler guarantees sigma_t > sigma_min for ambient elements; it is checked here on the
    host arrays (free) instead of on the device tensors (a GPU sync per step).
    """
    eps = torch.randn_like(x0)
    if cfg.corrupt_loss != "ambient" or not np.any(b.sigma_min > 0):
        return add_noise(x0, st, eps), denoising_target(x0, eps, prediction)
    amb = np.flatnonzero(b.sigma_min > 0)
    if np.any(b.sigmas[amb] <= b.sigma_min[amb]):
        raise ValueError("the sampler drew an ambient element with sigma_t <= sigma_min")
    fixed = torch.zeros(x0.shape, dtype=x0.dtype)
    fixed[torch.from_numpy(amb)] = fixed_noise(b.items[amb], tuple(x0.shape[1:]), cfg.noise_seed)
    sm = torch.from_numpy(b.sigma_min).to(device=x0.device, dtype=x0.dtype)
    return training_pair(x0, st, sm, eps, fixed.to(x0.device), prediction, validate=False)


def _optimise(state: TrainState, loss: torch.Tensor) -> None:
    """Backward, optional clipping, AdamW, LR schedule and EMA: no host sync anywhere."""
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if state.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(
            state.policy.model.parameters(), state.config.grad_clip, foreach=True
        )
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.policy)


def train_step(
    state: TrainState, data: ChunkDataset, sigma_levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, SamplerBatch]:
    """One optimisation step; returns (mean loss, per-element losses, the sampler batch).

    Both losses are detached tensors on the training device (reading them syncs a GPU).
    """
    cfg, policy = state.config, state.policy
    device = torch.device(cfg.device)
    b = state.sampler.sample(cfg.batch_size)
    obs, x0 = data.torch_batch(b.items, policy.normalizer, device)
    cond = policy.global_cond(obs)
    k = torch.from_numpy(b.levels).to(device, non_blocking=True)
    x_t, target = _noised_pair(cfg, policy.spec.prediction, b, x0, sigma_levels[k])
    pred = policy(x_t, k, cond)
    per_elem = ((pred - target) ** 2).flatten(1).mean(dim=1)
    loss = per_elem.mean()
    _optimise(state, loss)
    state.step += 1
    return loss.detach(), per_elem.detach(), b


def _log(state: TrainState, acc: _Accumulator, callbacks: Sequence[Callback]) -> None:
    m = acc.metrics() | {"lr": float(state.scheduler.get_last_lr()[0])}
    state.history.append({"step": float(state.step), **m})
    for cb in callbacks:
        cb.on_log(state.step, m)
    acc.reset(state.step)


def _end_round(state: TrainState, callbacks: Sequence[Callback]) -> bool:
    """Evaluation hooks at a round end (EMA weights, eval mode); True asks to stop."""
    state.round += 1
    state.policy.eval()
    stop = any([cb.on_round_end(state) for cb in callbacks])
    state.policy.train()
    return stop


def train(state: TrainState, data: ChunkDataset, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Run (or resume) training to ``config.steps``; rounds end at evenly spaced steps.

    Losses are read back once per logging window and at round ends (a non-finite loss raises
    FloatingPointError naming its step before any evaluation sees the weights).
    """
    cfg = state.config
    torch.manual_seed(cfg.seed + state.step)
    sigmas = torch.from_numpy(state.sampler.sigmas).float().to(cfg.device)
    acc = _Accumulator(state.sampler.bucket_labels(), state.step)
    round_ends = [round(cfg.steps * (r + 1) / cfg.rounds) for r in range(cfg.rounds)]
    state.policy.train()
    while state.step < cfg.steps:
        _, per_elem, b = train_step(state, data, sigmas)
        acc.add(per_elem, state.sampler.level_bucket[b.levels], b.is_corrupt)
        round_end = state.round < cfg.rounds and state.step >= round_ends[state.round]
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            _log(state, acc, callbacks)
        elif round_end:
            acc.pull()
        if round_end and _end_round(state, callbacks):
            break
    state.policy.eval()
    return state


def save_checkpoint(
    path: str | os.PathLike[str], state: TrainState, extra: dict[str, Any]
) -> Path:
    """Write ``policy.json`` + ``checkpoint.pt`` atomically (temp dir, then rename).

    ``extra`` is JSON metadata (e.g. the resolved run config) stored next to the weights.
    """
    with atomic_directory(path) as tmp:
        payload = {
            "policy": state.policy.state_dict(),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "sampler_rng": json.dumps(state.sampler.state_dict()),
            "step": state.step,
            "round": state.round,
        }
        torch.save(payload, tmp / CHECKPOINT_FILE)
        meta = {
            "spec": state.policy.spec.to_dict(),
            "train": asdict(state.config),
            "step": state.step,
            "extra": extra,
        }
        (tmp / SPEC_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return Path(path)


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's ``policy.json``; a missing or unreadable one is the user's input error."""
    spec = Path(path) / SPEC_FILE
    if not spec.is_file() or not (Path(path) / CHECKPOINT_FILE).is_file():
        raise DataError(
            f"{path} is not a checkpoint directory (needs {SPEC_FILE} and {CHECKPOINT_FILE}; "
            "training writes them under <run dir>/checkpoint)"
        )
    try:
        meta: dict[str, Any] = json.loads(spec.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{spec} is not valid JSON ({exc}); the checkpoint is damaged") from None
    return meta


def load_policy(path: str | os.PathLike[str], use_ema: bool = True) -> DiffusionPolicy:
    """Rebuild the policy of a checkpoint directory (EMA weights by default), weights only."""
    meta = read_checkpoint_meta(path)
    policy = build_policy(meta["spec"])  # low-dim or vision, from the spec's fields
    payload = torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if use_ema and payload["ema"] is not None:
        policy.load_state_dict(payload["ema"]["averaged"])
    else:
        policy.load_state_dict(payload["policy"])
    return policy.eval()


def restore_state(path: str | os.PathLike[str], state: TrainState) -> TrainState:
    """Load weights, optimiser, schedule, EMA, sampler RNG and counters into ``state``."""
    payload = torch.load(
        Path(path) / CHECKPOINT_FILE, map_location=state.config.device, weights_only=True
    )
    state.policy.load_state_dict(payload["policy"])
    if state.ema is not None and payload["ema"] is not None:
        state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.sampler.load_state_dict(json.loads(payload["sampler_rng"]))
    state.step, state.round = int(payload["step"]), int(payload["round"])
    return state
