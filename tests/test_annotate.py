"""Annotation on Ray tasks: manifests, re-runs, bad shards, kill -9 resume, S3, use in training."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from ambient_core.data import DataError
from ambient_core.envs import maze
from ambient_platform.config import load_run_config
from ambient_platform.config.annotation import (
    AnnotateConfig,
    AnnotationResources,
    ClassifierTrainConfig,
)
from ambient_platform.datasets import write_dataset
from ambient_platform.manifest import CurveSettings, Manifest, latest_manifest
from ambient_platform.storage import StorageRoot
from jobs import curve_annotator, score_shards
from jobs.annotate import annotate
from jobs.annotation_plan import annotation_root, curve_settings, plan_annotation
from jobs.score_shards import (
    GPU_SCORE_BATCH,
    Scoring,
    _hand_over,
    _scored,
    read_checkpoints,
    score_spec,
    start_scoring,
)
from jobs.train import prepare, run_training
from jobs.train_classifier import run_classifier_training

ROOT = Path(__file__).resolve().parents[1]
GRID = [0, 10, 30, 60, 99]
SLOW_GRID = list(range(0, 100, 2))  # enough work per shard that a kill lands mid-job
N_SHARDS = 40


@pytest.fixture(scope="module")
def maze_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small maze datasets, the corrupt one in 4 shards, and a tiny 1-epoch classifier."""
    d = tmp_path_factory.mktemp("ann")
    clean, corrupt = maze.generate(maze.MazeEnv(), 8, 24, seed=0, clean_method="builtin")
    write_dataset(StorageRoot(str(d / "clean")), clean, "clean", "maze")
    write_dataset(StorageRoot(str(d / "corrupt")), corrupt, "corrupt", "maze", shard_episodes=6)
    cfg = ClassifierTrainConfig(
        clean=[str(d / "clean")],
        corrupt=[str(d / "corrupt")],
        out=str(d / "clf"),
        channels=[8, 16],
        epochs=1,
        steps_per_epoch=30,
        batch_size=32,
    )
    res = run_classifier_training(cfg, track=False)
    return {"dir": str(d), "clf": res["dir"]}


def _cfg(data: list[str], clf: str, out: str, **kw: object) -> AnnotateConfig:
    return AnnotateConfig(data=data, classifier=clf, epochs=[1], out=out, **kw)


def _rows(root: StorageRoot, manifest: Manifest, levels: int = len(GRID)) -> tuple[int, int]:
    fs, base = root.arrow_filesystem()
    keys = set()
    n = 0
    for e in manifest.shards:
        t = pq.read_table(f"{base}/{e.output_key}", filesystem=fs)
        n += t.num_rows
        ep, fr = t.column("episode_index").to_numpy(), t.column("frame_index").to_numpy()
        keys |= {(e.dataset, int(a), int(b)) for a, b in zip(ep, fr, strict=True)}
        curves = np.stack(t.column("curve_e1").to_numpy(zero_copy_only=False))
        assert curves.shape[1] == levels and (curves >= 0).all() and (curves <= 1).all()
    return n, len(keys)


