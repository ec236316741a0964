"""Maze planners: clean (visibility graph + smoothing, or Drake GCS) and corrupt (one RRT tree).

Every planner returns positions sampled every ``env.dt`` that start at the query start, end exactly
at the goal and move at most ``env.v_max * env.dt`` per axis per step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ambient_core.envs.maze import MazeEnv

# Built-in smoother: longitudinal and lateral acceleration limits (env units / s^2). They trade a
# little time against smoothness; GCS plays the same trade through its Bezier parameterisation.
A_LONG = 1.5
A_LAT = 2.0
# Visibility-graph corner nodes sit this far outside the padded obstacles so corners can be
# rounded without entering the padding; a tighter graph is the fallback for narrow passages.
NODE_MARGINS = (0.1, 0.02)
CORNER_SLACK = 0.02  # corner curves are checked at padding + this, covering chord sagitta


# ------------------------------------------------------------------------------ shared helpers
def drake_available() -> bool:
    """True when pydrake's GCS trajectory optimisation and the Clarabel solver can be imported."""
    try:
        from pydrake.planning import GcsTrajectoryOptimization  # noqa: F401
        from pydrake.solvers import ClarabelSolver
    except ImportError:
        return False
    return bool(ClarabelSolver().available())


def enforce_step_limit(path: np.ndarray, limit: float) -> np.ndarray:
    """Slow a sampled path down uniformly until no axis moves more than ``limit`` per step.

    Linear interpolation between samples is Lipschitz with the largest step, so resampling at
    index spacing ``limit / max_step`` bounds every new step; endpoints are kept exactly.
    """
    path = np.asarray(path, dtype=np.float64)
    if len(path) < 2:
        return path
    max_step = float(np.abs(np.diff(path, axis=0)).max())
    if max_step <= limit:
        return path
    n = len(path) - 1
    idx = np.arange(0.0, n, limit / max_step * (1.0 - 1e-9))
    idx = np.append(idx, float(n))
    out = np.stack([np.interp(idx, np.arange(n + 1), path[:, k]) for k in range(2)], axis=1)
    return out


def subdivide(path: np.ndarray, limit: float) -> np.ndarray:
    """Insert evenly spaced points on every segment so each axis moves at most ``limit``.

    Vertices are kept exactly, so the shape (and the jaggedness of RRT paths) is unchanged.
    """
    path = np.asarray(path, dtype=np.float64)
    if len(path) < 2:
        return path
    seg = np.diff(path, axis=0)
    n_sub = np.maximum(np.ceil(np.abs(seg).max(axis=1) / limit - 1e-9), 1).astype(int)
    seg_idx = np.repeat(np.arange(len(seg)), n_sub)
    offsets = np.arange(len(seg_idx)) - np.repeat(np.cumsum(n_sub) - n_sub, n_sub)
    frac = (offsets + 1) / n_sub[seg_idx]
    pts = path[seg_idx] + frac[:, None] * seg[seg_idx]
    pts[np.cumsum(n_sub) - 1] = path[1:]  # land on vertices exactly
    return np.concatenate([path[:1], pts])


# ------------------------------------------------------------------------------ visibility graph
@dataclass(frozen=True)
class _VisGraph:
    """Padded-obstacle corners with all-pairs shortest paths, reused by every query."""

    nodes: np.ndarray  # (C, 2)
    dist: np.ndarray  # (C, C) shortest-path lengths, inf when disconnected
    nxt: np.ndarray  # (C, C) first hop on the shortest path i -> j


@lru_cache(maxsize=16)
def _vis_graph(env: MazeEnv, margin: float) -> _VisGraph:
    """Build the corner graph once per (env, margin); edges are collision-free at the padding."""
    r = env.padded_obstacles(env.padding + margin)
    corners = np.concatenate([r[:, [0, 1]], r[:, [2, 1]], r[:, [2, 3]], r[:, [0, 3]]])
    corners = np.unique(np.round(corners, 9), axis=0)
    corners = corners[~env.in_collision(corners, env.padding)]
    c = len(corners)
    i, j = np.triu_indices(c, k=1)
    ok = ~env.segment_collides(corners[i], corners[j], env.padding)
    dist = np.full((c, c), np.inf)
    np.fill_diagonal(dist, 0.0)
    length = np.linalg.norm(corners[i] - corners[j], axis=1)
    dist[i[ok], j[ok]] = length[ok]
    dist[j[ok], i[ok]] = length[ok]
    nxt = np.broadcast_to(np.arange(c), (c, c)).copy()
    for k in range(c):  # Floyd-Warshall, vectorised over (i, j); C is ~40
        via = dist[:, k : k + 1] + dist[k : k + 1, :]
        better = via < dist
        dist = np.where(better, via, dist)
        nxt = np.where(better, nxt[:, k : k + 1], nxt)
    return _VisGraph(nodes=corners, dist=dist, nxt=nxt)


