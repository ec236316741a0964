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
3. choose the pool with P(corrupt | k) = s_k (``MixingRule.pool``), where n is the clean count,
   n_c the corrupt count, c_k the number of eligible corrupt items and F_k the eligible mass of
   the corrupt pool's dataset mixture (step 4; F_k = c_k / n_c without corrupt weights):
   ``proportional`` s_k = n_c F_k / (n + n_c F_k), which is c_k / (n + c_k) without weights
   (uniform over all eligible items);
   ``fixed`` s_k = 1 - alpha when c_k > 0 (co-training weights, alpha = clean share);
   ``soft`` s_k = share(sigma_k) when c_k > 0 (e.g. a linear ramp in sigma);
   s_k = 0 when c_k = 0, and 1 when there is no clean data;
4. draw the item inside the chosen pool. Without dataset weights: uniformly over the pool's
   eligible items, so a dataset's share is proportional to its eligible count. With weights
   w_d (``PoolDatasets``, positive, normalised over the pool's non-empty datasets) every item of
   dataset d carries the mass w_d / n_d, and the draw is that fixed mixture conditioned on
   eligibility at sigma_k: P(d | k, pool) = w_d e_dk / n_d / F_k (e_dk: d's items eligible at
   level k), uniform over d's eligible items. With one threshold pair per dataset (the Open-X
   mixtures) e_dk is 0 or n_d, so the datasets eligible at k share the pool in proportion to
   their weights. A partly eligible dataset (per-chunk annotation) contributes its weight times
   its eligible fraction: its few eligible chunks never absorb the dataset's whole weight (they
   would be repeated n_d / e_dk times as often as every other item).

Why ``proportional`` uses F_k: it is the fixed data mixture (pools by size n : n_c, datasets in
a pool by weight) conditioned on eligibility at sigma_k, the same conditioning step 4 applies
inside the pool. Where every item is eligible the corrupt share is n_c / (n + n_c), weights or
not; below, it falls with the eligible mass of the corrupt mixture, so down-weighting the one
dataset eligible at low noise lowers the corrupt share there (with raw counts c_k that weight
would have no effect at those levels). ``fixed`` and ``soft`` keep alpha (the clean share) and
the ramp as the cross-pool knob; weights only split each pool between its datasets. Weights
``None`` reproduce the unweighted sampler draw for draw (same RNG stream).

A corrupt element drawn through the high window carries its sigma_min (the ambient loss
contracts it to that level, ``ambient_core.losses``); one drawn through the low window is marked
``low_window`` and trained with the plain denoising pair.

Implementation: levels live on a finite grid of T sigmas, so every item reduces to a pair of grid
indices (K_min_i, K_max_i). Items are sorted once by (K_max, K_min); at each level the eligible
items of a K_max group are either the whole group or a prefix of it, so a (T, T + 1) table of
cumulative counts turns "uniform over eligible corrupt items" into one searchsorted over the
flattened table: O(B log T) per batch, independent of N, and no rejection loop. Weighted pools
sort by (dataset, K_max, K_min), keep one such table per dataset, and draw the dataset first
from a (T, D) table of cumulative masses: O(B log(T D)).
"""

from __future__ import annotations

import math
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
class PoolDatasets:
    """The datasets of one pool: ``sizes[d]`` items each, laid out in this order inside the
    pool's id range, and optional sampling ``weights`` (module docstring, step 4).

    ``weights=None`` keeps the unweighted draw (a dataset's share proportional to its eligible
    count); the sizes alone still let the sampler report per-dataset shares.
    """

    sizes: tuple[int, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(int(n) for n in self.sizes))
        if any(n < 0 for n in self.sizes):
            raise ValueError(f"dataset sizes must be >= 0, got {self.sizes}")
        if self.weights is None:
            return
        w = tuple(float(x) for x in self.weights)
        object.__setattr__(self, "weights", w)
        if len(w) != len(self.sizes):
            raise ValueError(f"{len(w)} weights for {len(self.sizes)} datasets")
        bad = [i for i, x in enumerate(w) if not (math.isfinite(x) and x > 0)]
        if bad:
            raise ValueError(
                f"dataset weights must be positive and finite; dataset {bad[0]} has {w[bad[0]]!r}"
            )

    def item_mass(self) -> np.ndarray:
        """Mass w_d / n_d of one item of each dataset, weights normalised over the non-empty
        datasets (0 for an empty one); without weights every item weighs 1 / sum(sizes)."""
        n = np.asarray(self.sizes, dtype=np.float64)
        w = n.copy() if self.weights is None else np.asarray(self.weights) * (n > 0)
        total = w.sum()
        return np.where(n > 0, w / (total if total > 0 else 1.0) / np.maximum(n, 1.0), 0.0)


@dataclass(frozen=True)
class MixingRule:
    """How corrupt items join a level's batch: the eligibility buffer above sigma_min, the pool
    mode (with ``alpha`` for ``fixed`` and ``soft_share`` for ``soft``) and, optionally, the
    datasets of each pool with their sampling weights (None: one dataset, unweighted)."""

    buffer: Buffer = field(default_factory=Buffer)
    pool: PoolMode = "proportional"
    alpha: float | None = None
    soft_share: Callable[[np.ndarray], np.ndarray] | None = None
    clean_datasets: PoolDatasets | None = None
    corrupt_datasets: PoolDatasets | None = None

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


def _pool(datasets: PoolDatasets | None, n: int, kind: str) -> PoolDatasets:
    """The pool's datasets (one unweighted dataset when not given), checked against its size."""
    if datasets is None:
        return PoolDatasets((n,))
    if sum(datasets.sizes) != n:
        raise ValueError(
            f"{kind} dataset sizes {datasets.sizes} add up to {sum(datasets.sizes)}, "
            f"but there are {n} {kind} items"
        )
    return datasets