def test_annotate_commits_manifest_and_reruns_are_incremental(
    maze_data: dict[str, str], ray_session: object, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = str(tmp_path / "ann")
    data = [f"{maze_data['dir']}/corrupt", f"{maze_data['dir']}/clean"]
    cfg = _cfg(data, maze_data["clf"], out, grid_levels=GRID, num_draws=2)
    res = annotate(cfg, tracking_uri=uri)
    meta_rows = sum(pq.read_metadata(p).num_rows for p in Path(maze_data["dir"]).rglob("shard-*"))
    assert res["version"] == 1 and res["shards_total"] == 5 and res["shards_annotated"] == 5
    root = StorageRoot(out)
    v, manifest = latest_manifest(root)
    assert v == 1 and manifest is not None
    n, unique = _rows(root, manifest)
    assert n == unique == meta_rows == res["rows_annotated"]  # every row once
    assert not root.list("done/")  # markers are removed once the manifest is committed
    run = MlflowClient(uri).get_run(MlflowClient(uri).search_runs(["1"])[0].info.run_id)
    assert run.data.metrics["rows_annotated"] == meta_rows and run.data.metrics["rows_per_s"] > 0
    assert run.inputs is not None
    assert len(run.inputs.dataset_inputs) == 3  # manifest + 2 datasets
    assert 0.0 <= res["warm_wait_s"] <= res["first_shard_s"] <= res["wall_s"]
    again = annotate(cfg, track=False)
    assert again["version"] == 2 and again["shards_annotated"] == 0
    assert again["shards_already_annotated"] == 5 and again["shards_resumed"] == 0
    with pytest.raises(ValueError, match="other settings"):
        annotate(_cfg(data, maze_data["clf"], out, grid_levels=[0, 99]), track=False)


def test_bad_shard_is_named_or_skipped(
    maze_data: dict[str, str], ray_session: object, tmp_path: Path
) -> None:
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(f"{maze_data['dir']}/corrupt", bad)
    (bad / "data" / "shard-00002.parquet").write_bytes(b"PAR1 this is not parquet")
    cfg = _cfg([str(bad)], maze_data["clf"], str(tmp_path / "a"), grid_levels=GRID)
    with pytest.raises(DataError, match=r"shard-00002.parquet is not readable Parquet"):
        annotate(cfg, track=False)
    res = annotate(cfg.model_copy(update={"skip_bad_shards": True}), track=False)
    assert res["shards_skipped"] == 1 and res["shards_annotated"] == 3
    _, manifest = latest_manifest(StorageRoot(str(tmp_path / "a")))
    assert manifest is not None
    assert manifest.skipped[0].input_key == "data/shard-00002.parquet"


def test_datasets_sharing_shard_keys_are_counted_apart(
    maze_data: dict[str, str], ray_session: object, tmp_path: Path
) -> None:
    """Issue 11 item 5: two --data datasets both have data/shard-0000N.parquet; a bad shard of
    one of them was matched by key alone, so the other's good shard counted as skipped too
    (summary said 6 annotated while the manifest held 7)."""
    import shutil

    a, b = tmp_path / "rrt-a", tmp_path / "rrt-b"
    shutil.copytree(f"{maze_data['dir']}/corrupt", a)
    shutil.copytree(f"{maze_data['dir']}/corrupt", b)
    for d in (a, b):  # the same shard keys, two dataset names
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, "name": d.name}))
    (b / "data" / "shard-00002.parquet").write_bytes(b"PAR1 this is not parquet")
    out = str(tmp_path / "ann")
    cfg = _cfg([str(a), str(b)], maze_data["clf"], out, grid_levels=GRID, skip_bad_shards=True)
    res = annotate(cfg, track=False)
    _, manifest = latest_manifest(StorageRoot(out))
    assert manifest is not None
    assert len(manifest.shards) == 7
    assert (res["shards_total"], res["shards_annotated"], res["shards_skipped"]) == (8, 7, 1)
    assert [(s.dataset, s.input_key) for s in manifest.skipped] == [
        ("rrt-b", "data/shard-00002.parquet")
    ]


