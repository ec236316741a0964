"""Bin sorting seen through a small top-down camera: the pixel variant of the locality benchmark.

The simulator, the expert and the metrics are those of ``bin_sorting``; this module only adds a
numpy renderer and the glue that lets a policy see images. A frame is an (H, W, 3) uint8 RGB
image of the table (light grey), both bins (identical dark grey, so the image never says which bin
is "right"), the red and blue blocks (squares; a held block is drawn last) and the gripper (a thin
ring when open, a thick ring when closed; the ring's hole keeps a held block's colour visible).
The row axis points down the table's y axis, as a camera above the table would see it.

A pixel episode carries LeRobot's keys: ``observation.images.top`` (the video),
``observation.state`` (proprioception only: gripper x, y, grip), ``observation.environment_state``
(the full low-dim state, for low-dim baselines and classifiers) and ``action``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ambient_core.envs import bin_sorting as bs
from ambient_core.envs.base import ChunkPolicy, Episode

IMAGE_KEY = "observation.images.top"
PROPRIO_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = bs.ACTION_KEY
DEFAULT_SIZE = 96

BACKGROUND = np.array([225.0, 225.0, 225.0])
BIN_COLOR = np.array([150.0, 150.0, 150.0])
TABLE_EDGE = np.array([90.0, 90.0, 90.0])
RED_RGB = np.array([215.0, 35.0, 35.0])
BLUE_RGB = np.array([35.0, 70.0, 215.0])
GRIPPER_RGB = np.array([20.0, 20.0, 20.0])
BLOCK_HALF = 0.07
RING_OPEN = (0.075, 0.095)  # inner, outer radius of the open gripper's ring
RING_CLOSED = (0.035, 0.075)


def _pixel_centres(
    size: int, ss: int, config: bs.BinSortingConfig
) -> tuple[np.ndarray, np.ndarray]:
    n = size * ss
    (x0, y0), (x1, y1) = config.table_low, config.table_high
    xs = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
    ys = y1 - (np.arange(n) + 0.5) * (y1 - y0) / n  # row 0 is the far (top) edge
    return xs, ys


def _background(size: int, ss: int, config: bs.BinSortingConfig) -> np.ndarray:
    """Table and bins, (size * ss, size * ss, 3) float."""
    xs, ys = _pixel_centres(size, ss, config)
    img = np.broadcast_to(BACKGROUND, (len(ys), len(xs), 3)).copy()
    for bin_id in (bs.LEFT, bs.RIGHT):
        bx0, by0, bx1, by1 = config.bin_rect(bin_id)
        inside = ((ys >= by0) & (ys <= by1))[:, None] & ((xs >= bx0) & (xs <= bx1))[None, :]
        img[inside] = BIN_COLOR
    edge = np.zeros((len(ys), len(xs)), dtype=bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    img[edge] = TABLE_EDGE
    return img


def _span(centre: float, radius: float, coords: np.ndarray, ss: int) -> slice:
    """Supersampled pixel range covering ``centre +- radius``, aligned to whole output pixels."""
    step = coords[1] - coords[0]
    a = (centre - radius - coords[0]) / step
    b = (centre + radius - coords[0]) / step
    lo, hi = sorted((a, b))
    lo_px = max(0, int(np.floor(lo)) // ss * ss)
    hi_px = min(len(coords), (int(np.ceil(hi)) // ss + 1) * ss)
    return slice(lo_px, max(lo_px, hi_px))


def _paint(patch: np.ndarray, xs: np.ndarray, ys: np.ndarray, shape: tuple[Any, ...]) -> None:
    """Paint one shape ("square", cx, cy, rgb) or ("ring", cx, cy, (r_in, r_out))."""
    kind, cx, cy, extra = shape
    if kind == "square":
        my = np.abs(ys - cy) <= BLOCK_HALF
        mx = np.abs(xs - cx) <= BLOCK_HALF
        patch[my[:, None] & mx[None, :]] = extra
    else:
        r_in, r_out = extra
        d2 = (ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2
        patch[(d2 >= r_in**2) & (d2 <= r_out**2)] = GRIPPER_RGB


def _shapes(state: np.ndarray, n_blocks: int) -> list[tuple[Any, ...]]:
    """Draw list of one state: blocks (held ones last), then the gripper."""
    blocks = state[bs.GRIPPER_DIM :].reshape(n_blocks, bs.BLOCK_DIM)
    shapes: list[tuple[Any, ...]] = []
    for k in np.argsort(blocks[:, 3] >= 0.5, kind="stable"):
        rgb = RED_RGB if blocks[k, 2] > 0 else BLUE_RGB
        shapes.append(("square", blocks[k, 0], blocks[k, 1], rgb))
    ring = RING_CLOSED if state[2] >= 0.5 else RING_OPEN
    shapes.append(("ring", state[0], state[1], ring))
    return shapes


def _render_frame(
    out: np.ndarray,
    background: np.ndarray,
    state: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray],
    ss: int,
    n_blocks: int,
) -> None:
    """Redraw only the output pixels each shape touches (every shape clipped to each box, in
    draw order, so overlaps come out right); ``out`` already holds the empty table."""
    xs, ys = grid
    shapes = _shapes(state, n_blocks)
    for _, cx, cy, extra in shapes:
        radius = BLOCK_HALF * 1.5 if isinstance(extra, np.ndarray) else extra[1]
        rows, cols = _span(cy, radius, ys, ss), _span(cx, radius, xs, ss)
        patch = background[rows, cols].copy()
        if patch.size == 0:
            continue
        for shape in shapes:
            _paint(patch, xs[cols], ys[rows], shape)
        h, w = patch.shape[0] // ss, patch.shape[1] // ss
        lo = patch.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        out[rows.start // ss : rows.start // ss + h, cols.start // ss : cols.start // ss + w] = (
            np.rint(lo)
        )


def render(
    states: np.ndarray,
    size: int = DEFAULT_SIZE,
    config: bs.BinSortingConfig = bs.DEFAULT_CONFIG,
    supersample: int = 2,
) -> np.ndarray:
    """``observation.state`` rows (N, state_dim) -> top-down RGB frames (N, size, size, 3) uint8.

    Each pixel averages ``supersample``^2 samples, so edges are smooth (videos compress them
    better and small motions change pixel values gradually).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != config.state_dim:
        raise ValueError(f"states must have shape (N, {config.state_dim}), got {states.shape}")
    if size < 8 or supersample < 1:
        raise ValueError(f"need size >= 8 and supersample >= 1, got {size}, {supersample}")
    grid = _pixel_centres(size, supersample, config)
    background = _background(size, supersample, config)
    empty = background.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    out = np.empty((len(states), size, size, 3), dtype=np.uint8)
    out[:] = np.clip(np.rint(empty), 0, 255).astype(np.uint8)
    for i, state in enumerate(states):
        _render_frame(out[i], background, state, grid, supersample, config.n_blocks)
    return out


