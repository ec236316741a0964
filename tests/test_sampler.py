"""Noise-first sampler: eligibility, the sigma marginal, pool-mode shares, no hangs, O(1) in N."""

from __future__ import annotations

import numpy as np
import pytest

from ambient_core.sampler import Buffer, LinearRamp, MixingRule, NoiseFirstSampler, PoolDatasets
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


# ------------------------------------------------------------------ per-dataset sampling weights


def _dataset_of(items: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    return np.searchsorted(np.cumsum(sizes), items, side="right")


def _chi2(counts: np.ndarray, expected: np.ndarray) -> float:
    pos = expected > 0
    assert np.all(counts[~pos] == 0), "a dataset with zero share was drawn"
    return float(((counts[pos] - expected[pos]) ** 2 / expected[pos]).sum())


def test_weighted_dataset_shares_match_the_weights_at_every_level() -> None:
    """Two clean and three corrupt datasets, one sigma_min each (the Open-X shape): at a level
    the eligible corrupt datasets split the corrupt pool by weight, the clean ones split alpha."""
    clean = PoolDatasets((40, 400), (3.0, 1.0))
    corrupt = PoolDatasets((1000, 300, 2000), (0.5, 0.3, 0.2))
    sm = np.repeat([0.0, 0.3, 0.7], corrupt.sizes)
    rule = MixingRule(pool="fixed", alpha=0.4, clean_datasets=clean, corrupt_datasets=corrupt)
    s = NoiseFirstSampler(440, sm, sigmas=SIG, rule=rule, seed=11)
    want = {  # P(dataset | k) at levels with 1, 2 and 3 eligible corrupt datasets
        10: [0.3, 0.1, 0.6, 0.0, 0.0],
        int(np.argmax(SIG > 0.5)): [0.3, 0.1, 0.6 * 5 / 8, 0.6 * 3 / 8, 0.0],
        99: [0.3, 0.1, 0.3, 0.18, 0.12],
    }
    shares = s.expected_dataset_share()
    for k, w in want.items():
        assert np.allclose(shares[k], w), k
    d = _draw(s, 400_000)
    ds = np.where(d["is_corrupt"], 2 + _dataset_of(d["items"] - 440, corrupt.sizes), 0)
    ds = np.where(d["is_corrupt"], ds, _dataset_of(d["items"], clean.sizes))
    for k in want:
        at = d["levels"] == k
        counts = np.bincount(ds[at], minlength=5)
        # 5 datasets (<= 4 dof): p ~ 1e-4 cut-off at 23.5; swapped weights give chi2 ~ 1000.
        assert _chi2(counts, at.sum() * shares[k]) < 23.5, (k, counts)
    cid = d["items"][d["is_corrupt"]] - 440
    assert _eligible(s, cid, d["sigmas"][d["is_corrupt"]]).all()


def test_a_partly_eligible_dataset_keeps_its_weight_per_item() -> None:
    """Per-chunk thresholds: dataset A's mass is its weight times its eligible fraction, spread
    uniformly over its eligible items (no chunk absorbs its dataset's whole weight)."""
    sizes = (100, 100)
    sm = np.concatenate([np.where(np.arange(100) < 10, 0.0, 0.9), np.zeros(100)])
    rule = MixingRule(corrupt_datasets=PoolDatasets(sizes, (0.8, 0.2)))
    s = NoiseFirstSampler(0, sm, sigmas=SIG, rule=rule, seed=12)
    frac_a = 0.8 * 10 / 100 / (0.8 * 10 / 100 + 0.2)  # 2/7, not 0.8
    assert np.allclose(s.expected_dataset_share()[0], [0.0, frac_a, 1 - frac_a])
    d = _draw(s, 200_000)
    low = d["levels"] < 50  # sigma < 0.9: A's items 0..9 only
    items = d["items"][low]
    assert abs(np.mean(items < 100) - frac_a) < 0.01
    counts = np.bincount(items, minlength=200)
    assert counts[10:100].sum() == 0
    per_item = np.concatenate([counts[:10], counts[100:]])
    want = low.sum() * np.concatenate([np.full(10, frac_a / 10), np.full(100, (1 - frac_a) / 100)])
    assert _chi2(per_item, want) < 180  # 109 dof, p ~ 1e-4


def test_proportional_pool_with_weights_conditions_the_mixture() -> None:
    """proportional: s_k = n_c F_k / (n + n_c F_k), F_k the eligible mass of the corrupt
    mixture; all eligible -> n_c / (n + n_c) as without weights."""
    corrupt = PoolDatasets((600, 400), (0.2, 0.8))
    sm = np.repeat([0.0, 0.5], corrupt.sizes)
    s = NoiseFirstSampler(500, sm, sigmas=SIG, rule=MixingRule(corrupt_datasets=corrupt), seed=13)
    share = s.expected_corrupt_share()
    hi = SIG > 0.5
    assert np.allclose(share[hi], 1000 / 1500)
    assert np.allclose(share[~hi], 1000 * 0.2 / (500 + 1000 * 0.2))
    got = _share_per_level(_draw(s, 300_000))
    assert np.abs(got - share).max() < 0.035
    # Weights proportional to sizes are the unweighted rule again (in distribution).
    same = MixingRule(corrupt_datasets=PoolDatasets((600, 400), (6.0, 4.0)))
    a = NoiseFirstSampler(500, sm, sigmas=SIG, rule=same)
    b = NoiseFirstSampler(
        500, sm, sigmas=SIG, rule=MixingRule(corrupt_datasets=PoolDatasets((600, 400)))
    )
    assert np.allclose(a.expected_corrupt_share(), b.expected_corrupt_share())
    assert np.allclose(a.expected_dataset_share(), b.expected_dataset_share())


def test_unweighted_datasets_keep_the_draws_bit_for_bit() -> None:
    rng = np.random.default_rng(14)
    sm, sx = rng.uniform(0, 0.8, 3000), np.where(rng.random(3000) < 0.3, 0.2, 0.0)
    plain = NoiseFirstSampler(200, sm, sx, sigmas=SIG, rule=MixingRule(Buffer(1.1)), seed=3)
    rule = MixingRule(
        Buffer(1.1),
        clean_datasets=PoolDatasets((150, 50)),
        corrupt_datasets=PoolDatasets((1000, 500, 1500)),
    )
    split = NoiseFirstSampler(200, sm, sx, sigmas=SIG, rule=rule, seed=3)
    for _ in range(5):
        x, y = plain.sample(512), split.sample(512)
        assert np.array_equal(x.items, y.items) and np.array_equal(x.levels, y.levels)
    # Per-dataset shares still add up to the pool shares.
    sh = split.expected_dataset_share()
    assert np.allclose(sh[:, 2:].sum(axis=1), split.expected_corrupt_share())
    assert np.allclose(sh[:, :2], (1 - split.expected_corrupt_share())[:, None] * [0.75, 0.25])
    summary = split.dataset_share_summary()
    assert len(summary) == 5 and abs(sum(x["share"] for x in summary) - 1.0) < 1e-5


def test_weighted_draws_are_reproducible_and_resumable() -> None:
    rule = MixingRule(
        clean_datasets=PoolDatasets((10, 20), (1.0, 2.0)),
        corrupt_datasets=PoolDatasets((500, 500), (1.0, 3.0)),
    )
    sm = np.repeat([0.2, 0.6], 500)
    a = NoiseFirstSampler(30, sm, sigmas=SIG, rule=rule, seed=9)
    b = NoiseFirstSampler(30, sm, sigmas=SIG, rule=rule, seed=9)
    a.sample(64)
    b.load_state_dict(a.state_dict())
    x, y = a.sample(64), b.sample(64)
    assert np.array_equal(x.items, y.items) and np.array_equal(x.levels, y.levels)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sizes": (3, 4), "weights": (1.0, 0.0)}, "dataset 1 has 0.0"),
        ({"sizes": (3, 4), "weights": (-1.0, 1.0)}, "dataset 0 has -1.0"),
        ({"sizes": (3, 4), "weights": (1.0, float("inf"))}, "positive and finite"),
        ({"sizes": (3, 4), "weights": (float("nan"), 1.0)}, "positive and finite"),
        ({"sizes": (3, 4), "weights": (1.0,)}, "1 weights for 2 datasets"),
        ({"sizes": (3, -4)}, "sizes must be >= 0"),
    ],
)
def test_bad_dataset_weights(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PoolDatasets(**kwargs)


def test_dataset_sizes_must_cover_the_pool() -> None:
    rule = MixingRule(corrupt_datasets=PoolDatasets((5, 4), (1.0, 1.0)))
    with pytest.raises(ValueError, match="add up to 9, but there are 10 corrupt items"):
        NoiseFirstSampler(1, np.zeros(10), sigmas=SIG, rule=rule)
