"""Maze benchmark: layout, collisions, clean and RRT planners, episodes, closed-loop evaluation."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

from ambient_core.envs._maze_planners import enforce_step_limit, subdivide
from ambient_core.envs.maze import (
    ExpertPolicy,
    MazeEnv,
    RRTTree,
    drake_available,
    generate,
    make_episode,
    plan_clean,
    plot_dataset,
    plot_rollouts,
)
from ambient_core.envs.maze_eval import evaluate, mean_sq_accel

STEP_TOL = 1e-6


@pytest.fixture(scope="module")
def env() -> MazeEnv:
    return MazeEnv(seed=0)


@pytest.fixture(scope="module")
def tree(env: MazeEnv) -> RRTTree:
    return RRTTree.grow(env, max_samples=5000, step=0.1, seed=0)


@pytest.fixture(scope="module")
def goals(env: MazeEnv) -> np.ndarray:
    return env.sample_goals(20, np.random.default_rng(123))


@pytest.fixture(scope="module")
def builtin_plans(env: MazeEnv, goals: np.ndarray) -> list[np.ndarray]:
    return plan_clean(env, goals, method="builtin")


class StraightPolicy:
    """Heads straight for the goal, at most ``step`` per axis per action, ignoring obstacles
    (the first action of each chunk at most ``first_step``, when given)."""

    def __init__(
        self, step: float, n_obs_steps: int = 2, n_exec: int = 8, first_step: float | None = None
    ) -> None:
        self.step = step
        self.first_step = step if first_step is None else first_step
        self.n_obs_steps = n_obs_steps
        self.n_exec = n_exec
        self.batch_sizes: list[int] = []
        self.first_obs: dict[str, np.ndarray] | None = None

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.first_obs is None:
            self.first_obs = {k: v.copy() for k, v in obs.items()}
        self.batch_sizes.append(len(obs["observation.state"]))
        pos = obs["observation.state"][:, -1]
        goal = obs["observation.goal"][:, -1]
        out = []
        for j in range(self.n_exec):
            s = self.first_step if j == 0 else self.step
            pos = pos + np.clip(goal - pos, -s, s)
            out.append(pos)
        return np.stack(out, axis=1)


def _interior_obstacle(env: MazeEnv) -> np.ndarray:
    """An obstacle at least 0.5 from every wall, so probes around it stay inside the box."""
    for r in env.obstacles:
        if r[0] >= 0.5 and r[1] >= 0.5 and r[2] <= env.size - 0.5 and r[3] <= env.size - 0.5:
            return r
    raise AssertionError("layout has no interior obstacle")


def _check_plan(env: MazeEnv, plan: np.ndarray, goal: np.ndarray, padding: float) -> None:
    assert plan.ndim == 2 and plan.shape[1] == 2 and len(plan) >= 2
    np.testing.assert_allclose(plan[0], env.start, atol=1e-9)
    np.testing.assert_allclose(plan[-1], goal, atol=1e-9)
    assert np.abs(np.diff(plan, axis=0)).max() <= env.v_max * env.dt + STEP_TOL
    assert not env.path_collides(plan, 0.0)
    assert not env.path_collides(plan, padding)


# ---------------------------------------------------------------------------------- layout
def test_layout_is_deterministic_per_seed() -> None:
    a, b, c = MazeEnv(seed=0), MazeEnv(seed=0), MazeEnv(seed=1)
    assert a.obstacles.shape == (10, 4)
    np.testing.assert_array_equal(a.obstacles, b.obstacles)
    assert not np.array_equal(a.obstacles, c.obstacles)
    assert (a.obstacles[:, :2] >= 0).all() and (a.obstacles[:, 2:] <= a.size).all()
    assert (a.obstacles[:, 2:] > a.obstacles[:, :2]).all()
    np.testing.assert_allclose(a.obstacles * 10, np.round(a.obstacles * 10), atol=1e-9)


def test_env_pickles_and_replaces() -> None:
    env = MazeEnv(seed=0)
    back = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(back.obstacles, env.obstacles)
    other = dataclasses.replace(env, seed=1)
    np.testing.assert_array_equal(other.obstacles, MazeEnv(seed=1).obstacles)
    with pytest.raises(ValueError):
        env.obstacles[0, 0] = 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_start_free_and_goals_free(seed: int) -> None:
    env = MazeEnv(seed=seed)
    assert not env.in_collision(env.start[None], env.padding)[0]
    g1 = env.sample_goals(500, np.random.default_rng(5))
    g2 = env.sample_goals(500, np.random.default_rng(5))
    np.testing.assert_array_equal(g1, g2)
    assert g1.shape == (500, 2)
    assert not env.in_collision(g1, env.padding).any()
    assert (np.linalg.norm(g1 - env.start, axis=1) >= 0.5).all()


def test_free_boxes_cover_exactly_the_free_space(env: MazeEnv) -> None:
    boxes = env.free_boxes()
    rng = np.random.default_rng(0)
    inside_boxes = rng.uniform(boxes[:, :2].repeat(50, 0), boxes[:, 2:].repeat(50, 0))
    assert not env.in_collision(inside_boxes, env.padding).any()
    pts = rng.uniform(0.0, env.size, size=(20_000, 2))
    free = ~env.in_collision(pts, env.padding)
    x, y = pts[:, 0:1], pts[:, 1:2]
    covered = (
        (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
    ).any(axis=1)
    np.testing.assert_array_equal(free, covered)


# ---------------------------------------------------------------------------------- collisions
def test_point_collisions_hand_made(env: MazeEnv) -> None:
    r = _interior_obstacle(env)
    cx, cy = 0.5 * (r[0] + r[2]), 0.5 * (r[1] + r[3])
    pts = np.array(
        [
            [cx, cy],  # inside
            [r[2] + 0.05, cy],  # inside the padding only
            [r[2] + 0.15, cy],  # clear of the padding
            [r[2], cy],  # on the boundary: touching is free
            [-0.01, 2.5],  # outside the box
            [0.05, 2.5],  # inside the padded wall
        ]
    )
    np.testing.assert_array_equal(
        env.in_collision(pts, 0.0), [True, False, False, False, True, False]
    )
    np.testing.assert_array_equal(
        env.in_collision(pts, 0.1), [True, True, False, True, True, True]
    )


def test_segment_collisions_hand_made(env: MazeEnv) -> None:
    r = _interior_obstacle(env)
    cx, cy = 0.5 * (r[0] + r[2]), 0.5 * (r[1] + r[3])
    p = np.array(
        [
            [r[0] - 0.2, cy],  # straight through, both endpoints outside
            [r[0] - 0.2, r[3] + 0.2],  # clear, parallel above
            [r[2] + 0.01, r[1] - 0.01],  # diagonal that clips the corner
            [r[0], r[3]],  # slides along the top edge (touching)
            [r[0] - 0.2, r[1] - 0.2],  # short, stops before the obstacle
            [cx, cy],  # starts inside
        ]
    )
    q = np.array(
        [
            [r[2] + 0.2, cy],
            [r[2] + 0.2, r[3] + 0.2],
            [r[2] - 0.01, r[1] + 0.01],
            [r[2], r[3]],
            [r[0] - 0.05, r[1] - 0.05],
            [cx, cy],
        ]
    )
    hits = env.segment_collides(p, q, 0.0)
    np.testing.assert_array_equal(hits, [True, False, True, False, False, True])
    # The exact slab test agrees with dense (1e4-point) sampling on random segments.
    rng = np.random.default_rng(1)
    a = rng.uniform(0, env.size, (300, 2))
    b = np.clip(a + rng.normal(0, 0.5, (300, 2)), 0, env.size)
    t = np.linspace(0, 1, 10_000)
    sampled = np.array(
        [env.in_collision(a[i] + t[:, None] * (b[i] - a[i]), 0.1).any() for i in range(300)]
    )
    np.testing.assert_array_equal(env.segment_collides(a, b, 0.1), sampled)
    assert env.segment_collides(np.array([[2.5, 2.5]]), np.array([[5.2, 2.5]]), 0.0)[0]


# ---------------------------------------------------------------------------------- planners
def test_step_helpers() -> None:
    path = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.35]])
    sub = subdivide(path, 0.1)
    assert np.abs(np.diff(sub, axis=0)).max() <= 0.1 + 1e-12
    assert any(np.allclose(s, [1.0, 0.0]) for s in sub)  # vertices are kept
    np.testing.assert_allclose(sub[[0, -1]], path[[0, -1]])
    slow = enforce_step_limit(np.array([[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]), 0.1)
    assert np.abs(np.diff(slow, axis=0)).max() <= 0.1 + 1e-12
    np.testing.assert_allclose(slow[[0, -1]], [[0.0, 0.0], [0.3, 0.3]])


def test_builtin_planner_constraints(
    env: MazeEnv, goals: np.ndarray, builtin_plans: list[np.ndarray]
) -> None:
    for plan, goal in zip(builtin_plans, goals, strict=True):
        _check_plan(env, plan, goal, padding=env.padding)
        # rest to rest: the first and last steps are slow
        assert np.abs(plan[1] - plan[0]).max() < 0.05
    assert mean_sq_accel(builtin_plans, env.dt) < 5.0


@pytest.mark.skipif(not drake_available(), reason="pydrake is not importable")
def test_drake_planner_constraints(
    env: MazeEnv, goals: np.ndarray, builtin_plans: list[np.ndarray]
) -> None:
    plans = plan_clean(env, goals[:3], method="drake")
    for plan, goal in zip(plans, goals[:3], strict=True):
        # GCS curves stay in the padded-free boxes; chords between samples may graze the padding.
        _check_plan(env, plan, goal, padding=0.5 * env.padding)
    assert mean_sq_accel(plans, env.dt) < 10.0
    # near-optimal in time: not much slower than the built-in planner on the same goals
    assert np.mean([len(p) for p in plans]) < 1.5 * np.mean([len(p) for p in builtin_plans[:3]])


def test_unknown_clean_method_is_rejected(env: MazeEnv, goals: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown clean planner"):
        plan_clean(env, goals[:1], method="bogus")  # type: ignore[arg-type]


def test_rrt_constraints(env: MazeEnv, tree: RRTTree) -> None:
    assert len(tree.nodes) > 1000
    assert not env.in_collision(tree.nodes, env.padding).any()
    again = RRTTree.grow(env, max_samples=5000, step=0.1, seed=0)
    np.testing.assert_array_equal(tree.nodes, again.nodes)
    goals = env.sample_goals(200, np.random.default_rng(9))
    plans = tree.query(goals)
    assert all(p is not None for p in plans)
    for plan, goal in zip(plans, goals, strict=True):
        assert plan is not None
        _check_plan(env, plan, goal, padding=env.padding)


def test_rrt_is_much_jerkier_than_clean(
    env: MazeEnv, tree: RRTTree, goals: np.ndarray, builtin_plans: list[np.ndarray]
) -> None:
    rrt = [p for p in tree.query(goals) if p is not None]
    clean = mean_sq_accel(builtin_plans, env.dt)
    assert mean_sq_accel(rrt, env.dt) > 10.0 * clean


# ---------------------------------------------------------------------------------- episodes
def test_make_episode_shapes_and_dtypes(
    builtin_plans: list[np.ndarray], goals: np.ndarray
) -> None:
    plan, goal = builtin_plans[0], goals[0]
    ep = make_episode(plan, goal)
    assert set(ep) == {"observation.state", "action", "observation.goal"}
    for v in ep.values():
        assert v.dtype == np.float32 and v.shape == (len(plan), 2)
    np.testing.assert_allclose(ep["action"][:-1], ep["observation.state"][1:])
    np.testing.assert_allclose(ep["action"][-1], ep["observation.state"][-1])
    np.testing.assert_allclose(ep["observation.goal"], np.tile(goal, (len(plan), 1)), rtol=1e-6)


def test_generate_counts_and_validity(env: MazeEnv) -> None:
    clean, corrupt = generate(env, 4, 60, seed=3, clean_method="builtin", max_samples=3000)
    assert len(clean) == 4 and len(corrupt) == 60
    for ep in clean + corrupt:
        s = ep["observation.state"].astype(np.float64)
        assert np.abs(np.diff(s, axis=0)).max() <= env.v_max * env.dt + 1e-5
        np.testing.assert_allclose(s[0], env.start, atol=1e-6)
        np.testing.assert_allclose(s[-1], ep["observation.goal"][0], atol=1e-6)
    again, _ = generate(env, 4, 0, seed=3, clean_method="builtin", max_samples=3000)
    for a, b in zip(clean, again, strict=True):
        np.testing.assert_array_equal(a["observation.state"], b["observation.state"])


# ---------------------------------------------------------------------------------- evaluation
def test_expert_policy_succeeds(env: MazeEnv, goals: np.ndarray) -> None:
    m = evaluate(env, ExpertPolicy(env, n_obs_steps=2, n_exec=8), goals)
    assert m.success_rate >= 0.9
    assert m.collision_rate == 0.0 and m.velocity_violation_rate == 0.0
    assert np.isfinite(m.mean_sq_accel) and m.mean_sq_accel < 5.0
    d = m.as_dict()
    assert all(type(v) is float for v in d.values()) and d["n"] == 20.0
    assert len(m.trajectories) == 20
    for t, g in zip(m.trajectories, goals, strict=True):
        np.testing.assert_allclose(t[0], env.start)
        assert np.linalg.norm(t[-1] - g) < 0.1


def test_policy_gets_batched_history_from_repeated_start(env: MazeEnv, goals: np.ndarray) -> None:
    pol = StraightPolicy(step=0.1, n_obs_steps=3)
    evaluate(env, pol, goals, max_steps=40)
    assert pol.first_obs is not None
    assert pol.batch_sizes[0] == len(goals)
    assert pol.first_obs["observation.state"].shape == (len(goals), 3, 2)
    np.testing.assert_allclose(
        pol.first_obs["observation.state"], np.broadcast_to(env.start, (len(goals), 3, 2))
    )
    np.testing.assert_allclose(pol.first_obs["observation.goal"][:, 2], goals)
    assert len(pol.batch_sizes) <= 40 // 8 + 1  # one call per chunk for the whole batch
    assert all(b1 >= b2 for b1, b2 in zip(pol.batch_sizes, pol.batch_sizes[1:], strict=False))


def test_straight_line_policy_collides_behind_obstacle(env: MazeEnv) -> None:
    cand = env.sample_goals(200, np.random.default_rng(0))
    n = len(cand)
    blocked = cand[env.segment_collides(np.repeat(env.start[None], n, 0), cand, 0.0)]
    assert len(blocked) > 0
    m = evaluate(env, StraightPolicy(step=0.1), blocked[:5])
    assert m.collision_rate == 1.0 and m.success_rate == 0.0
    assert m.velocity_violation_rate == 0.0
    assert np.isnan(m.mean_sq_accel) and np.isnan(m.path_length)


def test_velocity_violation_is_detected(env: MazeEnv) -> None:
    far = env.sample_goals(50, np.random.default_rng(2))
    far = far[np.linalg.norm(far - env.start, axis=1) > 1.0][:5]
    m = evaluate(env, StraightPolicy(step=0.5), far)
    assert m.velocity_violation_rate == 1.0 and m.success_rate == 0.0
    assert np.isnan(m.as_dict()["mean_sq_accel"])


def test_speed_tolerances_and_chunk_start_violations(env: MazeEnv) -> None:
    # Straight, collision-free paths that break the limit only at each chunk's first action,
    # by 15% (strict 1.05x and 1.10x fail, 1.20x passes).
    cand = env.sample_goals(300, np.random.default_rng(5))
    start = np.repeat(env.start[None], len(cand), 0)
    free = cand[~env.segment_collides(start, cand, 0.0)]
    far = free[np.abs(free - env.start).max(axis=1) > 1.5][:6]
    assert len(far) == 6
    m = evaluate(env, StraightPolicy(step=0.09, first_step=0.115), far)
    assert m.reach_rate == 1.0 and m.collision_rate == 0.0
    assert m.success_rate == 0.0 and m.success_rate_v110 == 0.0 and m.success_rate_v120 == 1.0
    assert m.violations_within_chunk == 0.0 and m.violations_chunk_start >= 2.0
    smooth = evaluate(env, StraightPolicy(step=0.09), far)
    assert smooth.success_rate == smooth.success_rate_v110 == 1.0
    assert smooth.violations_chunk_start == smooth.violations_within_chunk == 0.0
    jerky = evaluate(env, StraightPolicy(step=0.115, first_step=0.09), far)
    assert jerky.violations_within_chunk > jerky.violations_chunk_start == 0.0


def test_rollout_that_never_arrives_times_out(env: MazeEnv, goals: np.ndarray) -> None:
    class Stay:
        n_obs_steps = 2

        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            return np.repeat(obs["observation.state"][:, -1:], 8, axis=1)

    m = evaluate(env, Stay(), goals[:4], max_steps=30)
    assert m.success_rate == 0.0 and not m.reached.any()
    assert all(len(t) == 31 for t in m.trajectories)
    assert np.isnan(m.mean_steps)


# ---------------------------------------------------------------------------------- plots
def test_plots_write_pngs(env: MazeEnv, goals: np.ndarray, tmp_path: Path) -> None:
    m = evaluate(env, ExpertPolicy(env), goals[:5])
    out = tmp_path / "rollouts.png"
    plot_rollouts(env, m.trajectories, goals[:5], m.success, out)
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clean, corrupt = generate(env, 2, 3, seed=0, clean_method="builtin", max_samples=2000)
    ds = tmp_path / "dataset.png"
    plot_dataset(env, clean, corrupt, ds)
    assert ds.stat().st_size > 1000 and ds.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
