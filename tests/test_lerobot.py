"""LeRobot v3 datasets with MP4 videos, built on the fly: write, read in place (local and on the
moto S3 server), validation errors, the image chunk dataset and a short image-policy training."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ambient_core.data import ChunkSpec
from ambient_core.envs import bin_sorting_pixels as px
from ambient_core.errors import DataError
from ambient_platform.lerobot import LeRobotDataset, VideoOptions, write_lerobot
from ambient_platform.storage import StorageRoot

SIZE = 48
CAM = px.IMAGE_KEY


@pytest.fixture(scope="module")
def pixel_episodes() -> list[dict[str, np.ndarray]]:
    clean, corrupt = px.generate(3, 2, seed=0, size=SIZE)
    return clean + corrupt


def _write(root: StorageRoot, episodes: list[dict[str, np.ndarray]]) -> dict[str, object]:
    tasks = ["sort" if i < 3 else "sort opposite" for i in range(len(episodes))]
    return write_lerobot(root, episodes, fps=10, tasks=tasks, episodes_per_file=2)


def test_write_layout_and_read_back_locally(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    root = StorageRoot(tmp_path / "pix")
    info = _write(root, pixel_episodes)
    files = sorted(f.key for f in root.list())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-000/file-002.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        f"videos/{CAM}/chunk-000/file-000.mp4",
        f"videos/{CAM}/chunk-000/file-001.mp4",
        f"videos/{CAM}/chunk-000/file-002.mp4",
    ]
    lengths = [len(ep[px.ACTION_KEY]) for ep in pixel_episodes]
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sum(lengths)
    feats = info["features"]
    assert isinstance(feats, dict)
    assert feats[CAM]["dtype"] == "video" and feats[CAM]["shape"] == [SIZE, SIZE, 3]
    assert feats[px.PROPRIO_KEY] == {"dtype": "float32", "shape": [3], "names": None}
    episodes = pq.read_table(tmp_path / "pix/meta/episodes/chunk-000/file-000.parquet")
    rows = episodes.to_pylist()
    assert [r["length"] for r in rows] == lengths
    assert rows[3]["data/file_index"] == 1 and rows[3][f"videos/{CAM}/file_index"] == 1
    assert rows[3][f"videos/{CAM}/from_timestamp"] == pytest.approx(lengths[2] / 10)
    assert rows[2][f"videos/{CAM}/from_timestamp"] == 0.0
    assert rows[4]["tasks"] == ["sort opposite"]
    data = pq.read_table(tmp_path / "pix/data/chunk-000/file-001.parquet")
    assert pa.types.is_fixed_size_list(data.schema.field(px.ENV_STATE_KEY).type)
    assert data.column("index")[0].as_py() == sum(lengths[:2])
    tasks = pd.read_parquet(tmp_path / "pix/meta/tasks.parquet")
    assert tasks.loc["sort opposite", "task_index"] == 1

    ds = LeRobotDataset(root, name="pix")
    assert ds.video_keys == [CAM] and ds.fps == 10
    assert set(ds.lowdim_keys) == {px.PROPRIO_KEY, px.ENV_STATE_KEY, px.ACTION_KEY}
    frames = ds.read_frames([px.ENV_STATE_KEY, px.ACTION_KEY])
    assert frames.n_frames == sum(lengths)
    np.testing.assert_array_equal(
        frames.features[px.ACTION_KEY][: lengths[0]], pixel_episodes[0][px.ACTION_KEY]
    )
    for ep, (idx, cams) in zip(pixel_episodes, ds.iter_episodes(), strict=True):
        video = cams[CAM]
        assert video.shape == ep[CAM].shape and video.dtype == np.uint8
        err = np.abs(video.astype(int) - ep[CAM].astype(int)).mean()
        assert err < 4.0, (idx, err)  # lossy H.264, but the same pictures
    report = ds.validate()
    assert report["decoded_frames"] == sum(lengths) and report["episodes"] == 5


def test_read_in_place_from_s3(
    s3_bucket: str, pixel_episodes: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/lerobot/pix"
    _write(StorageRoot(uri), pixel_episodes)
    ds = LeRobotDataset(uri)
    assert ds.name == uri
    frames = ds.read_frames([px.PROPRIO_KEY, px.ACTION_KEY])
    assert frames.n_frames == sum(len(ep[px.ACTION_KEY]) for ep in pixel_episodes)
    video = ds.decode_episode(CAM, 3)  # second file, first episode in it: one seek, range reads
    assert np.abs(video.astype(int) - pixel_episodes[3][CAM].astype(int)).mean() < 4.0
    tail = ds.decode_episode(CAM, 1)  # an episode that starts mid-file
    assert len(tail) == len(pixel_episodes[1][CAM])
    assert ds.validate()["decoded_frames"] == frames.n_frames
    assert not any(tmp_path.iterdir())  # nothing was copied to local disk


def _rewrite_json(path: Path, edit: dict[str, object]) -> None:
    info = json.loads(path.read_text())
    info.update(edit)
    path.write_text(json.dumps(info))


def test_validation_errors_name_dataset_episode_and_camera(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    with pytest.raises(DataError, match=r"'nothing'.*meta/info.json is missing"):
        LeRobotDataset(StorageRoot(tmp_path / "empty"), name="nothing")

    root = StorageRoot(tmp_path / "pix")
    _write(root, pixel_episodes[:3])
    info = tmp_path / "pix/meta/info.json"
    good = info.read_text()
    _rewrite_json(info, {"codebase_version": "v2.1"})
    with pytest.raises(DataError, match=r"'pix'.*codebase_version 'v2.1'.*convert"):
        LeRobotDataset(root, name="pix")
    info.write_text(good)

    features = json.loads(good)["features"]
    features[CAM]["shape"] = [32, 32, 3]
    _rewrite_json(info, {"features": features})
    with pytest.raises(
        DataError, match=r"episode 1 camera 'observation.images.top'.*48x48.*32x32"
    ):
        LeRobotDataset(root, name="pix").decode_episode(CAM, 1)
    info.write_text(good)

    # the episode table claims one frame more than the data and the video hold
    ep_path = tmp_path / "pix/meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(ep_path)
    rows = table.to_pylist()
    rows[1]["length"] += 1
    rows[1]["dataset_to_index"] += 1
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), ep_path)
    ds = LeRobotDataset(root, name="pix")
    with pytest.raises(DataError, match=r"'pix': episode 1: data has \d+ rows.*says length"):
        ds.read_frames([px.ACTION_KEY])
    with pytest.raises(DataError, match=r"episode 1 camera 'observation.images.top'.*decoded"):
        ds.decode_episode(CAM, 1)
    rows[1]["dataset_to_index"] += 5
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), ep_path)
    with pytest.raises(DataError, match=r"episode 1: length .* dataset_from_index"):
        LeRobotDataset(root, name="pix")


def test_unreadable_video_names_episode_and_camera(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    root = StorageRoot(tmp_path / "pix")
    _write(root, pixel_episodes[:4])
    video = tmp_path / f"pix/videos/{CAM}/chunk-000/file-001.mp4"
    video.write_bytes(b"not an mp4 at all" * 100)
    ds = LeRobotDataset(root, name="pix")
    ds.decode_episode(CAM, 0)  # other files are fine
    with pytest.raises(DataError, match=r"'pix'.*file-001.mp4"):
        ds.decode_episode(CAM, 2)
    with pytest.raises(DataError, match=r"'pix'.*file-001.mp4"):
        ds.validate()
    video.unlink()
    with pytest.raises(DataError, match=r"file-001.mp4"):
        LeRobotDataset(root, name="pix").decode_episode(CAM, 3)
    # a truncated file: the episodes past the cut cannot be decoded
    root2 = StorageRoot(tmp_path / "pix2")
    _write(root2, pixel_episodes[:2])
    v2 = tmp_path / f"pix2/videos/{CAM}/chunk-000/file-000.mp4"
    data = v2.read_bytes()
    v2.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"episode \d camera 'observation.images.top'"):
        LeRobotDataset(root2, name="pix2").validate()


def test_write_rejects_bad_episodes(tmp_path: Path) -> None:
    root = StorageRoot(tmp_path / "bad")
    with pytest.raises(DataError, match="no episodes"):
        write_lerobot(root, [], fps=10, tasks="t")
    ragged: dict[str, np.ndarray] = {
        "action": np.zeros((5, 3), np.float32),
        CAM: np.zeros((4, 8, 8, 3), np.uint8),
    }
    with pytest.raises(DataError, match="episode 0 has ragged"):
        write_lerobot(root, [ragged], fps=10, tasks="t")
    gray: dict[str, np.ndarray] = {
        "action": np.zeros((5, 3), np.float32),
        CAM: np.zeros((5, 8, 8, 1), np.uint8),
    }
    with pytest.raises(DataError, match=r"camera 'observation.images.top' must be \(L, H, W, 3\)"):
        write_lerobot(root, [gray], fps=10, tasks="t")
    odd: dict[str, np.ndarray] = {
        "action": np.zeros((5, 3), np.float32),
        CAM: np.zeros((5, 9, 8, 3), np.uint8),
    }
    with pytest.raises(DataError, match=r"odd frame height or width.*parquet_images"):
        write_lerobot(root, [odd], fps=10, tasks="t")
    write_lerobot(root, [odd], fps=10, tasks="t", parquet_images=[CAM])  # PNG takes any size
    with pytest.raises(DataError, match=r"parquet_images \['action'\] are not cameras"):
        write_lerobot(root, [odd], fps=10, tasks="t", parquet_images=["action"])
    small: dict[str, np.ndarray] = {
        "action": np.zeros((5, 3), np.float32),
        CAM: np.zeros((5, 8, 8, 3), np.uint8),
    }
    with pytest.raises(DataError, match=r"episode 1 camera .* shape \(10, 8, 3\), episode 0"):
        write_lerobot(root, [small, {**small, CAM: np.zeros((5, 10, 8, 3), np.uint8)}],
                      fps=10, tasks="t")  # fmt: skip


def test_image_chunk_dataset_streams_frames_from_lerobot(
    s3_bucket: str, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    from ambient_core.vision_data import ImageChunkDataset

    uri = f"s3://{s3_bucket}/pix"
    _write(StorageRoot(uri), pixel_episodes)
    ds = LeRobotDataset(uri)
    frames = ds.read_frames([px.PROPRIO_KEY, px.ACTION_KEY])
    spec = ChunkSpec(horizon=8, n_obs_steps=2, n_action_steps=4)
    data = ImageChunkDataset([frames], spec, [px.PROPRIO_KEY], [CAM], [ds])
    ids = np.array([0, 5, len(data) - 1, 40])
    obs, act = data.batch(ids)  # no prefetch: every episode is decoded on demand (waits)
    assert obs[CAM].shape == (4, 2, SIZE, SIZE, 3) and act.shape == (4, 8, 3)
    assert data.cache.stats.waits >= 2
    # chunk 0 starts one frame before the episode (pad_before = 1): frame 0 repeated
    decoded0 = ds.decode_episode(CAM, 0)
    np.testing.assert_array_equal(obs[CAM][0, 0], decoded0[0])
    np.testing.assert_array_equal(obs[CAM][0, 1], decoded0[0])
    np.testing.assert_array_equal(obs[CAM][1], decoded0[4:6])
    last = ds.decode_episode(CAM, 4)
    first_row = int(data.chunk_start[ids[2]] - frames.episode_bounds[4, 0])
    np.testing.assert_array_equal(obs[CAM][2], last[first_row : first_row + 2])

    data2 = ImageChunkDataset([frames], spec, [px.PROPRIO_KEY], [CAM], [ds]).start()
    data2.cache.wait()  # background decoder finished: everything is in memory
    assert data2.cache.stats.decoded_episodes == 5 and data2.cache.stats.waits == 0
    obs2, _ = data2.batch(ids)
    np.testing.assert_array_equal(obs2[CAM], obs[CAM])
    assert data2.cache.stats.waits == 0

    small = ImageChunkDataset([frames], spec, [px.PROPRIO_KEY], [CAM], [ds], cache_bytes=1)
    obs3, _ = small.batch(ids)  # budget of one episode: evicts and re-decodes, same frames
    np.testing.assert_array_equal(obs3[CAM], obs[CAM])
    assert small.cache.stats.evictions >= 1 and len(small.cache.items) == 1


def test_image_policy_trains_on_lerobot_from_s3_and_plays_from_pixels(
    s3_bucket: str, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    import torch

    from ambient_core.policy import Normalizer, PolicyRunner
    from ambient_core.sampler import NoiseFirstSampler
    from ambient_core.schedule import ddpm_sigmas
    from ambient_core.train import TrainConfig, make_state, train
    from ambient_core.vision import VisionDiffusionPolicy, VisionPolicySpec
    from ambient_core.vision_data import ImageChunkDataset

    uri = f"s3://{s3_bucket}/pix"
    _write(StorageRoot(uri), pixel_episodes)
    ds = LeRobotDataset(uri)
    spec_c = ChunkSpec(horizon=8, n_obs_steps=2, n_action_steps=4)
    frames = ds.read_frames([px.PROPRIO_KEY, px.ACTION_KEY])
    data = ImageChunkDataset([frames], spec_c, [px.PROPRIO_KEY], [CAM], [ds]).start()
    spec = VisionPolicySpec(
        obs_dims={px.PROPRIO_KEY: 3},
        action_dim=3,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        network_kwargs={"down_dims": [16, 32], "diffusion_step_embed_dim": 16},
        image_keys=[CAM],
        image_shape=[3, SIZE, SIZE],
        crop_shape=[44, 44],
        num_keypoints=8,
        backbone_width=8,
    )
    torch.manual_seed(0)
    policy = VisionDiffusionPolicy(spec, Normalizer.fit(data.features))
    sampler = NoiseFirstSampler(len(data), sigmas=ddpm_sigmas(100), seed=0)
    state = make_state(
        policy, sampler, TrainConfig(steps=6, batch_size=8, warmup_steps=2, log_every=3)
    )
    before = [p.detach().clone() for p in policy.encoder.parameters()]
    train(state, data)
    assert len(state.history) == 2 and all(np.isfinite(h["loss"]) for h in state.history)
    after = list(policy.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    runner = PolicyRunner(state.eval_policy, num_inference_steps=2)
    metrics, _ = px.evaluate(runner, n_episodes=2, seed=0, max_steps=8, size=SIZE)
    assert metrics.n == 2
    buf = io.BytesIO()
    torch.save(state.eval_policy.state_dict(), buf)
    assert buf.tell() > 0


# ------------------------------------------------------------- cameras as Parquet images

WRIST = "observation.images.wrist"


def _with_wrist(episodes: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """A second camera (the top view mirrored) to be stored as Parquet images."""
    return [{**ep, WRIST: np.ascontiguousarray(ep[CAM][:, :, ::-1])} for ep in episodes]


def test_parquet_image_camera_next_to_a_video_camera_on_s3(
    s3_bucket: str, pixel_episodes: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    from ambient_platform.lerobot import ambient_meta

    episodes = _with_wrist(pixel_episodes)
    uri = f"s3://{s3_bucket}/lerobot/two-cams"
    root = StorageRoot(uri)
    info = write_lerobot(
        root, episodes, fps=10, tasks="sort", episodes_per_file=2, parquet_images=[WRIST]
    )
    feats = info["features"]
    assert isinstance(feats, dict) and feats[WRIST]["dtype"] == "image"
    assert feats[WRIST]["shape"] == [SIZE, SIZE, 3] and feats[CAM]["dtype"] == "video"
    assert not [f for f in root.list("videos/") if WRIST in f.key]
    fs, base = root.arrow_filesystem()
    pf = pq.ParquetFile(fs.open_input_file(f"{base}/data/chunk-000/file-000.parquet"))
    assert pf.schema_arrow.field(WRIST).type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    assert pf.metadata.num_row_groups >= 2  # episode 1 spans two row groups

    ds = LeRobotDataset(uri, name="two")
    assert ds.camera_keys == [CAM, WRIST] and ds.image_keys == [WRIST]
    for i, ep in enumerate(episodes):
        np.testing.assert_array_equal(ds.decode_episode(WRIST, i), ep[WRIST])  # PNG: exact
        assert np.abs(ds.decode_episode(CAM, i).astype(int) - ep[CAM]).mean() < 4.0
    report = ds.validate()
    n = sum(len(ep[CAM]) for ep in episodes)
    assert report["cameras"] == {CAM: "video", WRIST: "image"}
    assert report["decoded_frames"] == 2 * n
    meta = ambient_meta(root)
    assert meta["cameras"][WRIST] == {"shape": [SIZE, SIZE, 3], "storage": "image"}
    assert WRIST not in meta["features"] and meta["frames"] == n
    assert not any(tmp_path.iterdir())  # read in place

    jpeg = StorageRoot(tmp_path / "jpeg")
    write_lerobot(
        jpeg, episodes[:2], fps=10, tasks="t", parquet_images=True,
        video=VideoOptions(image_format="JPEG"),
    )  # fmt: skip
    ds_j = LeRobotDataset(jpeg)
    assert ds_j.video_keys == [] and ds_j.image_keys == [CAM, WRIST]
    assert np.abs(ds_j.decode_episode(CAM, 1).astype(int) - episodes[1][CAM]).mean() < 6.0


def _image_rows(path: Path, key: str, change: dict[int, bytes | None]) -> None:
    """Replace the encoded bytes of some rows of a data file's image column."""
    table = pq.read_table(path)
    col = table.column(key).combine_chunks()
    blobs = col.field("bytes").to_pylist()
    for row, blob in change.items():
        blobs[row] = blob
    new = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), col.field("path")], names=["bytes", "path"]
    )
    i = table.schema.get_field_index(key)
    pq.write_table(table.set_column(i, key, new), path, row_group_size=128)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_image_errors_name_dataset_episode_camera_and_row(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    root = StorageRoot(tmp_path / "pix")
    write_lerobot(root, pixel_episodes[:2], fps=10, tasks="t", parquet_images=True)
    data = tmp_path / "pix/data/chunk-000/file-000.parquet"
    good = data.read_bytes()
    n0 = len(pixel_episodes[0][CAM])
    where = rf"'pix': episode 1 camera '{CAM}' \(.*file-000.parquet\): row {n0 + 5} \(frame 5\)"
    cases: list[tuple[dict[int, bytes | None], str]] = [
        ({n0 + 5: b"\x89PNG but not really"}, rf"{where}: not a readable PNG/JPEG image"),
        ({n0 + 5: good[:50]}, rf"{where}: not a readable PNG/JPEG image"),
        (
            {n0 + 5: _png(np.zeros((32, 30, 3), np.uint8))},
            rf"{where}: the image is 32x30, .*48x48",
        ),
        ({n0 + 5: _png(np.zeros((SIZE, SIZE), np.uint8))}, rf"{where}: a L image, expected RGB"),
        ({n0 + 5: None}, rf"{where}: the image has no bytes \(path 'frame_000005.png' was not"),
    ]
    for change, message in cases:
        _image_rows(data, CAM, change)
        ds = LeRobotDataset(root, name="pix")
        ds.decode_episode(CAM, 0)  # the other episode is fine
        with pytest.raises(DataError, match=message):
            ds.decode_episode(CAM, 1)
        with pytest.raises(DataError, match=message):
            ds.validate()
        data.write_bytes(good)

    # missing rows: the data file lost the last frame of episode 1, meta still says all
    table = pq.read_table(data)
    pq.write_table(table.slice(0, table.num_rows - 1), data)
    with pytest.raises(
        DataError, match=rf"episode 1 camera '{CAM}'.*has \d+ rows of this episode, meta/ep"
    ):
        LeRobotDataset(root, name="pix").decode_episode(CAM, 1)
    # a column that is not an image at all
    table = pq.read_table(io.BytesIO(good))
    i = table.schema.get_field_index(CAM)
    pq.write_table(table.set_column(i, CAM, pa.array(np.zeros(table.num_rows))), data)
    with pytest.raises(DataError, match=r"column type double, expected an image struct"):
        LeRobotDataset(root, name="pix").decode_episode(CAM, 0)
    # metadata: an image feature must say (H, W, C)
    _rewrite_json(
        tmp_path / "pix/meta/info.json",
        {"features": {**json.loads((tmp_path / "pix/meta/info.json").read_text())["features"],
                      CAM: {"dtype": "image", "shape": [SIZE, SIZE]}}},
    )  # fmt: skip
    with pytest.raises(DataError, match=rf"features.{CAM}.shape must be \(H, W, C\)"):
        LeRobotDataset(root, name="pix")


def test_image_policy_trains_from_a_video_and_a_parquet_image_dataset(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    """The run path (jobs.train.prepare -> jobs.pixel_data): clean demos with an MP4 camera,
    corrupt demos with the same camera as Parquet images, one image policy over both."""
    import yaml

    from ambient_core.train import train
    from ambient_core.vision_data import ImageChunkDataset
    from ambient_platform.config import load_run_config
    from jobs.train import prepare

    write_lerobot(StorageRoot(tmp_path / "clean"), pixel_episodes[:3], fps=10, tasks="sort")
    write_lerobot(
        StorageRoot(tmp_path / "corrupt"), pixel_episodes[3:], fps=10, tasks="opposite",
        parquet_images=True,
    )  # fmt: skip
    run = {
        "name": "mixed-cameras",
        "task": "bin_sorting_pixels",
        "data": {
            "clean": [{"path": str(tmp_path / "clean"), "name": "correct"}],
            "corrupt": [{"path": str(tmp_path / "corrupt"), "name": "opposite"}],
        },
        "policy": {
            "down_dims": [16, 32],
            "step_embed_dim": 16,
            "vision": {"backbone_width": 8, "num_keypoints": 8},
        },
        "train": {"steps": 2, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    prepared = prepare(load_run_config(path))
    data = prepared.data
    assert isinstance(data, ImageChunkDataset) and data.image_shape == (SIZE, SIZE, 3)
    state = train(prepared.state, data)
    assert len(state.history) == 2 and all(np.isfinite(h["loss"]) for h in state.history)
    # frames of both datasets arrived: the corrupt ones exactly (PNG)
    last = int(data.chunk_bounds[-1, 1]) - 1
    obs = data.images(np.array([last]))
    np.testing.assert_array_equal(obs[CAM][0], pixel_episodes[-1][CAM][-1])


def test_data_check_command_decodes_every_camera(
    tmp_path: Path, pixel_episodes: list[dict[str, np.ndarray]]
) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main as cli

    write_lerobot(
        StorageRoot(tmp_path / "two"), _with_wrist(pixel_episodes[:2]), fps=10, tasks="t",
        parquet_images=[WRIST],
    )  # fmt: skip
    res = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    n = sum(len(ep[CAM]) for ep in pixel_episodes[:2])
    assert summary["cameras"] == {CAM: "video", WRIST: "image"}
    assert summary["decoded_frames"] == 2 * n and summary["format"] == "lerobot/v3.0"
    quick = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "two"), "--no-decode"])
    assert quick.exit_code == 0 and json.loads(quick.stdout)["decoded_frames"] == 0