def pixel_episode(
    episode: Episode, size: int = DEFAULT_SIZE, config: bs.BinSortingConfig = bs.DEFAULT_CONFIG
) -> dict[str, np.ndarray]:
    """A low-dim bin-sorting episode with its camera frames and LeRobot's observation keys."""
    states = np.asarray(episode[bs.STATE_KEY], dtype=np.float32)
    return {
        IMAGE_KEY: render(states, size, config),
        PROPRIO_KEY: states[:, : bs.GRIPPER_DIM].copy(),
        ENV_STATE_KEY: states,
        ACTION_KEY: np.asarray(episode[bs.ACTION_KEY], dtype=np.float32),
    }


def generate(
    n_clean: int,
    n_corrupt: int,
    seed: int,
    size: int = DEFAULT_SIZE,
    config: bs.BinSortingConfig = bs.DEFAULT_CONFIG,
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Clean and corrupt pixel episodes: the same demos as ``bin_sorting.generate``, rendered."""
    clean, corrupt = bs.generate(n_clean, n_corrupt, seed, config)
    return (
        [pixel_episode(ep, size, config) for ep in clean],
        [pixel_episode(ep, size, config) for ep in corrupt],
    )


class PixelObservationPolicy:
    """Lets an image policy play the low-dim simulator: renders each observation it is shown.

    ``bin_sorting.evaluate`` hands over full states (B, T_o, state_dim); the wrapped policy gets
    ``observation.images.top`` (B, T_o, 3, H, W) uint8 and ``observation.state`` (B, T_o, 3), the
    same keys and layout as training batches built from a pixel dataset.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        size: int = DEFAULT_SIZE,
        config: bs.BinSortingConfig = bs.DEFAULT_CONFIG,
    ) -> None:
        self.policy = policy
        self.n_obs_steps = int(policy.n_obs_steps)
        self.size = size
        self.config = config

    def observe(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """Full states (B, T, D) -> the pixel policy's observation dict."""
        b, t, d = states.shape
        frames = render(states.reshape(b * t, d), self.size, self.config)
        images = frames.reshape(b, t, self.size, self.size, 3).transpose(0, 1, 4, 2, 3)
        return {
            IMAGE_KEY: np.ascontiguousarray(images),
            PROPRIO_KEY: states[..., : bs.GRIPPER_DIM].astype(np.float32),
        }

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.policy(self.observe(np.asarray(obs[bs.STATE_KEY]))))


def evaluate(
    policy: ChunkPolicy,
    n_episodes: int,
    seed: int,
    max_steps: int = 200,
    size: int = DEFAULT_SIZE,
    config: bs.BinSortingConfig = bs.DEFAULT_CONFIG,
) -> tuple[bs.BinSortingMetrics, bs.BinSortingRollouts]:
    """``bin_sorting.evaluate`` for a policy that sees the camera instead of the state."""
    return bs.evaluate(
        PixelObservationPolicy(policy, size, config), n_episodes, seed, max_steps, config
    )


def render_episodes(
    episodes: Sequence[Episode], size: int = DEFAULT_SIZE, **kwargs: Any
) -> list[np.ndarray]:
    """Camera frames (L, size, size, 3) of each low-dim episode (for videos and plots)."""
    return [render(ep[bs.STATE_KEY], size, **kwargs) for ep in episodes]
