"""2-D maze benchmark of the ADP paper: environment, clean/corrupt demos, expert, plots.

The robot is a point in the box [0, 5]^2 with 10 axis-aligned rectangular obstacles. It starts at a
fixed point and must reach a random goal. Clean demonstrations are smooth, near-time-optimal plans
(Drake's ``GcsTrajectoryOptimization`` when pydrake is importable, a built-in visibility-graph +
smoothing planner otherwise); corrupt demonstrations are jagged RRT plans from one tree grown once.
Positions are sampled every ``dt`` and each axis moves at most ``v_max * dt`` per step; the action
of frame t is the position of frame t + 1. Closed-loop evaluation and its metrics live in
``ambient_core.envs.maze_eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ambient_core.envs._maze_planners import (
    RRTTree,
    drake_available,
    plan_builtin,
    plan_drake,
)
from ambient_core.envs.base import Episode

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "MazeEnv",
    "ExpertPolicy",
    "RRTTree",
    "drake_available",
    "plan_clean",
    "plan_rrt",
    "make_episode",
    "generate",
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
        ij = np.floor(start[0] / res).astype(int)
        reached = _flood_fill(free_pad, (int(ij[0]), int(ij[1])))
        return bool(np.array_equal(reached, free_pad))

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
        return np.asarray(_inside(pts, self.obstacles, padding, self.size, padding).any(axis=1))

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
        # Rounding merges planes that differ by float noise (1.0 + 0.1 vs 1.2 - 0.1): no slivers.
        xs = np.unique(np.round(np.clip(np.r_[lo, hi, rects[:, 0], rects[:, 2]], lo, hi), 9))
        ys = np.unique(np.round(np.clip(np.r_[lo, hi, rects[:, 1], rects[:, 3]], lo, hi), 9))
        best: np.ndarray | None = None
        for swap in (False, True):
            boxes = _merge_cells(xs, ys, rects, swap)
            if best is None or len(boxes) < len(best):
                best = boxes
        assert best is not None
        return best


def _flood_fill(free: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """Cells of ``free`` 4-connected to ``seed`` (iterated dilation; numpy only, no scipy)."""
    reached = np.zeros_like(free)
    if not free[seed]:
        return reached
    reached[seed] = True
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= free
        if np.array_equal(grown, reached):
            return reached
        reached = grown


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
    return np.asarray(((pts < padding - tol) | (pts > size - padding + tol)).any(axis=1))


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
        inside = (
            (centres[:, 0:1] > r[:, 0])
            & (centres[:, 0:1] < r[:, 2])
            & (centres[:, 1:2] > r[:, 1])
            & (centres[:, 1:2] < r[:, 3])
        )
        hit = np.asarray(inside.any(axis=1))
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


# --------------------------------------------------------------------------------- planning
def plan_clean(env: MazeEnv, goals: np.ndarray, method: CleanMethod = "auto") -> list[np.ndarray]:
    """Smooth near-time-optimal plans from the start to each goal, sampled at ``env.dt``.

    ``"drake"``: GCS trajectory optimisation (Clarabel); ``"builtin"``: visibility-graph shortest
    path, corner rounding and a rest-to-rest speed profile; ``"auto"``: drake when importable.
    """
    if method == "auto":
        method = "drake" if drake_available() else "builtin"
    if method == "drake":
        return plan_drake(env, goals)
    if method == "builtin":
        return plan_builtin(env, goals)
    raise ValueError(f"unknown clean planner {method!r}")


def plan_rrt(
    env: MazeEnv,
    goals: np.ndarray,
    tree: RRTTree | None = None,
    max_samples: int = 5000,
    step: float = 0.1,
    seed: int = 0,
) -> list[np.ndarray | None]:
    """Jagged RRT plans (the corruption); grows one tree unless ``tree`` is given.

    ``None`` marks a goal that no tree node sees with a collision-free straight segment.
    """
    if tree is None:
        tree = RRTTree.grow(env, max_samples=max_samples, step=step, seed=seed)
    return tree.query(goals)


# --------------------------------------------------------------------------------- episodes
def make_episode(path: np.ndarray, goal: np.ndarray) -> Episode:
    """Frames of one plan: state = position, action = next position (last frame stays put)."""
    path = np.asarray(path, dtype=np.float64).reshape(-1, 2)
    action = np.concatenate([path[1:], path[-1:]])
    goal_rows = np.broadcast_to(np.asarray(goal, dtype=np.float64).reshape(1, 2), path.shape)
    return {
        "observation.state": path.astype(np.float32),
        "action": action.astype(np.float32),
        "observation.goal": np.ascontiguousarray(goal_rows, dtype=np.float32),
    }


def generate(
    env: MazeEnv,
    n_clean: int,
    n_corrupt: int,
    seed: int,
    clean_method: CleanMethod = "auto",
    max_samples: int = 5000,
    step: float = 0.1,
) -> tuple[list[Episode], list[Episode]]:
    """Clean (smooth planner) and corrupt (RRT) episodes for independent random goals.

    Goals the RRT tree cannot reach are redrawn, so exactly ``n_corrupt`` episodes come back.
    """
    rng = np.random.default_rng(seed)
    clean_goals = env.sample_goals(n_clean, rng)
    clean = [
        make_episode(p, g)
        for p, g in zip(plan_clean(env, clean_goals, clean_method), clean_goals, strict=True)
    ]
    tree = RRTTree.grow(env, max_samples=max_samples, step=step, seed=int(rng.integers(2**31)))
    corrupt: list[Episode] = []
    for _ in range(100):
        need = n_corrupt - len(corrupt)
        if need <= 0:
            break
        goals = env.sample_goals(need, rng)
        for p, g in zip(tree.query(goals), goals, strict=True):
            if p is not None:
                corrupt.append(make_episode(p, g))
    if len(corrupt) < n_corrupt:
        raise RuntimeError("the RRT tree reaches too few goals; grow it with more samples")
    return clean, corrupt


# --------------------------------------------------------------------------------- experts
class ExpertPolicy:
    """Scripted ChunkPolicy: follows a built-in clean plan, replanning when pushed off it.

    Plans are cached per goal; while the current position lies on the cached plan the next
    ``n_exec`` positions are returned (padded with the goal, i.e. "stay"), otherwise a fresh plan
    from the current position replaces it. Replanning needs a position that is free at the
    planning padding.
    """

    def __init__(self, env: MazeEnv, n_obs_steps: int = 2, n_exec: int = 8) -> None:
        self.env = env
        self.n_obs_steps = n_obs_steps
        self.n_exec = n_exec
        self._plans: dict[bytes, np.ndarray] = {}

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, n_obs_steps, 2) positions and goals -> (B, n_exec, 2) next positions."""
        pos = np.asarray(obs["observation.state"], dtype=np.float64)[:, -1]
        goal = np.asarray(obs["observation.goal"], dtype=np.float64)[:, -1]
        keys = [np.round(g, 6).tobytes() for g in goal]
        where = np.full(len(pos), -1, dtype=np.int64)
        for i, k in enumerate(keys):
            plan = self._plans.get(k)
            if plan is not None:
                on = np.flatnonzero(np.linalg.norm(plan - pos[i], axis=1) < 1e-5)
                if on.size:
                    where[i] = int(on[-1])
        redo = np.flatnonzero(where < 0)
        if redo.size:
            fresh = plan_builtin(self.env, goal[redo], starts=pos[redo])
            for r, plan in zip(redo, fresh, strict=True):
                self._plans[keys[int(r)]] = plan
                where[r] = 0
        out = np.empty((len(pos), self.n_exec, 2))
        for i, k in enumerate(keys):
            plan = self._plans[k]
            nxt = plan[where[i] + 1 : where[i] + 1 + self.n_exec]
            pad = np.broadcast_to(plan[-1], (self.n_exec - len(nxt), 2))
            out[i] = np.concatenate([nxt, pad])
        return out


