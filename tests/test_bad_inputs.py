"""The bad-input matrix: every user-facing input, broken the ways users break it, through the real
``ambient`` CLI. Each row names the input, how it is broken, the fragment the one ``error:`` line
must contain and the exit code (2 for user errors; click's usage errors also exit 2). No row may
end in a traceback. Add a row whenever a new input appears.

Rows run in-process (click's CliRunner) except ``test_real_process_*``, which start the installed
command to check what a user's terminal shows (one line; ``--debug`` / ``AMBIENT_DEBUG=1`` add the
traceback). Nothing here starts Ray or trains: every row fails before that.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner, Result

from ambient_core.envs import maze
from ambient_platform.datasets import write_dataset
from ambient_platform.storage import StorageRoot
from orchestrator.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
AMBIENT = Path(sys.executable).with_name("ambient")


# ------------------------------------------------------------------------------ fixtures


@dataclass
class World:
    """Inputs the rows break: a good clean/corrupt maze pair, a scratch dir, the S3 endpoint."""

    tmp: Path
    clean: Path
    corrupt: Path
    s3: str

    def copy_corrupt(self, name: str = "bad") -> Path:
        dst = self.tmp / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(self.corrupt, dst)
        return dst

    def train_config(self, corrupt: str | Path | None = None, **extra: Any) -> Path:
        """A small complete run config (no generate, so a missing dataset is never created)."""
        cfg: dict[str, Any] = {
            "name": "bad-input",
            "task": "maze",
            "data": {
                "clean": [{"path": str(self.clean), "name": "gcs"}],
                "corrupt": [{"path": str(corrupt or self.corrupt), "name": "rrt"}],
            },
            "policy": {"horizon": 8, "down_dims": [8, 16], "step_embed_dim": 8},
            "train": {"steps": 1, "batch_size": 4, "warmup_steps": 0, "log_every": 1},
            "eval": {"episodes": 1, "round_episodes": 1, "plot": False, "max_steps": 5},
        }
        for dotted, value in extra.items():
            node = cfg
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        path = self.tmp / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def train(self, *more: str, corrupt: str | Path | None = None) -> list[str]:
        return ["train", "--config", str(self.train_config(corrupt)), "--no-track", *more]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clean, corrupt = maze.generate(maze.MazeEnv(), 3, 6, seed=2, clean_method="builtin")
    base = tmp_path_factory.mktemp("bad-inputs-data")
    write_dataset(StorageRoot(str(base / "clean")), clean, "gcs", "maze")
    # Three episodes per shard: two shards, so cross-shard rows (duplicate ids) have two files.
    write_dataset(StorageRoot(str(base / "corrupt")), corrupt, "rrt", "maze", shard_episodes=3)
    return base


@pytest.fixture()
def world(data_dir: Path, tmp_path: Path, s3_server: str) -> World:
    return World(tmp_path, data_dir / "clean", data_dir / "corrupt", s3_server)


# --------------------------------------------------------------------------- helpers


def _shard(ds: Path, i: int = 0) -> Path:
    return ds / "data" / f"shard-{i:05d}.parquet"


def _rewrite_shard(ds: Path, change: Callable[[pa.Table], pa.Table], i: int = 0) -> None:
    """Replace shard ``i`` with ``change(table)`` and keep meta.json's row count in step, so
    only the change itself is wrong."""
    path = _shard(ds, i)
    table = change(pq.read_table(path))
    pq.write_table(table, path)
    meta = json.loads((ds / "meta.json").read_text())
    meta["shards"][i]["rows"] = table.num_rows
    (ds / "meta.json").write_text(json.dumps(meta))


def _set_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def _actions(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("action").to_pylist()).astype(np.float32)


def _with_nan(table: pa.Table) -> pa.Table:
    values = _actions(table)
    values[5, 0] = np.nan
    return _set_column(table, "action", pa.array(values.tolist(), type=pa.list_(pa.float32())))


def _with_null(table: pa.Table) -> pa.Table:
    rows: list[Any] = _actions(table).tolist()
    rows[3] = None
    return _set_column(table, "action", pa.array(rows, type=pa.list_(pa.float32())))


def _strings(table: pa.Table) -> pa.Table:
    rows = [[str(v) for v in r] for r in _actions(table).tolist()]
    return _set_column(table, "action", pa.array(rows, type=pa.list_(pa.string())))


def _float_index(table: pa.Table) -> pa.Table:
    ep = table.column("episode_index").to_numpy().astype(np.float64)
    return _set_column(table, "episode_index", pa.array(ep))


def _ragged(table: pa.Table) -> pa.Table:
    rows = _actions(table).tolist()
    rows[4] = rows[4][:1]
    return _set_column(table, "action", pa.array(rows, type=pa.list_(pa.float32())))


def _frame_gap(table: pa.Table) -> pa.Table:
    fr = table.column("frame_index").to_numpy().copy()
    fr[fr == 2] = 99
    return _set_column(table, "frame_index", pa.array(fr))


def _renumber_like_first(ds: Path) -> None:
    """Give shard 1 the episode indices of shard 0 (an importer that restarted its count)."""
    first = pq.read_table(_shard(ds, 0)).column("episode_index").to_numpy()

    def change(t: pa.Table) -> pa.Table:
        ep = t.column("episode_index").to_numpy()
        remap = {old: int(first.min()) + k for k, old in enumerate(np.unique(ep))}
        return _set_column(t, "episode_index", pa.array([remap[e] for e in ep], pa.int64()))

    _rewrite_shard(ds, change, i=1)


def _meta(ds: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    change(meta)
    (ds / "meta.json").write_text(json.dumps(meta))


def _busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def invoke(argv: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, argv, env=env)


def assert_user_error(res: Result, fragment: str, code: int = 2) -> None:
    """Exit ``code``, no traceback, exactly one ``error:`` line on stderr holding ``fragment``."""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        tb = "".join(traceback.format_exception(*res.exc_info)) if res.exc_info else ""
        pytest.fail(f"traceback instead of an error line (exit {res.exit_code}):\n{tb[-3000:]}")
    assert res.exit_code == code, f"exit {res.exit_code}, expected {code}:\n{res.output[-2000:]}"
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, f"expected one error line, got:\n{res.stderr[-2000:]}"
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_usage_error(res: Result, fragment: str) -> None:
    """click's own usage errors: exit 2, its 'Error:' message, no traceback."""
    assert res.exit_code == 2, res.output[-2000:]
    assert "Traceback" not in res.output and fragment in res.stderr, res.stderr[-2000:]


