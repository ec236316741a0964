"""Noise-first sampler: draw the diffusion level, then a datapoint that is eligible at it.

The rule (ADP: "sample the diffusion noise level first, then choose only data that are valid at
that noise level"), for a batch element:

1. draw the level k ~ p(k) on the DDPM grid sigma_0 < ... < sigma_{T-1} (uniform by default,
   ``level_weights`` otherwise), so the marginal of sigma is exactly the plain diffusion one;
2. eligibility at sigma_k: every clean item; corrupt item i iff ``sigma_k >= thr_i`` (the
   high-noise window, contraction) or ``sigma_k <= sigma_max_i`` (the low-noise window,
   locality), where ``thr_i = sigma_min_i * buffer.mult + buffer.add`` and, for sigma_min_i > 0,
   sigma_k must exceed sigma_min_i strictly (the ambient pair needs st > sm). sigma_min_i = 0 is
   "eligible everywhere" (co-training), sigma_max_i = 0 "no low window". Windows that meet or
   overlap make the item eligible at every level;
3. choose the pool with P(corrupt | k) = s_k, where c_k is the number of eligible corrupt items
   and n the clean count (``MixingRule.pool``):
   ``proportional`` s_k = c_k / (n + c_k) (uniform over all eligible items);
   ``fixed`` s_k = 1 - alpha when c_k > 0 (co-training weights, alpha = clean share);
   ``soft`` s_k = share(sigma_k) when c_k > 0 (e.g. a linear ramp in sigma);
   s_k = 0 when c_k = 0, and 1 when there is no clean data;
4. draw the item uniformly inside the chosen pool's eligible set.

A corrupt element drawn through the high window carries its sigma_min (the ambient loss
contracts it to that level, ``ambient_core.losses``); one drawn through the low window is marked
``low_window`` and trained with the plain denoising pair.

Implementation: levels live on a finite grid of T sigmas, so every item reduces to a pair of grid
indices (K_min_i, K_max_i). Items are sorted once by (K_max, K_min); at each level the eligible
items of a K_max group are either the whole group or a prefix of it, so a (T, T + 1) table of
cumulative counts turns "uniform over eligible corrupt items" into two searchsorted calls:
O(B log T) per batch, independent of N, and no rejection loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

PoolMode = Literal["proportional", "fixed", "soft"]
POOL_MODES: tuple[str, ...] = ("proportional", "fixed", "soft")
DEFAULT_BUCKET_EDGES: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 10))


def bucket_labels(edges: Sequence[float] | np.ndarray = DEFAULT_BUCKET_EDGES) -> list[str]:
    """Stable metric-name suffixes for sigma buckets, e.g. ``s0.0-0.1`` (the one copy: policy
    training and classifier training log under the same names)."""
    e = [float(x) for x in edges]
    return [f"s{e[i]:.1f}-{e[i + 1]:.1f}" for i in range(len(e) - 1)]


def bucket_index(
    sigmas: np.ndarray, edges: Sequence[float] | np.ndarray = DEFAULT_BUCKET_EDGES
) -> np.ndarray:
    """The bucket (0 .. len(edges) - 2) of each sigma; the last bucket includes its top edge."""
    e = np.asarray(edges, dtype=np.float64)
    return np.clip(np.searchsorted(e, sigmas, side="right") - 1, 0, len(e) - 2)


@dataclass(frozen=True)
class Buffer:
    """Gap kept above sigma_min: eligible iff sigma >= sigma_min * mult + add (sigma_min > 0).

    The ambient target scales like 1 / (st^2 - sm^2); a buffer keeps its variance bounded.
    """

    mult: float = 1.0
    add: float = 0.0

    def __post_init__(self) -> None:
        if self.mult < 1.0 or self.add < 0.0:
            raise ValueError(f"buffer needs mult >= 1 and add >= 0, got {self}")

    @property
    def strict(self) -> bool:
        """True when sigma_t is guaranteed to exceed sigma_min (needed by the ambient loss)."""
        return self.mult > 1.0 or self.add > 0.0

    def threshold(self, sigma_min: np.ndarray) -> np.ndarray:
        sm = np.asarray(sigma_min, dtype=np.float64)
        return np.where(sm > 0, sm * self.mult + self.add, 0.0)


@dataclass(frozen=True)
class LinearRamp:
    """Soft pool share: the corrupt share grows linearly from 0 at ``low`` to ``max_share`` at
    ``high`` (sigma-space). Any callable sigma -> share in [0, 1] can replace it."""

    low: float = 0.0
    high: float = 1.0
    max_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high:
            raise ValueError(f"LinearRamp needs 0 <= low < high, got {self}")
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"LinearRamp.max_share must lie in [0, 1], got {self.max_share}")

    def __call__(self, sigma: np.ndarray) -> np.ndarray:
        ramp = np.clip((np.asarray(sigma) - self.low) / (self.high - self.low), 0.0, 1.0)
        return self.max_share * ramp


@dataclass(frozen=True)
class MixingRule:
    """How corrupt items join a level's batch: the eligibility buffer above sigma_min and the
    pool mode (with ``alpha`` for ``fixed`` and ``soft_share`` for ``soft``)."""

    buffer: Buffer = field(default_factory=Buffer)
    pool: PoolMode = "proportional"
    alpha: float | None = None
    soft_share: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {self.pool!r}")
        if self.pool == "fixed" and (self.alpha is None or not 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"pool 'fixed' needs alpha in [0, 1] (clean share), got {self.alpha}")


@dataclass
class SamplerBatch:
    """One batch of (level, item) draws plus per-sigma-bucket bookkeeping."""

    items: (
        np.ndarray
    )  # global item ids: [0, n_clean) clean, [n_clean, n_clean + n_corrupt) corrupt
    levels: np.ndarray  # grid index k per element
    sigmas: np.ndarray  # sigma_k per element
    is_corrupt: np.ndarray
    low_window: np.ndarray  # corrupt element drawn through sigma <= sigma_max (plain x0 loss)
    sigma_min: np.ndarray  # level the datum is contracted to (0: plain denoising pair)
    bucket_counts: np.ndarray = field(repr=False)
    bucket_corrupt: np.ndarray = field(repr=False)


def _thresholds(
    sigma_min: np.ndarray | None, sigma_max: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated per-corrupt-item (sigma_min, sigma_max) arrays (missing: zeros)."""
    sm = np.zeros(0) if sigma_min is None else np.asarray(sigma_min, float)
    sx = np.zeros_like(sm) if sigma_max is None else np.asarray(sigma_max, float)
    if sm.ndim != 1 or sx.shape != sm.shape:
        raise ValueError("corrupt_sigma_min and corrupt_sigma_max must be 1-D of equal length")
    for name, arr in (("sigma_min", sm), ("sigma_max", sx)):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr > 1))
        if bad.size:
            raise ValueError(
                f"corrupt {name} must lie in [0, 1]; item {bad[0]} has {arr[bad[0]]!r}"
            )
    return sm, sx


