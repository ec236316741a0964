"""One uniform face for every benchmark task, so jobs never special-case an environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ambient_core.envs.base import ChunkPolicy, Episode


@dataclass
class EvalResult:
    """Scalar metrics plus a function that draws the rollouts to a PNG."""

    metrics: dict[str, float]
    plot: Callable[[Path], None]


@dataclass(frozen=True)
class Task:
    name: str
    obs_keys: tuple[str, ...]
    action_dim: int
    primary_metric: str
    metrics: tuple[str, ...]  # scalars evaluate() reports, "n" (the episode count) excluded
    generate: Callable[[int, int, int], tuple[list[Episode], list[Episode]]]
    evaluate: Callable[[ChunkPolicy, int, int, int | None], EvalResult]
    plot_dataset: Callable[[list[Episode], list[Episode], Path], None]
    image_keys: tuple[str, ...] = ()  # cameras (L, H, W, 3) uint8; datasets are LeRobot v3


def _maze() -> Task:
    from ambient_core.envs import maze, maze_eval

    env = maze.MazeEnv()

    def generate(n_clean: int, n_corrupt: int, seed: int) -> tuple[list[Episode], list[Episode]]:
        return maze.generate(env, n_clean, n_corrupt, seed)

    def evaluate(policy: ChunkPolicy, n: int, seed: int, max_steps: int | None) -> EvalResult:
        goals = env.sample_goals(n, np.random.default_rng(seed))
        m = maze_eval.evaluate(env, policy, goals, max_steps=max_steps or 300)

        def plot(path: Path) -> None:
            maze.plot_rollouts(env, m.trajectories, goals, m.success, path)

        return EvalResult(m.as_dict(), plot)

    def plot_dataset(clean: list[Episode], corrupt: list[Episode], path: Path) -> None:
        maze.plot_dataset(env, clean, corrupt, path)

    return Task(
        "maze",
        ("observation.state", "observation.goal"),
        2,
        "success_rate",
        tuple(m for m in maze_eval.METRIC_NAMES if m != "n"),
        generate,
        evaluate,
        plot_dataset,
    )


def _bin_sorting() -> Task:
    from ambient_core.envs import bin_sorting as bs
    from ambient_core.envs.bin_sorting_plots import plot_rollouts

    def generate(n_clean: int, n_corrupt: int, seed: int) -> tuple[list[Episode], list[Episode]]:
        return bs.generate(n_clean, n_corrupt, seed)

    def evaluate(policy: ChunkPolicy, n: int, seed: int, max_steps: int | None) -> EvalResult:
        m, roll = bs.evaluate(policy, n, seed, max_steps=max_steps or 200)

        def plot(path: Path) -> None:
            plot_rollouts(roll, path)

        return EvalResult(m.as_dict(), plot)

    def plot_dataset(clean: list[Episode], corrupt: list[Episode], path: Path) -> None:
        plot_rollouts(bs.replay(clean[:8] + corrupt[:8]), path, title="8 clean + 8 corrupt")

    return Task(
        "bin_sorting",
        ("observation.state",),
        3,
        "success",
        tuple(m for m in bs.METRIC_NAMES if m != "n"),
        generate,
        evaluate,
        plot_dataset,
    )


def _bin_sorting_pixels() -> Task:
    from ambient_core.envs import bin_sorting as bs
    from ambient_core.envs import bin_sorting_pixels as px
    from ambient_core.envs.bin_sorting_plots import plot_rollouts

    def evaluate(policy: ChunkPolicy, n: int, seed: int, max_steps: int | None) -> EvalResult:
        m, roll = px.evaluate(policy, n, seed, max_steps=max_steps or 200)

        def plot(path: Path) -> None:
            plot_rollouts(roll, path)

        return EvalResult(m.as_dict(), plot)

    def plot_dataset(clean: list[Episode], corrupt: list[Episode], path: Path) -> None:
        eps = [
            {bs.STATE_KEY: ep[px.ENV_STATE_KEY], bs.ACTION_KEY: ep[bs.ACTION_KEY]}
            for ep in clean[:8] + corrupt[:8]
        ]
        plot_rollouts(bs.replay(eps), path, title="8 clean + 8 corrupt")

    return Task(
        "bin_sorting_pixels",
        (px.PROPRIO_KEY,),
        3,
        "success",
        tuple(m for m in bs.METRIC_NAMES if m != "n"),
        px.generate,
        evaluate,
        plot_dataset,
        image_keys=(px.IMAGE_KEY,),
    )


_FACTORIES: dict[str, Callable[[], Task]] = {
    "maze": _maze,
    "bin_sorting": _bin_sorting,
    "bin_sorting_pixels": _bin_sorting_pixels,
}


def get_task(name: str) -> Task:
    """Look a task up by name ("maze", "bin_sorting")."""
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(_FACTORIES)}") from None


def task_names() -> list[str]:
    return sorted(_FACTORIES)
