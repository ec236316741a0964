"""Bin-sorting figures: a grid of episodes (bins, blocks, gripper path, grasps), for rollouts of
a policy and for replayed demonstrations. Matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ambient_core.envs.bin_sorting import (
    BLUE,
    DEFAULT_CONFIG,
    LEFT,
    RED,
    RIGHT,
    BinSortingConfig,
    BinSortingRollouts,
    correct_bin,
)


def plot_rollouts(
    rollouts: BinSortingRollouts,
    path: str | Path,
    config: BinSortingConfig = DEFAULT_CONFIG,
    max_episodes: int = 16,
    title: str | None = None,
) -> Path:
    """Save a grid of episodes as PNG: bins, start blocks (hollow), gripper path, end (filled).

    The path is thin where the gripper is open and thick where closed, so a viewer sees grasps.
    Each panel's title counts blocks in the correct bin. Uses the Agg canvas; never shows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = min(max_episodes, len(rollouts.steps))
    if n < 1:
        raise ValueError("nothing to plot")
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    shade = {LEFT: "#f4cccc", RIGHT: "#cfe2f3"}
    block_color = {RED: "#d62728", BLUE: "#1f77b4"}
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        for bin_id in (LEFT, RIGHT):
            x0, y0, x1, y1 = config.bin_rect(bin_id)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color=shade[bin_id], zorder=0))
        (tx0, ty0), (tx1, ty1) = config.table_low, config.table_high
        ax.add_patch(Rectangle((tx0, ty0), tx1 - tx0, ty1 - ty0, fill=False, lw=1.0))
        last = int(rollouts.steps[i]) + 1
        xy = rollouts.gripper[i, :last]
        closed = np.where(rollouts.grip[i, :last, None] >= 0.5, xy, np.nan)
        ax.plot(xy[:, 0], xy[:, 1], color="0.5", lw=0.8, zorder=1)
        ax.plot(closed[:, 0], closed[:, 1], color="0.15", lw=2.0, zorder=2)
        ax.plot(*xy[0], marker="o", color="0.15", ms=4, zorder=3)
        for k, c in enumerate(rollouts.colors[i]):
            colour = block_color[RED if c > 0 else BLUE]
            ax.plot(*rollouts.block_start[i, k], marker="s", ms=8, mfc="none", mec=colour, mew=1.5)
            ax.plot(*rollouts.block_end[i, k], marker="s", ms=7, color=colour, zorder=4)
        n_right = int((rollouts.bin_ids[i] == correct_bin(rollouts.colors[i])).sum())
        ax.set_title(f"ep {i}: {n_right}/{config.n_blocks} correct, {last - 1} steps", fontsize=8)
        ax.set_xlim(tx0 - 0.05, tx1 + 0.05)
        ax.set_ylim(ty0 - 0.05, ty1 + 0.05)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