class NoiseFirstSampler:
    """Seeded, reproducible noise-first batch sampler over clean + corrupt items.

    ``corrupt_sigma_min`` / ``corrupt_sigma_max`` hold one threshold pair per corrupt item
    (sigma-space); ``rule`` says how they are mixed in (module docstring).
    """

    def __init__(
        self,
        n_clean: int,
        corrupt_sigma_min: np.ndarray | None = None,
        corrupt_sigma_max: np.ndarray | None = None,
        *,
        sigmas: np.ndarray,
        rule: MixingRule | None = None,
        level_weights: np.ndarray | None = None,
        bucket_edges: tuple[float, ...] = DEFAULT_BUCKET_EDGES,
        seed: int = 0,
    ) -> None:
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        T = len(self.sigmas)
        if T < 1 or np.any(np.diff(self.sigmas) <= 0):
            raise ValueError("sigmas must be a non-empty strictly increasing grid")
        if n_clean < 0:
            raise ValueError(f"n_clean must be >= 0, got {n_clean}")
        sm, sx = _thresholds(corrupt_sigma_min, corrupt_sigma_max)
        self.n_clean, self.n_corrupt = int(n_clean), int(sm.size)
        rule = rule or MixingRule()
        if rule.pool == "soft" and rule.soft_share is None:
            frac = self.n_corrupt / max(self.n_clean + self.n_corrupt, 1)
            rule = replace(rule, soft_share=LinearRamp(0.0, 1.0, frac))
        self.rule = rule
        self.buffer, self.pool, self.alpha = rule.buffer, rule.pool, rule.alpha
        self.soft_share = rule.soft_share
        self.corrupt_sigma_min = sm
        self.corrupt_sigma_max = sx
        self.rng = np.random.default_rng(seed)

        w = np.ones(T) if level_weights is None else np.asarray(level_weights, dtype=np.float64)
        if w.shape != (T,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"level_weights must be {T} non-negative numbers with a positive sum")
        self.level_p = w / w.sum()
        self._uniform_levels = level_weights is None

        self._build_tables(T)
        self.corrupt_share = self._corrupt_share_per_level()
        empty = np.flatnonzero((self.level_p > 0) & (self.n_clean + self.eligible_corrupt == 0))
        if empty.size:
            k = int(empty[0])
            raise ValueError(
                f"no item is eligible at level k={k} (sigma={self.sigmas[k]:.4f}): "
                "add clean data, lower the corrupt thresholds, or give that level zero weight"
            )
        self.bucket_edges = np.asarray(bucket_edges, dtype=np.float64)
        self.level_bucket = bucket_index(self.sigmas, self.bucket_edges)

    def _build_tables(self, T: int) -> None:
        thr = self.buffer.threshold(self.corrupt_sigma_min)
        k_min = np.searchsorted(self.sigmas, thr, side="left")  # first k with sigma_k >= thr
        if not self.buffer.strict:
            # sigma_t must still exceed sigma_min strictly for the ambient pair to exist.
            on_grid = (k_min < T) & (
                self.sigmas[np.minimum(k_min, T - 1)] <= self.corrupt_sigma_min
            )
            k_min = np.where(on_grid & (self.corrupt_sigma_min > 0), k_min + 1, k_min)
        k_max = np.searchsorted(self.sigmas, self.corrupt_sigma_max, side="right") - 1
        k_max = np.where(self.corrupt_sigma_max > 0, k_max, -1)
        k_min = np.where(k_max + 1 >= k_min, 0, k_min)  # windows overlap: eligible everywhere
        group = k_max + 1  # in [0, T]
        self._order = np.lexsort((k_min, group))
        G = T + 1
        hist = np.bincount(group * (T + 1) + k_min, minlength=G * (T + 1)).reshape(G, T + 1)
        size = hist.sum(axis=1)
        self._group_start = np.concatenate([[0], np.cumsum(size)[:-1]])
        cum_le = np.cumsum(hist, axis=1)[:, :T]  # (G, T): items in group with K_min <= k
        whole = (np.arange(G)[:, None] - 1) >= np.arange(T)[None, :]  # K_max >= k
        per_level = np.where(whole, size[:, None], cum_le).T  # (T, G)
        self._cum = np.cumsum(per_level, axis=1)
        self.eligible_corrupt = self._cum[:, -1].copy()

    def _corrupt_share_per_level(self) -> np.ndarray:
        c = self.eligible_corrupt.astype(np.float64)
        if self.n_clean == 0:
            return (c > 0).astype(np.float64)
        if self.pool == "proportional":
            return c / (self.n_clean + c)
        if self.pool == "fixed":
            return np.where(c > 0, 1.0 - float(self.alpha or 0.0), 0.0)
        assert self.soft_share is not None  # MixingRule defaults it for pool "soft"
        share = np.clip(np.asarray(self.soft_share(self.sigmas), dtype=np.float64), 0.0, 1.0)
        return np.where(c > 0, share, 0.0)

    def expected_corrupt_share(self) -> np.ndarray:
        """P(corrupt | level k) for every grid level: the formula each pool mode implements."""
        return self.corrupt_share.copy()

    def sample(self, batch_size: int) -> SamplerBatch:
        """Draw ``batch_size`` (level, item) pairs."""
        rng, T = self.rng, len(self.sigmas)
        if self._uniform_levels:
            k = rng.integers(0, T, size=batch_size)
        else:
            k = np.minimum(np.searchsorted(np.cumsum(self.level_p), rng.random(batch_size)), T - 1)
        corrupt = rng.random(batch_size) < self.corrupt_share[k]
        items = np.empty(batch_size, dtype=np.int64)
        n_cl = int((~corrupt).sum())
        if n_cl:
            items[~corrupt] = rng.integers(0, self.n_clean, size=n_cl)
        kc = k[corrupt]
        if kc.size:
            cum = self._cum[kc]  # (b, G)
            r = np.floor(rng.random(kc.size) * cum[:, -1]).astype(np.int64)
            g = (cum <= r[:, None]).sum(axis=1)  # searchsorted per row, G <= T + 1 columns
            before = np.where(g > 0, cum[np.arange(kc.size), np.maximum(g - 1, 0)], 0)
            local = self._order[self._group_start[g] + (r - before)]
            items[corrupt] = self.n_clean + local
        sig = self.sigmas[k]
        cid = np.where(corrupt, items - self.n_clean, 0)
        low = corrupt & (sig <= self.corrupt_sigma_max[cid]) if self.n_corrupt else corrupt
        sm = np.where(corrupt & ~low, self.corrupt_sigma_min[cid] if self.n_corrupt else 0.0, 0.0)
        nb = len(self.bucket_edges) - 1
        b = self.level_bucket[k]
        return SamplerBatch(
            items=items,
            levels=k,
            sigmas=sig,
            is_corrupt=corrupt,
            low_window=low,
            sigma_min=sm,
            bucket_counts=np.bincount(b, minlength=nb),
            bucket_corrupt=np.bincount(b[corrupt], minlength=nb),
        )

    def bucket_labels(self) -> list[str]:
        """Stable metric-name suffixes for the sigma buckets, e.g. ``s0.0-0.1``."""
        return bucket_labels(self.bucket_edges)

    def state_dict(self) -> dict[str, Any]:
        """RNG state, so a resumed run continues the same stream."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
