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
from conftest import free_port

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
            "policy": {"horizon": 16, "down_dims": [8, 16], "step_embed_dim": 8},
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
        "zero dataset weight",
        lambda w: w.train("--set", "data.corrupt.0.weight=0"),
        "data.corrupt.0.weight: Input should be greater than 0",
    ),
    (
        "negative dataset weight",
        lambda w: w.train("--set", "data.corrupt.0.weight=-1"),
        "data.corrupt.0.weight: Input should be greater than 0",
    ),
    (
        "non-finite dataset weight (.inf)",
        lambda w: w.train("--set", "data.corrupt.0.weight=.inf"),
        "data.corrupt.0.weight: Input should be a finite number",
    ),
    (
        "dataset weight not a number",
        lambda w: w.train("--set", "data.corrupt.0.weight=heavy"),
        "data.corrupt.0.weight: Input should be a valid number",
    ),
    (
        "weights on only some datasets of a pool",
        lambda w: w.train(
            "--set",
            f"data.corrupt=[{{path: {w.corrupt}, name: a, weight: 2}}, "
            f"{{path: {w.corrupt}, name: b}}]",
        ),
        "data.corrupt.1.weight is missing but data.corrupt.0.weight is set",
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


DATASET_ROWS: list[tuple[str, Callable[[Path], object], str]] = [
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
        "expected a list of floats",
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


def test_the_unbroken_inputs_are_valid(world: World) -> None:
    """Each row breaks one thing; everything else it passes must be fine."""
    from ambient_platform.config import load_run_config
    from ambient_platform.datasets import read_frames

    load_run_config(world.train_config())
    for ds in (world.clean, world.corrupt):
        read_frames(StorageRoot(str(ds)), ["observation.state", "action"])


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


# ------------------------------------------------------------------- sweep spec, watch file


def _sweep(w: World, text: str) -> list[str]:
    return ["sweep", "validate", str(_write(w, "sweep.yaml", text))]


_SWEEP_BASE = f"base_config: {ROOT / 'sweeps' / 'train' / 'maze_ambient.yaml'}\n"
_SWEEP_OK = f"name: s\n{_SWEEP_BASE}"
_SWEEP_SPACE = "space:\n  train.lr: {grid: [0.001, 0.01]}\n"


def _watch(w: World, text: str) -> list[str]:
    return ["watch", "--config", str(_write(w, "watch.yaml", text)), "--once", "--no-track"]


def _watch_ok(w: World) -> str:
    return f"name: w\nsources: [{w.corrupt}]\nclassifier: {w.tmp / 'clf'}\nepochs: [1]\n"


SPEC_ROWS: list[Row] = [
    (
        "sweep: missing file",
        lambda w: ["sweep", "validate", str(w.tmp / "nope.yaml")],
        "nope.yaml",
    ),
    ("sweep: unknown key", lambda w: _sweep(w, _SWEEP_OK + _SWEEP_SPACE + "spaec: {}\n"), "spaec"),
    (
        "sweep: missing base_config file",
        lambda w: _sweep(w, "name: s\nbase_config: nowhere.yaml\n" + _SWEEP_SPACE),
        "nowhere.yaml",
    ),
    (
        "sweep: empty grid",
        lambda w: _sweep(w, _SWEEP_OK + "space:\n  train.lr: {grid: []}\n"),
        "train.lr",
    ),
    (
        "sweep: non-finite grid value",
        lambda w: _sweep(w, _SWEEP_OK + "space:\n  train.lr: {grid: [.inf]}\n"),
        "train.lr",
    ),
    (
        "sweep: unknown parameter path",
        lambda w: _sweep(w, _SWEEP_OK + "space:\n  train.nope: {grid: [1, 2]}\n"),
        "train.nope",
    ),
    ("sweep: empty seeds", lambda w: _sweep(w, _SWEEP_OK + _SWEEP_SPACE + "seeds: []\n"), "seeds"),
    (
        "sweep: bad name",
        lambda w: _sweep(w, _SWEEP_OK.replace("name: s", "name: ../x") + _SWEEP_SPACE),
        "../x",
    ),
    ("watch: unknown key", lambda w: _watch(w, _watch_ok(w) + "sorces: []\n"), "sorces"),
    (
        "watch: empty sources",
        lambda w: _watch(w, _watch_ok(w).replace(f"[{w.corrupt}]", "[]")),
        "sources",
    ),
    ("watch: empty epochs", lambda w: _watch(w, _watch_ok(w).replace("[1]", "[]")), "epochs"),
    (
        "watch: bad cron",
        lambda w: _watch(w, _watch_ok(w) + "schedule: {cron: '61 * * * *'}\n"),
        "cron",
    ),
    (
        "watch: non-finite lease_ttl_s",
        lambda w: _watch(w, _watch_ok(w) + "lease_ttl_s: .inf\n"),
        "lease_ttl_s",
    ),
    (
        "watch: missing file",
        lambda w: _watch(w, "")[:2] + [str(w.tmp / "no.yaml"), "--once"],
        "no.yaml",
    ),
]


@pytest.mark.parametrize(("name", "argv", "fragment"), SPEC_ROWS, ids=[r[0] for r in SPEC_ROWS])
def test_sweep_spec_and_watch_file(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


# ------------------------------------------------------------ annotation refs, classifiers


def _annotated(w: World, **ann: Any) -> list[str]:
    ref = {"path": str(w.tmp / "annotations" / "none"), "epoch": 1, **ann}
    cfg = w.train_config()
    data = yaml.safe_load(cfg.read_text())
    data["data"]["corrupt"][0]["annotation"] = ref
    cfg.write_text(yaml.safe_dump(data))
    return ["train", "--config", str(cfg), "--no-track"]


def _annotate(w: World, classifier: Path, epoch: int = 1) -> list[str]:
    return [
        "annotate",
        "--data",
        str(w.corrupt),
        "--classifier",
        str(classifier),
        "--epoch",
        str(epoch),
        "--out",
        str(w.tmp / "ann"),
    ]


def _classifier_without_epoch(w: World) -> Path:
    clf = w.tmp / "clf"
    (clf / "epoch_1").mkdir(parents=True)
    (clf / "epoch_1" / "classifier.pt").write_bytes(b"not a checkpoint")
    return clf


ANNOTATION_ROWS: list[Row] = [
    ("annotation: no manifest", lambda w: _annotated(w), "no committed annotation manifest"),
    ("annotation: version 0", lambda w: _annotated(w, version=0), "version"),
    ("annotation: missing version", lambda w: _annotated(w, version=7), "has no version 7"),
    ("annotation: tau out of range", lambda w: _annotated(w, tau=1.5), "tau"),
    (
        "annotation: bucket without n_buckets",
        lambda w: _annotated(w, granularity="bucket"),
        "n_buckets",
    ),
    ("classifier: missing directory", lambda w: _annotate(w, w.tmp / "noclf"), "noclf"),
    (
        "classifier: missing epoch",
        lambda w: _annotate(w, _classifier_without_epoch(w), epoch=5),
        "epoch",
    ),
    (
        "classifier: unreadable epoch checkpoint",
        lambda w: _annotate(w, _classifier_without_epoch(w), epoch=1),
        "epoch_1",
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "fragment"), ANNOTATION_ROWS, ids=[r[0] for r in ANNOTATION_ROWS]
)
def test_annotation_refs_and_classifier_dirs(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


# ------------------------------------------------------------------------------ importers


def _lerobot(
    w: World, files: dict[str, pa.Table] | None = None, info: dict[str, Any] | None = None
) -> Path:
    root = w.tmp / "lerobot"
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = 4
    table = pa.table(
        {
            "observation.state": pa.array([[0.0, 1.0]] * rows, pa.list_(pa.float32())),
            "action": pa.array([[0.5, 0.5]] * rows, pa.list_(pa.float32())),
            "episode_index": pa.array([0] * rows, pa.int64()),
            "frame_index": pa.array(list(range(rows)), pa.int64()),
        }
    )
    for name, t in (files or {"episode_000000.parquet": table}).items():
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / "data" / "chunk-000" / name)
    base = {"codebase_version": "v2.1", "fps": 10, **(info or {})}
    (root / "meta" / "info.json").write_text(json.dumps(base))
    return root


def _lerobot_table(**change: Any) -> pa.Table:
    rows = 4
    cols: dict[str, Any] = {
        "observation.state": pa.array([[0.0, 1.0]] * rows, pa.list_(pa.float32())),
        "action": pa.array([[0.5, 0.5]] * rows, pa.list_(pa.float32())),
        "episode_index": pa.array([0] * rows, pa.int64()),
        "frame_index": pa.array(list(range(rows)), pa.int64()),
    }
    cols.update(change)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def _import(w: World, fmt: str, src: Path, *more: str) -> list[str]:
    return ["data", "import", fmt, str(src), "--out", str(w.tmp / "imported"), *more]


_CAM = {"features": {"observation.image": {"dtype": "video", "shape": [16, 16, 3]}}}


def _zarr_cameras(w: World) -> Path:
    """A ReplayBuffer with a camera (data/img) and a depth-like 4-D float array."""
    import zarr

    path = w.tmp / "cams.zarr"
    group = zarr.group(store=str(path), overwrite=True)
    data, meta = group.create_group("data"), group.create_group("meta")
    data.array("img", np.zeros((6, 16, 16, 3), np.uint8))
    data.array("depth", np.zeros((6, 16, 16, 1), np.float32))
    data.array("state", np.zeros((6, 2), np.float32))
    data.array("action", np.zeros((6, 2), np.float32))
    meta.array("episode_ends", np.array([3, 6], np.int64))
    return path


def _truncated(w: World) -> Path:
    root = _lerobot(w)
    f = root / "data" / "chunk-000" / "episode_000000.parquet"
    f.write_bytes(f.read_bytes()[:-30])
    return root


IMPORT_ROWS: list[Row] = [
    ("lerobot: no info.json", lambda w: _import(w, "lerobot", w.tmp), "info.json not found"),
    (
        "lerobot: unsupported version",
        lambda w: _import(w, "lerobot", _lerobot(w, info={"codebase_version": "v1.6"})),
        "unsupported codebase_version",
    ),
    (
        "lerobot: mapped column missing",
        lambda w: _import(w, "lerobot", _lerobot(w), "--map", "observation.goal=goal"),
        "missing column 'goal'",
    ),
    (
        "lerobot: NaN value",
        lambda w: _import(
            w,
            "lerobot",
            _lerobot(
                w,
                {
                    "episode_000000.parquet": _lerobot_table(
                        action=pa.array([[0.0, float("nan")]] * 4)
                    )
                },
            ),
        ),
        "NaN/inf values",
    ),
    (
        "lerobot: string column",
        lambda w: _import(
            w,
            "lerobot",
            _lerobot(w, {"episode_000000.parquet": _lerobot_table(action=pa.array([["a"]] * 4))}),
        ),
        "not numeric",
    ),
    (
        "lerobot: truncated file",
        lambda w: _import(w, "lerobot", _truncated(w)),
        "not a readable Parquet file",
    ),
    (
        "lerobot: duplicate episode in two files",
        lambda w: _import(
            w,
            "lerobot",
            _lerobot(
                w,
                {
                    "episode_000000.parquet": _lerobot_table(),
                    "episode_000001.parquet": _lerobot_table(),
                },
            ),
        ),
        "episode 0 is also in",
    ),
    (
        "lerobot: totals disagree (incomplete download)",
        lambda w: _import(w, "lerobot", _lerobot(w, info={"total_episodes": 3})),
        "total_episodes=3",
    ),
    (
        "lerobot: data_path escapes the dataset",
        lambda w: _import(
            w, "lerobot", _lerobot(w, info={"data_path": "../x/{episode_index}.parquet"})
        ),
        "must stay inside the dataset",
    ),
    ("zarr: not a zarr store", lambda w: _import(w, "zarr", w.tmp), "not a zarr"),
    (
        "import: --map without '='",
        lambda w: _import(w, "lerobot", _lerobot(w), "--map", "nope"),
        "OURS=THEIRS",
    ),
    (
        "import: reserved feature name",
        lambda w: _import(w, "lerobot", _lerobot(w), "--map", "episode_index=action"),
        "reserved",
    ),
    (
        "import: bad --source name",
        lambda w: _import(w, "lerobot", _lerobot(w), "--source", "../up"),
        "../up",
    ),
    (
        "import: output exists",
        lambda w: _import(w, "lerobot", _lerobot(w), "--out", str(w.corrupt)),
        "already exists",
    ),
    (
        "lerobot: v3 with cameras (read in place instead)",
        lambda w: _import(w, "lerobot", _lerobot(w, info={"codebase_version": "v3.0", **_CAM})),
        "read in place, not imported",
    ),
    (
        "lerobot: v2 camera's video file missing",
        lambda w: _import(w, "lerobot", _lerobot(w, info=_CAM)),
        "camera 'observation.image'",
    ),
    (
        "lerobot: camera mapped to a low-dim name",
        lambda w: _import(
            w, "lerobot", _lerobot(w, info=_CAM), "--map", "observation.state=observation.image"
        ),
        "cameras are imported under observation.image* names",
    ),
    (
        "lerobot: --low-dim-only with a camera mapped",
        lambda w: _import(
            w,
            "lerobot",
            _lerobot(w, info=_CAM),
            "--low-dim-only",
            "--map",
            "observation.images.a=observation.image",
        ),
        "--low-dim-only imports low-dim columns only",
    ),
    (
        "zarr: camera with a fractional --fps",
        lambda w: _import(w, "zarr", _zarr_cameras(w), "--fps", "7.5"),
        "must be a positive whole number",
    ),
    (
        "zarr: camera mapped to a low-dim name",
        lambda w: _import(w, "zarr", _zarr_cameras(w), "--map", "observation.goal=img"),
        "is a camera",
    ),
    (
        "zarr: 4-D array that is not (N, H, W, 3) uint8",
        lambda w: _import(w, "zarr", _zarr_cameras(w), "--map", "observation.goal=depth"),
        "looks like images",
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "fragment"), IMPORT_ROWS, ids=[r[0] for r in IMPORT_ROWS]
)
def test_import_inputs(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


# --------------------------------------------- camera datasets (`ambient data check PATH`)

_PIX_CAM = "observation.images.top"


def _pixels(w: World, parquet_images: bool = True) -> Path:
    """A small LeRobot v3 dataset: 2 episodes of 6 frames, one 16x16 camera (Parquet images
    or MP4)."""
    from ambient_platform.lerobot import write_lerobot

    rng = np.random.default_rng(0)
    episodes: list[dict[str, np.ndarray]] = [
        {
            "action": rng.normal(size=(6, 2)).astype(np.float32),
            _PIX_CAM: rng.integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8),
        }
        for _ in range(2)
    ]
    root = w.tmp / "pix"
    write_lerobot(StorageRoot(root), episodes, fps=10, tasks="t", parquet_images=parquet_images)
    return root


def _break_image(w: World, row: int, blob: bytes | None) -> list[str]:
    root = _pixels(w)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    col = table.column(_PIX_CAM).combine_chunks()
    blobs = col.field("bytes").to_pylist()
    blobs[row] = blob
    new = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), col.field("path")], names=["bytes", "path"]
    )
    i = table.schema.get_field_index(_PIX_CAM)
    pq.write_table(table.set_column(i, _PIX_CAM, new), path)
    return ["data", "check", str(root)]