def shortest_polylines(env: MazeEnv, starts: np.ndarray, goals: np.ndarray) -> list[np.ndarray]:
    """Near-shortest collision-free polylines (free at ``env.padding``) for each query.

    Tries the roomy corner graph first (room for corner rounding, so paths are slightly longer
    than the true shortest ones), then the tight one.
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
    out: list[np.ndarray | None] = [None] * len(goals)
    todo = np.arange(len(goals))
    for margin in NODE_MARGINS:
        if len(todo) == 0:
            break
        g = _vis_graph(env, margin)
        for lo in range(0, len(todo), 512):
            chunk = todo[lo : lo + 512]
            for q, poly in zip(
                chunk, _query_graph(env, g, starts[chunk], goals[chunk]), strict=True
            ):
                out[q] = poly
        todo = np.array([q for q in todo if out[q] is None], dtype=int)
    if len(todo):
        raise ValueError(f"no collision-free path for queries {todo.tolist()}")
    return [p for p in out if p is not None]


def _query_graph(
    env: MazeEnv, g: _VisGraph, starts: np.ndarray, goals: np.ndarray
) -> list[np.ndarray | None]:
    """Connect each start and goal to the visible corners and pick the cheapest route."""
    b, c = len(starts), len(g.nodes)
    direct = ~env.segment_collides(starts, goals, env.padding)
    nodes = np.broadcast_to(g.nodes, (b, c, 2)).reshape(-1, 2)
    vis_s = ~env.segment_collides(np.repeat(starts, c, axis=0), nodes, env.padding).reshape(b, c)
    vis_g = ~env.segment_collides(np.repeat(goals, c, axis=0), nodes, env.padding).reshape(b, c)
    d_s = np.where(vis_s, np.linalg.norm(starts[:, None] - g.nodes[None], axis=2), np.inf)
    d_g = np.where(vis_g, np.linalg.norm(goals[:, None] - g.nodes[None], axis=2), np.inf)
    out: list[np.ndarray | None] = []
    for k in range(b):
        if direct[k]:
            out.append(np.stack([starts[k], goals[k]]))
            continue
        total = d_s[k][:, None] + g.dist + d_g[k][None, :]
        flat = int(np.argmin(total))
        if not np.isfinite(total.flat[flat]):
            out.append(None)
            continue
        a, z = divmod(flat, c)
        chain = [a]
        while chain[-1] != z:
            chain.append(int(g.nxt[chain[-1], z]))
        pts = g.nodes[chain]
        out.append(np.concatenate([starts[k : k + 1], pts, goals[k : k + 1]]))
    return out


# ------------------------------------------------------------------------------ built-in smoother
def _quad_bezier(a: np.ndarray, v: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """n points of the quadratic Bezier a -> b with control point v (the polyline corner)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * v + t**2 * b


def _rounded_curve(poly: np.ndarray, d: np.ndarray, ds: float) -> np.ndarray:
    """Densely sampled polyline with each interior corner i replaced by a Bezier of reach d[i]."""
    pieces: list[np.ndarray] = [poly[:1]]
    cur = poly[0]
    for i in range(1, len(poly)):
        v = poly[i]
        if i < len(poly) - 1 and d[i] > 0:
            u1 = (v - poly[i - 1]) / np.linalg.norm(v - poly[i - 1])
            u2 = (poly[i + 1] - v) / np.linalg.norm(poly[i + 1] - v)
            a, b = v - d[i] * u1, v + d[i] * u2
            pieces.append(_line(cur, a, ds)[1:])
            pieces.append(_quad_bezier(a, v, b, max(16, math.ceil(2 * d[i] / ds)))[1:])
            cur = b
        else:
            pieces.append(_line(cur, v, ds)[1:])
            cur = v
    return np.concatenate(pieces)


def _line(a: np.ndarray, b: np.ndarray, ds: float) -> np.ndarray:
    """Points from a to b (both included) spaced at most ds apart."""
    n = max(2, math.ceil(float(np.linalg.norm(b - a)) / ds) + 1)
    return a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)


