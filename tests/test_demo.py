"""``ambient demo``: the spec it runs, per-seed locations, and how it words its answer."""

from __future__ import annotations

import json
from pathlib import Path

from ambient_platform.config.sweep import load_sweep
from orchestrator.demo import (
    SPEC,
    DemoPaths,
    Stage,
    answer_text,
    method_name,
    method_table,
    spec_overrides,
    verdict,
)

COT = {"name": "co-training", "sigma_max": 0.0, "path": "data/bin-sorting-demo/corrupt"}
AMB = {
    "name": "ambient",
    "sigma_max": 0.4616,
    "annotation": {
        "path": "annotations/bin-sorting-demo",
        "epoch": 2,
        "tau": 0.45,
        "granularity": "dataset",
    },
    "path": "data/bin-sorting-demo/corrupt",
}


def test_the_demo_spec_puts_cotraining_and_ambient_in_one_grid_with_two_seeds() -> None:
    s = load_sweep(SPEC)
    values = s.spec.space["data.corrupt.0"].grid
    assert values is not None and [method_name(v) for v in values] == [
        "co-training",
        "ambient (annotated sigma_min per dataset, tau=0.45, sigma_max=0.4616)",
    ]
    assert len(s.spec.seeds) >= 2 and s.metric == "success" and s.task == "bin_sorting"
    assert s.trial_count() == 6


def test_another_data_seed_gets_its_own_locations() -> None:
    paths = DemoPaths.for_seed(3)
    assert paths.data == "data/bin-sorting-demo-seed3"
    assert spec_overrides(DemoPaths.for_seed(0)) == []
    s = load_sweep(SPEC, spec_overrides(paths))
    assert s.base["data"]["clean"][0]["path"] == "data/bin-sorting-demo-seed3/clean"
    assert s.base["data"]["generate"]["seed"] == 3
    amb = s.spec.space["data.corrupt.0"].grid[1]  # type: ignore[index]
    assert amb["annotation"]["path"] == "annotations/bin-sorting-demo-seed3"
    assert amb["path"] == "data/bin-sorting-demo-seed3/corrupt"


def _trial(ref: dict, seed: int, success: float, logic: float) -> dict:
    return {
        "outcome": "finished",
        "data.corrupt.0": json.loads(json.dumps(ref)),
        "seed": seed,
        "success": success,
        "logic": logic,
        "motion": success / max(logic, 1e-9),
    }


def test_verdict_compares_the_worst_ambient_seed_with_the_best_cotraining_seed() -> None:
    summary = {
        "trials": [
            _trial(COT, 0, 0.10, 0.25),
            _trial(COT, 1, 0.14, 0.30),
            _trial(AMB, 0, 0.55, 0.95),
            _trial(AMB, 1, 0.61, 0.97),
            {"outcome": "errored", "data.corrupt.0": AMB, "seed": 2},
        ]
    }
    rows = method_table(summary)
    assert [r["method"] for r in rows][0].startswith("ambient")
    assert rows[0]["seeds"] == [0, 1] and rows[1]["seeds"] == [0, 1]
    text = verdict(rows)
    assert "beats co-training by +0.46" in text and "0.41 above" in text
    assert text.endswith("separated")
    close = {"trials": [_trial(COT, 0, 0.50, 0.9), _trial(AMB, 0, 0.45, 0.9)]}
    assert verdict(method_table(close)).endswith("not separated")
    assert verdict(method_table({"trials": []})).startswith("no verdict")


def test_answer_table_columns_line_up_under_a_long_method_name() -> None:
    summary = {"trials": [_trial(COT, 0, 0.10, 0.25), _trial(AMB, 0, 0.55, 0.95)]}
    text = answer_text(summary, [Stage("sweep", 10.0, 12.0)], DemoPaths.for_seed(0), "sqlite://")
    header, *rows = text.splitlines()[1:4]
    assert len(rows[0].split("  ")[1]) > 52  # the ambient name is longer than the old column
    assert {r.index(" 0 ") for r in rows} == {header.index(" seeds")}


def test_swept_dataset_entries_must_have_distinct_names(tmp_path: Path) -> None:
    """Two entries shown by the same name would merge into one row and one x position."""
    import pytest
    import yaml

    from ambient_core.errors import ConfigError

    body = yaml.safe_load(SPEC.read_text())
    body["base_config"] = str(SPEC.parent / body["base_config"])
    body["space"]["data.corrupt.0"]["grid"][1]["name"] = "co-training"
    spec = tmp_path / "dup.yaml"
    spec.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match=r"space\.data\.corrupt\.0\.grid: values 0 and 1 both"):
        load_sweep(spec)
