"""Importers: LeRobot v2/v3 and diffusion_policy zarr fixtures written here, read back via
``ambient_platform.datasets.read_frames`` so the round trip goes through our real reader.
Sources with cameras (zarr image arrays, LeRobot v2.x per-episode MP4s and Parquet images) are
imported as LeRobot v3 datasets; their frames are decoded back and compared with the source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from ambient_core.data import DataError
from ambient_platform.datasets import read_frames, read_meta
from ambient_platform.storage import StorageRoot
from jobs.import_zarr import import_zarr
from jobs.importers import import_lerobot, parse_mapping
from orchestrator.cli import main as cli

Truth = dict[int, dict[str, np.ndarray]]
Row = tuple[int, int, dict[str, np.ndarray]]
GOAL = {"observation.goal": "observation.environment_state"}


CAM_INFO: dict[str, object] = {"dtype": "video", "shape": [96, 96, 3], "names": None}


def _features_info(camera: bool) -> dict[str, dict[str, object]]:
    return {
        **({"observation.image": CAM_INFO} if camera else {}),
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "observation.environment_state": {"dtype": "float64", "shape": [3], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    return {
        "observation.state": rng.normal(size=(length, 2)).astype(np.float32),
        "action": rng.normal(size=(length, 2)).astype(np.float32),
        "observation.environment_state": rng.normal(size=(length, 3)),  # float64 on disk
        "next.reward": rng.normal(size=length).astype(np.float32),
    }


def _table(rows: list[Row], first_index: int) -> pa.Table:
    """LeRobot-style rows (episode, frame, per-frame values), mixing the Arrow list types."""
    state = np.stack([r[2]["observation.state"] for r in rows])
    action = np.stack([r[2]["action"] for r in rows])
    env = np.stack([r[2]["observation.environment_state"] for r in rows])
    return pa.table(
        {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 2),
            "observation.environment_state": pa.array(env.tolist(), type=pa.list_(pa.float64())),
            "action": pa.array(action.tolist(), type=pa.large_list(pa.float32())),
            "next.reward": pa.array(np.array([r[2]["next.reward"] for r in rows])),
            "timestamp": pa.array(np.array([r[1] / 10 for r in rows], dtype=np.float32)),
            "frame_index": pa.array([r[1] for r in rows], type=pa.int64()),
            "episode_index": pa.array([r[0] for r in rows], type=pa.int64()),
            "index": pa.array(np.arange(len(rows)) + first_index, type=pa.int64()),
            "task_index": pa.array([0] * len(rows), type=pa.int64()),
        }
    )


def _rows(e: int, ep: dict[str, np.ndarray], rng: np.random.Generator) -> list[Row]:
    length = len(ep["action"])
    return [(e, int(i), {k: v[i] for k, v in ep.items()}) for i in rng.permutation(length)]


def _info(
    root: Path, version: str, data_path: str, episodes: int, frames: int, camera: bool
) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = {
        "codebase_version": version,
        "robot_type": "sim",
        "fps": 15,
        "total_episodes": episodes,
        "total_frames": frames,
        "chunks_size": 2,
        "data_path": data_path,
        "features": _features_info(camera),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))


def make_lerobot_v2(
    root: Path,
    ep_ids: tuple[int, ...] = (0, 1, 2),
    lengths: tuple[int, ...] = (5, 7, 4),
    camera: bool = False,
) -> Truth:
    """One Parquet per episode in chunk dirs (chunks_size 2), rows shuffled within a file;
    ``camera`` declares a video feature (no video files: see ``make_lerobot_v2_cameras``)."""
    rng = np.random.default_rng(0)
    truth: Truth = {}
    index = 0
    for e, length in zip(ep_ids, lengths, strict=True):
        truth[e] = _episode(rng, length)
        f = root / "data" / f"chunk-{e // 2:03d}" / f"episode_{e:06d}.parquet"
        f.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(_rows(e, truth[e], rng), index), f)
        index += length
    template = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    _info(root, "v2.1", template, len(ep_ids), index, camera)
    return truth


def make_lerobot_v3(root: Path, camera: bool = False) -> Truth:
    """Two files holding 5 episodes (3 + 2), rows of different episodes interleaved."""
    rng = np.random.default_rng(1)
    lengths = (3, 6, 4, 5, 2)
    truth: Truth = {e: _episode(rng, n) for e, n in enumerate(lengths)}
    index = 0
    for file_index, eps in enumerate(((0, 1, 2), (3, 4))):
        rows = [r for e in eps for r in _rows(e, truth[e], rng)]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        f = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        f.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(rows, index), f)
        index += len(rows)
    template = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    _info(root, "v3.0", template, 5, index, camera)
    return truth


def _check_round_trip(out: str | Path, truth: Truth, keys: dict[str, str]) -> None:
    """Every OUR feature equals THEIR column, episodes in original-id order, bounds right."""
    frames, meta = read_frames(StorageRoot(out), list(keys))
    ids = sorted(truth)
    assert frames.episode_index.tolist() == list(range(len(ids)))
    assert meta["source_episode_index"] == ids
    lengths = [len(truth[e]["action"]) for e in ids]
    assert np.diff(frames.episode_bounds, axis=1).ravel().tolist() == lengths
    for ours, theirs in keys.items():
        want = np.concatenate([truth[e][theirs].reshape(len(truth[e][theirs]), -1) for e in ids])
        np.testing.assert_array_equal(frames.features[ours], want.astype(np.float32))


def test_lerobot_v2_round_trip_with_goal_mapping(tmp_path: Path) -> None:
    truth = make_lerobot_v2(tmp_path / "pusht", ep_ids=(0, 1, 5), camera=True)
    out = tmp_path / "out"
    result = import_lerobot(tmp_path / "pusht", out, GOAL, low_dim_only=True)
    keys = {"observation.state": "observation.state", "action": "action", **GOAL}
    _check_round_trip(out, truth, keys)
    assert result["episodes"] == 3 and result["frames"] == 16
    assert result["source"] == "pusht" and result["fps"] == 15.0
    assert result["codebase_version"] == "v2.1"
    assert result["features"]["observation.goal"] == {
        "from": "observation.environment_state",
        "shape": [3],
    }
    assert result["skipped"] == {"observation.image": "video"}
    meta = read_meta(StorageRoot(out))
    assert result["digest"] == meta["digest"] and result["out"] == StorageRoot(out).uri
    assert meta["imported_from"]["codebase_version"] == "v2.1"
    assert len(list(tmp_path.joinpath("pusht", "data").iterdir())) == 2  # chunk-000, chunk-002


def test_lerobot_v3_multi_episode_files(tmp_path: Path) -> None:
    truth = make_lerobot_v3(tmp_path / "v3")
    result = import_lerobot(tmp_path / "v3", tmp_path / "out", GOAL, source="mine", task="pusht")
    keys = {"observation.state": "observation.state", "action": "action", **GOAL}
    _check_round_trip(tmp_path / "out", truth, keys)
    assert (result["episodes"], result["frames"], result["source"]) == (5, 20, "mine")
    assert read_meta(StorageRoot(tmp_path / "out"))["task"] == "pusht"


def test_lerobot_mapping_overrides_and_drops_defaults(tmp_path: Path) -> None:
    truth = make_lerobot_v2(tmp_path / "ds")
    mapping = {"observation.state": "next.reward", "observation.goal": "observation.state"}
    result = import_lerobot(tmp_path / "ds", tmp_path / "a", mapping)
    assert result["features"]["observation.state"] == {"from": "next.reward", "shape": [1]}
    keys = {
        "observation.state": "next.reward",
        "action": "action",
        "observation.goal": "observation.state",
    }
    _check_round_trip(tmp_path / "a", truth, keys)
    dropped = import_lerobot(tmp_path / "ds", tmp_path / "b", {"observation.state": None})
    assert list(dropped["features"]) == ["action"]
    assert list(read_meta(StorageRoot(tmp_path / "b"))["features"]) == ["action"]


def test_lerobot_missing_column_names_column_and_file(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds")
    with pytest.raises(DataError) as err:
        import_lerobot(tmp_path / "ds", tmp_path / "out", {"observation.goal": "goal_pos"})
    msg = str(err.value)
    assert "'goal_pos'" in msg and "'observation.goal'" in msg
    assert "episode_000000.parquet" in msg
    assert not (tmp_path / "out").exists()


def test_lerobot_nan_names_the_episode(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds", ep_ids=(0, 3, 4))
    f = tmp_path / "ds" / "data" / "chunk-001" / "episode_000003.parquet"
    table = pq.read_table(f)
    values = np.stack(table.column("action").to_pylist()).astype(np.float32)
    values[2, 1], values[4, 0] = np.nan, np.inf
    col = pa.array(values.tolist(), type=pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", col), f)
    with pytest.raises(DataError, match=r"'action'.*2 NaN/inf values.*first at episode 3"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")


def test_lerobot_duplicate_episode_and_truncated_file(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds", ep_ids=(0, 1, 2))
    first = tmp_path / "ds" / "data" / "chunk-000" / "episode_000000.parquet"
    copy = tmp_path / "ds" / "data" / "chunk-000" / "episode_000009.parquet"
    copy.write_bytes(first.read_bytes())  # a second file holding episode 0 again
    with pytest.raises(DataError, match=r"episode_000009.parquet: episode 0 is also in .*000000"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    copy.write_bytes(first.read_bytes()[:-20])  # a download cut short: no Parquet footer
    with pytest.raises(DataError, match=r"episode_000009.parquet: not a readable Parquet file"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lerobot_version_and_layout_errors(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds", camera=True)
    info_path = tmp_path / "ds" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(DataError, match=r"info.json: unsupported codebase_version 'v1.6'"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    info_path.write_text(json.dumps(info))
    with pytest.raises(
        DataError, match=r"'observation.image' \(-> 'observation.state'\) is a cam"
    ):
        import_lerobot(
            tmp_path / "ds", tmp_path / "out", {"observation.state": "observation.image"}
        )
    with pytest.raises(DataError, match=r"names camera features.*--low-dim-only"):
        import_lerobot(
            tmp_path / "ds", tmp_path / "out", {"observation.images.a": "observation.image"},
            low_dim_only=True,
        )  # fmt: skip
    # the camera is declared but its video files are missing (an incomplete download)
    with pytest.raises(DataError, match=r"episode 0 camera 'observation.image'.*is missing"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    (tmp_path / "ds" / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    with pytest.raises(DataError, match="total_episodes=3"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    with pytest.raises(DataError, match="not a LeRobot"):
        import_lerobot(tmp_path / "nothing", tmp_path / "out")


def test_lerobot_frame_gap_rejected(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds")
    f = tmp_path / "ds" / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(f)
    pq.write_table(table.filter(pa.compute.not_equal(table.column("frame_index"), 3)), f)
    info_path = tmp_path / "ds" / "meta" / "info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "total_frames": 15}))
    with pytest.raises(DataError, match="episode 1 has frame_index 4 where 3 was expected"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    make_lerobot_v2(tmp_path / "ds")
    import_lerobot(tmp_path / "ds", tmp_path / "out")
    with pytest.raises(DataError, match="already exists"):
        import_lerobot(tmp_path / "ds", tmp_path / "out")
    assert import_lerobot(tmp_path / "ds", tmp_path / "out", overwrite=True)["episodes"] == 3


def test_lerobot_to_s3(tmp_path: Path, s3_bucket: str) -> None:
    truth = make_lerobot_v3(tmp_path / "v3")
    out = f"s3://{s3_bucket}/imported/pusht"
    result = import_lerobot(tmp_path / "v3", out, GOAL)
    assert result["out"] == out
    keys = {"observation.state": "observation.state", "action": "action", **GOAL}
    _check_round_trip(out, truth, keys)


# ---------------------------------------------------------------------------------- zarr


def make_zarr(
    path: Path, ends: tuple[int, ...] = (4, 9, 9, 12), state_key: str = "state"
) -> dict[str, np.ndarray]:
    """A ReplayBuffer: data/* of shape (N, ...) and meta/episode_ends (one empty episode)."""
    rng = np.random.default_rng(2)
    n = ends[-1]
    arrays: dict[str, np.ndarray] = {
        state_key: rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.normal(size=(n, 2)),
        "target": rng.normal(size=(n, 2)).astype(np.float32),
        "keypoint": rng.normal(size=(n, 3, 2)).astype(np.float32),
    }
    store: zarr.storage.BaseStore | str = str(path)
    if path.name.endswith(".zip"):
        store = zarr.ZipStore(str(path), mode="w")
    group = zarr.group(store=store, overwrite=True)
    data, meta = group.create_group("data"), group.create_group("meta")
    for key, value in arrays.items():
        data.array(key, value, chunks=(5, *value.shape[1:]))
    meta.array("episode_ends", np.array(ends, dtype=np.int64))
    if isinstance(store, zarr.ZipStore):
        store.close()
    return arrays


def _zarr_truth(arrays: dict[str, np.ndarray], ends: tuple[int, ...]) -> Truth:
    starts = (0, *ends[:-1])
    return {
        i: {k: v[s:e] for k, v in arrays.items()}
        for i, (s, e) in enumerate(zip(starts, ends, strict=True))
        if e > s
    }


def test_zarr_round_trip_defaults_and_target(tmp_path: Path) -> None:
    arrays = make_zarr(tmp_path / "pusht_replay.zarr")
    out = tmp_path / "out"
    result = import_zarr(tmp_path / "pusht_replay.zarr", out, {"observation.goal": "target"})
    truth = _zarr_truth(arrays, (4, 9, 9, 12))
    keys = {"observation.state": "state", "action": "action", "observation.goal": "target"}
    _check_round_trip(out, truth, keys)  # source ids [0, 1, 3]: the empty episode 2 is gone
    assert (result["episodes"], result["frames"], result["source"]) == (3, 12, "pusht_replay")
    assert any("empty episodes" in n for n in result["notes"])
    assert any("keypoint" in n for n in result["notes"])


def test_zarr_agent_pos_fallback_flatten_and_zip(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr.zip"
    arrays = make_zarr(path, ends=(5, 12), state_key="agent_pos")
    result = import_zarr(path, tmp_path / "out", {"observation.goal": "keypoint"}, fps=20)
    assert result["features"]["observation.state"]["from"] == "agent_pos"
    assert result["features"]["observation.goal"]["shape"] == [6]
    assert result["source"] == "buf" and result["fps"] == 20.0
    keys = {"observation.state": "agent_pos", "action": "action", "observation.goal": "keypoint"}
    _check_round_trip(tmp_path / "out", _zarr_truth(arrays, (5, 12)), keys)


def test_zarr_errors(tmp_path: Path) -> None:
    make_zarr(tmp_path / "a.zarr", ends=(4, 9, 11))  # data has 11 rows, ends claim 11: fine
    with pytest.raises(DataError, match=r"data/goal .*'observation.goal'.*not found"):
        import_zarr(tmp_path / "a.zarr", tmp_path / "out", {"observation.goal": "goal"})
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="a")
    group["meta"]["episode_ends"][:] = [4, 9, 10]
    with pytest.raises(DataError, match=r"data/\w+ has 11 rows but meta/episode_ends\[-1\] = 10"):
        import_zarr(tmp_path / "a.zarr", tmp_path / "out")
    group["meta"]["episode_ends"][:] = [4, 3, 11]
    with pytest.raises(DataError, match="episode 1 ends at 3"):
        import_zarr(tmp_path / "a.zarr", tmp_path / "out")
    group["meta"]["episode_ends"][:] = [4, 9, 11]
    group["data"]["target"][6] = np.nan
    with pytest.raises(
        DataError, match=r"2 NaN/inf values in 1 frames .*first at episode 1 frame 2"
    ):
        import_zarr(tmp_path / "a.zarr", tmp_path / "out", {"observation.goal": "target"})
    make_zarr(tmp_path / "b.zarr", state_key="qpos")
    with pytest.raises(DataError, match="observation.state=KEY"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "out")
    assert import_zarr(tmp_path / "b.zarr", tmp_path / "out", {"observation.state": "qpos"})
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DataError, match="not a zarr"):
        import_zarr(tmp_path / "empty.zarr", tmp_path / "out2")


def test_zarr_to_s3(tmp_path: Path, s3_bucket: str) -> None:
    arrays = make_zarr(tmp_path / "r.zarr")
    out = f"s3://{s3_bucket}/zarr-import"
    import_zarr(tmp_path / "r.zarr", out, {"observation.goal": "target"})
    keys = {"observation.state": "state", "action": "action", "observation.goal": "target"}
    _check_round_trip(out, _zarr_truth(arrays, (4, 9, 9, 12)), keys)


# ----------------------------------------------------------------------------------- CLI


def test_cli_prints_json(tmp_path: Path) -> None:
    runner = CliRunner()
    make_zarr(tmp_path / "r.zarr")
    out = tmp_path / "out"
    args = ["data", "import", "zarr", str(tmp_path / "r.zarr"), "--out", str(out)]
    res = runner.invoke(cli, [*args, "--map", "observation.goal=target"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["episodes"] == 3 and result["features"]["observation.goal"]["shape"] == [2]
    make_lerobot_v2(tmp_path / "ds")
    args = ["data", "import", "lerobot", str(tmp_path / "ds"), "--out", str(tmp_path / "o2")]
    res = runner.invoke(cli, [*args, "--map", "action="])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["features"]) == ["observation.state"]
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert again.stderr.startswith("error: ") and "Traceback" not in again.output
    assert parse_mapping(["a.b=c", "x="]) == {"a.b": "c", "x": None}
    with pytest.raises(DataError, match="OURS=THEIRS"):
        parse_mapping(["nope"])


# ------------------------------------------------------------------------------- cameras


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth moving gradients: what a camera sees, and what H.264 keeps well."""
    yy, xx = np.mgrid[:h, :w]
    t = np.arange(n)[:, None, None]
    rgb = [(xx * 5 + t * 3 + seed * 40) % 256, (yy * 6 + t * 2) % 256, 60 + 0 * xx + t * 4]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def _assert_close(got: np.ndarray, want: np.ndarray, tol: float = 4.0) -> None:
    """Same pictures through a lossy codec: same shape, small mean absolute difference (a wrong
    frame or channel order is off by tens)."""
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).mean() < tol


def make_zarr_cameras(
    path: Path, ends: tuple[int, ...], size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """A ReplayBuffer as diffusion_policy's PushT image task writes it: data/img (N, H, W, 3)
    uint8 next to state and action (plus a second, odd-sized camera)."""
    n = ends[-1]
    rng = np.random.default_rng(3)
    arrays = {
        "img": _frames(n, *size, seed=0),
        "wrist": _frames(n, 9, 11, seed=1),
        "state": rng.normal(size=(n, 2)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
    }
    group = zarr.group(store=str(path), overwrite=True)
    data, meta = group.create_group("data"), group.create_group("meta")
    for key, value in arrays.items():
        data.array(key, value, chunks=(7, *value.shape[1:]))
    meta.array("episode_ends", np.array(ends, dtype=np.int64))
    return arrays


def test_zarr_with_images_becomes_lerobot_v3_and_keeps_the_frames(tmp_path: Path) -> None:
    from ambient_platform.lerobot import LeRobotDataset

    ends = (8, 8, 20, 26)  # episode 1 is empty
    arrays = make_zarr_cameras(tmp_path / "pusht.zarr", ends, (32, 40))
    out = tmp_path / "out"
    result = import_zarr(tmp_path / "pusht.zarr", out, {"observation.images.top": "img"})
    assert result["out_format"] == "lerobot/v3.0" and result["episodes"] == 3
    assert result["cameras"]["observation.images.top"] == {
        "from": "img",
        "shape": [32, 40, 3],
        "storage": "video",
    }
    wrist = result["cameras"]["observation.images.wrist"]
    assert wrist["storage"] == "image" and wrist["shape"] == [9, 11, 3]  # odd size: PNG
    assert any("odd frame sizes" in n for n in result["notes"])
    root = StorageRoot(out)
    assert root.exists("videos/observation.images.top/chunk-000/file-000.mp4")
    lineage = root.read_json("meta/ambient_import.json")
    assert lineage["source_episode_index"] == [0, 2, 3] and lineage["format"] == "zarr"
    # low-dim columns through our shard reader, exactly
    _check_round_trip(out, _zarr_truth(arrays, ends), {"observation.state": "state"})
    ds = LeRobotDataset(root)
    assert ds.camera_keys == ["observation.images.top", "observation.images.wrist"]
    for i, (s, e) in enumerate(((0, 8), (8, 20), (20, 26))):
        _assert_close(ds.decode_episode("observation.images.top", i), arrays["img"][s:e])
        np.testing.assert_array_equal(
            ds.decode_episode("observation.images.wrist", i), arrays["wrist"][s:e]
        )
    assert read_meta(root)["cameras"]["observation.images.top"]["shape"] == [32, 40, 3]

    low = import_zarr(tmp_path / "pusht.zarr", tmp_path / "low", low_dim_only=True)
    assert "cameras" not in low and any("['img', 'wrist']" in n for n in low["notes"])
    assert read_meta(StorageRoot(tmp_path / "low"))["format"] == "ambient-dataset/1"
    dropped = import_zarr(
        tmp_path / "pusht.zarr", tmp_path / "one", {"observation.images.wrist": None}
    )
    assert list(dropped["cameras"]) == ["observation.images.img"]


def test_zarr_camera_errors(tmp_path: Path) -> None:
    make_zarr_cameras(tmp_path / "b.zarr", (5, 9), (16, 16))
    with pytest.raises(DataError, match=r"fps 7.5 must be a positive whole number"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "out", fps=7.5)
    with pytest.raises(DataError, match=r"array 'img' \(-> 'observation.goal'\) is a camera"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "out", {"observation.goal": "img"})
    with pytest.raises(DataError, match=r"camera arrays \['img'\], but --low-dim-only"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "o", {"observation.images.a": "img"}, None,
                    low_dim_only=True)  # fmt: skip
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="a")
    group["data"].array("depth", np.zeros((9, 16, 16, 1), np.float32))
    with pytest.raises(DataError, match=r"data/depth has shape \(9, 16, 16, 1\).*looks like"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "out", {"observation.goal": "depth"})
    import_zarr(tmp_path / "b.zarr", tmp_path / "out")
    with pytest.raises(DataError, match="info.json already exists"):
        import_zarr(tmp_path / "b.zarr", tmp_path / "out")


def make_lerobot_v2_cameras(root: Path) -> tuple[Truth, dict[int, dict[str, np.ndarray]]]:
    """A LeRobot v2.1 dataset with a camera as per-episode MP4s (videos/chunk-XXX/<key>/
    episode_XXXXXX.mp4) and a camera as Parquet images; episode ids 0, 1, 5 in chunks 0, 0, 2."""
    from ambient_platform.lerobot.images import encode_images
    from ambient_platform.lerobot.write import VideoOptions, _encode_video

    truth = make_lerobot_v2(root, ep_ids=(0, 1, 5), camera=True)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.image"]["shape"] = [24, 32, 3]
    info["features"]["observation.images.wrist"] = {"dtype": "image", "shape": [16, 16, 3]}
    info["video_path"] = (
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    )
    info_path.write_text(json.dumps(info))
    cams: dict[int, dict[str, np.ndarray]] = {}
    for e, ep in truth.items():
        n = len(ep["action"])
        cams[e] = {
            "observation.image": _frames(n, 24, 32, seed=e),
            "observation.images.wrist": _frames(n, 16, 16, seed=e + 1),
        }
        video = root / f"videos/chunk-{e // 2:03d}/observation.image/episode_{e:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        with video.open("wb") as fh:
            _encode_video(fh, [cams[e]["observation.image"]], 15, VideoOptions())
        f = root / "data" / f"chunk-{e // 2:03d}" / f"episode_{e:06d}.parquet"
        table = pq.read_table(f)
        order = table.column("frame_index").to_numpy()  # rows are shuffled in the file
        wrist = encode_images(cams[e]["observation.images.wrist"][order])
        pq.write_table(table.append_column("observation.images.wrist", wrist), f)
    return truth, cams


def test_lerobot_v2_cameras_are_kept(tmp_path: Path) -> None:
    from ambient_platform.lerobot import LeRobotDataset

    truth, cams = make_lerobot_v2_cameras(tmp_path / "v2")
    out = tmp_path / "out"
    result = import_lerobot(tmp_path / "v2", out, GOAL)
    assert result["out_format"] == "lerobot/v3.0" and result["episodes"] == 3
    assert {k: v["storage"] for k, v in result["cameras"].items()} == {
        "observation.image": "video",
        "observation.images.wrist": "image",
    }
    keys = {"observation.state": "observation.state", "action": "action", **GOAL}
    _check_round_trip(out, truth, keys)
    ds = LeRobotDataset(StorageRoot(out))
    assert ds.fps == 15
    for i, e in enumerate(sorted(truth)):
        # Encoded twice (the v2 source's MP4, then ours): 3.0-3.95 alone, 4.0007 once in a
        # full-suite run, so the single-encode bound of 4 is too tight here.
        got = ds.decode_episode("observation.image", i)
        _assert_close(got, cams[e]["observation.image"], tol=6.0)
        np.testing.assert_array_equal(
            ds.decode_episode("observation.images.wrist", i), cams[e]["observation.images.wrist"]
        )
    # a truncated download: one episode's video file is gone
    (tmp_path / "v2/videos/chunk-002/observation.image/episode_000005.mp4").unlink()
    with pytest.raises(DataError, match=r"episode 5 camera 'observation.image'.*is missing"):
        import_lerobot(tmp_path / "v2", tmp_path / "out2", GOAL)


def test_lerobot_v3_with_cameras_is_read_in_place_not_imported(tmp_path: Path) -> None:
    make_lerobot_v3(tmp_path / "v3", camera=True)
    with pytest.raises(DataError, match=r"is LeRobot v3 with cameras.*read in place.*--low-dim"):
        import_lerobot(tmp_path / "v3", tmp_path / "out")
    result = import_lerobot(tmp_path / "v3", tmp_path / "out", low_dim_only=True)
    assert result["skipped"] == {"observation.image": "video"} and result["episodes"] == 5


def test_zarr_cameras_to_s3(tmp_path: Path, s3_bucket: str) -> None:
    from ambient_platform.lerobot import LeRobotDataset

    arrays = make_zarr_cameras(tmp_path / "r.zarr", (6, 14), (24, 24))
    out = f"s3://{s3_bucket}/zarr-cameras"
    result = import_zarr(tmp_path / "r.zarr", out, {"observation.images.wrist": None})
    assert result["out"] == out and list(result["cameras"]) == ["observation.images.img"]
    ds = LeRobotDataset(out)
    _assert_close(ds.decode_episode("observation.images.img", 1), arrays["img"][6:14])
    assert read_meta(StorageRoot(out))["source_episode_index"] == [0, 1]
