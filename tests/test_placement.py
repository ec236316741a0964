"""Where trials run: resource requests with GPU shares and node labels, the trial's torch
device, node tags, and the retry reasons the driver and the trial record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ambient_core.errors import ConfigError, SweepError
from ambient_platform.config.sweep import ResourcesConfig, load_sweep
from jobs.trial_node import NODE_TAGS, node_tags, retry_tags, trial_device
from orchestrator.sweep.callbacks import retry_cause
from orchestrator.sweep.placement import (
    effective_concurrency,
    fitting_nodes,
    label_matches,
    trial_resources,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_gpu_share_turns_cpu_and_auto_into_the_assigned_cuda_device() -> None:
    assert trial_device("cpu", ["3"]) == "cuda"  # CUDA_VISIBLE_DEVICES=3: cuda is GPU 3
    assert trial_device("auto", ["0"]) == "cuda"
    assert trial_device("cpu", []) == "cpu"
    assert trial_device("cuda:1", ["0"]) == "cuda:1"  # explicit: the user's choice stands


def test_label_selectors_follow_ray_semantics() -> None:
    labels = {"zone": "us-a", "ray.io/accelerator-type": "H100"}
    assert label_matches(labels, {})
    assert label_matches(labels, {"zone": "us-a"})
    assert not label_matches(labels, {"zone": "us-b"})
    assert label_matches(labels, {"zone": "!us-b", "market": "!spot"})  # absent key: not spot
    assert label_matches(labels, {"ray.io/accelerator-type": "in(A100,H100)"})
    assert not label_matches(labels, {"ray.io/accelerator-type": "!in(A100,H100)"})


def test_resources_with_labels_become_a_labelled_placement_group() -> None:
    plain = ResourcesConfig(cpu=1, gpu=0.25)
    assert trial_resources(plain) == {"cpu": 1.0, "gpu": 0.25}
    pgf = trial_resources(
        ResourcesConfig(gpu=0.5, accelerator_type="H100", node_labels={"a": "b"})
    )
    assert pgf.bundles == [{"CPU": 1.0, "GPU": 0.5}]
    assert pgf._bound.kwargs["bundle_label_selector"] == [
        {"a": "b", "ray.io/accelerator-type": "H100"}
    ]


def _spec(tmp_path: Path, resources: dict[str, Any]) -> Path:
    train = tmp_path / "train"
    train.mkdir(exist_ok=True)
    for f in (ROOT / "sweeps" / "train").glob("*.yaml"):
        (train / f.name).write_text(f.read_text())
    body = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    body["resources"] = resources
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_bad_labels_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s.yaml: resources.node_labels: .*'us a'"):
        load_sweep(_spec(tmp_path, {"node_labels": {"zone": "us a"}}))
    with pytest.raises(ConfigError, match=r"resources.accelerator_type: .*accelerator type"):
        load_sweep(_spec(tmp_path, {"accelerator_type": "H 100"}))


def test_a_local_node_without_the_labels_is_refused_at_once(
    ray_session: Any, tmp_path: Path
) -> None:
    sweep = load_sweep(_spec(tmp_path, {"node_labels": {"zone": "us-a"}}))
    assert fitting_nodes(ray_session, sweep.spec.resources) == []
    with pytest.raises(SweepError, match=r"labels \{'zone': 'us-a'\}"):
        effective_concurrency(sweep, ray_session)
    node_id = ray_session.get_runtime_context().get_node_id()
    own = load_sweep(_spec(tmp_path, {"node_labels": {"ray.io/node-id": node_id}}))
    assert effective_concurrency(own, ray_session) == own.spec.max_concurrent == 2


def test_node_tags_of_a_worker(ray_session: Any) -> None:
    tags = ray_session.get(ray_session.remote(num_cpus=1)(node_tags).remote([]))
    assert set(tags) == set(NODE_TAGS)
    assert tags["node.id"] == ray_session.get_runtime_context().get_node_id()
    assert tags["node.ip"] == "127.0.0.1" and tags["node.accelerator"] == "cpu"


def test_retry_reason_comes_from_the_driver_or_from_the_dead_node(ray_session: Any) -> None:
    said = {"retry_reason": "error: boom", "retry_after_attempt": "1", "attempt": "1"}
    assert retry_tags(said, 2) == {}  # the driver recorded why attempt 1 failed
    alive = ray_session.get_runtime_context().get_node_id()
    resumed = retry_tags({"node.id": alive, "attempt": "1"}, 2)
    assert resumed["retry_reason"].startswith("attempt 1 did not finish")
    stale = {**said, "node.id": "ab" * 28}  # the driver spoke of attempt 1, this is attempt 3
    assert retry_tags(stale, 3) == {
        "retry_reason": f"attempt 2 did not finish and its node {'ab' * 6} is gone",
        "retry_after_attempt": "2",
    }


def test_retry_cause_reads_the_last_failure_tune_recorded(tmp_path: Path) -> None:
    err = tmp_path / "error.txt"
    err.write_text(
        "Failure # 1 (occurred at 2026-11-30)\nValueError: first\n"
        "Failure # 2 (occurred at 2026-11-30)\nray.exceptions.ActorDiedError: The actor died "
        "unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
        "The actor died because its node has died. Node Id: 0f1e2d3c4b5a69788796a5b4\n"
    )
    assert retry_cause(SimpleNamespace(error_file=str(err))) == (
        "node 0f1e2d3c4b5a lost",
        "0f1e2d3c4b5a69788796a5b4",
    )
    err.write_text("Failure # 1 (occurred at x)\nTraceback...\nValueError: boom\n")
    assert retry_cause(SimpleNamespace(error_file=str(err))) == ("error: ValueError: boom", None)
    assert retry_cause(SimpleNamespace(error_file=None))[0] == "error (no message recorded)"
