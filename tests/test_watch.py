"""Re-annotation watch: cron schedule, incremental passes, retry/quarantine, lease, kill -9 on
S3, follow-up sweep pinned to the new manifest, and training on what the manifest names."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from ambient_core.data import DataError, episodes_to_table
from ambient_core.envs import maze
from ambient_platform.config import ConfigError, load_run_config
from ambient_platform.config.annotation import ClassifierTrainConfig
from ambient_platform.config.watch import (
    WatchConfig,
    cron_expression,
    cron_next_after,
    load_watch_config,
)
from ambient_platform.datasets import write_dataset
from ambient_platform.manifest import latest_manifest
from ambient_platform.storage import LeaseKeeper, LeaseLost, StorageRoot
from jobs.annotation_plan import LEASE_KEY
from jobs.reannotate import run_pass
from jobs.train import prepare
from jobs.train_classifier import run_classifier_training
from orchestrator.cli import main as cli
from orchestrator.watch import follow_up_sweep, watch

ROOT = Path(__file__).resolve().parents[1]
GRID = [0, 30, 99]


# ------------------------------------------------------------------------------ schedule


def test_cron_next_times() -> None:
    sat = dt.datetime(2026, 11, 21, 10, 7, 30)  # a Saturday
    nxt = cron_next_after
    assert nxt("*/15 * * * *", sat) == dt.datetime(2026, 11, 21, 10, 15)
    assert nxt("0 3 * * mon-fri", sat) == dt.datetime(2026, 11, 23, 3, 0)
    assert nxt("@daily", sat) == dt.datetime(2026, 11, 22, 0, 0)
    assert nxt("0 0 29 2 *", sat) == dt.datetime(2028, 2, 29, 0, 0)
    # Both day fields restricted: either matches (cron semantics) -> Friday the 27th first.
    assert nxt("30 4 1,15 * 5", sat) == dt.datetime(2026, 11, 27, 4, 30)
    assert nxt("0 12 * * 0", sat) == nxt("0 12 * * 7", sat)
    t = dt.datetime(2026, 11, 21, 10, 15, tzinfo=dt.UTC)
    assert nxt("*/15 * * * *", t) == t + dt.timedelta(minutes=15)


def test_cron_step_in_a_day_field_is_cron_semantics() -> None:
    """``*/2`` starts with ``*``, so (as in Debian/Vixie cron) day-of-month and day-of-week must
    both match. The hand-written parser treated it as a restriction and OR-ed the fields: it
    fired every Monday and every odd day of the month."""
    mon = dt.datetime(2026, 11, 23, 0, 0)  # a Monday, the 23rd (odd)
    # Odd days that are Mondays: the next one is Dec 7 (the old parser said Nov 25, odd).
    assert cron_next_after("0 0 */2 * 1", mon) == dt.datetime(2026, 12, 7, 0, 0)
    assert cron_next_after("0 0 */2 * *", mon) == dt.datetime(2026, 11, 25, 0, 0)
    # Neither day field starts with '*': either may match, so Thursday the 26th comes first.
    assert cron_next_after("0 0 26 * 1", mon) == dt.datetime(2026, 11, 26, 0, 0)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("0 * * * * *", "needs 5 fields"),  # cronsim's seconds field is not cron
        ("61 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * * 13 *", "Bad month"),
        ("*/0 * * * *", "Bad minute"),
        ("x * * * *", "Bad minute"),
        ("0 0 31 2 *", "Bad day-of-month"),
    ],
)
def test_cron_errors_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron_expression(expr)


def test_watch_config_errors_name_file_and_path(tmp_path: Path) -> None:
    good = {"name": "w", "sources": ["data/x"], "classifier": "c", "epochs": [1]}
    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump({**good, "schedule": {"cron": "99 * * * *"}}))
    with pytest.raises(ConfigError, match=r"w.yaml: schedule: .*Bad minute"):
        load_watch_config(f)
    f.write_text(yaml.safe_dump({**good, "schedule": {"interval_s": 5, "cron": "* * * * *"}}))
    with pytest.raises(ConfigError, match="exactly one of interval_s or cron"):
        load_watch_config(f)
    f.write_text(yaml.safe_dump({**good, "name": "a/../up"}))
    with pytest.raises(ConfigError, match=r"w.yaml: name: .*contains"):
        load_watch_config(f)
    f.write_text(yaml.safe_dump({**good, "on_new_data": {"sweep": "nope.yaml"}}))
    with pytest.raises(ConfigError, match=r"on_new_data.sweep: nope.yaml does not exist"):
        load_watch_config(f)
    shipped = load_watch_config(ROOT / "sweeps" / "watch" / "rrt.yaml")
    assert shipped.on_new_data is not None and Path(shipped.on_new_data.sweep).is_file()


def test_watch_loop_survives_a_failing_pass_and_keeps_its_schedule() -> None:
    cfg = WatchConfig(
        name="w", sources=["x"], classifier="c", epochs=[1], schedule={"interval_s": 0.05}
    )
    calls = []

    def flaky(c: WatchConfig) -> dict:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("storage unreachable")
        return {"status": "up-to-date"}

    out = watch(cfg, flaky, max_passes=3, echo=lambda s: None)
    assert [r["status"] for r in out] == ["up-to-date", "failed", "up-to-date"]
    assert "storage unreachable" in out[1]["error"]
    assert calls[2] - calls[0] >= 0.09  # waited between passes

    def broken(c: WatchConfig) -> dict:
        raise OSError("bucket gone")

    with pytest.raises(OSError, match="bucket gone"):  # --once lets cron see the failure
        watch(cfg, broken, once=True, echo=lambda s: None)
    stop = threading.Event()
    stop.set()
    assert watch(cfg, flaky, stop=stop) == []


def test_lease_keeper_renews_and_notices_takeover(tmp_path: Path) -> None:
    root = StorageRoot(str(tmp_path))
    with LeaseKeeper(root, "l.json", "a", ttl_s=0.6) as a:
        assert a.held
        time.sleep(0.9)  # past one TTL: renewed by the thread, so still a's
        assert root.read_lease("l.json").owner == "a"
        with LeaseKeeper(root, "l.json", "b", ttl_s=5) as b:
            assert not b.held
        a.check()
    assert root.read_lease("l.json") is None  # released on exit
    with LeaseKeeper(root, "l.json", "a", ttl_s=0.3) as a:
        # a stalled past its TTL and b took the lease over: a notices at its next renewal.
        root.delete("l.json")
        assert root.acquire_lease("l.json", "b", 60)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                a.check()
            except LeaseLost as exc:
                assert "taken over by b" in str(exc)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the lease keeper never noticed the takeover")
    assert root.read_lease("l.json").owner == "b"  # a did not release b's lease
    with LeaseKeeper(root, "m.json", "c", ttl_s=0.3) as c:
        c._stop.set()  # renewals stop (storage unreachable, process stalled)
        time.sleep(0.35)
        with pytest.raises(LeaseLost, match="not renewed"):
            c.check()  # it may have expired: stop before writing on top of a successor


# ------------------------------------------------------------------------------ passes


def _land(root: StorageRoot, key: str, episodes: list, first: int, source: str = "rrt") -> bytes:
    """Write one shard the way a producer would; returns its bytes."""
    table = episodes_to_table(episodes, source, first_episode_index=first)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    root.write_bytes(key, data)
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A clean dataset, a corrupt source with 2 shards (6 episodes each), spare episodes for
    later arrivals, and a tiny 1-epoch classifier."""
    d = tmp_path_factory.mktemp("watch")
    clean, corrupt = maze.generate(maze.MazeEnv(), 6, 30, seed=1, clean_method="builtin")
    write_dataset(StorageRoot(str(d / "clean")), clean, "clean", "maze")
    write_dataset(StorageRoot(str(d / "rrt")), corrupt[:12], "rrt", "maze", shard_episodes=6)
    cfg = ClassifierTrainConfig(
        clean=[str(d / "clean")],
        corrupt=[str(d / "rrt")],
        out=str(d / "clf"),
        channels=[8, 16],
        epochs=1,
        steps_per_epoch=20,
        batch_size=32,
    )
    res = run_classifier_training(cfg, track=False)
    return {"dir": d, "clf": res["dir"], "base": corrupt[:12], "spare": corrupt[12:]}