def _small_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _drop_last_row(w: World) -> list[str]:
    root = _pixels(w)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)
    return ["data", "check", str(root)]


def _broken_video(w: World) -> list[str]:
    root = _pixels(w, parquet_images=False)
    (root / "videos" / _PIX_CAM / "chunk-000" / "file-000.mp4").write_bytes(b"not an mp4" * 50)
    return ["data", "check", str(root)]


CAMERA_ROWS: list[Row] = [
    (
        "image: undecodable bytes",
        lambda w: _break_image(w, 8, b"garbage"),
        "episode 1 camera 'observation.images.top'",
    ),
    (
        "image: undecodable bytes (row named)",
        lambda w: _break_image(w, 8, b"garbage"),
        "row 8 (frame 2): not a readable PNG/JPEG image",
    ),
    ("image: wrong size", lambda w: _break_image(w, 3, _small_png()), "the image is 8x8"),
    ("image: no bytes", lambda w: _break_image(w, 3, None), "the image has no bytes"),
    ("image: missing rows", _drop_last_row, "episode 1: data has 5 rows"),
    ("video: unreadable MP4", _broken_video, "cannot read the video"),
    (
        "check: not a dataset",
        lambda w: ["data", "check", str(w.tmp)],
        "is not a dataset",
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "fragment"), CAMERA_ROWS, ids=[r[0] for r in CAMERA_ROWS]
)
def test_camera_datasets(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


def test_the_unbroken_camera_dataset_is_valid(world: World) -> None:
    res = invoke(["data", "check", str(_pixels(world))])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decoded_frames"] == 12


# --------------------------------------------------------- CLI flags, S3, credentials


def _submit(w: World, *more: str, address: str | None = None) -> list[str]:
    return ["submit", "--address", address or f"http://127.0.0.1:{free_port()}", *more]


FLAG_ROWS: list[Row] = [
    (
        "eval: checkpoint dir without a checkpoint",
        lambda w: ["eval", "--checkpoint", str(w.tmp), "--no-track"],
        "checkpoint",
    ),
    (
        "submit: address is not a URL",
        lambda w: _submit(w, "--", "demo", address="127.0.0.1:8265"),
        "give the dashboard URL",
    ),
    (
        "submit: cluster unreachable",
        lambda w: _submit(w, "--no-wait", "--", "demo"),
        "cannot reach the Ray Jobs API",
    ),
    (
        "submit: command not for a cluster",
        lambda w: _submit(w, "--", "ui"),
        "not a job to run on a cluster",
    ),
    (
        "submit: --env without '='",
        lambda w: _submit(w, "--env", "NOEQUALS", "--", "demo"),
        "KEY=VALUE",
    ),
    (
        "submit: credential in --env",
        lambda w: _submit(w, "--env", "AWS_SECRET_ACCESS_KEY=abc", "--", "demo"),
        "credentials are not forwarded",
    ),
    (
        "submit: password in a forwarded URI",
        lambda w: _submit(w, "--tracking-uri", "postgresql://u:pw@db/mlflow", "--", "demo"),
        "embeds a password",
    ),
    (
        "job status: address is not a URL",
        lambda w: ["job", "status", "--address", "nohttp", "x"],
        "give the dashboard URL",
    ),
    (
        "job logs: cluster unreachable",
        lambda w: ["job", "logs", "--address", f"http://127.0.0.1:{free_port()}", "x"],
        "cannot reach",
    ),
]


@pytest.mark.parametrize(("name", "argv", "fragment"), FLAG_ROWS, ids=[r[0] for r in FLAG_ROWS])
def test_cli_flags(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


USAGE_ROWS: list[tuple[str, list[str], str]] = [
    ("generate: --clean 0", ["data", "generate", "maze", "--clean", "0", "--out", "x"], "--clean"),
    ("generate: unknown task", ["data", "generate", "nope", "--out", "x"], "nope"),
    ("ui: port out of range", ["ui", "--port", "70000"], "--port"),
    ("train: unknown flag", ["train", "--config", "x.yaml", "--stepz", "3"], "--stepz"),
    ("no such command", ["trian"], "trian"),
    (
        "import: path does not exist",
        ["data", "import", "zarr", "/no/such.zarr", "--out", "x"],
        "/no/such.zarr",
    ),
]


@pytest.mark.parametrize(("name", "argv", "fragment"), USAGE_ROWS, ids=[r[0] for r in USAGE_ROWS])
def test_usage_errors_stay_clicks(name: str, argv: list[str], fragment: str) -> None:
    assert_usage_error(invoke(argv), fragment)


def test_ui_port_in_use() -> None:
    for port in _busy_port():
        assert_user_error(
            invoke(["ui", "--port", str(port)]), f"port {port} on 127.0.0.1 is in use"
        )


S3_ROWS: list[Row] = [
    (
        "s3: no bucket in the URI",
        lambda w: ["data", "generate", "maze", "--clean", "1", "--corrupt", "0", "--out", "s3://"],
        "s3://",
    ),
    (
        "s3: invalid bucket name",
        lambda w: [
            "data",
            "generate",
            "maze",
            "--clean",
            "1",
            "--corrupt",
            "0",
            "--out",
            "s3://Bad_Bucket/x",
        ],
        "Bad_Bucket",
    ),
    (
        "s3: credentials in the URI",
        lambda w: [
            "data",
            "generate",
            "maze",
            "--clean",
            "1",
            "--corrupt",
            "0",
            "--out",
            "s3://key:secret@bucket/x",
        ],
        "credentials",
    ),
    (
        "s3: bucket does not exist (write)",
        lambda w: [
            "data",
            "generate",
            "maze",
            "--clean",
            "1",
            "--corrupt",
            "0",
            "--out",
            "s3://no-such-bucket-w/x",
        ],
        "no-such-bucket-w",
    ),
    (
        "s3: bucket does not exist (read)",
        lambda w: w.train(corrupt="s3://no-such-bucket-r/data/rrt"),
        "no-such-bucket-r",
    ),
    (
        "s3: dataset prefix is empty",
        lambda w: w.train(corrupt=f"s3://{_bucket(w)}/nothing/here"),
        "meta.json is missing",
    ),
]


def _bucket(w: World) -> str:
    import boto3

    boto3.client("s3", endpoint_url=w.s3).create_bucket(Bucket="bad-inputs")
    return "bad-inputs"


@pytest.mark.parametrize(("name", "argv", "fragment"), S3_ROWS, ids=[r[0] for r in S3_ROWS])
def test_s3_uris(
    world: World, name: str, argv: Callable[[World], list[str]], fragment: str
) -> None:
    assert_user_error(invoke(argv(world)), fragment)


# ----------------------------------------------------------------- the real process


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AMBIENT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


def test_real_process_prints_one_line(world: World) -> None:
    """What a terminal shows: one line on stderr, exit 2 (the light import path keeps it quick)."""
    res = _run(["data", "import", "zarr", str(world.tmp), "--out", str(world.tmp / "o")])
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a zarr" in errors[0], res.stderr[-2000:]


@pytest.mark.parametrize("how", ["--debug", "AMBIENT_DEBUG=1"])
def test_debug_adds_the_traceback(world: World, how: str) -> None:
    bad = world.copy_corrupt()
    (bad / "meta.json").unlink()
    args = world.train(corrupt=bad)
    if how == "--debug":
        res = invoke(["--debug", *args])
    else:
        res = invoke(args, env={"AMBIENT_DEBUG": "1"})
    assert res.exit_code == 2 and "Traceback" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert "meta.json is missing" in res.stderr.rstrip().splitlines()[-1]


def test_real_process_keeps_tracebacks_for_bugs(tmp_path: Path) -> None:
    """Anything that is not an AmbientError is a bug: traceback, exit 1."""
    script = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        "@main.command('boom')\n"
        "def boom() -> None:\n"
        "    raise KeyError('a bug')\n"
        "main(['boom'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 1 and "Traceback" in res.stderr and "KeyError: 'a bug'" in res.stderr
