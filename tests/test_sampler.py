"""Noise-first sampler: eligibility, the sigma marginal, pool-mode shares, no hangs, O(1) in N."""

from __future__ import annotations

import numpy as np
import pytest

from ambient_core.sampler import Buffer, LinearRamp, MixingRule, NoiseFirstSampler
from ambient_core.schedule import ddpm_sigmas

SIG = ddpm_sigmas()


def _draw(s: NoiseFirstSampler, n: int = 200_000, bs: int = 1000) -> dict[str, np.ndarray]:
    parts = [s.sample(bs) for _ in range(n // bs)]
    return {
        f: np.concatenate([getattr(p, f) for p in parts])
        for f in ("items", "levels", "sigmas", "is_corrupt", "low_window", "sigma_min")
    }


def _eligible(s: NoiseFirstSampler, corrupt_id: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    thr = s.buffer.threshold(s.corrupt_sigma_min[corrupt_id])
    sm = s.corrupt_sigma_min[corrupt_id]
    high = (sigma >= thr) & ((sigma > sm) | (sm == 0))
    return high | (sigma <= s.corrupt_sigma_max[corrupt_id])


def test_every_draw_is_eligible_and_windows_are_flagged() -> None:
    rng = np.random.default_rng(0)
    n_c = 3000
    sm = rng.choice([0.0, 0.0737, 0.3, 0.8, 1.0], size=n_c)
    sx = rng.choice([0.0, 0.0, 0.1, 0.46], size=n_c)
    s = NoiseFirstSampler(100, sm, sx, sigmas=SIG, rule=MixingRule(Buffer(mult=1.1)), seed=1)
    d = _draw(s, 100_000)
    cid = d["items"][d["is_corrupt"]] - 100
    sig = d["sigmas"][d["is_corrupt"]]
    assert _eligible(s, cid, sig).all()
    low = d["low_window"][d["is_corrupt"]]
    assert np.array_equal(low, sig <= sx[cid])
    high_only = ~low
    assert np.allclose(d["sigma_min"][d["is_corrupt"]][high_only], sm[cid][high_only])
    assert np.all(d["sigma_min"][~d["is_corrupt"]] == 0)
    assert np.all(d["items"][~d["is_corrupt"]] < 100)


def test_sigma_marginal_is_preserved() -> None:
    sm = np.full(5000, 0.5)  # corrupt only eligible at high noise
    s = NoiseFirstSampler(50, sm, sigmas=SIG, seed=2)
    d = _draw(s, 200_000)
    counts = np.bincount(d["levels"], minlength=100)
    expected = 2000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 160  # 99 dof: p ~ 1e-4 cut-off; a level-dependent bias would blow this up


def _share_per_level(d: dict[str, np.ndarray]) -> np.ndarray:
    n = np.bincount(d["levels"], minlength=100)
    c = np.bincount(d["levels"][d["is_corrupt"]], minlength=100)
    return c / np.maximum(n, 1)


@pytest.mark.parametrize(
    "pool,kwargs",
    [
        ("proportional", {}),
        ("fixed", {"alpha": 0.3}),
        ("soft", {"soft_share": LinearRamp(0.2, 0.8, 0.9)}),
    ],
)
def test_corrupt_share_per_level_matches_formula(pool: str, kwargs: dict) -> None:
    rng = np.random.default_rng(3)
    sm = rng.uniform(0.0, 0.6, size=4000)
    s = NoiseFirstSampler(1000, sm, sigmas=SIG, rule=MixingRule(pool=pool, **kwargs), seed=4)  # type: ignore[arg-type]
    c = s.eligible_corrupt.astype(float)
    if pool == "proportional":
        formula = c / (1000 + c)
    elif pool == "fixed":
        formula = np.where(c > 0, 0.7, 0.0)
    else:
        formula = np.where(c > 0, LinearRamp(0.2, 0.8, 0.9)(SIG), 0.0)
    assert np.allclose(s.expected_corrupt_share(), formula)
    got = _share_per_level(_draw(s, 300_000))
    assert np.abs(got - formula).max() < 0.035  # ~3000 draws per level
    # Per sigma bucket, as the sampler reports it.
    b = s.sample(200_000)
    share = b.bucket_corrupt / np.maximum(b.bucket_counts, 1)
    want = np.bincount(s.level_bucket, weights=formula, minlength=10) / np.bincount(
        s.level_bucket, minlength=10
    )
    assert np.abs(share - want).max() < 0.02


def test_uniform_over_eligible_corrupt_items() -> None:
    sm = np.array([0.0, 0.2, 0.2, 0.6, 0.9])
    s = NoiseFirstSampler(0, sm, sigmas=SIG, seed=5)
    d = _draw(s, 200_000)
    at = (d["levels"] >= 70) & (d["levels"] < 80)  # sigma ~0.87-0.92: items 0..3 eligible
    counts = np.bincount(d["items"][at], minlength=5)
    assert counts[4] == 0 or SIG[79] >= 0.9
    assert np.all(np.abs(counts[:4] / counts[:4].sum() - 0.25) < 0.02)


def test_no_hang_when_no_corrupt_item_is_ever_eligible() -> None:
    s = NoiseFirstSampler(
        10, np.full(1000, 1.0), sigmas=SIG, rule=MixingRule(Buffer(mult=2.0)), seed=6
    )
    b = s.sample(5000)
    assert not b.is_corrupt.any()
    assert s.eligible_corrupt.sum() == 0


def test_corrupt_only_with_an_empty_level_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="no item is eligible at level k=0"):
        NoiseFirstSampler(0, np.full(10, 0.5), sigmas=SIG)
    # Giving those levels zero weight is allowed.
    w = (SIG >= 0.5).astype(float)
    s = NoiseFirstSampler(0, np.full(10, 0.5), sigmas=SIG, level_weights=w, seed=0)
    assert np.all(s.sample(1000).sigmas > 0.5)


def test_special_cases_cotraining_clean_only_corrupt_only() -> None:
    cot = NoiseFirstSampler(
        50, np.zeros(500), sigmas=SIG, rule=MixingRule(pool="fixed", alpha=0.25), seed=0
    )
    assert np.allclose(cot.expected_corrupt_share(), 0.75)  # sigma_min = 0: eligible everywhere
    clean = NoiseFirstSampler(50, None, sigmas=SIG, seed=0)
    assert not clean.sample(1000).is_corrupt.any()
    only = NoiseFirstSampler(0, np.zeros(500), sigmas=SIG, seed=0)
    assert only.sample(1000).is_corrupt.all()


def test_sigma_on_the_grid_is_strictly_exceeded_without_buffer() -> None:
    s = NoiseFirstSampler(1, np.array([SIG[3]]), sigmas=SIG, seed=0)
    assert s.eligible_corrupt[3] == 0 and s.eligible_corrupt[4] == 1


def test_additive_buffer_and_bad_inputs() -> None:
    s = NoiseFirstSampler(
        1, np.array([0.3]), sigmas=SIG, rule=MixingRule(Buffer(add=0.05)), seed=0
    )
    first = int(np.argmax(s.eligible_corrupt > 0))
    assert SIG[first] >= 0.35 and SIG[first - 1] < 0.35
    with pytest.raises(ValueError, match="item 1"):
        NoiseFirstSampler(1, np.array([0.1, np.nan]), sigmas=SIG)
    with pytest.raises(ValueError, match="alpha"):
        MixingRule(pool="fixed")
    with pytest.raises(ValueError, match="buffer"):
        Buffer(mult=0.5)


def test_reproducible_and_resumable() -> None:
    sm = np.random.default_rng(0).uniform(0, 1, 1000)
    a = NoiseFirstSampler(10, sm, sigmas=SIG, seed=9)
    b = NoiseFirstSampler(10, sm, sigmas=SIG, seed=9)
    a.sample(64)
    state = a.state_dict()
    x = a.sample(64)
    b.load_state_dict(state)
    y = b.sample(64)
    assert np.array_equal(x.items, y.items) and np.array_equal(x.levels, y.levels)


def test_batch_cost_does_not_touch_n() -> None:
    """Structural check (timing lives in benchmarks/): per-level tables are (T, T + 1)."""
    s = NoiseFirstSampler(10, np.random.default_rng(0).uniform(0, 1, 200_000), sigmas=SIG)
    assert s._cum.shape == (100, 101)