def _cfg(source: str, clf: str, out: str, **kw: object) -> WatchConfig:
    return WatchConfig(
        name="rrt",
        sources=[source],
        out=out,
        classifier=clf,
        epochs=[1],
        grid_levels=GRID,
        num_draws=2,
        **kw,
    )


def _copy_source(world: dict, dest: Path) -> StorageRoot:
    import shutil

    shutil.copytree(world["dir"] / "rrt", dest)
    return StorageRoot(str(dest))


def test_passes_annotate_only_new_shards_with_lineage_and_training_follows(
    world: dict, ray_session: object, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    src = _copy_source(world, tmp_path / "rrt")
    out = tmp_path / "ann"
    cfg = _cfg(src.uri, world["clf"], str(out))
    first = run_pass(cfg, tracking_uri=uri)
    assert first["status"] == "committed" and first["version"] == 1
    assert first["shards_annotated"] == 2
    # A new shard lands under a producer's own name; only it is annotated.
    _land(src, "data/sim-run-7.parquet", world["spare"][:4], first=100)
    second = run_pass(cfg, tracking_uri=uri)
    assert (second["status"], second["version"], second["shards_annotated"]) == (
        "committed",
        2,
        1,
    )
    assert second["new_shards"] == ["rrt/data/sim-run-7.parquet"]
    root = StorageRoot(str(out))
    _, manifest = latest_manifest(root)
    assert manifest.lineage.previous_manifest.endswith("manifests/v1.json")
    assert sorted(e.input_key for e in manifest.shards) == [
        "data/shard-00000.parquet",
        "data/shard-00001.parquet",
        "data/sim-run-7.parquet",
    ]
    client = MlflowClient(uri)
    run = client.get_run(second["run_id"])
    assert run.data.tags["ambient.previous_manifest"].endswith("manifests/v1.json")
    assert run.data.metrics["shards_new"] == 1 and run.data.metrics["rows_annotated"] > 0
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs if i.tags}
    assert {"annotation", "previous"} <= contexts
    lineage = json.loads(
        Path(client.download_artifacts(run.info.run_id, "lineage.json")).read_text()
    )
    assert lineage["new"] == ["rrt/data/sim-run-7.parquet"]
    # Nothing new: no manifest, no run (a watcher every 5 minutes must not spam MLflow).
    res = CliRunner().invoke(
        cli,
        ["watch", "--config", _write_cfg(cfg, tmp_path), "--once", "--tracking-uri", uri],
    )
    assert res.exit_code == 3, res.output  # --once: 3 = nothing new
    assert '"status": "up-to-date"' in res.output
    assert len(client.search_runs([run.info.experiment_id])) == 2
    # Training reads exactly the shards the manifest names: 16 episodes, not a later arrival.
    _land(src, "data/sim-run-8.parquet", world["spare"][4:6], first=200)
    run_cfg = _train_cfg(world, src.uri, str(out))
    prepared = prepare(run_cfg)
    eps = set(prepared.data.chunk_episode[prepared.data.dataset_chunk_ranges[1][0] :].tolist())
    assert len(eps) == 16 and max(eps) < 200
    assert prepared.datasets[1]["annotation"]["uri"].endswith("manifests/v2.json")
    # A shard rewritten after annotation is refused, not silently misjoined.
    _land(src, "data/sim-run-7.parquet", world["spare"][6:10], first=100)
    with pytest.raises(DataError, match=r"sim-run-7.parquet is changed since annotation"):
        prepare(run_cfg)
    third = run_pass(cfg, tracking_uri=uri)
    assert third["changed_shards"] == ["rrt/data/sim-run-7.parquet"]
    assert third["new_shards"] == ["rrt/data/sim-run-8.parquet"]
    # A shard removed from the source leaves the next manifest.
    os.remove(tmp_path / "rrt" / "data" / "sim-run-8.parquet")
    fourth = run_pass(cfg, track=False)
    assert fourth["removed_shards"] == ["rrt/data/sim-run-8.parquet"]
    prepare(run_cfg)


