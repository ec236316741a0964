"""Parquet layout -> validated frames -> chunks with diffusion_policy's padding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ambient_core.data import (
    ChunkDataset,
    ChunkSpec,
    DataError,
    episodes_to_table,
    frames_from_table,
    read_parquet_frames,
)

KEYS = ("observation.state", "action")


def _episode(n: int, offset: float = 0.0) -> dict[str, np.ndarray]:
    t = np.arange(n, dtype=np.float32)[:, None] + offset
    return {"observation.state": np.hstack([t, -t]), "action": t + 1}


def test_table_layout_and_round_trip(tmp_path) -> None:
    table = episodes_to_table([_episode(5), _episode(3, 100)], source="clean")
    assert table.column_names == [
        "episode_index",
        "frame_index",
        "observation.state",
        "action",
        "source",
    ]
    assert table.column("episode_index").to_pylist() == [0] * 5 + [1] * 3
    assert table.column("frame_index").to_pylist() == [0, 1, 2, 3, 4, 0, 1, 2]
    pq.write_table(table, tmp_path / "shard-0.parquet")
    f = read_parquet_frames(str(tmp_path), KEYS, name="clean")
    assert f.features["observation.state"].shape == (8, 2)
    assert f.features["action"].dtype == np.float32
    assert f.episode_bounds.tolist() == [[0, 5], [5, 8]]


def test_chunks_follow_sequence_sampler_padding() -> None:
    spec = ChunkSpec(horizon=4, n_obs_steps=2, n_action_steps=2)
    f = frames_from_table(episodes_to_table([_episode(5)], "d"), KEYS)
    ds = ChunkDataset([f], spec, ["observation.state"])
    # L - H + pad_before + pad_after + 1 = 5 - 4 + 1 + 1 + 1
    assert len(ds) == 4
    obs, act = ds.batch(np.arange(4))
    assert act[:, :, 0].tolist() == [[1, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 5]]
    assert obs["observation.state"][:, :, 0].tolist() == [[0, 0], [0, 1], [1, 2], [2, 3]]
    assert ds.chunk_frame.tolist() == [-1, 0, 1, 2]


def test_chunks_never_cross_episode_boundaries() -> None:
    spec = ChunkSpec(horizon=8, n_obs_steps=2, n_action_steps=4)
    f = frames_from_table(episodes_to_table([_episode(10), _episode(10, 100)], "d"), KEYS)
    g = frames_from_table(episodes_to_table([_episode(9, 500)], "e"), KEYS)
    ds = ChunkDataset([f, g], spec, ["observation.state"])
    _, act = ds.batch(np.arange(len(ds)))
    base = act[:, :1, 0]
    assert np.all((act[:, :, 0] - base >= 0) & (act[:, :, 0] - base < 100))
    assert ds.dataset_chunk_ranges == [(0, 14), (14, 20)]
    assert set(ds.chunk_dataset[14:].tolist()) == {1}


def test_nan_rows_are_rejected_with_episode_and_column() -> None:
    eps = [_episode(4), _episode(4)]
    eps[1]["action"][2, 0] = np.nan
    with pytest.raises(DataError, match=r"'corrupt'.*'action'.*1 rows with NaN/inf.*episode 1"):
        frames_from_table(episodes_to_table(eps, "corrupt"), KEYS, "corrupt")


def test_ragged_lists_missing_columns_and_frame_gaps() -> None:
    table = episodes_to_table([_episode(3)], "d")
    bad = table.set_column(
        3, "action", pa.array([[1.0], [2.0, 3.0], [4.0]], type=pa.list_(pa.float32()))
    )
    with pytest.raises(DataError, match=r"'action' has length 2 at episode 0 \(row 1\)"):
        frames_from_table(bad, KEYS, "d")
    with pytest.raises(DataError, match="missing columns"):
        frames_from_table(table.drop_columns(["action"]), KEYS, "d")
    gap = table.set_column(1, "frame_index", pa.array([0, 1, 3]))
    with pytest.raises(DataError, match="episode 0 has frame_index 3"):
        frames_from_table(gap, KEYS, "d")


def test_short_episodes_yield_a_clear_error() -> None:
    f = frames_from_table(episodes_to_table([_episode(2)], "tiny"), KEYS)
    with pytest.raises(DataError, match="no chunk"):
        ChunkDataset([f], ChunkSpec(16, 2, 8), ["observation.state"])


def test_unreadable_shard_names_the_path(tmp_path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_parquet_frames(str(tmp_path), KEYS)


def test_device_gather_matches_the_numpy_batch() -> None:
    import torch

    from ambient_core.policy import Normalizer

    frames = [
        frames_from_table(episodes_to_table([_episode(9), _episode(4, 50)], "a"), KEYS),
        frames_from_table(episodes_to_table([_episode(6, 7)], "b"), KEYS),
    ]
    data = ChunkDataset(frames, ChunkSpec(horizon=8, n_obs_steps=2, n_action_steps=4), KEYS[:1])
    norm = Normalizer.fit(data.features)
    ids = np.random.default_rng(0).integers(0, len(data), size=64)
    obs, act = data.torch_batch(ids, norm)
    # the accelerator path (tables on the device, gathered there), exercised on the CPU
    d_obs, d_act = data._device_batch(ids, norm, torch.device("cpu"))
    assert torch.equal(act, d_act)
    assert obs.keys() == d_obs.keys()
    assert all(torch.equal(obs[k], d_obs[k]) for k in obs)
    assert data.on_device(torch.device("cpu")) is data.on_device(torch.device("cpu"))
