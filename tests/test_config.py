"""The run-config schema: shipped configs validate, errors name file and dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient_platform.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    flatten,
    load_run_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "sweeps" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_run_config(path)
    assert isinstance(cfg, RunConfig)


def test_variants_inherit_their_base() -> None:
    amb = load_run_config(CONFIGS[0].parent / "maze_ambient.yaml")
    assert amb.name == "maze-ambient"
    assert amb.data.corrupt[0].sigma_min == pytest.approx(0.074)
    assert amb.policy.horizon == 16  # from maze_base.yaml
    filt = load_run_config(CONFIGS[0].parent / "maze_filtering.yaml")
    assert filt.mixing.use_corrupt is False


def test_bad_key_and_value_name_file_and_dotted_path(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("task: maze\ndata: {clean: [{path: x}]}\nmixing: {alpha: 2.0, pool: fixed}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: mixing.alpha: Input should be less"):
        load_run_config(f)
    f.write_text("task: maze\ndata: {clean: [{path: x}]}\ntrain: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.stepz: Extra inputs"):
        load_run_config(f)
    with pytest.raises(ConfigError, match=r"data.corrupt.0.sigma_min"):
        load_run_config(CONFIGS[0].parent / "maze_ambient.yaml", ["data.corrupt.0.sigma_min=1.5"])


def test_ambient_loss_requires_a_buffer() -> None:
    path = CONFIGS[0].parent / "maze_ambient.yaml"
    with pytest.raises(ConfigError, match="needs a buffer"):
        load_run_config(path, ["mixing.corrupt_loss=ambient"])
    cfg = load_run_config(path, ["mixing.corrupt_loss=ambient", "mixing.buffer_mult=1.15"])
    assert cfg.mixing.buffer_mult == 1.15


def test_overrides_are_yaml_typed_and_index_lists() -> None:
    d = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    apply_overrides(d, ["a.b.1.c=0.5", "a.x=[1, 2]", "a.flag=true", "new.key=text"])
    assert d == {
        "a": {"b": [{"c": 1}, {"c": 0.5}], "x": [1, 2], "flag": True},
        "new": {"key": "text"},
    }
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(d, ["a.b.7.c=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(d, ["nonsense"])


def test_unreadable_yaml_and_base_loops(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("key: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_run_config(tmp_path / "c.yaml")


def test_flatten_for_mlflow_params() -> None:
    cfg = load_run_config(CONFIGS[0].parent / "maze_ambient.yaml")
    flat = flatten(cfg)
    assert flat["data.corrupt.0.sigma_min"] == pytest.approx(0.074)
    assert flat["policy.down_dims"] == [32, 64, 128]
    assert flat["mixing.pool"] == "proportional"
