"""From pixels, end to end on the moto S3 server: generate the rendered bin-sorting task as LeRobot
v3 datasets with MP4 videos, train the classifier on their action chunks (plus low-dim state),
annotate them on Ray, and run a 2-trial sweep of an image-conditioned policy that reads the
videos in place and derives sigma_min from the annotation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ambient_platform.config.annotation import AnnotateConfig, ClassifierTrainConfig
from ambient_platform.datasets import read_frames, read_meta
from ambient_platform.manifest import latest_manifest
from ambient_platform.storage import StorageRoot
from jobs.annotate import annotate
from jobs.generate import generate
from jobs.train_classifier import run_classifier_training

SIZE = 48


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pixels_generate_classifier_annotate_sweep_on_s3(
    s3_bucket: str, ray_session: object, tmp_path: Path
) -> None:
    from jobs.pixel_data import generate_lerobot
    from orchestrator.sweep import run_sweep

    base = f"s3://{s3_bucket}/pix"
    res = generate_lerobot("bin_sorting_pixels", 4, 6, base, seed=0, image_size=SIZE)
    assert res["format"] == "lerobot/v3.0" and res["corrupt_episodes"] == 6
    clean, corrupt = StorageRoot(f"{base}/clean"), StorageRoot(f"{base}/corrupt")
    assert corrupt.exists("videos/observation.images.top/chunk-000/file-000.mp4")
    assert not corrupt.exists("meta.json")  # read in place, never converted

    # low-dim columns of a LeRobot root through the platform's shard reader
    meta = read_meta(corrupt)
    assert meta["format"] == "lerobot/v3.0" and meta["name"] == "corrupt"
    assert [s["key"] for s in meta["shards"]] == ["data/chunk-000/file-000.parquet"]
    frames, _ = read_frames(corrupt, ["action", "observation.state"])
    assert frames.n_frames == res["corrupt_frames"]

    clf = run_classifier_training(
        ClassifierTrainConfig(
            clean=[clean.uri],
            corrupt=[corrupt.uri],
            obs_keys=["observation.state"],
            out=str(tmp_path / "clf"),
            channels=[8, 16],
            epochs=1,
            steps_per_epoch=15,
            batch_size=32,
        ),
        track=False,
    )
    ann_uri = f"s3://{s3_bucket}/annotations/pix"
    summary = annotate(
        AnnotateConfig(
            data=[corrupt.uri],
            classifier=clf["dir"],
            epochs=[1],
            out=ann_uri,
            obs_keys=["observation.state"],
            grid_levels=[0, 10, 30, 60, 99],
            num_draws=2,
        ),
        track=False,
    )
    assert summary["shards_annotated"] == 1 and summary["shards_skipped"] == 0
    version, manifest = latest_manifest(StorageRoot(ann_uri))
    assert version == 1 and manifest is not None and len(manifest.shards) == 1
    fs, root = StorageRoot(ann_uri).arrow_filesystem()
    curves = pq.read_table(f"{root}/{manifest.shards[0].output_key}", filesystem=fs)
    assert curves.num_rows == res["corrupt_frames"]

    run = {
        "name": "pix",
        "task": "bin_sorting_pixels",
        "data": {
            "clean": [{"path": clean.uri, "name": "correct"}],
            "corrupt": [
                {
                    "path": corrupt.uri,
                    "name": "opposite",
                    "sigma_max": 0.1824,
                    "annotation": {"path": ann_uri, "epoch": 1, "granularity": "episode"},
                }
            ],
        },
        "policy": {
            "down_dims": [16, 32],
            "step_embed_dim": 16,
            "vision": {"backbone_width": 8, "num_keypoints": 8},
        },
        "train": {
            "steps": 4,
            "batch_size": 8,
            "warmup_steps": 1,
            "log_every": 2,
            "rounds": 1,
            "threads": 1,
        },
        "eval": {
            "episodes": 2,
            "round_episodes": 2,
            "inference_steps": 2,
            "max_steps": 12,
            "plot": False,
        },
        "tracking": {"experiment": "pixels"},
    }
    spec = {
        "name": "pixels",
        "run": run,
        "space": {"data.corrupt.0.annotation.tau": {"grid": [0.35, 0.45]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "none"},
        "metric": "success",
        "mode": "max",
        "seeds": [0],
        "max_concurrent": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 0,
        "experiment": "pixels",
    }
    path = tmp_path / "pixels.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = run_sweep(
        path,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        storage_path=str(tmp_path / "sweeps"),
        verbose=0,
        progress=False,
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/total"] == 2
    exps = [e.experiment_id for e in client.search_experiments()]
    children = [
        r
        for r in client.search_runs(exps, max_results=100)
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        assert c.data.params["task"] == "bin_sorting_pixels"
        assert c.data.tags.get("sigma_min_source") == "annotation"
        assert np.isfinite(c.data.metrics["loss"]) and "eval/success" in c.data.metrics


def test_generate_command_writes_lerobot_for_camera_tasks(tmp_path: Path) -> None:
    res = generate("bin_sorting_pixels", 2, 1, str(tmp_path / "px"), seed=0)
    assert res["format"] == "lerobot/v3.0" and res["clean_episodes"] == 2
    info = yaml.safe_load((tmp_path / "px/clean/meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["shape"] == [96, 96, 3]
