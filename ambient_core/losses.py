"""Regression targets for the four loss variants {x0, eps} x {denoising, ambient}.

The loss is always ||network output - target||^2 (per element, averaged); only the target
changes. Notation (VP, sigma in [0, 1]): a clean datum is noised as
``x_s = sqrt(1 - s^2) x0 + s eps``. A corrupt datum is used through its contraction to its own
level ``sm`` = sigma_min, ``x_sm = sqrt(1 - sm^2) x0 + sm e`` with a noise ``e`` fixed per
datapoint (``ambient_core.noise.fixed_noise``), re-noised to the training level ``st > sm``::

    x_t = a x_sm + b z,   a = sqrt((1 - st^2) / (1 - sm^2)),   b = sqrt((st^2 - sm^2) / (1 - sm^2))

so that x_t has exactly the marginal sqrt(1 - st^2) x0 + st N(0, I).

=========  ============  ===================================================================
output     denoising     ambient (needs only x_sm and x_t, never x0)
=========  ============  ===================================================================
x0         x0            (st^2 sqrt(1-sm^2) x_sm - sm^2 sqrt(1-st^2) x_t) / (st^2 - sm^2)
eps        eps           (st (1-sm^2) x_t - st sqrt(1-st^2) sqrt(1-sm^2) x_sm) / (st^2 - sm^2)
=========  ============  ===================================================================

Why the ambient targets are right. Given x0 and x_t, x_sm is Gaussian with
``E[x_sm | x0, x_t] = sqrt(1-sm^2) x0 + (a sm^2 / st^2)(x_t - sqrt(1-st^2) x0)`` (the variance
of x_t given x0 is a^2 sm^2 + b^2 = st^2). Taking E[. | x_t] and solving for
m = E[x0 | x_t] gives ``m = E[x0 target | x_t]`` with the x0 target above, so least squares
on x_t (whose minimiser is the conditional mean) learns the posterior mean, as the denoising
loss does on clean data. The eps target is the same map, ``(x_t - sqrt(1-st^2) x0_target) / st``,
hence E[eps target | x_t] = E[eps | x_t]. As sm -> 0 both reduce to the denoising targets
(x_sm -> x0, and the eps target -> (x_t - sqrt(1-st^2) x0) / st = eps). The coefficients grow
like 1 / (st^2 - sm^2), which is why the sampler keeps a buffer above sigma_min.
tests/test_losses.py checks both facts numerically (Gaussian data: regression on x_t recovers the
closed-form posterior mean; the sm -> 0 limit), and that the eps coefficient printed on the ADP
slides, st^2 (1-sm^2) / ((st^2-sm^2) sqrt(1-st^2)), fails the limit check.

Corrupt data drawn through the low-noise window (sigma <= sigma_max, locality) and every element
when ``corrupt_loss`` is ``denoising`` use the plain denoising pair.
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
    validate: bool = True,
) -> torch.Tensor:
    """Target whose least-squares fit on x_t is E[x0 | x_t] (x0) or E[eps | x_t] (eps).

    The formulas are the module docstring's table. Requires sigma_t > sigma_min elementwise
    (the sampler's buffer keeps the gap bounded); ``validate=False`` skips the check for callers
    that checked on the host (on a GPU the check is a device sync).
    """
    _check_prediction(prediction)
    st = _per_batch(sigma_t, x_t)
    sm = _per_batch(sigma_min, x_t)
    gap = st * st - sm * sm
    if validate and bool(torch.any(gap <= 0)):
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
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input x_t and regression target for a mixed batch in one vectorised pass.

    Elements with sigma_min == 0 get the plain denoising pair (x_t from x0 with noise ``eps``).
    Elements with sigma_min > 0 use the ambient pair: x_sm = contraction of x0 with the
    per-datapoint ``fixed_eps``, x_t = re-noising of x_sm with ``eps``, target = ambient_target.
    ``validate=False`` skips the two checks that read device values (a GPU sync each): the
    all-plain shortcut (the full pass gives the same pair) and sigma_t > sigma_min.
    """
    _check_prediction(prediction)
    amb = sigma_min > 0
    if validate and not bool(torch.any(amb)):
        x_t = add_noise(x0, sigma_t, eps)
        return x_t, denoising_target(x0, eps, prediction)
    x_plain = add_noise(x0, sigma_t, eps)
    sm_safe = torch.where(amb, sigma_min, torch.zeros_like(sigma_min))
    x_sm = add_noise(x0, sm_safe, fixed_eps)
    x_amb = renoise(x_sm, sm_safe, sigma_t, eps)
    mask = _per_batch(amb, x0).bool()
    x_t = torch.where(mask, x_amb, x_plain)
    # Denominator only matters where amb; elsewhere use st > 0 with sm = 0 (exact denoising form).
    tgt_amb = ambient_target(x_t, x_sm, sigma_t, sm_safe, prediction, validate)
    tgt_plain = denoising_target(x0, eps, prediction)
    return x_t, torch.where(mask, tgt_amb, tgt_plain)