def _corner_reach(env: MazeEnv, poly: np.ndarray) -> np.ndarray:
    """Largest collision-free corner reach per vertex, halving from half the shorter segment."""
    seg_len = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    d = np.zeros(len(poly))
    for i in range(1, len(poly) - 1):
        reach = min(0.5 * seg_len[i - 1], 0.5 * seg_len[i], 0.6)
        v = poly[i]
        u1 = (v - poly[i - 1]) / seg_len[i - 1]
        u2 = (poly[i + 1] - v) / seg_len[i]
        for _ in range(8):
            curve = _quad_bezier(v - reach * u1, v, v + reach * u2, 24)
            if not env.path_collides(curve, env.padding + CORNER_SLACK):
                d[i] = reach
                break
            reach *= 0.5
    return d


def time_parameterize(curve: np.ndarray, dt: float, v_max: float) -> np.ndarray:
    """Sample a dense geometric curve at dt with a rest-to-rest, near-time-optimal speed profile.

    Speed obeys the per-axis bound (v * |tangent_k| <= v_max), the lateral limit v^2 kappa <=
    A_LAT and a longitudinal limit A_LONG (forward/backward pass on the arclength grid).
    """
    seg = np.diff(curve, axis=0)
    ds = np.linalg.norm(seg, axis=1)
    keep = np.concatenate([[True], ds > 1e-12])
    curve = curve[keep]
    seg = np.diff(curve, axis=0)
    ds = np.linalg.norm(seg, axis=1)
    if len(ds) == 0:
        return curve[:1].copy()
    tangent = seg / ds[:, None]
    seg_lim = v_max / np.abs(tangent).max(axis=1)
    heading = np.arctan2(tangent[:, 1], tangent[:, 0])
    turn = np.abs(np.angle(np.exp(1j * np.diff(heading))))
    kappa = turn / (0.5 * (ds[:-1] + ds[1:]))
    vlim = np.empty(len(curve))
    vlim[0] = vlim[-1] = 0.0
    with np.errstate(divide="ignore"):
        lat = np.sqrt(A_LAT / kappa)
    vlim[1:-1] = np.minimum(np.minimum(seg_lim[:-1], seg_lim[1:]), lat)
    v = vlim.copy()
    for k in range(len(ds)):
        v[k + 1] = min(v[k + 1], math.sqrt(v[k] ** 2 + 2 * A_LONG * ds[k]))
    for k in range(len(ds) - 1, -1, -1):
        v[k] = min(v[k], math.sqrt(v[k + 1] ** 2 + 2 * A_LONG * ds[k]))
    seg_t = 2.0 * ds / np.maximum(v[:-1] + v[1:], 1e-12)
    t = np.concatenate([[0.0], np.cumsum(seg_t)])
    s = np.concatenate([[0.0], np.cumsum(ds)])
    n = int(np.floor(t[-1] / dt + 1e-9))
    ts = np.arange(n + 1) * dt
    ss = np.interp(ts, t, s)
    pts = np.stack([np.interp(ss, s, curve[:, k]) for k in range(2)], axis=1)
    if np.linalg.norm(pts[-1] - curve[-1]) > 1e-9:
        pts = np.concatenate([pts, curve[-1:]])
    pts[-1] = curve[-1]
    return pts


def smooth_polyline(env: MazeEnv, poly: np.ndarray) -> np.ndarray:
    """Round the corners of a free polyline and time-parameterise it at ``env.dt``.

    If the sampled result touches the padded obstacles, all corner reaches are halved and the
    attempt repeated; the last resort is the unrounded polyline, which stops at every corner and
    whose chords are the polyline's own (free) segments.
    """
    limit = env.v_max * env.dt
    d = _corner_reach(env, poly)
    for _ in range(4):
        traj = time_parameterize(_rounded_curve(poly, d, 0.002), env.dt, env.v_max)
        traj = enforce_step_limit(traj, limit)
        if not env.path_collides(traj, env.padding):
            return traj
        d = 0.5 * d
    traj = time_parameterize(_rounded_curve(poly, np.zeros(len(poly)), 0.002), env.dt, env.v_max)
    return enforce_step_limit(traj, limit)


def plan_builtin(
    env: MazeEnv, goals: np.ndarray, starts: np.ndarray | None = None
) -> list[np.ndarray]:
    """Shortest path on the visibility graph, then corner rounding and time parameterisation."""
    goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
    if starts is None:
        starts = np.broadcast_to(env.start, goals.shape)
    polys = shortest_polylines(env, np.asarray(starts, dtype=np.float64), goals)
    return [smooth_polyline(env, p) for p in polys]


