"""2-D maze benchmark of the ADP paper: environment, clean/corrupt demos, closed-loop evaluation.

The robot is a point in the box [0, 5]^2 with 10 axis-aligned rectangular obstacles. It starts at a
fixed point and must reach a random goal. Clean demonstrations are smooth, near-time-optimal plans
(Drake's ``GcsTrajectoryOptimization`` when pydrake is importable, a built-in visibility-graph +
smoothing planner otherwise); corrupt demonstrations are jagged RRT plans from one tree grown once.
Positions are sampled every ``dt`` and each axis moves at most ``v_max * dt`` per step; the action
of frame t is the position of frame t + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ambient_core.envs._maze_planners import (
    RRTTree,
    drake_available,
)

__all__ = [
    "MazeEnv",
    "MazeMetrics",
    "ExpertPolicy",
    "RRTTree",
    "drake_available",
    "plan_clean",
    "plan_rrt",
    "make_episode",
    "generate",
    "evaluate",
    "mean_sq_accel",
    "mean_sq_jerk",
    "plot_rollouts",
    "plot_dataset",
]

CleanMethod = Literal["auto", "drake", "builtin"]
MIN_GAP = 0.4  # between obstacles: padded passages stay >= 0.2 wide


def _box_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Chebyshev gap between two (xmin, ymin, xmax, ymax) boxes; <= 0 when they overlap."""
    gx = max(a[0] - b[2], b[0] - a[2])
    gy = max(a[1] - b[3], b[1] - a[3])
    return float(max(gx, gy))