# ------------------------------------------------------------------------------ the rows

Row = tuple[str, Callable[[World], list[str]], str]


def _write(world: World, name: str, text: str) -> Path:
    path = world.tmp / name
    path.write_text(text)
    return path


RUN_CONFIG_ROWS: list[Row] = [
    (
        "unknown key",
        lambda w: w.train("--set", "train.stepz=5"),
        "train.stepz",
    ),
    (
        "bad value",
        lambda w: w.train("--set", "train.steps=-1"),
        "train.steps",
    ),
    (
        "wrong type",
        lambda w: w.train("--set", "train.batch_size=many"),
        "train.batch_size",
    ),
    (
        "non-finite lr (.inf)",
        lambda w: w.train("--set", "train.lr=.inf"),
        "train.lr",
    ),
    (
        "non-finite sigma_min (.nan)",
        lambda w: w.train("--set", "data.corrupt.0.sigma_min=.nan"),
        "finite",
    ),
    (
        "no datasets (empty lists)",
        lambda w: w.train("--set", "data.clean=[]", "--set", "data.corrupt=[]"),
        "at least one clean or corrupt dataset",
    ),
    (
        "empty down_dims",
        lambda w: w.train("--set", "policy.down_dims=[]"),
        "policy.down_dims",
    ),
    (
        "unknown task",
        lambda w: w.train("--set", "task=nope"),
        "nope",
    ),
    (
        "override without '='",
        lambda w: w.train("--set", "train.steps"),
        "train.steps",
    ),
    (
        "override of a missing list index",
        lambda w: w.train("--set", "data.corrupt.5.sigma_min=0.1"),
        "data.corrupt.5",
    ),
    (
        "missing config file",
        lambda w: ["train", "--config", str(w.tmp / "nope.yaml"), "--no-track"],
        "nope.yaml",
    ),
    (
        "config is not YAML",
        lambda w: ["train", "--config", str(_write(w, "bad.yaml", "a: [1, 2\n")), "--no-track"],
        "bad.yaml",
    ),
    (
        "config is a list",
        lambda w: ["train", "--config", str(_write(w, "list.yaml", "- 1\n- 2\n")), "--no-track"],
        "list.yaml",
    ),
    (
        "missing base file",
        lambda w: [
            "train",
            "--config",
            str(_write(w, "child.yaml", "base: missing_base.yaml\nname: x\n")),
            "--no-track",
        ],
        "missing_base.yaml",
    ),
    (
        "relative path escapes the storage root",
        lambda w: w.train("--set", "data.corrupt.0.path=../../etc"),
        "../../etc",
    ),
    (
        "horizon the network cannot take",
        lambda w: w.train("--set", "policy.horizon=6", "--set", "policy.down_dims=[8,16,32]"),
        "horizon",
    ),
]