# ------------------------------------------------------------------------------ Drake GCS
def _box_edges(boxes: np.ndarray) -> list[tuple[int, int]]:
    """Directed edges between boxes that share a face of positive length (both directions)."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    ox = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
    oy = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
    tol = 1e-9
    touch = ((np.abs(ox) <= tol) & (oy > tol)) | ((np.abs(oy) <= tol) & (ox > tol))
    touch |= (ox > tol) & (oy > tol)
    np.fill_diagonal(touch, False)
    i, j = np.nonzero(touch)
    return list(zip(i.tolist(), j.tolist(), strict=True))


def split_boxes(boxes: np.ndarray, max_side: float) -> np.ndarray:
    """Cut every box into equal pieces no longer than ``max_side`` per axis.

    One cubic Bezier per visited region with rest at both ends peaks at half the speed bound, so
    a path inside one big box would be needlessly slow; smaller regions give GCS more segments.
    """
    out: list[np.ndarray] = []
    for b in boxes:
        nx = max(1, math.ceil((b[2] - b[0]) / max_side - 1e-9))
        ny = max(1, math.ceil((b[3] - b[1]) / max_side - 1e-9))
        xs = np.linspace(b[0], b[2], nx + 1)
        ys = np.linspace(b[1], b[3], ny + 1)
        for i in range(nx):
            for j in range(ny):
                out.append(np.array([xs[i], ys[j], xs[i + 1], ys[j + 1]]))
    return np.asarray(out)


def _vec(x: np.ndarray) -> Any:
    """A float64 vector, typed loosely for pydrake's stubs."""
    return np.asarray(x, dtype=np.float64)


def plan_drake(
    env: MazeEnv,
    goals: np.ndarray,
    max_rounded_paths: int = 10,
    max_side: float | None = None,
) -> list[np.ndarray]:
    """GCS trajectories (Bezier order 3, C1, |v_k| <= v_max, time + length cost, rest-to-rest).

    Regions are the free boxes at the planning padding; Clarabel solves the convex relaxation and
    the rounded paths (Mosek is never used: it needs a licence). The region subgraph is built once
    and only the goal subgraph changes between queries. ``max_side`` optionally splits the boxes
    (see ``split_boxes``): on maze seed 0, 1.0 shortened plans by ~13% but made solves ~10x slower.
    """
    from pydrake.geometry.optimization import GraphOfConvexSetsOptions, HPolyhedron, Point
    from pydrake.planning import GcsTrajectoryOptimization
    from pydrake.solvers import ClarabelSolver

    goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
    boxes = env.free_boxes()
    if max_side is not None:
        boxes = split_boxes(boxes, max_side)
    gcs = GcsTrajectoryOptimization(2)
    # pydrake's stubs want ndarray[float64] and list[ConvexSet]; the values are exactly that.
    sets: Any = [HPolyhedron.MakeBox(b[:2], b[2:]) for b in boxes]
    regions = gcs.AddRegions(sets, _box_edges(boxes), order=3, name="free")
    source = gcs.AddRegions([Point(_vec(env.start))], order=0, name="source")
    src_edges = gcs.AddEdges(source, regions)
    src_edges.AddZeroDerivativeConstraints(1)
    gcs.AddTimeCost()
    gcs.AddPathLengthCost()
    gcs.AddVelocityBounds(_vec(-env.v_max * np.ones(2)), _vec(env.v_max * np.ones(2)))
    gcs.AddPathContinuityConstraints(1)
    options = GraphOfConvexSetsOptions()
    options.convex_relaxation = True
    options.preprocessing = True
    options.max_rounded_paths = max_rounded_paths
    options.solver = ClarabelSolver()
    out: list[np.ndarray] = []
    drake_log = logging.getLogger("drake")
    level = drake_log.level
    drake_log.setLevel(logging.WARNING)  # one INFO line per rounding step otherwise
    try:
        for goal in goals:
            target = gcs.AddRegions([Point(_vec(goal))], order=0, name="target")
            tgt_edges = gcs.AddEdges(regions, target)
            tgt_edges.AddZeroDerivativeConstraints(1)
            traj, result = gcs.SolvePath(source, target, options)
            gcs.RemoveSubgraph(target)
            if not result.is_success():
                status = result.get_solution_result()
                raise RuntimeError(f"GCS failed for goal {goal.tolist()}: {status}")
            out.append(_sample_trajectory(traj, env, env.start, goal))
    finally:
        drake_log.setLevel(level)
    return out


