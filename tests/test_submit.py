"""``ambient submit`` against a real Ray cluster (``ray start --head`` on 127.0.0.1) started and
stopped by the test; submission ids, secret refusal and the --storage/--tracking-uri flags."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from ambient_core.envs import maze
from ambient_platform.config.annotation import ClassifierTrainConfig
from ambient_platform.datasets import write_dataset
from ambient_platform.local_cluster import local_cluster
from ambient_platform.storage import StorageRoot
from jobs.train_classifier import run_classifier_training
from orchestrator.cli import main as cli
from orchestrator.submit import Submission, SubmitError

ROOT = Path(__file__).resolve().parents[1]
_NOT_CODE = (".git", ".venv", ".work", ".ambient", "*.egg-info", "__pycache__", ".*_cache")


def test_submission_ids_are_deterministic_and_secrets_stay_home(tmp_path: Path) -> None:
    args = ["annotate", "--data", "data/x", "--classifier", "c", "--epoch", "1"]
    a = Submission.build(args, ROOT, {"AMBIENT_STORAGE": "s3://b/p"})
    b = Submission.build(list(args), ROOT, {"AMBIENT_STORAGE": "s3://b/p"})
    assert a.submission_id == b.submission_id and a.submission_id.startswith("ambient-annotate-")
    assert Submission.build(args, ROOT, {"AMBIENT_STORAGE": "s3://b/q"}).submission_id != (
        a.submission_id
    )
    assert Submission.build([*args, "--epoch", "2"], ROOT, {}).submission_id != a.submission_id
    assert a.entrypoint.startswith("python -m orchestrator.cli annotate --data data/x")
    assert ".ambient/" in a.runtime_env["excludes"] and a.runtime_env["working_dir"] == str(ROOT)
    with pytest.raises(SubmitError, match="AWS_SECRET_ACCESS_KEY: credentials are not forwarded"):
        Submission.build(args, ROOT, {"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(SubmitError, match="embeds a password"):
        Submission.build(args, ROOT, {"MLFLOW_TRACKING_URI": "postgresql://u:pw@db/mlflow"})
    with pytest.raises(SubmitError, match="not a job to run on a cluster"):
        Submission.build(["ui"], ROOT, {})
    res = CliRunner().invoke(cli, ["submit", "--address", "127.0.0.1:8265", "--", "demo"])
    assert res.exit_code == 2 and "give the dashboard URL" in res.output


def test_code_version_covers_exactly_the_files_that_travel(tmp_path: Path) -> None:
    """An ignored directory inside the repository (a frozen copy, say) is versioned by its own
    files, not by the repository's HEAD and diff, which say nothing about what is uploaded."""
    from orchestrator.submit import code_version

    copy = tmp_path / "src"
    (copy / "pkg").mkdir(parents=True)
    (copy / "pkg" / "a.py").write_text("x = 1\n")
    first = code_version(copy)
    assert first.startswith("files-") and code_version(copy) == first
    (copy / "pkg" / "a.py").write_text("x = 2\n")
    assert code_version(copy) != first
    assert not code_version(ROOT).startswith("files-")  # the repository itself: git


def test_storage_flag_moves_relative_locations(tmp_path: Path) -> None:
    """--storage is the root of every relative data location, local or s3://."""
    from ambient_platform.settings import resolve_location

    saved = os.environ.get("AMBIENT_STORAGE")
    try:
        os.environ["AMBIENT_STORAGE"] = "s3://lab/ambient/"
        assert resolve_location("data/maze") == "s3://lab/ambient/data/maze"
        assert resolve_location("/abs/x") == "/abs/x"
        os.environ["AMBIENT_STORAGE"] = str(tmp_path)
        assert resolve_location("annotations/a") == str(tmp_path / "annotations" / "a")
    finally:
        if saved is None:
            os.environ.pop("AMBIENT_STORAGE", None)
        else:
            os.environ["AMBIENT_STORAGE"] = saved


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real single-node Ray cluster with the Jobs API on 127.0.0.1; yields its dashboard URL.

    ``ambient_platform.local_cluster``: ``ray start --head --block`` on free ports in its own
    process group, stopped by killing that group (never ``ray stop``, which would end every Ray
    instance on the machine).
    """
    with local_cluster(workers=0, head_cpus=2) as c:
        yield c.dashboard_url


def test_submit_runs_on_the_cluster_logs_to_mlflow_and_never_twice(
    cluster: str, tmp_path: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    clean, corrupt = maze.generate(maze.MazeEnv(), 4, 8, seed=2, clean_method="builtin")
    store = tmp_path / "store"
    write_dataset(StorageRoot(str(store / "data" / "clean")), clean, "clean", "maze")
    write_dataset(StorageRoot(str(store / "data" / "rrt")), corrupt, "rrt", "maze")
    run_classifier_training(
        ClassifierTrainConfig(
            clean=[str(store / "data" / "clean")],
            corrupt=[str(store / "data" / "rrt")],
            out=str(store / "classifiers" / "tiny"),
            channels=[8],
            epochs=1,
            steps_per_epoch=3,
            batch_size=8,
        ),
        track=False,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Relative locations: they resolve under --storage on the cluster, as on a laptop.
    command = [
        "annotate",
        "--data",
        "data/rrt",
        "--classifier",
        "classifiers/tiny",
        "--epoch",
        "1",
        "--grid",
        "0,50,99",
        "--num-draws",
        "1",
        "--name",
        "submitted",
    ]
    # A frozen copy of the code: the id digests the code version, which must not change between
    # the two submissions even while someone edits the working tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_CODE))
    base = ["submit", "--address", cluster, "--tracking-uri", uri, "--storage", str(store)]
    base += ["--working-dir", str(src)]
    runner = CliRunner()
    res = runner.invoke(cli, [*base, "--timeout", "240", "--", *command])
    assert res.exit_code == 0, res.output
    assert "SUCCEEDED" in res.output and "rows_annotated" in res.output  # streamed job log
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("annotation")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["rows_annotated"] == sum(len(e["action"]) for e in corrupt)
    assert (store / "annotations" / "submitted" / "manifests" / "v1.json").exists()
    # The same command again: recognised, followed, not run a second time.
    again = runner.invoke(cli, [*base, "--no-wait", "--", *command])
    assert again.exit_code == 0 and "already submitted (SUCCEEDED)" in again.output
    jobs = JobSubmissionClient(cluster).list_jobs()
    assert (
        len([j for j in jobs if j.submission_id and j.submission_id.startswith("ambient-")]) == 1
    )
    assert len(client.search_runs([exp.experiment_id])) == 1
    sid = again.output.strip().splitlines()[-1]
    status = runner.invoke(cli, ["job", "status", "--address", cluster, sid])
    assert status.output.strip() == "SUCCEEDED"
    # A failing job exits non-zero, and is retried only on request.
    bad = ["annotate", "--data", "data/none", "--classifier", "classifiers/tiny", "--epoch", "1"]
    failed = runner.invoke(cli, [*base, "--timeout", "120", "--", *bad])
    assert failed.exit_code == 1 and "FAILED" in failed.output
    refused = runner.invoke(cli, [*base, "--no-wait", "--", *bad])
    assert refused.exit_code == 2 and "pass --retry" in refused.output