DATASET_ROWS: list[tuple[str, Callable[[Path], None], str]] = [
    ("missing meta.json", lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    (
        "half-written meta.json",
        lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:40]),
        "not valid JSON",
    ),
    ("empty dataset (shards: [])", lambda d: _meta(d, lambda m: m.update(shards=[])), "no shards"),
    (
        "meta.json shards not a list",
        lambda d: _meta(d, lambda m: m.update(shards="data/")),
        "'shards' must be a list",
    ),
    (
        "feature missing from meta.json",
        lambda d: _meta(d, lambda m: m["features"].pop("action")),
        "lacks features ['action']",
    ),
    (
        "truncated shard (no Parquet footer)",
        lambda d: _shard(d).write_bytes(_shard(d).read_bytes()[:-64]),
        "not a readable Parquet file",
    ),
    (
        "shard named in meta.json is gone",
        lambda d: _shard(d).unlink(),
        "shard-00000.parquet is missing",
    ),
    (
        "missing column",
        lambda d: _rewrite_shard(d, lambda t: t.drop_columns(["action"])),
        "has no column 'action'",
    ),
    (
        "wrong dtype: strings",
        lambda d: _rewrite_shard(d, _strings),
        "column 'action' is list<item: string>, expected a list of floats",
    ),
    (
        "wrong dtype: float episode_index",
        lambda d: _rewrite_shard(d, _float_index),
        "column 'episode_index' is double, expected integers",
    ),
    ("NaN row", lambda d: _rewrite_shard(d, _with_nan), "NaN/inf/null values in 1 rows"),
    ("null row", lambda d: _rewrite_shard(d, _with_null), "is null at episode"),
    ("ragged row", lambda d: _rewrite_shard(d, _ragged), "has length 1"),
    ("frame gap", lambda d: _rewrite_shard(d, _frame_gap), "frame_index"),
    ("duplicate episode ids across shards", _renumber_like_first, "is in shard"),
    (
        "shard changed after meta.json (rows)",
        lambda d: pq.write_table(pq.read_table(_shard(d)).slice(0, 5), _shard(d)),
        "the file changed after the dataset was written",
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "fragment"), RUN_CONFIG_ROWS, ids=[r[0] for r in RUN_CONFIG_ROWS]
)
def test_run_config(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


@pytest.mark.parametrize(
    ("name", "breaks", "fragment"), DATASET_ROWS, ids=[r[0] for r in DATASET_ROWS]
)
def test_dataset_layout_and_shards(
    world: World, name: str, breaks: Callable[[Path], None], fragment: str
) -> None:
    bad = world.copy_corrupt()
    breaks(bad)
    res = invoke(world.train(corrupt=bad))
    assert_user_error(res, fragment)
    if "meta.json" not in fragment and "JSON" not in fragment:
        assert "rrt" in res.stderr or str(bad) in res.stderr  # the dataset is named