@dataclass(frozen=True)
class _RowSearch:
    """``searchsorted(table[row], value, side="right")`` for many (row, value) pairs at once:
    the rows (non-decreasing, within [0, step)) are laid end to end with offsets row * step,
    so one searchsorted over the flat array answers every pair in O(log(rows * width))."""

    flat: np.ndarray
    step: Any
    width: int

    @classmethod
    def of(cls, table: np.ndarray, step: float | int) -> _RowSearch:
        rows, width = table.shape
        offset = np.arange(rows, dtype=table.dtype) * step
        return cls((table + offset[:, None]).ravel(), step, width)

    def __call__(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.flat, values + rows * self.step, side="right")
        return pos - rows * self.width


@dataclass(frozen=True)
class _ItemTables:
    """Corrupt items sorted by (dataset, K_max group, K_min) and, per (dataset, level) row, the
    cumulative count of eligible items over the groups: at level k a group's eligible items are
    the whole group (K_max >= k) or its prefix with K_min <= k."""

    order: np.ndarray  # sorted position -> corrupt item id (empty: counts only)
    start: np.ndarray  # (D, G): sorted position where (dataset, group) begins
    cum: np.ndarray  # (D * T, G): row d * T + k
    levels: int  # T
    search: _RowSearch

    @classmethod
    def build(
        cls,
        dataset: np.ndarray,
        group: np.ndarray,
        k_min: np.ndarray,
        n_datasets: int,
        T: int,
        sort: bool = True,
    ) -> _ItemTables:
        """The tables; ``sort=False`` skips the O(N log N) sort when only counts are needed."""
        G = T + 1
        seg = dataset * G + group
        order = np.lexsort((k_min, seg)) if sort else np.zeros(0, dtype=np.int64)
        hist = np.bincount(seg * (T + 1) + k_min, minlength=n_datasets * G * (T + 1))
        hist = hist.reshape(n_datasets, G, T + 1)
        size = hist.sum(axis=2)  # (D, G)
        start = np.concatenate([[0], np.cumsum(size.ravel())[:-1]]).reshape(n_datasets, G)
        cum_le = np.cumsum(hist, axis=2)[:, :, :T]  # (D, G, T): items in group with K_min <= k
        whole = (np.arange(G)[:, None] - 1) >= np.arange(T)[None, :]  # (G, T): K_max >= k
        per_level = np.where(whole[None], size[:, :, None], cum_le).transpose(0, 2, 1)
        cum = np.cumsum(per_level, axis=2).reshape(n_datasets * T, G)
        return cls(order, start, cum, T, _RowSearch.of(cum, int(cum.max(initial=0)) + 1))

    def eligible(self) -> np.ndarray:
        """(T, D) eligible item counts per level and dataset."""
        return self.cum[:, -1].reshape(-1, self.levels).T

    def draw(self, rng: np.random.Generator, dataset: np.ndarray, k: np.ndarray) -> np.ndarray:
        """One item uniformly among the eligible items of ``dataset`` at level ``k`` (each row
        must have one): integer arithmetic only, so no draw can land outside the set."""
        row = dataset * self.levels + k
        r = np.floor(rng.random(k.size) * self.cum[row, -1]).astype(np.int64)
        g = self.search(row, r)
        before = np.where(g > 0, self.cum[row, np.maximum(g - 1, 0)], 0)
        return self.order[self.start[dataset, g] + (r - before)]


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
        self.clean_datasets = _pool(rule.clean_datasets, self.n_clean, "clean")
        self.corrupt_datasets = _pool(rule.corrupt_datasets, self.n_corrupt, "corrupt")
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

    def _grid_indices(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Per corrupt item: its K_max group (K_max + 1, in [0, T]) and K_min on the grid."""
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
        return k_max + 1, k_min

    def _build_tables(self, T: int) -> None:
        group, k_min = self._grid_indices(T)
        self._all = _ItemTables.build(np.zeros_like(group), group, k_min, 1, T)
        self._cum = self._all.cum  # (T, T + 1)
        self.eligible_corrupt = self._cum[:, -1].copy()
        # Per-dataset tables: weighted draws need them, the share report only their counts.
        sizes = self.corrupt_datasets.sizes
        D = len(sizes)
        ds = np.repeat(np.arange(D), sizes)
        weighted = self.corrupt_datasets.weights is not None
        by_ds = _ItemTables.build(ds, group, k_min, D, T, sort=weighted) if D > 1 else self._all
        self._by_dataset = by_ds
        # (T, D) mass of each dataset's eligible items in the corrupt mixture; F_k = row sum.
        eligible = by_ds.eligible() if D else np.zeros((T, 0))
        self._corrupt_mass = eligible * self.corrupt_datasets.item_mass()[None, :]
        cw = self.clean_datasets
        clean_mass = cw.item_mass() * np.asarray(cw.sizes, dtype=np.float64)
        self._clean_q = clean_mass / clean_mass.sum() if clean_mass.sum() > 0 else clean_mass
        self._clean_start = np.concatenate([[0], np.cumsum(cw.sizes)[:-1]]).astype(np.int64)
        self._clean_cum = np.cumsum(self._clean_q)
        self._clean_last = int(np.flatnonzero(self._clean_q > 0)[-1]) if self.n_clean else 0
        tot = self._corrupt_mass.sum(axis=1, keepdims=True)
        q = np.divide(
            self._corrupt_mass, tot, out=np.zeros_like(self._corrupt_mass), where=tot > 0
        )
        self._corrupt_q = q  # (T, D): P(dataset | level k, corrupt pool)
        cum = np.cumsum(q, axis=1)
        self._dataset_search = _RowSearch.of(cum, 2.0) if D else None
        last = np.where(q > 0, np.arange(D)[None, :], 0).max(axis=1, initial=0)
        self._dataset_last = last  # the last dataset with mass at each level (float-safe clamp)

    def _corrupt_share_per_level(self) -> np.ndarray:
        c = self.eligible_corrupt.astype(np.float64)
        if self.n_clean == 0:
            return (c > 0).astype(np.float64)
        if self.pool == "proportional":
            if self.corrupt_datasets.weights is None:
                return c / (self.n_clean + c)
            eff = self.n_corrupt * self._corrupt_mass.sum(axis=1)  # n_c F_k
            return np.where(c > 0, eff / (self.n_clean + eff), 0.0)
        if self.pool == "fixed":
            return np.where(c > 0, 1.0 - float(self.alpha or 0.0), 0.0)
        assert self.soft_share is not None  # MixingRule defaults it for pool "soft"
        share = np.clip(np.asarray(self.soft_share(self.sigmas), dtype=np.float64), 0.0, 1.0)
        return np.where(c > 0, share, 0.0)

    def expected_corrupt_share(self) -> np.ndarray:
        """P(corrupt | level k) for every grid level: the formula each pool mode implements."""
        return self.corrupt_share.copy()

    def expected_dataset_share(self) -> np.ndarray:
        """P(dataset | level k), shape (T, clean datasets + corrupt datasets), clean first in
        the order of ``rule.clean_datasets`` / ``rule.corrupt_datasets`` (one column per pool
        when those are not given). ``level_p @ shares`` is each dataset's share of all draws."""
        s = self.corrupt_share[:, None]
        return np.hstack([(1.0 - s) * self._clean_q[None, :], s * self._corrupt_q])

    def dataset_share_summary(self) -> list[dict[str, Any]]:
        """Per column of ``expected_dataset_share``: ``share`` of all draws and
        ``share_by_sigma`` per sigma bucket (label -> share), for a run's log."""
        per_level = self.expected_dataset_share()
        n_b = len(self.bucket_edges) - 1
        p_b = np.bincount(self.level_bucket, weights=self.level_p, minlength=n_b)
        labels = self.bucket_labels()
        out = []
        for col in per_level.T:
            by_b = np.bincount(self.level_bucket, weights=self.level_p * col, minlength=n_b)
            by_sigma = {
                lab: round(float(v / p), 6)
                for lab, v, p in zip(labels, by_b, p_b, strict=True)
                if p
            }
            out.append({"share": round(float(self.level_p @ col), 6), "share_by_sigma": by_sigma})
        return out

    def _draw_clean(self, n: int) -> np.ndarray:
        if self.clean_datasets.weights is None:
            return self.rng.integers(0, self.n_clean, size=n)
        d = np.searchsorted(self._clean_cum, self.rng.random(n), side="right")
        d = np.minimum(d, self._clean_last)  # float round-off at the top end
        sizes = np.asarray(self.clean_datasets.sizes, dtype=np.int64)
        return self._clean_start[d] + self.rng.integers(0, sizes[d])

    def _draw_corrupt(self, k: np.ndarray) -> np.ndarray:
        if self.corrupt_datasets.weights is None:
            return self._all.draw(self.rng, np.zeros_like(k), k)
        assert self._dataset_search is not None  # weights imply at least one dataset
        d = self._dataset_search(k, self.rng.random(k.size))
        d = np.minimum(d, self._dataset_last[k])  # float round-off at the top end
        return self._by_dataset.draw(self.rng, d, k)

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
            items[~corrupt] = self._draw_clean(n_cl)
        kc = k[corrupt]
        if kc.size:
            items[corrupt] = self.n_clean + self._draw_corrupt(kc)
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
