"""Diffusion Policy's DDPM grid expressed in sigma-space (VP: x_s = sqrt(1 - s^2) x0 + s eps).

Thresholds (sigma_min, sigma_max) are stored and logged as sigmas, never as raw step indices, so
they survive a change of schedule; these helpers map between the two.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

DEFAULT_NUM_STEPS = 100
_MAX_BETA = 0.999  # diffusers' betas_for_alpha_bar clip


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


@lru_cache(maxsize=8)
def _alphas_cumprod(num_steps: int) -> np.ndarray:
    betas = np.array(
        [
            min(
                1 - _cosine_alpha_bar((i + 1) / num_steps) / _cosine_alpha_bar(i / num_steps),
                _MAX_BETA,
            )
            for i in range(num_steps)
        ],
        dtype=np.float64,
    )
    out = np.cumprod(1.0 - betas)
    out.setflags(write=False)
    return out


def ddpm_alphas_cumprod(num_steps: int = DEFAULT_NUM_STEPS) -> np.ndarray:
    """alphabar_k of diffusers' DDPMScheduler(beta_schedule="squaredcos_cap_v2"), k = 0..T-1."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    return _alphas_cumprod(int(num_steps)).copy()


def ddpm_sigmas(num_steps: int = DEFAULT_NUM_STEPS) -> np.ndarray:
    """Increasing sigma grid sigma_k = sqrt(1 - alphabar_k); sigma_0 ~ 0.0251, sigma_99 ~ 1."""
    return np.sqrt(1.0 - ddpm_alphas_cumprod(num_steps))


def sigma_to_index(
    sigma: float | np.ndarray, sigmas: np.ndarray, mode: str = "nearest"
) -> np.ndarray:
    """Map sigma values to grid indices.

    ``nearest``: closest grid level; ``ceil``: first level with sigma_k >= sigma (the first level
    at which a threshold sigma_min is reached); ``floor``: last level with sigma_k <= sigma
    (-1 when sigma is below the grid, the natural index for "no low-noise window").
    """
    s = np.asarray(sigma, dtype=np.float64)
    if mode == "ceil":
        return np.searchsorted(sigmas, s, side="left")
    if mode == "floor":
        return np.searchsorted(sigmas, s, side="right") - 1
    if mode == "nearest":
        hi = np.clip(np.searchsorted(sigmas, s, side="left"), 1, len(sigmas) - 1)
        lo = hi - 1
        return np.where(np.abs(sigmas[lo] - s) <= np.abs(sigmas[hi] - s), lo, hi)
    raise ValueError(f"mode must be 'nearest', 'ceil' or 'floor', got {mode!r}")


def index_to_sigma(index: int | np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """sigma_k for grid indices k (validated)."""
    k = np.asarray(index)
    if np.any((k < 0) | (k >= len(sigmas))):
        raise IndexError(f"grid index out of range [0, {len(sigmas) - 1}]: {k}")
    return sigmas[k]