def _as_points(points: np.ndarray) -> np.ndarray:
    """Coerce to float64 (N, 2) so collision maths never runs in float32."""
    arr = np.asarray(points, dtype=np.float64)
    return arr.reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class MazeEnv:
    """Box [0, size]^2 with ``n_obstacles`` rectangles whose layout is a pure function of ``seed``.

    Obstacles are stored as (K, 4) rows ``(xmin, ymin, xmax, ymax)`` on a 0.1 lattice. A point
    "collides at padding p" when it lies in the open interior of an obstacle grown by p, or closer
    than p to the box walls (the walls are padded like obstacles so plans keep the same margin
    everywhere). The free set at any padding is therefore closed: touching is allowed.
    """

    seed: int = 0
    n_obstacles: int = 10
    size: float = 5.0
    start_xy: tuple[float, float] = (2.5, 2.5)
    dt: float = 0.1
    v_max: float = 1.0
    padding: float = 0.1
    obstacles: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "obstacles", self._generate_layout())

    # ----------------------------------------------------------------------------- layout
    def _generate_layout(self) -> np.ndarray:
        """Place wall-like rectangles one by one, then accept the layout if it passes the checks.

        Each rectangle is 0.2-0.8 thick and 0.5-2.0 long with a random orientation, on the 0.1
        lattice, and keeps a gap of at least ``MIN_GAP`` to the others (touching the box walls is
        allowed). Layouts are redrawn until ``_layout_ok`` holds.
        """
        rng = np.random.default_rng(self.seed)
        for _ in range(1000):
            rects: list[np.ndarray] = []
            for _ in range(200 * self.n_obstacles):
                thick = rng.integers(2, 9) / 10.0
                long = rng.integers(5, 21) / 10.0
                wh = np.array([thick, long] if rng.random() < 0.5 else [long, thick])
                lo = np.round(rng.uniform(0.0, 1.0, size=2) * (self.size - wh), 1)
                cand = np.concatenate([lo, lo + wh])
                if all(_box_gap(cand, r) >= MIN_GAP for r in rects):
                    rects.append(cand)
                    if len(rects) == self.n_obstacles:
                        break
            arr = np.asarray(rects, dtype=np.float64)
            if len(arr) == self.n_obstacles and self._layout_ok(arr):
                arr.setflags(write=False)
                return arr
        raise RuntimeError(f"no valid maze layout found for seed {self.seed}")

    def _layout_ok(self, rects: np.ndarray) -> bool:
        """Start clear by padding + 0.2, 15-45% of the box covered, free space connected."""
        start = np.asarray(self.start_xy, dtype=np.float64)[None]
        if _inside(start, rects, self.padding + 0.2, self.size, 0.0).any():
            return False
        free, res = self._free_grid(rects, padding=0.0)
        covered = 1.0 - free.mean()
        if not 0.15 <= covered <= 0.45:
            return False
        free_pad, _ = self._free_grid(rects, padding=self.padding)
        from scipy import ndimage

        labels, n_comp = ndimage.label(free_pad)
        if n_comp != 1:
            return False
        ij = np.floor(start[0] / res).astype(int)
        return bool(labels[ij[0], ij[1]] == 1)

    def _free_grid(self, rects: np.ndarray, padding: float) -> tuple[np.ndarray, float]:
        """Free mask of cell centres on a 0.05 grid; boundaries (0.1 lattice) never hit centres."""
        res = 0.05
        n = round(self.size / res)
        c = (np.arange(n) + 0.5) * res
        xx, yy = np.meshgrid(c, c, indexing="ij")
        pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
        hit = _inside(pts, rects, padding, self.size, padding).any(axis=1)
        return ~hit.reshape(n, n), res

    # ----------------------------------------------------------------------------- geometry
    @property
    def start(self) -> np.ndarray:
        """Fixed start position (2,) float64."""
        return np.asarray(self.start_xy, dtype=np.float64)

    def padded_obstacles(self, padding: float | None = None) -> np.ndarray:
        """Obstacles grown by ``padding`` (default: the planning padding), (K, 4)."""
        p = self.padding if padding is None else padding
        return self.obstacles + np.array([-p, -p, p, p])

    def in_collision(self, points: np.ndarray, padding: float = 0.0) -> np.ndarray:
        """(N,) bool: point inside a padded obstacle or within ``padding`` of the box walls."""
        pts = _as_points(points)
        return _inside(pts, self.obstacles, padding, self.size, padding).any(axis=1)

    def segment_collides(self, p: np.ndarray, q: np.ndarray, padding: float = 0.0) -> np.ndarray:
        """(M,) bool for segments p[i] -> q[i]: exact slab test against all padded rectangles.

        Exact rather than sampled so that thin corner cuts are never missed; vectorised over all
        segments and obstacles at once. The box is convex, so the walls only need the endpoints.
        """
        p = _as_points(p)
        q = _as_points(q)
        walls = _outside_box(p, self.size, padding) | _outside_box(q, self.size, padding)
        return walls | _segments_hit_rects(p, q, self.padded_obstacles(padding))

    def path_collides(self, path: np.ndarray, padding: float = 0.0) -> bool:
        """Whether any segment of a (L, 2) polyline collides (a single point is checked too)."""
        path = _as_points(path)
        if len(path) == 1:
            return bool(self.in_collision(path, padding)[0])
        return bool(self.segment_collides(path[:-1], path[1:], padding).any())

    def sample_goals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 2) goals free at the planning padding and at least 0.5 away from the start."""
        out = np.empty((0, 2))
        while len(out) < n:
            cand = rng.uniform(0.0, self.size, size=(max(2 * (n - len(out)), 16), 2))
            ok = ~self.in_collision(cand, self.padding)
            ok &= np.linalg.norm(cand - self.start, axis=1) >= 0.5
            out = np.concatenate([out, cand[ok]])
        return out[:n]

    def free_boxes(self, padding: float | None = None) -> np.ndarray:
        """Axis-aligned boxes (K, 4) whose union is the free space at ``padding``.

        Cells of the grid spanned by every padded obstacle edge are merged into maximal vertical
        runs, runs with equal extent in neighbouring columns are merged, and the same is done with
        the axes swapped; the decomposition with fewer boxes wins. This is GCS's convex cover.
        """
        p = self.padding if padding is None else padding
        rects = self.padded_obstacles(p)
        lo, hi = p, self.size - p
        xs = np.unique(np.clip(np.concatenate([[lo, hi], rects[:, 0], rects[:, 2]]), lo, hi))
        ys = np.unique(np.clip(np.concatenate([[lo, hi], rects[:, 1], rects[:, 3]]), lo, hi))
        best: np.ndarray | None = None
        for swap in (False, True):
            boxes = _merge_cells(xs, ys, rects, swap)
            if best is None or len(boxes) < len(best):
                best = boxes
        assert best is not None
        return best


def _inside(
    pts: np.ndarray, rects: np.ndarray, padding: float, size: float, wall_pad: float
) -> np.ndarray:
    """(N, K+1) bool: open-interior hits of padded rects, last column = outside padded walls."""
    r = rects + np.array([-padding, -padding, padding, padding])
    x = pts[:, 0:1]
    y = pts[:, 1:2]
    hit = (x > r[:, 0]) & (x < r[:, 2]) & (y > r[:, 1]) & (y < r[:, 3])
    return np.concatenate([hit, _outside_box(pts, size, wall_pad)[:, None]], axis=1)


def _outside_box(pts: np.ndarray, size: float, padding: float) -> np.ndarray:
    """(N,) bool: strictly outside [padding, size - padding]^2 (1e-9 slack for round-off)."""
    tol = 1e-9
    return ((pts < padding - tol) | (pts > size - padding + tol)).any(axis=1)


def _segments_hit_rects(p: np.ndarray, q: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """(M,) bool: segment meets the open interior of any rect (Liang-Barsky slabs, broadcast)."""
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    d = (q - p)[:, None, :]  # (M, 1, 2)
    a = p[:, None, :]
    lo = rects[None, :, :2]
    hi = rects[None, :, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - a) / d
        t2 = (hi - a) / d
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    # Axis with no motion: the open slab either contains the coordinate for all t or never.
    still = d == 0.0
    inside = (a > lo) & (a < hi)
    tmin = np.where(still, np.where(inside, -np.inf, np.inf), tmin)
    tmax = np.where(still, np.where(inside, np.inf, -np.inf), tmax)
    enter = np.maximum(tmin.max(axis=2), 0.0)
    leave = np.minimum(tmax.min(axis=2), 1.0)
    # Grazing contacts shorter than 1e-9 of the segment are round-off, not penetration.
    return (leave - enter > 1e-9).any(axis=1)


def _merge_cells(xs: np.ndarray, ys: np.ndarray, rects: np.ndarray, swap: bool) -> np.ndarray:
    """One orientation of the cell-merging decomposition used by ``MazeEnv.free_boxes``."""
    a_planes, b_planes = (ys, xs) if swap else (xs, ys)
    runs: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for i in range(len(a_planes) - 1):
        a0, a1 = a_planes[i], a_planes[i + 1]
        b_mid = 0.5 * (b_planes[:-1] + b_planes[1:])
        a_mid = np.full_like(b_mid, 0.5 * (a0 + a1))
        centres = np.stack([b_mid, a_mid] if swap else [a_mid, b_mid], axis=1)
        r = rects
        hit = (
            (centres[:, 0:1] > r[:, 0])
            & (centres[:, 0:1] < r[:, 2])
            & (centres[:, 1:2] > r[:, 1])
            & (centres[:, 1:2] < r[:, 3])
        ).any(axis=1)
        j = 0
        while j < len(hit):
            if hit[j]:
                j += 1
                continue
            k = j
            while k < len(hit) and not hit[k]:
                k += 1
            runs.setdefault((b_planes[j], b_planes[k]), []).append((a0, a1))
            j = k
    boxes: list[tuple[float, float, float, float]] = []
    for (b0, b1), spans in runs.items():
        spans.sort()
        cur0, cur1 = spans[0]
        for s0, s1 in spans[1:]:
            if s0 <= cur1 + 1e-12:
                cur1 = s1
            else:
                boxes.append((cur0, b0, cur1, b1) if not swap else (b0, cur0, b1, cur1))
                cur0, cur1 = s0, s1
        boxes.append((cur0, b0, cur1, b1) if not swap else (b0, cur0, b1, cur1))
    return np.asarray(boxes, dtype=np.float64)
