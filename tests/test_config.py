"""The run-config schema: shipped configs validate, errors name file and dotted path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

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


# ------------------------------------------------------------------------------ issue 11 item 4


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=-.inf", "train.lr"),
        ("data.corrupt.0.sigma_min=.nan", "data.corrupt.0.sigma_min"),
        ("mixing.buffer_mult=.inf", "mixing.buffer_mult"),
        ("train.grad_clip=.nan", "train.grad_clip"),
    ],
)
def test_non_finite_numbers_are_refused_with_the_right_reason(override: str, where: str) -> None:
    """``.inf`` and ``.nan`` are valid YAML floats; they used to pass (train.lr=.inf trained to
    a NaN loss) or fail for the wrong reason (sigma_min=.nan: 'less than or equal to 1')."""
    path = CONFIGS[0].parent / "maze_ambient.yaml"
    with pytest.raises(ConfigError, match=rf"{where}: Input should be a finite number") as err:
        load_run_config(path, [override])
    assert "less than or equal" not in str(err.value)


def test_non_finite_numbers_are_refused_in_every_schema(tmp_path: Path) -> None:
    from ambient_platform.config.annotation import AnnotateConfig, ClassifierTrainConfig
    from ambient_platform.config.base import validate
    from ambient_platform.config.watch import load_watch_config

    watch = {"name": "w", "sources": ["x"], "classifier": "c", "epochs": [1]}
    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump(watch))
    with pytest.raises(ConfigError, match=r"w.yaml: tau: Input should be a finite number"):
        load_watch_config(f, ["tau=.nan"])
    with pytest.raises(ConfigError, match=r"schedule.interval_s: Input should be a finite"):
        load_watch_config(f, ["schedule={interval_s: .inf}"])
    ann = {"data": ["d"], "classifier": "c", "epochs": [1], "resources": {"cpus_per_actor": "inf"}}
    with pytest.raises(ConfigError, match=r"cli: resources.cpus_per_actor: .*finite"):
        validate(AnnotateConfig, ann, "cli")
    with pytest.raises(ConfigError, match=r"cli: lr: Input should be a finite number"):
        validate(ClassifierTrainConfig, {"clean": ["a"], "corrupt": ["b"], "lr": "nan"}, "cli")


def test_task_names_come_from_the_registry(tmp_path: Path) -> None:
    from ambient_core.envs.registry import task_names

    f = tmp_path / "t.yaml"
    f.write_text("task: mace\ndata: {clean: [{path: x}]}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: task: .*unknown task 'mace'") as err:
        load_run_config(f)
    assert all(name in str(err.value) for name in task_names())


def test_one_dotted_path_helper_for_overrides_spaces_and_constraints() -> None:
    from ambient_platform.config.base import PathError, get_path, set_path

    d: dict[str, Any] = {"a": {"b": [{"c": 1}], "n": None}}
    assert get_path(d, "a.b.0.c") == 1
    set_path(d, "a.b.0.c", 2)
    assert d["a"]["b"][0]["c"] == 2
    with pytest.raises(PathError, match=r"a.x does not exist"):
        get_path(d, "a.x.y")
    with pytest.raises(PathError, match=r"a.n is null"):
        get_path(d, "a.n.k")
    with pytest.raises(PathError, match=r"a.b.3: 3 is not an index of the list \(length 1\)"):
        set_path(d, "a.b.3", 0)
    with pytest.raises(PathError, match="empty key segment"):
        get_path(d, "a..b")
    apply_overrides(d, ["a.n.k=1"])  # overrides create mappings where a null stood
    assert d["a"]["n"] == {"k": 1}
    with pytest.raises(ConfigError, match=r"override 'a.b.0.c.d=1': a.b.0.c is a int"):
        apply_overrides(d, ["a.b.0.c.d=1"])


def test_horizon_rules_are_the_runtime_ones() -> None:
    path = CONFIGS[0].parent / "maze_ambient.yaml"
    with pytest.raises(ConfigError, match=r"policy: Value error, horizon 10 must be divisible"):
        load_run_config(path, ["policy.horizon=10"])
    with pytest.raises(ConfigError, match=r"n_action_steps = 17 exceeds horizon 16"):
        load_run_config(path, ["policy.n_action_steps=16"])


# ------------------------------------------------------------------ dataset weights (mixing ratio)

_TWO_CORRUPT = {
    "task": "maze",
    "data": {
        "clean": [{"path": "c"}],
        "corrupt": [
            {"path": "a", "sigma_min": 0.074, "weight": 1.0},
            {"path": "b", "sigma_min": 0.3, "weight": 3.0},
        ],
    },
    "mixing": {"pool": "fixed", "alpha": 0.5},
}


def test_dataset_weights_default_to_none_and_are_dotted_overrides() -> None:
    amb = load_run_config(CONFIGS[0].parent / "maze_ambient.yaml")
    assert all(d.weight is None for d in [*amb.data.clean, *amb.data.corrupt])
    cfg = load_run_config(None, ["data.corrupt.1.weight=0.25"], base=_TWO_CORRUPT)
    assert [d.weight for d in cfg.data.corrupt] == [1.0, 0.25]
    assert flatten(cfg)["data.corrupt.1.weight"] == 0.25


@pytest.mark.parametrize(
    "value,match",
    [
        ("0", "data.corrupt.1.weight: Input should be greater than 0"),
        ("-1", "data.corrupt.1.weight: Input should be greater than 0"),
        (".inf", "data.corrupt.1.weight: Input should be a finite number"),
        ("heavy", "data.corrupt.1.weight: Input should be a valid number"),
    ],
)
def test_bad_dataset_weight_names_the_field(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_run_config(None, [f"data.corrupt.1.weight={value}"], base=_TWO_CORRUPT)


def test_weights_on_some_datasets_of_a_pool_only_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"data.corrupt.1.weight is missing but data.corrupt.0"):
        load_run_config(None, ["data.corrupt.1.weight=null"], base=_TWO_CORRUPT)
    # Pools are independent: weighted corrupt datasets with an unweighted clean pool are fine.
    cfg = load_run_config(None, base=_TWO_CORRUPT)
    assert cfg.data.clean[0].weight is None


def test_a_sweep_spans_alpha_and_a_dataset_weight(tmp_path: Path) -> None:
    from ambient_platform.config.sweep import load_sweep

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(_TWO_CORRUPT))
    spec: dict[str, Any] = {
        "name": "mix",
        "base_config": "base.yaml",
        "space": {
            "mixing.alpha": {"grid": [0.3, 0.7]},
            "data.corrupt.1.weight": {"grid": [0.5, 2.0]},
        },
        "searcher": {"kind": "grid"},
        "metric": "success_rate",
    }
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "mix.yaml")
    cfg = sweep.trial_config({"mixing.alpha": 0.3, "data.corrupt.1.weight": 2.0})
    assert cfg.mixing.alpha == 0.3 and [d.weight for d in cfg.data.corrupt] == [1.0, 2.0]
    spec["space"]["data.corrupt.1.weight"] = {"grid": [0, 2.0]}
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"space.data.corrupt.1.weight: value 0 is invalid"):
        load_sweep(tmp_path / "zero.yaml")


def test_the_default_annotation_grid_is_strictly_increasing() -> None:
    """The default grid once listed level 99 twice (a field default skips validation), and
    every annotation made with it failed after committing its manifest: sigma_min refuses a
    grid that is not strictly increasing."""
    from ambient_core.classifier import SigmaMinRule, derive_sigma_min
    from ambient_core.schedule import ddpm_sigmas
    from ambient_platform.config.annotation import AnnotateConfig

    levels = AnnotateConfig(data=["d"], classifier="c", epochs=[1]).grid_levels
    assert levels == sorted(set(levels)) and len(levels) == 34 and levels[-1] == 99
    grid = ddpm_sigmas()[levels]
    curves = np.full((2, len(levels)), 0.4)
    assert derive_sigma_min(curves, grid, SigmaMinRule(tau=0.45)).shape == (2,)