def _sample_trajectory(traj: Any, env: MazeEnv, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Sample a Drake trajectory every dt; pin the exact endpoints and enforce the step bound."""
    t0, t1 = traj.start_time(), traj.end_time()
    n = int(np.floor((t1 - t0) / env.dt + 1e-9))
    ts = t0 + np.arange(n + 1) * env.dt
    pts = np.stack([np.asarray(traj.value(t)).reshape(2) for t in ts])
    if np.linalg.norm(pts[-1] - goal) > 1e-9:
        pts = np.concatenate([pts, goal[None]])
    pts[0] = start
    pts[-1] = goal
    return enforce_step_limit(pts, env.v_max * env.dt)


# ------------------------------------------------------------------------------ RRT
@dataclass(frozen=True, eq=False)
class RRTTree:
    """One goal-free RRT grown from the start and reused for every query (no shortcutting)."""

    env: MazeEnv
    nodes: np.ndarray  # (N, 2)
    parent: np.ndarray  # (N,) int, root is its own parent
    depth: np.ndarray  # (N,) int, root depth 0

    @classmethod
    def grow(
        cls, env: MazeEnv, max_samples: int = 5000, step: float = 0.1, seed: int = 0
    ) -> RRTTree:
        """Draw ``max_samples`` uniform samples; each extends its nearest node by <= ``step``."""
        rng = np.random.default_rng(seed)
        lo, hi = env.padding, env.size - env.padding
        samples = rng.uniform(lo, hi, size=(max_samples, 2))
        nodes = np.empty((max_samples + 1, 2))
        parent = np.zeros(max_samples + 1, dtype=np.int64)
        depth = np.zeros(max_samples + 1, dtype=np.int64)
        nodes[0] = env.start
        n = 1
        for s in samples:
            diff = s - nodes[:n]
            d2 = np.einsum("ij,ij->i", diff, diff)
            j = int(np.argmin(d2))
            dist = math.sqrt(float(d2[j]))
            if dist < 1e-12:
                continue
            new = s if dist <= step else nodes[j] + diff[j] * (step / dist)
            if env.segment_collides(nodes[j : j + 1], new[None], env.padding)[0]:
                continue
            nodes[n] = new
            parent[n] = j
            depth[n] = depth[j] + 1
            n += 1
        return cls(env=env, nodes=nodes[:n], parent=parent[:n], depth=depth[:n])

    def query(self, goals: np.ndarray, k: int = 10) -> list[np.ndarray | None]:
        """Tree path root -> node + straight node -> goal, subdivided to the per-axis step bound.

        The node is the nearest of the ``k`` nearest with a free segment to the goal (all nodes
        are tried, nearest first, when none of those is); ``None`` if the goal is not visible
        from any node.
        """
        env = self.env
        goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
        k = min(k, len(self.nodes))
        chosen = np.full(len(goals), -1, dtype=np.int64)
        for lo in range(0, len(goals), 256):
            g = goals[lo : lo + 256]
            d2 = ((g[:, None, :] - self.nodes[None]) ** 2).sum(axis=2)
            cand = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(self.nodes) else None
            if cand is None:
                cand = np.tile(np.arange(len(self.nodes)), (len(g), 1))
            order = np.argsort(np.take_along_axis(d2, cand, axis=1), axis=1)
            cand = np.take_along_axis(cand, order, axis=1)
            free = ~env.segment_collides(
                np.repeat(g, k, axis=0), self.nodes[cand.ravel()], env.padding
            ).reshape(len(g), k)
            first = np.argmax(free, axis=1)
            ok = free.any(axis=1)
            chosen[lo : lo + 256] = np.where(ok, cand[np.arange(len(g)), first], -1)
            for r in np.flatnonzero(~ok):
                chosen[lo + r] = self._any_visible(g[r], d2[r])
        return self._paths(goals, chosen)

    def _any_visible(self, goal: np.ndarray, d2: np.ndarray) -> int:
        """Nearest node with a free segment to ``goal`` over the whole tree, or -1."""
        order = np.argsort(d2)
        free = ~self.env.segment_collides(
            np.broadcast_to(goal, (len(order), 2)), self.nodes[order], self.env.padding
        )
        return int(order[np.argmax(free)]) if free.any() else -1

    def _paths(self, goals: np.ndarray, chosen: np.ndarray) -> list[np.ndarray | None]:
        """Walk all parent chains at once (vectorised over goals), then subdivide each path."""
        limit = self.env.v_max * self.env.dt
        valid = chosen >= 0
        out: list[np.ndarray | None] = [None] * len(goals)
        if not valid.any():
            return out
        cur = chosen[valid]
        max_depth = int(self.depth[cur].max())
        anc = np.empty((len(cur), max_depth + 1), dtype=np.int64)
        for level in range(max_depth + 1):
            anc[:, level] = cur
            cur = self.parent[cur]
        for row, q in enumerate(np.flatnonzero(valid)):
            chain = anc[row, : self.depth[chosen[q]] + 1][::-1]
            poly = np.concatenate([self.nodes[chain], goals[q : q + 1]])
            out[q] = subdivide(poly, limit)
        return out