# --------------------------------------------------------------------------------- plots
def _draw_env(ax: Axes, env: MazeEnv) -> None:
    """Obstacles in grey, padded outlines (walls included) dashed, the start as a black dot."""
    from matplotlib.patches import Rectangle

    for r, pr in zip(env.obstacles, env.padded_obstacles(), strict=True):
        ax.add_patch(Rectangle(r[:2], r[2] - r[0], r[3] - r[1], color="0.55", zorder=1))
        ax.add_patch(
            Rectangle(pr[:2], pr[2] - pr[0], pr[3] - pr[1], fill=False, ec="0.4", ls="--", lw=0.6)
        )
    inner = env.size - 2 * env.padding
    ax.add_patch(
        Rectangle((env.padding, env.padding), inner, inner, fill=False, ec="0.4", ls="--", lw=0.6)
    )
    ax.plot(*env.start, "ko", ms=6, zorder=5, label="start")
    ax.set_xlim(0.0, env.size)
    ax.set_ylim(0.0, env.size)
    ax.set_aspect("equal")


def plot_rollouts(
    env: MazeEnv,
    trajectories: Sequence[np.ndarray],
    goals: np.ndarray,
    success_mask: np.ndarray,
    path: str | Path,
) -> None:
    """PNG of rollouts: successes green, failures red, goals as crosses."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    _draw_env(ax, env)
    goals = np.asarray(goals).reshape(-1, 2)
    mask = np.asarray(success_mask, dtype=bool)
    for t, ok in zip(trajectories, mask, strict=True):
        ax.plot(t[:, 0], t[:, 1], color="tab:green" if ok else "tab:red", lw=0.8, alpha=0.8)
    ax.plot(goals[mask, 0], goals[mask, 1], "x", color="tab:blue", ms=5, label="goal (success)")
    ax.plot(goals[~mask, 0], goals[~mask, 1], "x", color="tab:red", ms=5, label="goal (failure)")
    ax.set_title(f"{int(mask.sum())}/{len(mask)} successful")
    ax.legend(loc="upper right", fontsize=7)
    fig.savefig(path, dpi=100)


def plot_dataset(
    env: MazeEnv,
    clean_eps: Sequence[Episode],
    corrupt_eps: Sequence[Episode],
    path: str | Path,
    n_show: int = 8,
) -> None:
    """Side-by-side PNG of a few clean (smooth) and corrupt (RRT, jagged) demonstrations."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.5))
    for k, (eps, title) in enumerate(((clean_eps, "clean"), (corrupt_eps, "corrupt (RRT)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        _draw_env(ax, env)
        for ep in list(eps)[:n_show]:
            s = ep["observation.state"]
            ax.plot(s[:, 0], s[:, 1], ".-", lw=0.8, ms=2)
            ax.plot(*ep["observation.goal"][0], "x", color="k", ms=5)
        ax.set_title(f"{title}: {len(eps)} episodes")
    fig.savefig(path, dpi=100)
