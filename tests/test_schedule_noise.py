"""DDPM grid in sigma-space, index helpers, re-noising and the fixed per-datapoint noise."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ambient_core.noise import add_noise, fixed_noise, renoise
from ambient_core.schedule import ddpm_sigmas, index_to_sigma, sigma_to_index


def test_ddpm_grid_matches_diffusion_policy_values() -> None:
    s = ddpm_sigmas(100)
    assert s.shape == (100,)
    assert np.all(np.diff(s) > 0)
    assert s[0] == pytest.approx(0.0251, abs=1e-4)
    assert s[3] == pytest.approx(0.0737, abs=1e-4)
    assert s[10] == pytest.approx(0.182, abs=1e-3)
    assert s[29] == pytest.approx(0.4616, abs=1e-4)
    assert s[99] == pytest.approx(1.0, abs=1e-6)


def test_sigma_index_round_trip_and_modes() -> None:
    s = ddpm_sigmas()
    k = np.arange(100)
    assert np.array_equal(sigma_to_index(s, s), k)
    assert sigma_to_index(0.074, s) == 3  # the paper's sigma_min*
    assert sigma_to_index(0.46, s) == 29  # the paper's sigma_max*
    assert sigma_to_index(0.074, s, mode="ceil") == 4  # first level >= 0.074 (s_3 = 0.0737)
    assert sigma_to_index(0.074, s, mode="floor") == 3
    assert sigma_to_index(0.0, s, mode="floor") == -1
    assert float(index_to_sigma(29, s)) == pytest.approx(0.4616, abs=1e-4)
    with pytest.raises(IndexError):
        index_to_sigma(100, s)
    with pytest.raises(ValueError, match="mode"):
        sigma_to_index(0.1, s, mode="round")


def test_renoise_gives_the_exact_marginal() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = torch.full((n,), 0.7)
    sm, st = torch.full((n,), 0.3), torch.full((n,), 0.8)
    x_sm = add_noise(x0, sm, torch.randn(n, generator=g))
    x_t = renoise(x_sm, sm, st, torch.randn(n, generator=g))
    assert float(x_t.mean()) == pytest.approx(np.sqrt(1 - 0.64) * 0.7, abs=5e-3)
    assert float(x_t.std()) == pytest.approx(0.8, abs=5e-3)


def test_fixed_noise_is_a_pure_function_of_seed_and_id() -> None:
    ids = np.array([5, 17, 123456789012])
    a = fixed_noise(ids, (16, 2), seed=3)
    b = fixed_noise(ids[::-1], (16, 2), seed=3)
    assert torch.equal(a, b.flip(0))  # independent of batch order/composition
    assert not torch.equal(a, fixed_noise(ids, (16, 2), seed=4))
    assert not torch.equal(a[0], a[1])
    big = fixed_noise(np.arange(20_000), (8,), seed=0)
    assert float(big.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(big.std()) == pytest.approx(1.0, abs=0.01)
    # Normal tails, not uniform: about 4.55% beyond 2 sigma.
    assert float((big.abs() > 2).float().mean()) == pytest.approx(0.0455, abs=0.004)


def test_fixed_noise_identical_across_processes() -> None:
    code = (
        "import numpy as np;from ambient_core.noise import fixed_noise;"
        "print(repr(fixed_noise(np.array([7, 99]), (3,), seed=11).numpy().tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = fixed_noise(np.array([7, 99]), (3,), seed=11).numpy().tolist()
    assert eval(out.stdout) == here  # noqa: S307 - our own repr of a list of floats
