"""Bin sorting: the locality benchmark (a red and a blue block, a left and a right bin).

Clean demos sort red -> left bin and blue -> right bin; corrupt demos sort the opposite way with
equally good motions. The motion (reach, grasp, carry, release) is shared by both, only the
task-level decision differs, so a policy that uses corrupt data only at low diffusion noise
(sigma <= sigma_max, where a chunk's global intent is already fixed) should learn the motion from
all data and the logic from the clean data alone.

The world is a 2-D kinematic abstraction kept small so a 1-D conv U-Net learns it on CPU:

- table ``[-1, 1]^2``; two axis-aligned bins at the bottom (left and right);
- gripper at ``(x, y)`` with a grip command in {0 open, 1 closed}; action = absolute target
  ``(x, y, grip)``; the gripper moves towards the target with a per-axis speed limit per step;
- a closed gripper that holds nothing grasps the nearest free block within ``grasp_radius``
  (also when it closed a little early and then arrives: a small learned policy's grip timing is
  imprecise); the block snaps to and follows the gripper; opening releases it: inside a bin it is
  placed there for good, elsewhere it drops on the table and can be grasped again.

Observation ``observation.state`` (float32, ``3 + 5 * n_blocks``)::

    [gripper x, gripper y, grip,
     block_0 x, y, color (+1 red / -1 blue), held (0/1), placed (0/1),
     block_1 ...]

Blocks are listed in the order the expert sorts them: nearest to the gripper's home first. So the
policy needs no goal key: it handles the first unplaced slot, and the slot's color decides the
bin, which is exactly the logic that clean and corrupt data disagree on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ambient_core.envs.base import ChunkPolicy, Episode

Logic = Literal["correct", "opposite"]
"""``correct``: red -> left, blue -> right (clean data); ``opposite``: the reverse (corrupt)."""

RED = 1.0
BLUE = -1.0
NO_BIN = -1
LEFT = 0
RIGHT = 1
STATE_KEY = "observation.state"
ACTION_KEY = "action"
GRIPPER_DIM = 3
BLOCK_DIM = 5
ACTION_DIM = 3

# Seed streams: clean demos, corrupt demos and evaluation never share initial states.
_CLEAN_STREAM = 0
_CORRUPT_STREAM = 1
_EVAL_STREAM = 2
_MIN_JERK_PEAK = 1.875  # peak of d/dtau of 10 tau^3 - 15 tau^4 + 6 tau^5
_SPEED_HEADROOM = 0.95  # the expert stays a bit under the limit so float error never trips it


@dataclass(frozen=True)
class BinSortingConfig:
    """Geometry and timing of the task. Rectangles are ``(x_min, y_min, x_max, y_max)``."""

    n_blocks: int = 2
    table_low: tuple[float, float] = (-1.0, -1.0)
    table_high: tuple[float, float] = (1.0, 1.0)
    left_bin: tuple[float, float, float, float] = (-0.95, -0.95, -0.45, -0.55)
    right_bin: tuple[float, float, float, float] = (0.45, -0.95, 0.95, -0.55)
    spawn_area: tuple[float, float, float, float] = (-0.45, -0.25, 0.45, 0.55)
    min_separation: float = 0.3
    home: tuple[float, float] = (0.0, 0.8)
    max_speed: float = 0.1
    grasp_radius: float = 0.08
    grasp_dwell: int = 3
    release_dwell: int = 2
    speed_range: tuple[float, float] = (0.75, 1.0)
    drop_margin: float = 0.08

    def __post_init__(self) -> None:
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {self.n_blocks}")
        if self.max_speed <= 0 or self.grasp_radius <= 0:
            raise ValueError("max_speed and grasp_radius must be positive")
        if self.grasp_dwell < 1 or self.release_dwell < 1:
            raise ValueError("grasp_dwell and release_dwell must be >= 1")
        lo, hi = self.speed_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"speed_range must satisfy 0 < lo <= hi <= 1, got {self.speed_range}")
        for name in ("left_bin", "right_bin"):
            x0, y0, x1, y1 = getattr(self, name)
            if x1 - x0 <= 2 * self.drop_margin or y1 - y0 <= 2 * self.drop_margin:
                raise ValueError(f"{name} is smaller than twice drop_margin")

    @property
    def state_dim(self) -> int:
        """Width of ``observation.state``."""
        return GRIPPER_DIM + BLOCK_DIM * self.n_blocks

    def bin_rect(self, bin_id: int) -> tuple[float, float, float, float]:
        """Rectangle of bin ``LEFT`` or ``RIGHT``."""
        return self.left_bin if bin_id == LEFT else self.right_bin

    def bin_center(self, bin_id: int) -> np.ndarray:
        """Centre of a bin, where the closed-loop expert releases."""
        x0, y0, x1, y1 = self.bin_rect(bin_id)
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


DEFAULT_CONFIG = BinSortingConfig()


def correct_bin(colors: np.ndarray) -> np.ndarray:
    """The bin each block belongs in under the clean logic: red -> LEFT, blue -> RIGHT."""
    return np.where(np.asarray(colors) > 0, LEFT, RIGHT)


def target_bin(color: float, logic: Logic) -> int:
    """The bin a demonstrator following ``logic`` puts a block of ``color`` in."""
    if logic not in ("correct", "opposite"):
        raise ValueError(f"logic must be 'correct' or 'opposite', got {logic!r}")
    red_bin = LEFT if logic == "correct" else RIGHT
    return red_bin if color > 0 else 1 - red_bin


def bin_index(xy: np.ndarray, config: BinSortingConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Which bin each point ``(..., 2)`` lies in: LEFT, RIGHT or NO_BIN."""
    xy = np.asarray(xy)
    out = np.full(xy.shape[:-1], NO_BIN, dtype=np.int64)
    for bin_id in (LEFT, RIGHT):
        x0, y0, x1, y1 = config.bin_rect(bin_id)
        inside = (xy[..., 0] >= x0) & (xy[..., 0] <= x1) & (xy[..., 1] >= y0) & (xy[..., 1] <= y1)
        out[inside] = bin_id
    return out


