"""What the annotation benchmarks share: the grid and the ``annotate`` configuration they time.

Imports nothing heavy at module level: ``annotate_cold_start.py`` times torch's import itself.
"""

from __future__ import annotations

from typing import Any

#: Noise-level grid (indices into the schedule) every annotation benchmark scores.
GRID = list(range(0, 100, 10)) + [99]
NUM_DRAWS = 4


def annotate_config(data: str, clf: str, out: str, actors: int, cpus_per_actor: float) -> Any:
    """The ``AnnotateConfig`` of one timed annotation run (classifier epoch 1)."""
    from ambient_platform.config.annotation import AnnotateConfig

    return AnnotateConfig(
        data=[data],
        classifier=clf,
        epochs=[1],
        out=out,
        grid_levels=GRID,
        num_draws=NUM_DRAWS,
        resources={"actors": actors, "cpus_per_actor": cpus_per_actor},
    )
