"""Bin sorting benchmark: demos, simulator rules, closed-loop evaluation, metrics and plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ambient_core.envs import bin_sorting as bs
from ambient_core.envs.bin_sorting import (
    BLUE,
    DEFAULT_CONFIG,
    LEFT,
    NO_BIN,
    RED,
    RIGHT,
    BinSortingConfig,
    BinSortingEnv,
    ScriptedPolicy,
)
from ambient_core.envs.bin_sorting_plots import plot_rollouts

CFG = DEFAULT_CONFIG


class HoldStill:
    """A do-nothing ChunkPolicy: stays where it is, optionally with the gripper closed."""

    n_obs_steps = 2

    def __init__(self, grip: float = 0.0) -> None:
        self.grip = grip

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs["observation.state"][:, -1]
        action = np.concatenate([state[:, :2], np.full((len(state), 1), self.grip)], axis=1)
        return np.repeat(action[:, None], 8, axis=1)


def _state(
    gripper: tuple[float, float],
    blocks: list[tuple[float, float, float]],
    grip: float = 0.0,
) -> np.ndarray:
    """One observation vector with free blocks given as (x, y, color)."""
    row = [gripper[0], gripper[1], grip]
    for x, y, c in blocks:
        row += [x, y, c, 0.0, 0.0]
    return np.asarray([row], dtype=np.float32)


def test_generate_is_deterministic_and_seed_dependent() -> None:
    clean_a, corrupt_a = bs.generate(3, 4, seed=7)
    clean_b, corrupt_b = bs.generate(3, 4, seed=7)
    for a, b in zip(clean_a + corrupt_a, clean_b + corrupt_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    clean_c, _ = bs.generate(3, 0, seed=8)
    assert not np.array_equal(clean_a[0]["action"], clean_c[0]["action"])
    # Growing one set leaves the other and the earlier episodes unchanged.
    clean_d, corrupt_d = bs.generate(5, 2, seed=7)
    np.testing.assert_array_equal(clean_d[2]["action"], clean_a[2]["action"])
    np.testing.assert_array_equal(
        corrupt_d[1]["observation.state"], corrupt_a[1]["observation.state"]
    )


def test_demo_shapes_dtypes_and_speed_limit() -> None:
    clean, corrupt = bs.generate(20, 20, seed=0)
    assert len(clean) == 20 and len(corrupt) == 20
    for ep in clean + corrupt:
        assert set(ep) == {"observation.state", "action"}
        obs, act = ep["observation.state"], ep["action"]
        assert obs.dtype == np.float32 and act.dtype == np.float32
        assert obs.ndim == 2 and obs.shape[1] == CFG.state_dim == 13
        assert act.shape == (len(obs), 3)
        assert 50 <= len(obs) <= 130
        step = np.abs(act[:, :2] - obs[:, :2])
        assert step.max() <= CFG.max_speed + 1e-6
        assert set(np.unique(act[:, 2])) == {0.0, 1.0}
        # Starts at home, open, with one red and one blue block, nothing held or placed.
        np.testing.assert_allclose(obs[0, :3], [*CFG.home, 0.0])
        blocks = obs[0, 3:].reshape(CFG.n_blocks, 5)
        assert sorted(blocks[:, 2]) == [BLUE, RED]
        assert not blocks[:, 3:].any()
        # Slots are in sorting order: nearest to home first.
        dist = np.linalg.norm(blocks[:, :2] - np.asarray(CFG.home), axis=1)
        assert dist[0] <= dist[1]
        # Smooth: the gripper starts and ends every motion at rest (no velocity jumps > limit).
        vel = np.diff(obs[:, :2], axis=0)
        assert np.abs(np.diff(vel, axis=0)).max() < 0.5 * CFG.max_speed


def test_replayed_demos_sort_by_their_logic() -> None:
    clean, corrupt = bs.generate(10, 10, seed=3)
    for episodes, flip in ((clean, False), (corrupt, True)):
        record = bs.replay(episodes)
        expected = bs.correct_bin(record.colors)
        if flip:
            expected = 1 - expected
        np.testing.assert_array_equal(record.bin_ids, expected)
        for ep, path, steps in zip(episodes, record.gripper, record.steps, strict=True):
            assert steps == len(ep["action"])
            np.testing.assert_allclose(path[:steps], ep["observation.state"][:, :2], atol=1e-5)
    assert bs.compute_metrics(bs.replay(clean).bin_ids, bs.replay(clean).colors).success == 1.0
    wrong = bs.compute_metrics(bs.replay(corrupt).bin_ids, bs.replay(corrupt).colors)
    assert wrong.motion == 1.0 and wrong.logic == 0.0


def test_scripted_demo_matches_generate() -> None:
    clean, corrupt = bs.generate(2, 2, seed=11)
    one = bs.scripted_demo(np.random.default_rng([11, 1, 1]), logic="opposite")
    np.testing.assert_array_equal(one["action"], corrupt[1]["action"])
    np.testing.assert_array_equal(one["observation.state"], corrupt[1]["observation.state"])
    with pytest.raises(ValueError):
        bs.scripted_demo(np.random.default_rng(0), logic="sideways")  # type: ignore[arg-type]


def test_env_grasp_carry_drop_and_place() -> None:
    env = BinSortingEnv()
    env.set_state(_state((0.0, 0.0), [(0.05, 0.0, RED), (0.5, 0.5, BLUE)]))
    # Open gripper near a block: nothing happens.
    env.step(np.array([[0.0, 0.0, 0.0]]))
    assert not env.held.any()
    # Closing within the radius grasps the nearest free block; it snaps to the gripper.
    obs = env.step(np.array([[0.0, 0.0, 1.0]]))
    assert env.held[0].tolist() == [True, False]
    np.testing.assert_allclose(env.block_xy[0, 0], [0.0, 0.0])
    assert obs[0, 2] == 1.0 and obs[0, 6] == 1.0 and obs[0, 7] == 0.0
    # Speed limit per axis; the held block follows.
    env.step(np.array([[0.5, -0.03, 1.0]]))
    np.testing.assert_allclose(env.gripper[0], [0.1, -0.03])
    np.testing.assert_allclose(env.block_xy[0, 0], [0.1, -0.03])
    # Release on the table: dropped there, free again, not placed.
    env.step(np.array([[0.1, -0.03, 0.0]]))
    assert not env.held.any() and env.bin_ids[0, 0] == NO_BIN
    # Closing far from any block grasps nothing.
    env.step(np.array([[0.3, -0.03, 1.0]]))
    env.step(np.array([[0.3, -0.03, 1.0]]))
    assert not env.held.any()
    # Closed gripper arriving at a dropped block picks it up, carries it into the left bin.
    for _ in range(3):
        env.step(np.array([[0.1, -0.03, 1.0]]))
    assert env.held[0, 0]
    left = CFG.bin_center(LEFT)
    for _ in range(30):
        env.step(np.array([[left[0], left[1], 1.0]]))
    obs = env.step(np.array([[left[0], left[1], 0.0]]))
    assert env.bin_ids[0].tolist() == [LEFT, NO_BIN]
    assert obs[0, 7] == 1.0 and not env.done[0]
    # A placed block cannot be grasped again.
    env.step(np.array([[left[0], left[1], 1.0]]))
    assert not env.held.any()
    # Non-finite actions hold still and open.
    before = env.gripper.copy()
    env.step(np.array([[np.nan, np.inf, np.nan]]))
    np.testing.assert_array_equal(env.gripper, before)
    assert env.grip[0] == 0.0


def test_env_targets_are_clipped_to_the_table_and_inactive_envs_freeze() -> None:
    env = BinSortingEnv()
    env.set_state(np.repeat(_state((0.95, 0.0), [(0.0, 0.0, RED), (0.5, 0.5, BLUE)]), 2, axis=0))
    env.step(np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 1.0]]), active=np.array([True, False]))
    np.testing.assert_allclose(env.gripper, [[1.0, 0.0], [0.95, 0.0]])
    assert env.grip.tolist() == [0.0, 0.0]


def test_set_state_rejects_invalid_states() -> None:
    env = BinSortingEnv()
    bad = _state((0.0, 0.0), [(0.0, 0.0, RED), (0.5, 0.5, BLUE)])
    bad[0, 7] = 1.0  # placed, but on the table
    with pytest.raises(ValueError):
        env.set_state(bad)
    with pytest.raises(ValueError):
        env.set_state(np.zeros((1, 7), dtype=np.float32))


def test_evaluate_scripted_correct_succeeds() -> None:
    metrics, rollouts = bs.evaluate(ScriptedPolicy("correct"), n_episodes=50, seed=0)
    assert metrics.success >= 0.95
    assert metrics.motion >= 0.95 and metrics.logic >= 0.95
    assert metrics.episode_success_rate >= 0.95 and metrics.n == 50
    assert rollouts.gripper.shape[0] == 50 and rollouts.gripper.shape[2] == 2
    assert rollouts.gripper.shape[1] == rollouts.steps.max() + 1
    assert rollouts.steps.max() < 200


def test_evaluate_scripted_opposite_moves_well_with_wrong_logic() -> None:
    metrics, _ = bs.evaluate(ScriptedPolicy("opposite"), n_episodes=50, seed=1)
    assert metrics.motion >= 0.95
    assert metrics.logic <= 0.05
    assert metrics.success <= 0.05


def test_evaluate_do_nothing_policy_places_nothing() -> None:
    for grip in (0.0, 1.0):
        metrics, rollouts = bs.evaluate(HoldStill(grip), n_episodes=10, seed=2, max_steps=40)
        assert metrics.motion == 0.0 and metrics.success == 0.0
        assert math.isnan(metrics.logic)
        assert rollouts.steps.tolist() == [40] * 10
        np.testing.assert_allclose(rollouts.block_end, rollouts.block_start)


def test_evaluate_feeds_history_and_checks_chunk_shape() -> None:
    seen: list[np.ndarray] = []

    class Recorder(ScriptedPolicy):
        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            seen.append(obs["observation.state"].copy())
            return super().__call__(obs)

    bs.evaluate(Recorder("correct", n_obs_steps=3, n_exec=4), n_episodes=4, seed=5, max_steps=8)
    assert len(seen) == 2 and seen[0].shape == (4, 3, CFG.state_dim)
    np.testing.assert_array_equal(seen[0][:, 0], seen[0][:, 2])  # first frame repeated
    # The second call sees frames 2, 3, 4 (after four actions): all distinct, none the first.
    xy = np.concatenate([seen[0][:, :1, :2], seen[1][:, :, :2]], axis=1)
    assert (np.abs(np.diff(xy, axis=1)).max(axis=2) > 0).all()

    class Broken(HoldStill):
        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            return super().__call__(obs)[:, :, :2]

    with pytest.raises(ValueError):
        bs.evaluate(Broken(), n_episodes=2, seed=0)


def test_metric_formulas_on_hand_built_final_state() -> None:
    colors = np.array([[RED, BLUE], [RED, BLUE], [BLUE, RED], [RED, BLUE]])
    bin_ids = np.array([[LEFT, RIGHT], [RIGHT, NO_BIN], [NO_BIN, NO_BIN], [LEFT, LEFT]])
    m = bs.compute_metrics(bin_ids, colors)
    # 8 blocks; in a bin: 2 + 1 + 0 + 2 = 5; correct: 2 + 0 + 0 + 1 = 3; episode 0 only.
    assert m.motion == pytest.approx(5 / 8)
    assert m.logic == pytest.approx(3 / 5)
    assert m.success == pytest.approx(3 / 8)
    assert m.success == pytest.approx(m.motion * m.logic)
    assert m.episode_success_rate == pytest.approx(1 / 4)
    assert m.as_dict() == {
        "motion": 5 / 8,
        "logic": 3 / 5,
        "success": 3 / 8,
        "episode_success_rate": 0.25,
        "n": 4.0,
    }
    assert all(type(v) is float for v in m.as_dict().values())
    empty = bs.compute_metrics(np.full((2, 2), NO_BIN), colors[:2])
    assert empty.motion == 0.0 and empty.success == 0.0 and math.isnan(empty.logic)


def test_more_blocks_still_sortable() -> None:
    config = BinSortingConfig(n_blocks=3, min_separation=0.25)
    clean, corrupt = bs.generate(3, 3, seed=0, config=config)
    assert clean[0]["observation.state"].shape[1] == 3 + 5 * 3
    policy = ScriptedPolicy("correct", config=config)
    metrics, _ = bs.evaluate(policy, n_episodes=10, seed=0, max_steps=300, config=config)
    assert metrics.success == 1.0


def test_plot_rollouts_writes_png(tmp_path: Path) -> None:
    _, rollouts = bs.evaluate(ScriptedPolicy("opposite"), n_episodes=6, seed=0)
    out = plot_rollouts(rollouts, tmp_path / "sub" / "rollouts.png", title="opposite")
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clean, _ = bs.generate(2, 0, seed=0)
    demo_png = plot_rollouts(bs.replay(clean), tmp_path / "demos.png")
    assert demo_png.stat().st_size > 1000
