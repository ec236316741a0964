"""Forward noising, re-noising from sigma_min to sigma_t, and per-datapoint fixed noise.

A corrupt datum is contracted once to its level sigma_min with a noise e_i that never changes
(``fixed_noise``), then noised further to sigma_t > sigma_min (``renoise``): the marginal of the
result is exactly sqrt(1 - st^2) x0 + st * N(0, I).
"""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _per_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-batch-element tensor (B,) against x of shape (B, ...)."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_s = sqrt(1 - s^2) x0 + s eps, with sigma per batch element."""
    s = _per_batch(sigma, x0)
    return torch.sqrt(1 - s * s) * x0 + s * eps


def renoise_coefficients(
    sigma_min: torch.Tensor, sigma_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with x_st = a x_sm + b z; requires sigma_t >= sigma_min."""
    sm2, st2 = sigma_min * sigma_min, sigma_t * sigma_t
    a = torch.sqrt((1 - st2) / (1 - sm2))
    b = torch.sqrt(torch.clamp(st2 - sm2, min=0) / (1 - sm2))
    return a, b


def renoise(
    x_sm: torch.Tensor, sigma_min: torch.Tensor, sigma_t: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Noise a datum already at level sigma_min further to sigma_t (VP to VP)."""
    sm = _per_batch(sigma_min, x_sm)
    st = _per_batch(sigma_t, x_sm)
    a, b = renoise_coefficients(sm, st)
    return a * x_sm + b * z


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based mixing (SplitMix64 finaliser): identical in every process and platform."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def fixed_noise(item_ids: np.ndarray, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal noise fixed per datapoint: a pure function of (seed, item id, element).

    No table of N noises is stored, and the value for an item does not depend on which batch it
    lands in, so every worker process contracts a datapoint with the same e_i.
    """
    ids = np.asarray(item_ids, dtype=np.int64).astype(np.uint64)
    n = int(np.prod(shape)) if shape else 1
    base = _splitmix64(_splitmix64(np.uint64(seed) + np.zeros(1, np.uint64)) ^ ids)[:, None]
    counters = np.arange(2 * n, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        bits = _splitmix64((base + counters * np.uint64(0xD1B54A32D192ED03)) & _MASK64)
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    u1, u2 = u[:, :n], u[:, n:]
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.astype(np.float32)).reshape(len(ids), *shape)
