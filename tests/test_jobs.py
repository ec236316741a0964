"""End-to-end jobs against a real MLflow SQLite store (and moto S3 for remote data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from ambient_platform.config import load_run_config
from ambient_platform.tracking import RunTracker
from jobs.generate import generate
from jobs.train import run_eval, run_training
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.steps=30",
    "train.batch_size=32",
    "train.log_every=10",
    "train.warmup_steps=5",
    "policy.down_dims=[16,32]",
    "policy.step_embed_dim=16",
    "eval.episodes=4",
    "eval.inference_steps=3",
    "eval.max_steps=40",
]


def _tiny(config: str, data: str, *extra: str) -> object:
    return load_run_config(
        ROOT / "sweeps" / "train" / config,
        [*TINY, f"data.clean.0.path={data}/clean", f"data.corrupt.0.path={data}/corrupt", *extra],
    )


def test_train_logs_a_complete_mlflow_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate("bin_sorting", 6, 12, str(tmp_path / "bs"), seed=0)
    cfg = _tiny("bin_sorting_ambient.yaml", str(tmp_path / "bs"), "train.rounds=2")
    res = run_training(cfg, uri)  # type: ignore[arg-type]
    client = MlflowClient(uri)
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.corrupt.0.sigma_max"] == "0.46"
    assert run.data.params["mixing.pool"] == "proportional"
    m = run.data.metrics
    for key in ("loss", "eval/success", "eval/motion", "round/success", "corrupt_share/s0.9-1.0"):
        assert key in m, key
    assert m["corrupt_share/s0.9-1.0"] == 0.0  # wrong-logic demos never at high noise
    assert m["corrupt_share/s0.0-0.1"] > 0.0
    history = client.get_metric_history(res["run_id"], "loss")
    assert [h.step for h in history] == [10, 20, 30]
    arts = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"config.yaml", "rollouts.png", "sampler.png", "metrics.json", "checkpoint"} <= arts
    assert len(run.inputs.dataset_inputs) == 2
    # Re-evaluation of the saved checkpoint is its own run with the same metric names.
    ev = run_eval(res["checkpoint"], episodes=3, tracking_uri=uri)
    assert client.get_run(ev["run_id"]).data.metrics["eval/n"] == 3


def test_maze_run_from_s3_data(tmp_path: Path, s3_bucket: str) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    info = generate("maze", 5, 10, f"s3://{s3_bucket}/maze", seed=1)
    assert info["out"] == f"s3://{s3_bucket}/maze"
    cfg = _tiny("maze_ambient.yaml", f"s3://{s3_bucket}/maze", "data.generate=null")
    res = run_training(cfg, uri)  # type: ignore[arg-type]
    run = MlflowClient(uri).get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    assert {"eval/success_rate", "eval/mean_sq_accel", "eval/collision_rate"} <= set(
        run.data.metrics
    )
    assert not any("secret" in v.lower() or v == "testing" for v in run.data.params.values())


def test_missing_dataset_fails_before_any_run_is_opened(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _tiny("maze_ambient.yaml", str(tmp_path / "nowhere"), "data.generate=null")
    with pytest.raises(ValueError, match=r"is not a dataset: meta.json is missing"):
        run_training(cfg, uri)  # type: ignore[arg-type]


def test_failed_run_is_marked_failed_with_traceback(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.start(uri, "t", "boom")
    with pytest.raises(RuntimeError), tracker.active():
        raise RuntimeError("boom")
    client = MlflowClient(uri)
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    assert "error" in {a.path for a in client.list_artifacts(tracker.run_id)}
    with pytest.raises(ValueError, match="secret"):
        tracker.log_params({"aws_secret_access_key": "x"})


def test_cli_help_generate_and_config_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["--help"])
    assert out.exit_code == 0 and "reproduce" in out.output and "train" in out.output
    out = runner.invoke(
        main,
        [
            "data",
            "generate",
            "bin-sorting",
            "--clean",
            "3",
            "--corrupt",
            "3",
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["clean_episodes"] == 3
    assert (tmp_path / "d" / "corrupt" / "meta.json").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: maze\ndata: {clean: [{path: x}]}\npolicy: {horizon: 10}\n")
    out = runner.invoke(main, ["train", "--config", str(bad)])
    assert out.exit_code == 2
    assert "bad.yaml: policy: Value error, horizon 10 must be divisible" in out.output


def test_data_commands_put_relative_locations_under_the_storage_root(tmp_path: Path) -> None:
    """``--out data/m`` of generate is where ``--data data/m/...`` of the other commands looks
    (it was relative to the working directory, so the README's sequence found nothing)."""
    store = str(tmp_path / "store")
    gen = ["data", "generate", "maze", "--clean", "2", "--corrupt", "2", "--out", "data/m"]
    out = CliRunner().invoke(main, [*gen, "--storage", store])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "store" / "data" / "m" / "corrupt" / "meta.json").exists()
    out = CliRunner().invoke(main, ["data", "check", "data/m/clean", "--storage", store])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(main, [*gen[:-1], "../outside", "--storage", store])
    assert out.exit_code == 2 and "storage root" in out.output


def test_classifier_cli_keeps_every_epoch_and_logs_per_bucket(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate("maze", 4, 8, str(tmp_path / "m"), seed=2, plot=False)
    out = CliRunner().invoke(
        main,
        [
            "classifier",
            "train",
            "--data",
            str(tmp_path / "m" / "clean"),
            "--corrupt",
            str(tmp_path / "m" / "corrupt"),
            "--epochs",
            "2",
            "--steps-per-epoch",
            "5",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "clf"),
            "--tracking-uri",
            uri,
        ],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "clf" / "epoch_1" / "classifier.pt").exists()
    assert (tmp_path / "clf" / "epoch_2" / "classifier.json").exists()
    client = MlflowClient(uri)
    run_id = json.loads(out.stdout)["run_id"]
    hist = client.get_metric_history(run_id, "acc/s0.0-0.1")
    assert [h.step for h in hist] == [1, 2]
    assert "accuracy_vs_sigma.png" in {a.path for a in client.list_artifacts(run_id)}
    bad = CliRunner().invoke(
        main, ["classifier", "train", "--data", str(tmp_path / "nope"), "--corrupt", "x"]
    )
    assert bad.exit_code == 2 and "is not a dataset" in bad.output
    nan = CliRunner().invoke(
        main, ["classifier", "train", "--data", "a", "--corrupt", "b", "--lr", "nan"]
    )
    assert nan.exit_code == 2 and "lr: Input should be a finite number" in nan.output
