"""Regression targets for the four loss variants {x0, eps} x {denoising, ambient}.

The loss is always ||network output - target||^2; only the target changes. The ambient targets
need only x_sm (the datum contracted to sigma_min), and their minimisers are exactly
E[x0 | x_st] and E[eps | x_st]. See DESIGN.md "Math" for the table and
tests/test_losses.py for the proofs (Gaussian posterior mean, sigma_min -> 0 limit).
"""

from __future__ import annotations

from typing import Literal

import torch

from ambient_core.noise import _per_batch, add_noise, renoise

Prediction = Literal["x0", "eps"]
PREDICTIONS: tuple[str, ...] = ("x0", "eps")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def denoising_target(x0: torch.Tensor, eps: torch.Tensor, prediction: Prediction) -> torch.Tensor:
    """The plain diffusion target: x0 or the noise that was added."""
    _check_prediction(prediction)
    return x0 if prediction == "x0" else eps


def ambient_target(
    x_t: torch.Tensor,
    x_sm: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_min: torch.Tensor,
    prediction: Prediction,
) -> torch.Tensor:
    """Target whose least-squares fit on x_t is E[x0 | x_t] (x0) or E[eps | x_t] (eps).

    x0:  (st^2 sqrt(1-sm^2) x_sm - sm^2 sqrt(1-st^2) x_t) / (st^2 - sm^2)
    eps: (st (1-sm^2) x_t - st sqrt(1-st^2) sqrt(1-sm^2) x_sm) / (st^2 - sm^2)
    Requires sigma_t > sigma_min elementwise (the sampler's buffer keeps the gap bounded).
    """
    _check_prediction(prediction)
    st = _per_batch(sigma_t, x_t)
    sm = _per_batch(sigma_min, x_t)
    gap = st * st - sm * sm
    if bool(torch.any(gap <= 0)):
        raise ValueError("ambient_target needs sigma_t > sigma_min for every element")
    if prediction == "x0":
        return (
            st * st * torch.sqrt(1 - sm * sm) * x_sm - sm * sm * torch.sqrt(1 - st * st) * x_t
        ) / gap
    return (
        st * (1 - sm * sm) * x_t - st * torch.sqrt(1 - st * st) * torch.sqrt(1 - sm * sm) * x_sm
    ) / gap


def training_pair(
    x0: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_min: torch.Tensor,
    eps: torch.Tensor,
    fixed_eps: torch.Tensor,
    prediction: Prediction,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input x_t and regression target for a mixed batch in one vectorised pass.

    Elements with sigma_min == 0 get the plain denoising pair (x_t from x0 with noise ``eps``).
    Elements with sigma_min > 0 use the ambient pair: x_sm = contraction of x0 with the
    per-datapoint ``fixed_eps``, x_t = re-noising of x_sm with ``eps``, target = ambient_target.
    """
    _check_prediction(prediction)
    amb = sigma_min > 0
    if not bool(torch.any(amb)):
        x_t = add_noise(x0, sigma_t, eps)
        return x_t, denoising_target(x0, eps, prediction)
    x_plain = add_noise(x0, sigma_t, eps)
    sm_safe = torch.where(amb, sigma_min, torch.zeros_like(sigma_min))
    x_sm = add_noise(x0, sm_safe, fixed_eps)
    x_amb = renoise(x_sm, sm_safe, sigma_t, eps)
    mask = _per_batch(amb, x0).bool()
    x_t = torch.where(mask, x_amb, x_plain)
    # Denominator only matters where amb; elsewhere use st > 0 with sm = 0 (exact denoising form).
    tgt_amb = ambient_target(x_t, x_sm, sigma_t, sm_safe, prediction)
    tgt_plain = denoising_target(x0, eps, prediction)
    return x_t, torch.where(mask, tgt_amb, tgt_plain)