@pytest.mark.timeout(900)  # the child's Ray start took 3 tries (~150 s) at load 10-13 per core
def test_kill_dash_nine_then_rerun_annotates_each_row_once(
    maze_data: dict[str, str],
    ray_session: object,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 40 one-episode shards: the kill lands between committed shards, with others in flight.
    _, corrupt = maze.generate(maze.MazeEnv(), 1, N_SHARDS, seed=5, clean_method="builtin")
    data = str(tmp_path / "many")
    write_dataset(StorageRoot(data), corrupt, "corrupt", "maze", shard_episodes=1)
    out = tmp_path / "ann"
    cfg = _cfg([data], maze_data["clf"], str(out), grid_levels=SLOW_GRID, num_draws=8)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "from jobs.annotate import annotate; "
        "from ambient_platform.config.annotation import AnnotateConfig; "
        f"annotate(AnnotateConfig.model_validate_json({cfg.model_dump_json()!r}), "
        f"tracking_uri={uri!r})"
    )
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-k9-")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    # A liveness bound, not a timing check: on a loaded 2-core machine the child's local Ray
    # start alone can take minutes (retried by ensure_ray) before the first shard is done.
    deadline = time.time() + 480
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((out / "done").rglob("*.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the annotation finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the driver and its Ray processes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    root = StorageRoot(str(out))
    markers = root.list("done/")
    assert markers and latest_manifest(root) == (0, None)  # died mid-job, nothing committed
    with caplog.at_level(logging.INFO, logger="jobs.annotate"):
        res = annotate(cfg, tracking_uri=uri)
    # The killed run does not stay RUNNING: the next holder of the lease ends it as KILLED.
    exp = MlflowClient(uri).get_experiment_by_name(cfg.experiment)
    assert exp is not None
    runs = MlflowClient(uri).search_runs([exp.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert res["shards_resumed"] == len(markers)
    assert res["shards_annotated"] == N_SHARDS - len(markers)
    # Issue 11 item 5: resumed shards were also counted as "already annotated".
    assert res["shards_already_annotated"] == 0
    assert f"0 already annotated, {len(markers)} resumed" in caplog.text
    _, manifest = latest_manifest(root)
    assert manifest is not None
    n, unique = _rows(root, manifest, len(SLOW_GRID))
    assert n == unique == json.loads(Path(data, "meta.json").read_text())["frames"]


def test_annotate_s3_and_train_from_annotation(
    maze_data: dict[str, str], ray_session: object, s3_bucket: str, tmp_path: Path
) -> None:
    src = StorageRoot(f"s3://{s3_bucket}/maze/corrupt")
    clean, corrupt = maze.generate(maze.MazeEnv(), 4, 12, seed=3, clean_method="builtin")
    write_dataset(src, corrupt, "corrupt", "maze", shard_episodes=6)
    write_dataset(StorageRoot(f"s3://{s3_bucket}/maze/clean"), clean, "clean", "maze")
    out = f"s3://{s3_bucket}/annotations/a1"
    res = annotate(
        _cfg([src.uri], maze_data["clf"], out, grid_levels=GRID, num_draws=2), track=False
    )
    assert res["shards_annotated"] == 2
    cfg = load_run_config(
        ROOT / "sweeps" / "train" / "maze_base.yaml",
        [
            f"data.clean.0.path=s3://{s3_bucket}/maze/clean",
            f"data.corrupt.0.path={src.uri}",
            "data.generate=null",
            "policy.down_dims=[16,32]",
            f"data.corrupt.0.annotation={{path: {out}, epoch: 1, tau: 0.45, "
            "granularity: episode}",
        ],
    )
    run = prepare(cfg)
    assert len(run.derived_sigma_min) == 1
    sm = run.state.sampler.corrupt_sigma_min
    np.testing.assert_array_equal(run.derived_sigma_min[0], sm)
    assert sm.shape == (run.state.sampler.n_corrupt,)
    assert ((sm >= 0) & (sm <= 1)).all()
    ep = run.data.chunk_episode[run.data.dataset_chunk_ranges[1][0] :]
    for e in np.unique(ep):  # episode granularity: one threshold per episode
        assert len(np.unique(sm[ep == e])) == 1
    assert run.datasets[1]["annotation"]["uri"].endswith("manifests/v1.json")
    # The run logs the thresholds it really uses (the config's sigma_min is a 0.0 placeholder).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"steps": 4, "batch_size": 16, "log_every": 2, "warmup_steps": 1}
            ),
            "eval": cfg.eval.model_copy(
                update={"episodes": 1, "inference_steps": 2, "max_steps": 10, "plot": False}
            ),
        }
    )
    logged = MlflowClient(uri).get_run(run_training(tiny, uri)["run_id"]).data
    assert logged.params["data.corrupt.0.sigma_min"] == "0.0"
    assert logged.tags["sigma_min_source"] == "annotation"
    assert logged.metrics["sigma_min/mean"] == pytest.approx(float(sm.mean()))
    assert logged.metrics["sigma_min/p50"] == pytest.approx(float(np.median(sm)))
    assert 0.0 <= logged.metrics["sigma_min/eligible_share"] <= 1.0


def test_warm_up_loads_the_classifier_once_per_process(maze_data: dict[str, str]) -> None:
    """The warm-up task and the scoring tasks share their process's annotator: a warmed worker
    scores without loading the classifier again; another classifier replaces it (one per
    process, so a long-lived worker's memory stays bounded)."""
    settings = CurveSettings(
        classifier_dir=maze_data["clf"], epochs=[1], grid_levels=GRID, num_draws=2
    )
    spec = score_spec(settings, [])
    ckpt = read_checkpoints(settings)
    shard = sorted(Path(maze_data["dir"], "corrupt", "data").glob("*.parquet"))[0]
    try:
        assert curve_annotator.warm_up(key="a", spec=spec, checkpoints=ckpt) == os.getpid()
        warm = curve_annotator._WARM["a"]
        out = curve_annotator.score_shard(str(shard), key="a", spec=spec, checkpoints=ckpt)
        assert list(curve_annotator._WARM.items()) == [("a", warm)]
        assert out.num_rows == pq.read_metadata(shard).num_rows
        assert out["error"].null_count == out.num_rows
        curve_annotator.warm_up(key="b", spec=spec, checkpoints=ckpt)
        assert list(curve_annotator._WARM) == ["b"]
    finally:
        curve_annotator._WARM.clear()


@pytest.mark.parametrize("actors", [1, 2])
def test_scoring_runs_at_most_resources_actors_tasks_at_once(
    ray_session: object, tmp_path: Path, actors: int
) -> None:
    """One task per shard, each shard once, and never more than ``resources.actors`` tasks at
    once, although the session's 2 CPUs would fit four of 0.5 CPU."""
    spans = tmp_path / "spans"
    spans.mkdir()

    def fake_score(path: str, *, out: str) -> pa.Table:
        start = time.time()
        time.sleep(0.5)
        Path(out, Path(path).name).write_text(f"{start} {time.time()}")
        return pa.table({"path": [path]})

    res = AnnotationResources(actors=actors, cpus_per_actor=0.5)
    scoring = Scoring(ray_session, {"out": str(spans)}, res, [], time.perf_counter())
    paths = [f"/nowhere/shard-{i}" for i in range(3 * actors)]
    got = [(p, t.column("path").to_pylist()) for p, t in _scored(paths, scoring, fake_score)]
    assert sorted(got) == [(p, [p]) for p in paths]
    times = [tuple(map(float, f.read_text().split())) for f in spans.iterdir()]
    at_once = max(sum(s <= start < e for s, e in times) for start, _ in times)
    assert 1 <= at_once <= actors


def test_a_shard_whose_worker_dies_is_that_shards_error(
    ray_session: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies on a shard (after the task's retries) makes that shard bad, with a
    message; the other shards are scored and the run goes on."""
    monkeypatch.setattr(score_shards, "TASK_RETRIES", 0)

    def crashing_score(path: str) -> pa.Table:
        if path.endswith("bad"):
            os._exit(1)
        return pa.table({"path": [path]})

    res = AnnotationResources(actors=2, cpus_per_actor=0.5)
    scoring = Scoring(ray_session, {}, res, [], time.perf_counter())
    got = dict(_scored(["/x/ok-1", "/x/bad", "/x/ok-2"], scoring, crashing_score))
    assert got["/x/bad"] == "its worker died on each of 1 tries (WorkerCrashedError)"
    assert [got[p].column("path").to_pylist() for p in ("/x/ok-1", "/x/ok-2")] == [
        ["/x/ok-1"],
        ["/x/ok-2"],
    ]


def test_a_shard_that_changed_since_it_was_listed_is_not_committed() -> None:
    seen: list[tuple[Any, Any, Any]] = []
    inp: Any = SimpleNamespace(rows=3, key="data/shard-0.parquet")
    scored = pa.table({"path": ["p"] * 2, "error": pa.array([None, None], pa.string())})
    _hand_over(inp, scored, lambda *args: seen.append(args))
    _hand_over(inp, "its worker died on each of 4 tries (...)", lambda *a: seen.append(a))
    assert [(i, t) for i, t, _ in seen] == [(inp, None), (inp, None)]
    assert seen[0][2] == "2 rows, 3 when it was listed: it changed since"
    assert seen[1][2].startswith("its worker died")


def test_scoring_tasks_still_running_are_cancelled_when_the_caller_stops(
    ray_session: object, tmp_path: Path
) -> None:
    """An error in the driver's hand-over (a failed write, a lost lease) leaves no scoring task
    behind on the cluster: the ones running are cancelled."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def slow_score(path: str, *, out: str) -> pa.Table:
        name = Path(path).name
        Path(out, f"{name}.start").touch()
        time.sleep(0.2 if name == "first" else 6.0)
        Path(out, f"{name}.end").touch()
        return pa.table({"path": [path]})

    res = AnnotationResources(actors=2, cpus_per_actor=0.5)
    scoring = Scoring(ray_session, {"out": str(marks)}, res, [], time.perf_counter())
    with pytest.raises(RuntimeError, match="write failed"):
        for _path, _table in _scored(["/x/first", "/x/second"], scoring, slow_score):
            deadline = time.monotonic() + 120
            while not (marks / "second.start").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            raise RuntimeError("write failed")
    time.sleep(8.0)  # longer than the second task would have run
    assert (marks / "second.start").exists() and not (marks / "second.end").exists()


def test_score_batches_are_sized_by_device() -> None:
    settings = CurveSettings(classifier_dir="clf", epochs=[1], grid_levels=GRID, num_draws=2)
    assert score_spec(settings, [], "cpu").score_batch == settings.score_batch
    assert score_spec(settings, [], "cuda").score_batch == GPU_SCORE_BATCH


def test_start_scoring_warms_one_worker_per_task_slot(
    maze_data: dict[str, str], ray_session: object, tmp_path: Path
) -> None:
    """Workers import torch and load the classifier before the first scoring task, one per
    concurrent task (no more than there are shards), in Ray workers, not in the driver."""
    cfg = _cfg(
        [f"{maze_data['dir']}/corrupt"],
        maze_data["clf"],
        str(tmp_path / "a"),
        grid_levels=GRID,
        resources={"actors": 2, "cpus_per_actor": 0.5},
    )
    settings = curve_settings(cfg)
    shards = plan_annotation(cfg.data, settings, annotation_root(cfg)).pending
    ray: Any = ray_session
    scoring = start_scoring(shards, cfg, settings)
    pids = ray.get(scoring.warming, timeout=240)
    assert len(pids) == 2 and os.getpid() not in pids
    one = start_scoring(shards[:1], cfg, settings)
    assert len(ray.get(one.warming, timeout=240)) == 1
