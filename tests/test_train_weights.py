"""Dataset weights reach the sampler of a real run (issue 15: the mixing ratio knob)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ambient_platform.config import load_run_config
from jobs.generate import generate
from jobs.train import prepare

ROOT = Path(__file__).resolve().parents[1]


def test_corrupt_weights_from_the_config_drive_the_sampler(tmp_path: Path) -> None:
    generate("bin_sorting", 4, 12, str(tmp_path / "m"), seed=0)
    corrupt = (
        f"data.corrupt=[{{path: {tmp_path}/m/corrupt, name: near, sigma_min: 0.0, weight: 1.0,"
        f" max_episodes: 4}}, {{path: {tmp_path}/m/corrupt, name: far, sigma_min: 0.5,"
        " weight: 3.0}]"
    )
    cfg = load_run_config(
        ROOT / "sweeps" / "train" / "bin_sorting_ambient.yaml",
        [
            f"data.clean.0.path={tmp_path}/m/clean",
            corrupt,
            "mixing.pool=fixed",
            "mixing.alpha=0.4",
            "policy.down_dims=[16,32]",
        ],
    )
    run = prepare(cfg)
    s = run.state.sampler
    sizes = tuple(d["chunks"] for d in run.datasets[1:])
    assert s.corrupt_datasets.sizes == sizes and s.corrupt_datasets.weights == (1.0, 3.0)
    assert s.clean_datasets.weights is None
    # At sigma ~1 both corrupt datasets are eligible: 0.6 corrupt split 1 : 3.
    assert np.allclose(s.expected_dataset_share()[-1], [0.4, 0.15, 0.45])
    near, far = run.datasets[1], run.datasets[2]
    assert near["weight"] == 1.0 and far["share_by_sigma"]["s0.0-0.1"] == 0.0
    assert near["share_by_sigma"]["s0.0-0.1"] == 0.6  # the only corrupt data at low noise
    assert abs(sum(d["share"] for d in run.datasets) - 1.0) < 1e-5
