"""What every benchmark environment shares: the chunked-policy interface and episode records.

Environments are numpy only. A policy is anything that maps a batch of observation histories to a
batch of action chunks in environment units; the trained diffusion policy is one such callable
(``ambient_core.policy.DiffusionPolicy.predict_action``), a scripted expert is another.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

Episode = dict[str, np.ndarray]
"""One episode: feature name -> array of shape (L, D), one row per frame.

Keys follow the Parquet layout of DESIGN.md: ``observation.state``, ``action`` and task features
such as ``observation.goal``. ``action[t]`` is what the robot commands after seeing frame t.
"""


class ChunkPolicy(Protocol):
    """Receding-horizon policy: observation history in, a chunk of actions to execute out."""

    n_obs_steps: int

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Map ``obs[key]`` of shape (B, n_obs_steps, D_key) to actions (B, n_exec, D_action)."""
        ...