def _write_cfg(cfg: WatchConfig, d: Path) -> str:
    p = d / "watch.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(p)


def _train_cfg(world: dict, source: str, annotation: str, version: int | None = None) -> object:
    return load_run_config(
        ROOT / "sweeps" / "train" / "maze_base.yaml",
        [
            f"data.clean.0.path={world['dir'] / 'clean'}",
            f"data.corrupt.0.path={source}",
            "data.generate=null",
            "policy.down_dims=[16,32]",
            f"data.corrupt.0.annotation={{path: {annotation}, epoch: 1, tau: 0.45, "
            f"granularity: episode, version: {'null' if version is None else version}}}",
        ],
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_incomplete_shard_is_retried_and_bad_shards_are_quarantined(
    world: dict, ray_session: object, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        base = f"s3://{bucket}"
    else:
        base = str(tmp_path)
    src = StorageRoot(f"{base}/rrt")
    write_dataset(src, world["base"], "rrt", "maze", shard_episodes=6)
    cfg = _cfg(src.uri, world["clf"], f"{base}/ann", quarantine_after=3)
    run_pass(cfg, track=False)
    full = _land(src, "data/late.parquet", world["spare"][:3], first=300)
    src.write_bytes("data/late.parquet", full[: len(full) // 2])  # a writer mid-file
    src.write_bytes("data/garbage.parquet", b"PAR1 not parquet at all")
    _land(src, "data/clash.parquet", world["spare"][3:5], first=4)  # episodes 4, 5 exist
    table = episodes_to_table(world["spare"][5:6], "rrt", first_episode_index=400)
    buf = io.BytesIO()
    pq.write_table(table.drop_columns(["action"]), buf)
    src.write_bytes("data/no-action.parquet", buf.getvalue())
    res = run_pass(cfg, track=False)
    assert res["shards_annotated"] == 0 and res["shards_retry_later"] == 2  # late + garbage
    now = {q["input_key"]: q["error"] for q in res["quarantined_now"]}
    assert set(now) == {"data/clash.parquet", "data/no-action.parquet"}
    assert "overlaps data/shard-00000.parquet" in now["data/clash.parquet"]
    assert "lacks columns ['action']" in now["data/no-action.parquet"]
    # The writer finishes: the late shard is annotated on the next pass.
    src.write_bytes("data/late.parquet", full)
    res = run_pass(cfg, track=False)
    assert res["new_shards"] == ["rrt/data/late.parquet"] and res["shards_retry_later"] == 1
    # The garbage never changes: quarantined on its third pass, then left alone.
    res = run_pass(cfg, track=False)
    assert [q["input_key"] for q in res["quarantined_now"]] == ["data/garbage.parquet"]
    assert "unchanged for 3 passes" in res["quarantined_now"][0]["error"]
    _, manifest = latest_manifest(StorageRoot(f"{base}/ann"))
    assert sorted(q.input_key for q in manifest.quarantined) == [
        "data/clash.parquet",
        "data/garbage.parquet",
        "data/no-action.parquet",
    ]
    assert run_pass(cfg, track=False)["status"] == "up-to-date"
    # Fixing a quarantined file releases it: the clash re-landed with fresh episode indices.
    _land(src, "data/clash.parquet", world["spare"][3:5], first=500)
    res = run_pass(cfg, track=False)
    assert res["new_shards"] == ["rrt/data/clash.parquet"] and res["shards_quarantined"] == 2
    # An annotated shard caught mid-rewrite leaves the manifest (its curves are stale) and is
    # annotated again once the rewrite completes.
    original = src.read_bytes("data/shard-00001.parquet")
    src.write_bytes("data/shard-00001.parquet", original[:100])
    res = run_pass(cfg, track=False)
    assert res["removed_shards"] == ["rrt/data/shard-00001.parquet"]
    assert res["retry_later"] == [
        {"dataset": "rrt", "input_key": "data/shard-00001.parquet", "passes": 1}
    ]
    src.write_bytes("data/shard-00001.parquet", original)
    res = run_pass(cfg, track=False)
    assert res["new_shards"] == ["rrt/data/shard-00001.parquet"]


def test_a_second_watcher_is_kept_off_by_the_lease(
    world: dict, ray_session: object, tmp_path: Path
) -> None:
    src = _copy_source(world, tmp_path / "rrt")
    cfg = _cfg(src.uri, world["clf"], str(tmp_path / "ann"))
    ann = StorageRoot(str(tmp_path / "ann"))
    assert ann.acquire_lease(LEASE_KEY, "watcher-on-another-node", 60)
    res = run_pass(cfg, track=False)
    assert res["status"] == "busy" and res["holder"] == "watcher-on-another-node"
    assert latest_manifest(ann) == (0, None) and not ann.list("shards/")
    # `watch --once` tells cron what happened by its exit code (documented in its --help).
    f = _write_cfg(cfg, tmp_path)
    once = ["watch", "--config", f, "--once", "--no-track"]
    out = CliRunner().invoke(cli, once)
    assert out.exit_code == 4, out.output  # busy: another holder
    assert CliRunner().invoke(cli, [*once, "--idle-ok"]).exit_code == 0  # for CronJobs
    ann.release_lease(LEASE_KEY, "watcher-on-another-node")
    out = CliRunner().invoke(cli, once)
    assert out.exit_code == 0, out.output  # a new version committed
    assert latest_manifest(ann)[0] == 1
    assert CliRunner().invoke(cli, once).exit_code == 3  # nothing new
    assert CliRunner().invoke(cli, [*once, "--idle-ok"]).exit_code == 0
    helps = CliRunner().invoke(cli, ["watch", "--help"]).output
    assert all(f"  {code}  " in helps for code in (0, 3, 4, 2))


def test_kill_dash_nine_mid_pass_on_s3_then_rerun_annotates_each_shard_once(
    world: dict, ray_session: object, s3_bucket: str, tmp_path: Path
) -> None:
    # Classifier and data both in S3: actors download the classifier into their node cache.
    clf = f"s3://{s3_bucket}/classifiers/tiny"
    clf_cfg = ClassifierTrainConfig(
        clean=[str(world["dir"] / "clean")],
        corrupt=[str(world["dir"] / "rrt")],
        out=clf,
        channels=[8, 16],
        epochs=1,
        steps_per_epoch=5,
        batch_size=16,
    )
    run_classifier_training(clf_cfg, track=False)
    src = StorageRoot(f"s3://{s3_bucket}/rrt")
    write_dataset(src, world["spare"][:1], "rrt", "maze", shard_episodes=1)
    n = 1
    for i, ep in enumerate(world["spare"][1:18]):  # one-episode shards keep commits frequent
        _land(src, f"data/drop-{i:03d}.parquet", [ep], first=10 + i)
        n += 1
    out = f"s3://{s3_bucket}/annotations/rrt"
    cfg = _cfg(src.uri, clf, out, lease_ttl_s=4.0).model_copy(
        update={"grid_levels": list(range(0, 100, 2)), "num_draws": 8}
    )
    f = _write_cfg(cfg, tmp_path)
    code = (
        "from jobs.reannotate import run_pass; from ambient_platform.config.watch import "
        f"load_watch_config; run_pass(load_watch_config({f!r}), track=False)"
    )
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-w9-")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ann = StorageRoot(out)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if ann.list("done/"):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the pass finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    markers = ann.list("done/")
    assert markers and latest_manifest(ann) == (0, None)
    # The dead watcher's lease still stands; its holder was a process on this host that no
    # longer exists, so the next pass takes it over at once instead of waiting out the TTL.
    dead = ann.read_lease(LEASE_KEY)
    assert dead is not None and not dead.expired() and dead.owner.split("/")[1] == str(proc.pid)
    res = run_pass(cfg, track=False)
    assert res["status"] == "committed" and res["shards_resumed"] == len(markers)
    assert res["shards_resumed"] + res["shards_annotated"] == n
    _, manifest = latest_manifest(ann)
    fs, base = ann.arrow_filesystem()
    src_base = src.arrow_filesystem()[1]
    keys = []
    for e in manifest.shards:
        t = pq.read_table(f"{base}/{e.output_key}", filesystem=fs)
        keys += list(
            zip(t["episode_index"].to_pylist(), t["frame_index"].to_pylist(), strict=True)
        )
    frames = sum(
        pq.read_metadata(f"{src_base}/{i.key}", filesystem=fs).num_rows for i in src.list("data/")
    )
    assert len(keys) == len(set(keys)) == frames  # every row of every new shard, once


def test_follow_up_sweep_runs_once_pinned_to_the_new_version(
    world: dict, ray_session: object, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    src = _copy_source(world, tmp_path / "rrt")
    out = tmp_path / "ann"
    spec = {
        "name": "after-watch",
        "base_config": str(ROOT / "sweeps" / "train" / "maze_ambient.yaml"),
        "overrides": [
            f"data.clean.0.path={world['dir'] / 'clean'}",
            f"data.corrupt.0.path={src.uri}",
            "data.generate=null",
            "data.corrupt.0.sigma_min=0.0",
            f"data.corrupt.0.annotation={{path: {out}, epoch: 1, tau: 0.45}}",
            "train.steps=10",
            "train.batch_size=16",
            "train.warmup_steps=2",
            "train.log_every=5",
            "train.rounds=1",
            "policy.down_dims=[16,32]",
            "eval.episodes=2",
            "eval.round_episodes=2",
            "eval.inference_steps=2",
            "eval.max_steps=20",
            "eval.plot=false",
            f"tracking.uri={uri}",
        ],
        "space": {"data.corrupt.0.annotation.tau": {"grid": [0.45]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "none"},
        "metric": "reach_rate",
        "storage_path": str(tmp_path / "sweeps"),
        "experiment": "after-watch",
    }
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(spec))
    cfg = _cfg(
        src.uri, world["clf"], str(out), on_new_data={"sweep": str(tmp_path / "after.yaml")}
    )
    res = run_pass(cfg, tracking_uri=uri, run_follow_up=follow_up_sweep)
    assert res["follow_up"]["sweep"] == "after-rrt-v1"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("after-watch")
    trials = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert len(trials) == 1
    assert trials[0].data.params["data.corrupt.0.annotation.version"] == "1"
    # The threshold the trial used is logged as metrics; the config's 0.0 is a placeholder.
    assert trials[0].data.params["data.corrupt.0.sigma_min"] == "0.0"
    m = trials[0].data.metrics
    assert {"sigma_min/mean", "sigma_min/p10", "sigma_min/p50", "sigma_min/p90"} <= set(m)
    assert 0.0 < m["sigma_min/mean"] <= 1.0 and 0.0 <= m["sigma_min/eligible_share"] <= 1.0
    again = run_pass(cfg, tracking_uri=uri, run_follow_up=follow_up_sweep)
    assert again["status"] == "up-to-date" and "follow_up" not in again


def test_a_run_mlflow_missed_is_logged_by_the_next_pass(
    world: dict, ray_session: object, tmp_path: Path
) -> None:
    src = _copy_source(world, tmp_path / "rrt")
    cfg = _cfg(src.uri, world["clf"], str(tmp_path / "ann"))
    (tmp_path / "not-a-dir").write_text("")  # the store cannot be created under a file
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises for a dead store
        run_pass(cfg, tracking_uri=f"sqlite:///{tmp_path}/not-a-dir/db.sqlite")
    assert latest_manifest(StorageRoot(str(tmp_path / "ann")))[0] == 1  # committed first
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_pass(cfg, tracking_uri=uri)
    assert res["status"] == "up-to-date" and res["run_id"]
    run = MlflowClient(uri).get_run(res["run_id"])
    assert run.data.tags["ambient.manifest_version"] == "1"
    assert run.data.metrics["shards_new"] == 2
    assert "run_id" not in run_pass(cfg, tracking_uri=uri)  # logged once