def sample_initial_state(
    rng: np.random.Generator, config: BinSortingConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """A fresh scene as an ``observation.state`` vector: gripper home, open, blocks on the table.

    Positions are uniform in the spawn area with a minimum separation (rejection sampling); half
    the blocks are red, half blue (a fair coin for the odd one), in random slots; slots are then
    ordered by distance from home, the expert's sorting order.
    """
    x0, y0, x1, y1 = config.spawn_area
    low, high = np.array([x0, y0]), np.array([x1, y1])
    positions: list[np.ndarray] = []
    for _ in range(10_000):
        candidate = rng.uniform(low, high)
        if all(np.linalg.norm(candidate - p) >= config.min_separation for p in positions):
            positions.append(candidate)
            if len(positions) == config.n_blocks:
                break
    else:
        raise RuntimeError("could not place the blocks: spawn_area too small for min_separation")
    xy = np.stack(positions)
    n_red = config.n_blocks // 2 + int(config.n_blocks % 2 == 1 and rng.random() < 0.5)
    colors = np.where(np.arange(config.n_blocks) < n_red, RED, BLUE)
    colors = colors[rng.permutation(config.n_blocks)]
    order = np.argsort(np.linalg.norm(xy - np.asarray(config.home), axis=1), kind="stable")
    return _pack_state(
        np.asarray(config.home, dtype=np.float64)[None],
        np.zeros(1),
        xy[order][None],
        colors[order][None],
        np.zeros((1, config.n_blocks), dtype=bool),
        np.zeros((1, config.n_blocks), dtype=bool),
    )[0]


def _pack_state(
    gripper: np.ndarray,
    grip: np.ndarray,
    block_xy: np.ndarray,
    colors: np.ndarray,
    held: np.ndarray,
    placed: np.ndarray,
) -> np.ndarray:
    """Batch of world states -> ``(B, state_dim)`` float32 observation vectors."""
    blocks = np.concatenate(
        [block_xy, colors[..., None], held[..., None], placed[..., None]], axis=-1
    )
    flat = blocks.reshape(blocks.shape[0], -1)
    return np.concatenate([gripper, grip[:, None], flat], axis=1).astype(np.float32)


def _unpack_state(
    states: np.ndarray, n_blocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(B, state_dim)`` -> gripper, grip, block xy, colors, held, placed (float64 / bool)."""
    states = np.asarray(states, dtype=np.float64)
    expected = GRIPPER_DIM + BLOCK_DIM * n_blocks
    if states.ndim != 2 or states.shape[1] != expected:
        raise ValueError(f"states must have shape (B, {expected}), got {states.shape}")
    blocks = states[:, GRIPPER_DIM:].reshape(len(states), n_blocks, BLOCK_DIM)
    return (
        states[:, :2].copy(),
        (states[:, 2] >= 0.5).astype(np.float64),
        blocks[..., :2].copy(),
        np.where(blocks[..., 2] > 0, RED, BLUE),
        blocks[..., 3] >= 0.5,
        blocks[..., 4] >= 0.5,
    )


class BinSortingEnv:
    """Batched kinematic simulator: ``B`` independent tables stepped together in numpy."""

    def __init__(self, config: BinSortingConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        k = config.n_blocks
        self.gripper = np.zeros((0, 2))
        self.grip = np.zeros(0)
        self.block_xy = np.zeros((0, k, 2))
        self.colors = np.zeros((0, k))
        self.held = np.zeros((0, k), dtype=bool)
        self.bin_ids = np.zeros((0, k), dtype=np.int64)

    @property
    def n_envs(self) -> int:
        """Batch size of the current scenes."""
        return len(self.gripper)

    @property
    def done(self) -> np.ndarray:
        """``(B,)`` bool: every block is in a bin (nothing can change any more)."""
        return np.asarray((self.bin_ids >= 0).all(axis=1))

    def reset(self, n_envs: int, seed: int) -> np.ndarray:
        """Sample ``n_envs`` evaluation scenes (a seed stream separate from the demos')."""
        states = np.stack(
            [
                sample_initial_state(np.random.default_rng([seed, _EVAL_STREAM, i]), self.config)
                for i in range(n_envs)
            ]
        )
        return self.set_state(states)

    def set_state(self, states: np.ndarray) -> np.ndarray:
        """Load scenes from observation vectors ``(B, state_dim)``, e.g. a demo's first frame.

        Placed blocks are put back in the bin their position lies in; a block flagged placed
        outside every bin is an invalid state.
        """
        gripper, grip, block_xy, colors, held, placed = _unpack_state(states, self.config.n_blocks)
        if (held.sum(axis=1) > 1).any():
            raise ValueError("a gripper can hold at most one block")
        bins = bin_index(block_xy, self.config)
        if (placed & (bins < 0)).any():
            raise ValueError("a block flagged placed lies outside both bins")
        self.gripper, self.grip, self.block_xy, self.colors = gripper, grip, block_xy, colors
        self.held = held & ~placed
        self.bin_ids = np.where(placed, bins, NO_BIN)
        return self.observe()

    def observe(self) -> np.ndarray:
        """Current ``observation.state`` rows, ``(B, state_dim)`` float32."""
        return _pack_state(
            self.gripper, self.grip, self.block_xy, self.colors, self.held, self.bin_ids >= 0
        )

    def step(self, action: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Apply one action ``(B, 3)``; envs with ``active == False`` stay frozen.

        Order within a step: move (target clipped to the table, per-axis speed clipped), carry
        the held block along, then release (grip < 0.5) or grasp (grip >= 0.5) at the new
        position. Non-finite targets mean "stay"; a non-finite grip means open, so a diverged
        policy fails its episode instead of crashing the evaluation.
        """
        cfg = self.config
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.n_envs, ACTION_DIM):
            raise ValueError(f"action must have shape ({self.n_envs}, 3), got {action.shape}")
        target = action[:, :2]
        target = np.where(np.isfinite(target), target, self.gripper)
        target = np.clip(target, cfg.table_low, cfg.table_high)
        delta = np.clip(target - self.gripper, -cfg.max_speed, cfg.max_speed)
        close = action[:, 2] >= 0.5
        if active is not None:
            active = np.asarray(active, dtype=bool)
            delta[~active] = 0.0
            close = np.where(active, close, self.grip >= 0.5)
        self.gripper = self.gripper + delta
        self.block_xy = np.where(self.held[..., None], self.gripper[:, None], self.block_xy)

        holding = self.held.any(axis=1)
        releasing = self.held & ~close[:, None]
        self.bin_ids = np.where(releasing, bin_index(self.block_xy, cfg), self.bin_ids)
        self.held = self.held & ~releasing

        dist = np.linalg.norm(self.block_xy - self.gripper[:, None], axis=-1)
        dist = np.where(~self.held & (self.bin_ids < 0), dist, np.inf)
        nearest = np.argmin(dist, axis=1)
        rows = np.arange(self.n_envs)
        grasp = close & ~holding & (dist[rows, nearest] <= cfg.grasp_radius)
        self.held[rows[grasp], nearest[grasp]] = True
        self.block_xy[rows[grasp], nearest[grasp]] = self.gripper[grasp]
        self.grip = close.astype(np.float64)
        return self.observe()


def _min_jerk(start: np.ndarray, end: np.ndarray, peak_speed: float) -> np.ndarray:
    """Waypoints after ``start`` up to and including ``end`` on a min-jerk profile.

    The duration is the fewest steps whose peak per-axis speed stays within ``peak_speed``, so
    motions accelerate and decelerate smoothly and respect the speed limit by construction.
    """
    delta = end - start
    span = float(np.abs(delta).max())
    if span < 1e-9:
        return np.zeros((0, 2))
    n = max(1, math.ceil(_MIN_JERK_PEAK * span / peak_speed))
    tau = np.arange(1, n + 1) / n
    s = tau**3 * (10 - 15 * tau + 6 * tau**2)
    return start + s[:, None] * delta


def plan_actions(
    state: np.ndarray,
    logic: Logic,
    config: BinSortingConfig = DEFAULT_CONFIG,
    speed: float = 1.0,
    drop_points: np.ndarray | None = None,
) -> np.ndarray:
    """The expert's remaining actions ``(n, 3)`` from one observation vector to a sorted table.

    Finishes the held block first, then the unplaced blocks in slot order: min-jerk reach with the
    gripper open, ``grasp_dwell`` closed frames on the block, min-jerk carry to the block's drop
    point, ``release_dwell`` open frames. ``speed`` scales the peak speed (<= 1); ``drop_points``
    ``(n_blocks, 2)`` default to the centres of the bins ``logic`` assigns.
    """
    gripper, _, block_xy, colors, held, placed = _unpack_state(state[None], config.n_blocks)
    pos, block_xy, colors, held, placed = gripper[0], block_xy[0], colors[0], held[0], placed[0]
    if drop_points is None:
        drop_points = np.stack([config.bin_center(target_bin(c, logic)) for c in colors])
    peak = _SPEED_HEADROOM * speed * config.max_speed
    pieces: list[np.ndarray] = []

    def move(to: np.ndarray, grip: float) -> None:
        nonlocal pos
        waypoints = _min_jerk(pos, to, peak)
        if len(waypoints):
            pieces.append(np.column_stack([waypoints, np.full(len(waypoints), grip)]))
            pos = waypoints[-1]

    def dwell(n: int, grip: float) -> None:
        pieces.append(np.tile([pos[0], pos[1], grip], (n, 1)))

    for k in np.flatnonzero(held & ~placed)[:1]:
        move(drop_points[k], 1.0)
        dwell(config.release_dwell, 0.0)
    for k in range(config.n_blocks):
        if held[k] or placed[k]:
            continue
        move(block_xy[k], 0.0)
        dwell(config.grasp_dwell, 1.0)
        move(drop_points[k], 1.0)
        dwell(config.release_dwell, 0.0)
    if not pieces:
        dwell(1, 0.0)
    return np.concatenate(pieces)


def _random_drop_points(
    rng: np.random.Generator, colors: np.ndarray, logic: Logic, config: BinSortingConfig
) -> np.ndarray:
    """Per-block release points, uniform inside the assigned bin away from its edges."""
    points = []
    for c in colors:
        x0, y0, x1, y1 = config.bin_rect(target_bin(float(c), logic))
        m = config.drop_margin
        points.append(rng.uniform([x0 + m, y0 + m], [x1 - m, y1 - m]))
    return np.stack(points)


def _plan_demo(
    rng: np.random.Generator, logic: Logic, config: BinSortingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a scene and the expert's open-loop plan for it (float32, as stored)."""
    state = sample_initial_state(rng, config)
    colors = np.where(state[GRIPPER_DIM + 2 :: BLOCK_DIM] > 0, RED, BLUE)
    speed = float(rng.uniform(*config.speed_range))
    drops = _random_drop_points(rng, colors, logic, config)
    actions = plan_actions(state, logic, config, speed=speed, drop_points=drops)
    return state, actions.astype(np.float32)


@dataclass
class BinSortingRollouts:
    """What happened in a batch of episodes, for plots and checks.

    ``gripper`` ``(N, T + 1, 2)`` and ``grip`` ``(N, T + 1)`` hold the path including the initial
    frame (frozen once an episode is done); ``steps`` ``(N,)`` counts the actions each episode
    took; ``bin_ids`` ``(N, n_blocks)`` is LEFT, RIGHT or NO_BIN at the end.
    """

    gripper: np.ndarray
    grip: np.ndarray
    block_start: np.ndarray
    block_end: np.ndarray
    colors: np.ndarray
    bin_ids: np.ndarray
    steps: np.ndarray


def _run_open_loop(
    initial_states: np.ndarray, action_seqs: list[np.ndarray], config: BinSortingConfig
) -> tuple[list[np.ndarray], BinSortingRollouts]:
    """Replay action sequences of different lengths in one batch; frame-t observations + record."""
    env = BinSortingEnv(config)
    env.set_state(initial_states)
    block_start = env.block_xy.copy()
    lengths = np.array([len(a) for a in action_seqs])
    horizon = int(lengths.max(initial=0))
    padded = np.zeros((len(action_seqs), horizon, ACTION_DIM))
    for i, a in enumerate(action_seqs):
        padded[i, : len(a)] = a
    observations = np.zeros((len(action_seqs), horizon, config.state_dim), dtype=np.float32)
    gripper = [env.gripper.copy()]
    grip = [env.grip.copy()]
    for t in range(horizon):
        observations[:, t] = env.observe()
        env.step(padded[:, t], active=t < lengths)
        gripper.append(env.gripper.copy())
        grip.append(env.grip.copy())
    record = BinSortingRollouts(
        gripper=np.stack(gripper, axis=1),
        grip=np.stack(grip, axis=1),
        block_start=block_start,
        block_end=env.block_xy.copy(),
        colors=env.colors.copy(),
        bin_ids=env.bin_ids.copy(),
        steps=lengths,
    )
    return [observations[i, :n].copy() for i, n in enumerate(lengths)], record


def _demos(
    rngs: list[np.random.Generator], logic: Logic, config: BinSortingConfig
) -> list[Episode]:
    """Plan and simulate one demo per generator; fail loudly if the expert ever mis-sorts."""
    if not rngs:
        return []
    plans = [_plan_demo(rng, logic, config) for rng in rngs]
    states = np.stack([s for s, _ in plans])
    actions = [a for _, a in plans]
    observations, record = _run_open_loop(states, actions, config)
    expected = correct_bin(record.colors)
    if logic == "opposite":
        expected = 1 - expected
    if not (record.bin_ids == expected).all():
        raise RuntimeError("scripted expert failed to sort a demo; the config is inconsistent")
    return [
        {STATE_KEY: obs, ACTION_KEY: act} for obs, act in zip(observations, actions, strict=True)
    ]


def scripted_demo(
    rng: np.random.Generator, logic: Logic = "correct", config: BinSortingConfig = DEFAULT_CONFIG
) -> Episode:
    """One expert episode: ``observation.state`` ``(L, state_dim)`` and ``action`` ``(L, 3)``."""
    return _demos([rng], logic, config)[0]


def generate(
    n_clean: int, n_corrupt: int, seed: int, config: BinSortingConfig = DEFAULT_CONFIG
) -> tuple[list[Episode], list[Episode]]:
    """Clean (correct logic) and corrupt (opposite logic) demos, deterministic in ``seed``.

    Episode i of each set depends only on ``(seed, set, i)``, so growing one set never changes
    the other or the earlier episodes.
    """
    clean = [np.random.default_rng([seed, _CLEAN_STREAM, i]) for i in range(n_clean)]
    corrupt = [np.random.default_rng([seed, _CORRUPT_STREAM, i]) for i in range(n_corrupt)]
    return _demos(clean, "correct", config), _demos(corrupt, "opposite", config)


def replay(
    episodes: list[Episode], config: BinSortingConfig = DEFAULT_CONFIG
) -> BinSortingRollouts:
    """Re-execute recorded actions from each episode's first observation (checks and plots)."""
    if not episodes:
        raise ValueError("replay needs at least one episode")
    states = np.stack([ep[STATE_KEY][0] for ep in episodes])
    _, record = _run_open_loop(states, [ep[ACTION_KEY] for ep in episodes], config)
    return record


@dataclass(frozen=True)
class BinSortingMetrics:
    """Block-level rates over a batch: ``success == motion * logic`` when ``logic`` is defined."""

    motion: float
    logic: float
    success: float
    episode_success_rate: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """Plain floats, ready for a tracker."""
        return {k: float(getattr(self, k)) for k in METRIC_NAMES}


METRIC_NAMES: tuple[str, ...] = ("motion", "logic", "success", "episode_success_rate", "n")
"""Scalars of ``BinSortingMetrics.as_dict`` (sweeps read them from the registry)."""


def compute_metrics(bin_ids: np.ndarray, colors: np.ndarray) -> BinSortingMetrics:
    """Metrics from final bins ``(N, n_blocks)`` and colors; correct means the clean logic.

    motion = blocks in any bin / blocks; logic = blocks in the correct bin / blocks in any bin
    (nan when no block reached a bin); success = blocks in the correct bin / blocks.
    """
    bin_ids = np.asarray(bin_ids)
    colors = np.asarray(colors)
    if bin_ids.shape != colors.shape or bin_ids.ndim != 2 or bin_ids.size == 0:
        raise ValueError(f"need matching non-empty (N, K) arrays, got {bin_ids.shape}")
    in_any = bin_ids >= 0
    right = bin_ids == correct_bin(colors)
    n_any = int(in_any.sum())
    return BinSortingMetrics(
        motion=n_any / bin_ids.size,
        logic=float(right.sum()) / n_any if n_any else math.nan,
        success=float(right.sum()) / bin_ids.size,
        episode_success_rate=float(right.all(axis=1).mean()),
        n=len(bin_ids),
    )


def evaluate(
    policy: ChunkPolicy,
    n_episodes: int,
    seed: int,
    max_steps: int = 200,
    config: BinSortingConfig = DEFAULT_CONFIG,
) -> tuple[BinSortingMetrics, BinSortingRollouts]:
    """Roll a chunk policy out on ``n_episodes`` scenes at once; one policy call per chunk.

    The observation history starts as ``n_obs_steps`` copies of the first frame. Episodes that
    finish (every block in a bin) are frozen; the loop ends when all are done or after
    ``max_steps`` actions. Expert demos take about 70-110 steps, so 200 leaves a slow policy room.
    """
    if n_episodes < 1:
        raise ValueError("n_episodes must be >= 1")
    n_obs = int(policy.n_obs_steps)
    env = BinSortingEnv(config)
    history = [env.reset(n_episodes, seed)] * n_obs
    block_start = env.block_xy.copy()
    gripper = [env.gripper.copy()]
    grip = [env.grip.copy()]
    steps = np.zeros(n_episodes, dtype=np.int64)
    t = 0
    while t < max_steps and not env.done.all():
        chunk = np.asarray(policy({STATE_KEY: np.stack(history[-n_obs:], axis=1)}))
        if chunk.ndim != 3 or chunk.shape[0] != n_episodes or chunk.shape[2] != ACTION_DIM:
            raise ValueError(f"policy must return (B, n_exec, 3), got {chunk.shape}")
        if chunk.shape[1] == 0:
            raise ValueError("policy returned an empty action chunk")
        for i in range(chunk.shape[1]):
            if t >= max_steps or env.done.all():
                break
            active = ~env.done
            history = [*history, env.step(chunk[:, i], active=active)][-n_obs:]
            steps += active
            gripper.append(env.gripper.copy())
            grip.append(env.grip.copy())
            t += 1
    rollouts = BinSortingRollouts(
        gripper=np.stack(gripper, axis=1),
        grip=np.stack(grip, axis=1),
        block_start=block_start,
        block_end=env.block_xy.copy(),
        colors=env.colors.copy(),
        bin_ids=env.bin_ids.copy(),
        steps=steps,
    )
    return compute_metrics(env.bin_ids, env.colors), rollouts


class ScriptedPolicy:
    """The expert as a closed-loop ChunkPolicy: re-plans from the latest observation each call.

    Used to validate ``evaluate`` (correct -> success ~1; opposite -> motion ~1, logic ~0) and as
    an upper bound next to trained policies. It releases at bin centres at full speed.
    """

    def __init__(
        self,
        logic: Logic = "correct",
        n_obs_steps: int = 2,
        n_exec: int = 8,
        config: BinSortingConfig = DEFAULT_CONFIG,
    ) -> None:
        if logic not in ("correct", "opposite"):
            raise ValueError(f"logic must be 'correct' or 'opposite', got {logic!r}")
        if n_obs_steps < 1 or n_exec < 1:
            raise ValueError("n_obs_steps and n_exec must be >= 1")
        self.logic: Logic = logic
        self.n_obs_steps = n_obs_steps
        self.n_exec = n_exec
        self.config = config

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``obs['observation.state']`` ``(B, n_obs_steps, D)`` -> actions ``(B, n_exec, 3)``."""
        states = np.asarray(obs[STATE_KEY])
        if states.ndim != 3 or states.shape[2] != self.config.state_dim:
            raise ValueError(f"expected (B, T, {self.config.state_dim}), got {states.shape}")
        out = np.zeros((len(states), self.n_exec, ACTION_DIM), dtype=np.float32)
        for b, state in enumerate(states[:, -1]):
            plan = plan_actions(state, self.logic, self.config)
            n = min(len(plan), self.n_exec)
            out[b, :n] = plan[:n]
            out[b, n:] = plan[n - 1]
        return out
