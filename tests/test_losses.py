"""Proofs of the four targets: least squares on x_t recovers the Gaussian posterior mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_core.losses import ambient_target, denoising_target, training_pair
from ambient_core.noise import add_noise, renoise

MU, S0 = 0.4, 0.6  # x0 ~ N(MU, S0^2)


def _posterior(st: float) -> tuple[float, float]:
    """E[x0 | x_t] = c * x_t + d for x_t = a x0 + st z."""
    a = np.sqrt(1 - st**2)
    c = a * S0**2 / (a**2 * S0**2 + st**2)
    return c, MU - c * a * MU


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    A = torch.stack([x, torch.ones_like(x)], dim=1).double()
    sol = torch.linalg.lstsq(A, y.double()[:, None]).solution
    return float(sol[0]), float(sol[1])


@pytest.mark.parametrize("sm,st", [(0.07, 0.3), (0.3, 0.5), (0.46, 0.9)])
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_ambient_target_regresses_to_posterior_mean(prediction: str, sm: float, st: float) -> None:
    g = torch.Generator().manual_seed(1)
    n = 600_000
    x0 = MU + S0 * torch.randn(n, generator=g, dtype=torch.float64)
    smt, stt = torch.full((n,), sm, dtype=torch.float64), torch.full((n,), st, dtype=torch.float64)
    x_sm = add_noise(x0, smt, torch.randn(n, generator=g, dtype=torch.float64))
    x_t = renoise(x_sm, smt, stt, torch.randn(n, generator=g, dtype=torch.float64))
    target = ambient_target(x_t, x_sm, stt, smt, prediction)  # type: ignore[arg-type]
    c, d = _posterior(st)
    if prediction == "eps":  # E[eps | x_t] = (x_t - a E[x0 | x_t]) / st
        a = np.sqrt(1 - st**2)
        c, d = (1 - a * c) / st, -a * d / st
    fc, fd = _fit(x_t, target)
    assert fc == pytest.approx(c, abs=0.02)
    assert fd == pytest.approx(d, abs=0.02)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_ambient_target_reduces_to_denoising_as_sigma_min_vanishes(prediction: str) -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(64, 16, 2, generator=g, dtype=torch.float64)
    z = torch.randn_like(x0)
    st = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sm = torch.full((64,), 1e-7, dtype=torch.float64)
    x_sm = add_noise(x0, sm, torch.randn_like(x0))
    x_t = renoise(x_sm, sm, st, z)
    got = ambient_target(x_t, x_sm, st, sm, prediction)  # type: ignore[arg-type]
    want = denoising_target(x0, z, prediction)  # type: ignore[arg-type]
    assert torch.allclose(got, want, atol=1e-5)


def test_slide_typo_of_eps_target_fails_the_limit_check() -> None:
    """The seed slides' eps x_t coefficient does not reduce to eps; ours does (DESIGN.md)."""
    st, sm = 0.5, 1e-6
    slide = st**2 * (1 - sm**2) / ((st**2 - sm**2) * np.sqrt(1 - st**2))
    ours = st * (1 - sm**2) / (st**2 - sm**2)
    assert ours == pytest.approx(1 / st, rel=1e-6)  # eps = (x_t - a x0) / st
    assert abs(slide - 1 / st) > 0.1


def test_ambient_target_rejects_sigma_t_not_above_sigma_min() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma_t > sigma_min"):
        ambient_target(x, x, torch.tensor([0.3, 0.5]), torch.tensor([0.3, 0.1]), "x0")
    with pytest.raises(ValueError, match="prediction"):
        denoising_target(x, x, "v")  # type: ignore[arg-type]


def test_training_pair_mixes_plain_and_ambient_elements() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 8, 2, generator=g)
    eps, fixed = torch.randn_like(x0), torch.randn_like(x0)
    st = torch.tensor([0.2, 0.5, 0.7, 0.9])
    sm = torch.tensor([0.0, 0.3, 0.0, 0.5])
    x_t, tgt = training_pair(x0, st, sm, eps, fixed, "x0")
    assert torch.allclose(x_t[0], add_noise(x0[:1], st[:1], eps[:1])[0])
    assert torch.equal(tgt[0], x0[0]) and torch.equal(tgt[2], x0[2])
    x_sm = add_noise(x0[1:2], sm[1:2], fixed[1:2])
    x_t1 = renoise(x_sm, sm[1:2], st[1:2], eps[1:2])
    assert torch.allclose(x_t[1], x_t1[0], atol=1e-6)
    assert torch.allclose(tgt[1], ambient_target(x_t1, x_sm, st[1:2], sm[1:2], "x0")[0], atol=1e-5)
    x_t2, tgt2 = training_pair(x0, st, torch.zeros(4), eps, fixed, "eps")
    assert torch.equal(tgt2, eps)
