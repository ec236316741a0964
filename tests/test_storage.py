"""Storage roots: the same behaviour on a local directory and on S3 (a real moto server)."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import kill_tree

from ambient_core.errors import ConfigError, DataError, LeaseError, NotFoundError
from ambient_platform.settings import resolve_local, resolve_location
from ambient_platform.storage import (
    FileInfo,
    LeaseKeeper,
    StorageError,
    StorageRoot,
    s3_endpoint_from_env,
    validate_name,
)

BAD_KEYS = [
    "",
    "..",
    "../x",
    "a/../../x",
    "a/..",
    ".",
    "./a",
    "/etc/passwd",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a//b",
    "a/",
    ".~tmp-123",
]


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> StorageRoot:
    """The same tests on a local directory and on ``s3://bucket/some/prefix``."""
    if request.param == "local":
        return StorageRoot(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return StorageRoot(f"s3://{bucket}/some/prefix")


def _temp_files(root: StorageRoot) -> list[str]:
    """In-flight/leftover temp files of local writes (none may survive a write)."""
    assert root.local_path is not None
    return [p.name for p in root.local_path.rglob(".~tmp-*")]


# ------------------------------------------------------------------------------- bytes/JSON


def test_round_trip(root: StorageRoot) -> None:
    root.write_bytes("a/b/c.bin", b"\x00\x01hello")
    assert root.read_bytes("a/b/c.bin") == b"\x00\x01hello"
    root.write_bytes("empty", b"")
    assert root.read_bytes("empty") == b""
    root.write_bytes("views", memoryview(bytearray(b"xyz")))
    assert root.read_bytes("views") == b"xyz"
    root.write_json("meta.json", {"b": [1.5, "z"], "a": 1})
    assert root.read_json("meta.json") == {"a": 1, "b": [1.5, "z"]}
    assert root.read_bytes("meta.json").endswith(b"\n")


def test_overwrite_replaces_whole_file(root: StorageRoot) -> None:
    root.write_bytes("k.bin", b"first version, longer")
    root.write_bytes("k.bin", b"second")
    assert root.read_bytes("k.bin") == b"second"
    assert [f.key for f in root.list()] == ["k.bin"]
    if root.local_path is not None:
        assert _temp_files(root) == []


def test_write_if_absent_commits_once(root: StorageRoot) -> None:
    assert root.write_bytes_if_absent("manifests/v1.json", b"first")
    assert not root.write_bytes_if_absent("manifests/v1.json", b"second")
    assert root.read_bytes("manifests/v1.json") == b"first"
    assert root.write_json_if_absent("manifests/v2.json", {"shards": ["a"]})
    assert not root.write_json_if_absent("manifests/v2.json", {"shards": ["b"]})
    assert root.read_json("manifests/v2.json") == {"shards": ["a"]}
    if root.local_path is not None:
        assert _temp_files(root) == []


def test_write_if_absent_single_winner(root: StorageRoot) -> None:
    def attempt(i: int) -> bool:
        return root.write_bytes_if_absent("manifests/v7.json", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    assert root.read_bytes("manifests/v7.json") == f"writer {results.index(True)}".encode()


def test_json_rejects_bad_content(root: StorageRoot) -> None:
    with pytest.raises(TypeError):
        root.write_json("bad.json", {"x": object()})
    with pytest.raises(ValueError):
        root.write_json("nan.json", {"x": float("nan")})
    assert not root.exists("bad.json")
    assert not root.exists("nan.json")
    root.write_bytes("garbage.json", b"{not json")
    with pytest.raises(ValueError, match="garbage.json is not valid JSON"):
        root.read_json("garbage.json")


# ------------------------------------------------------------------------ list/exists/delete


def test_list_prefix_and_suffix(root: StorageRoot) -> None:
    keys = [
        "shards/part-0001.parquet",
        "shards/part-0002.parquet",
        "shards/part-0002.json",
        "shards/sub/x.parquet",
        "shardsx/z.parquet",
        "other/y.parquet",
        "top.json",
    ]
    for key in reversed(keys):
        root.write_bytes(key, key.encode())
    everything = root.list()
    assert [f.key for f in everything] == sorted(keys)
    assert all(isinstance(f, FileInfo) and f.size == len(f.key) for f in everything)
    assert all(isinstance(f.etag_or_mtime, str) and f.etag_or_mtime for f in everything)

    def keys_of(prefix: str = "", suffix: str | None = None) -> list[str]:
        return [f.key for f in root.list(prefix, suffix)]

    assert keys_of("shards/") == [
        "shards/part-0001.parquet",
        "shards/part-0002.json",
        "shards/part-0002.parquet",
        "shards/sub/x.parquet",
    ]
    assert keys_of("shards/part-") == [
        "shards/part-0001.parquet",
        "shards/part-0002.json",
        "shards/part-0002.parquet",
    ]
    assert keys_of("shards") == keys_of("shards/") + ["shardsx/z.parquet"]
    assert keys_of("shards/", ".parquet") == [
        "shards/part-0001.parquet",
        "shards/part-0002.parquet",
        "shards/sub/x.parquet",
    ]
    assert keys_of(suffix=".json") == ["shards/part-0002.json", "top.json"]
    assert keys_of("missing/") == []
    assert keys_of("top.json") == ["top.json"]
    with pytest.raises(ValueError):
        root.list("../")


def test_list_on_missing_local_root_is_empty(tmp_path: Path) -> None:
    assert StorageRoot(tmp_path / "not-yet").list() == []


def test_s3_list_pages_and_stays_inside_prefix(s3_bucket: str) -> None:
    root = StorageRoot(f"s3://{s3_bucket}/some/prefix")
    keys = [f"many/{i:05d}.bin" for i in range(1001)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: root.write_bytes(k, b"x"), keys))
    client = boto3.client("s3")
    client.put_object(Bucket=s3_bucket, Key="some/prefix2/sibling.bin", Body=b"no")
    client.put_object(Bucket=s3_bucket, Key="some/prefix/dirmarker/", Body=b"")
    found = root.list()
    assert [f.key for f in found] == keys
    assert all(f.size == 1 for f in found)
    assert len(root.list("many/009")) == 100
    assert root.list("many/", suffix="01000.bin") == [found[-1]]


def test_exists_and_delete(root: StorageRoot) -> None:
    assert not root.exists("d/k.bin")
    root.write_bytes("d/k.bin", b"1")
    assert root.exists("d/k.bin")
    assert not root.exists("d")  # a "directory" is not a stored file
    root.delete("d/k.bin")
    assert not root.exists("d/k.bin")
    root.delete("d/k.bin")  # idempotent, like S3
    with pytest.raises(FileNotFoundError):
        root.read_bytes("d/k.bin")


# ------------------------------------------------------------------------------ safety


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_escaping_keys_rejected(root: StorageRoot, bad: str) -> None:
    for op in (root.join, root.child, root.read_bytes, root.exists, root.delete, root.uri_for):
        with pytest.raises(ValueError):
            op(bad)
    with pytest.raises(ValueError):
        root.write_bytes(bad, b"x")
    with pytest.raises(ValueError):
        root.acquire_lease(bad, "me", 10)
    with pytest.raises(ValueError):
        root.child("ok", bad)
    if root.local_path is not None:
        assert not root.local_path.exists() or _temp_files(root) == []


def test_join_and_child(root: StorageRoot) -> None:
    assert root.join("a", "b/c", "d.json") == "a/b/c/d.json"
    sub = root.child("datasets", "maze-50")
    sub.write_bytes("meta.json", b"{}")
    assert root.read_bytes("datasets/maze-50/meta.json") == b"{}"
    assert sub.uri == root.uri_for("datasets/maze-50")
    assert sub.uri_for("meta.json") == root.uri_for("datasets/maze-50/meta.json")
    assert [f.key for f in sub.list()] == ["meta.json"]


@pytest.mark.parametrize("name", ["a", "maze-50", "A_b.c-1", "run.2024-01-01", "x" * 128])
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "must not be empty"),
        (".hidden", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("a/b", "contains '/'"),
        ("a b", "contains ' '"),
        ("a\\b", "contains"),
        ("caf\u00e9", "contains"),
        ("a\x00", "contains"),
        ("x" * 129, "129 characters"),
    ],
)
def test_validate_name_rejects(name: str, why: str) -> None:
    with pytest.raises(ValueError, match="run name") as info:
        validate_name(name, what="run name")
    assert why in str(info.value)


def test_validate_name_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="dataset name must be a string"):
        validate_name(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- errors


def test_missing_key_error_names_uri(root: StorageRoot) -> None:
    uri = root.uri_for("nope/x.json")
    assert uri.startswith("s3://" if root.is_s3 else "file://")
    for read in (root.read_bytes, root.read_json, root.open_input):
        with pytest.raises(FileNotFoundError) as info:
            read("nope/x.json")
        assert uri in str(info.value)


def test_missing_bucket_names_bucket_and_endpoint(s3_server: str) -> None:
    root = StorageRoot("s3://no-such-bucket-xyz/p")
    calls = [
        lambda: root.read_bytes("k"),
        lambda: root.write_bytes("k", b"1"),
        lambda: root.write_bytes_if_absent("k", b"1"),
        lambda: root.exists("k"),
        lambda: root.list(),
        lambda: root.delete("k"),
        lambda: root.open_input("k"),
        lambda: root.acquire_lease("lease", "me", 10),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert "no-such-bucket-xyz" in message and s3_server in message, message


# ---------------------------------------------------------------------------- arrow


def test_arrow_filesystem_parquet_round_trip(root: StorageRoot) -> None:
    fs, base = root.arrow_filesystem()
    if root.is_s3:
        assert not base.startswith("s3://")
        assert base.endswith("/some/prefix")
    else:
        assert base == str(root.local_path)
        fs.create_dir(f"{base}/data", recursive=True)
    table = pa.table(
        {
            "episode_index": pa.array([0, 0, 1], pa.int64()),
            "action": pa.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, f"{base}/data/part-0000.parquet", filesystem=fs)
    assert pq.read_table(f"{base}/data/part-0000.parquet", filesystem=fs).equals(table)
    assert [f.key for f in root.list("data/", ".parquet")] == ["data/part-0000.parquet"]
    # Bytes written through the root are readable by pyarrow, and the other way round.
    root.write_bytes("copy.parquet", root.read_bytes("data/part-0000.parquet"))
    with root.open_input("copy.parquet") as f:
        assert pq.read_table(f).equals(table)


def test_open_output_and_input(root: StorageRoot) -> None:
    with root.open_output("blob/x.bin") as f:
        f.write(b"abc" * 1000)
    with root.open_input("blob/x.bin") as f:
        assert f.size() == 3000
        f.seek(2997)
        assert f.read() == b"abc"


def test_open_output_writes_nothing_on_error(root: StorageRoot) -> None:
    root.write_bytes("blob/x.bin", b"old")
    with pytest.raises(RuntimeError), root.open_output("blob/x.bin") as f:
        f.write(b"partial")
        raise RuntimeError("serialisation failed")
    with pytest.raises(RuntimeError), root.open_output("blob/new.bin") as f:
        f.write(b"partial")
        raise RuntimeError("serialisation failed")
    assert root.read_bytes("blob/x.bin") == b"old"
    assert not root.exists("blob/new.bin")
    if root.local_path is not None:
        assert _temp_files(root) == []


# ---------------------------------------------------------------------- local atomicity


def test_local_failed_replace_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = StorageRoot(tmp_path)
    root.write_bytes("d/k.bin", b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "disk on fire")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="disk on fire"):
            root.write_bytes("d/k.bin", b"new")
        with pytest.raises(OSError, match="disk on fire"):
            root.write_bytes("d/fresh.bin", b"new")
    assert root.read_bytes("d/k.bin") == b"old"
    assert sorted(os.listdir(tmp_path / "d")) == ["k.bin"]


def test_local_failed_fsync_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = StorageRoot(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "no fsync")))
        with pytest.raises(OSError, match="no fsync"):
            root.write_bytes("d/k.bin", b"new")
        with pytest.raises(OSError, match="no fsync"):
            root.write_bytes_if_absent("d/m.json", b"{}")
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC, errno.EROFS])
def test_local_user_fixable_errors_name_the_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    root = StorageRoot(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=f"cannot write {root.uri_for('d/k.bin')}: "):
        root.write_bytes("d/k.bin", b"new")
    assert os.listdir(tmp_path / "d") == []


def test_local_files_get_umask_permissions(tmp_path: Path) -> None:
    root = StorageRoot(tmp_path)
    root.write_bytes("k.bin", b"1")
    root.write_bytes_if_absent("m.json", b"{}")
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("k.bin", "m.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_if_absent_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    root = StorageRoot(tmp_path)
    assert root.write_bytes_if_absent("m.json", b"first")
    assert not root.write_bytes_if_absent("m.json", b"second")
    assert root.read_bytes("m.json") == b"first"
    assert _temp_files(root) == []


# ---------------------------------------------------------------------------- leases


def test_lease_lifecycle(root: StorageRoot) -> None:
    key = "leases/shard-0000"
    assert root.read_lease(key) is None
    assert root.acquire_lease(key, "watcher-1", ttl_s=30)
    assert not root.acquire_lease(key, "watcher-2", ttl_s=30)
    first = root.read_lease(key)
    assert first is not None and first.owner == "watcher-1" and not first.expired()
    assert root.acquire_lease(key, "watcher-1", ttl_s=60)  # renewal by the holder
    renewed = root.read_lease(key)
    assert renewed is not None and renewed.expires_at > first.expires_at
    assert not root.release_lease(key, "watcher-2")
    assert root.exists(key)
    assert root.release_lease(key, "watcher-1")
    assert root.read_lease(key) is None
    assert not root.release_lease(key, "watcher-1")
    assert root.acquire_lease(key, "watcher-2", ttl_s=30)


def test_lease_expiry_takeover(root: StorageRoot) -> None:
    key = "leases/shard-0001"
    assert root.acquire_lease(key, "crashed", ttl_s=3.0)  # generous: a loaded CI machine is slow
    assert not root.acquire_lease(key, "watcher-2", ttl_s=30)
    time.sleep(3.1)
    lease = root.read_lease(key)
    assert lease is not None and lease.expired()
    assert root.acquire_lease(key, "watcher-2", ttl_s=30)
    lease = root.read_lease(key)
    assert lease is not None and lease.owner == "watcher-2"
    # The old holder waking up can neither release nor reclaim the new holder's lease.
    assert not root.release_lease(key, "crashed")
    assert not root.acquire_lease(key, "crashed", ttl_s=30)
    assert root.read_lease(key) == lease


def test_lease_takeover_has_one_winner(root: StorageRoot) -> None:
    key = "leases/shard-0002"
    assert root.acquire_lease(key, "crashed", ttl_s=0.05)
    time.sleep(0.1)
    start = threading.Barrier(8)

    def contend(i: int) -> bool:
        start.wait()
        return root.acquire_lease(key, f"watcher-{i}", ttl_s=30)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(contend, range(8)))
    assert results.count(True) == 1
    lease = root.read_lease(key)
    assert lease is not None and lease.owner == f"watcher-{results.index(True)}"


def test_corrupt_lease_is_taken_over(root: StorageRoot) -> None:
    root.write_bytes("leases/broken", b"not json")
    with pytest.raises(ValueError, match="not a valid lease"):
        root.read_lease("leases/broken")
    assert not root.release_lease("leases/broken", "me")
    assert root.acquire_lease("leases/broken", "me", ttl_s=30)
    lease = root.read_lease("leases/broken")
    assert lease is not None and lease.owner == "me"


@pytest.mark.parametrize(("owner", "ttl"), [("", 10), ("me", 0), ("me", -1), ("me", float("inf"))])
def test_lease_arguments_checked(tmp_path: Path, owner: str, ttl: float) -> None:
    with pytest.raises(ValueError):
        StorageRoot(tmp_path).acquire_lease("lease", owner, ttl)


# ------------------------------------------------------------------------ URIs, secrets


def test_local_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = StorageRoot(tmp_path)
    assert root.uri == tmp_path.as_uri() and str(root) == root.uri
    assert root.local_path == tmp_path and not root.is_s3
    assert StorageRoot(str(tmp_path)) == root == StorageRoot(tmp_path.as_uri())
    assert StorageRoot(f"{tmp_path}/x/../") == root
    spaced = StorageRoot(tmp_path / "a b")
    assert "%20" in spaced.uri and StorageRoot(spaced.uri).local_path == tmp_path / "a b"
    monkeypatch.chdir(tmp_path)
    assert StorageRoot("data/x").local_path == tmp_path / "data" / "x"
    assert root.child("a", "b").local_path == tmp_path / "a" / "b"
    assert pickle.loads(pickle.dumps(root)) == root


def test_s3_uris() -> None:
    root = StorageRoot("s3://my-bucket/a/b/")
    assert root.uri == "s3://my-bucket/a/b" and root.is_s3 and root.local_path is None
    assert StorageRoot("S3://my-bucket/a/b") == root
    assert StorageRoot("s3://my-bucket").uri == "s3://my-bucket"
    assert StorageRoot("s3://my-bucket").child("x").uri == "s3://my-bucket/x"
    assert root.child("c", "d/e").uri == "s3://my-bucket/a/b/c/d/e"
    assert root.uri_for("m/v1.json") == "s3://my-bucket/a/b/m/v1.json"
    assert repr(root) == "StorageRoot('s3://my-bucket/a/b')"
    assert pickle.loads(pickle.dumps(root)) == root


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "gs://bucket/x",
        "http://host/x",
        "s3://Bad_Bucket/x",
        "s3://ab/x",
        "s3://bucket/x?endpoint_override=127.0.0.1:9000",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
        "s3:/bucket/x",
        "file://otherhost/x",
        "file://relative",
    ],
)
def test_bad_uris_rejected(uri: str) -> None:
    with pytest.raises(ValueError):
        StorageRoot(uri)


def test_credentials_in_uri_rejected_without_echo() -> None:
    with pytest.raises(ValueError, match="credentials") as info:
        StorageRoot("s3://AKIDEXAMPLE:hunter2secret@bucket/x")
    assert "hunter2secret" not in str(info.value)


def test_credentials_never_in_repr_or_pickle(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDVERYSECRET42")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sEcReT-VaLuE-123")
    root = StorageRoot(f"s3://{s3_bucket}/p")
    root.write_bytes("k", b"1")  # builds the boto3 client
    root.arrow_filesystem()  # and the pyarrow filesystem
    child = root.child("c")
    for secret in ("AKIDVERYSECRET42", "sEcReT-VaLuE-123"):
        for text in (repr(root), str(root), root.uri, repr(child), repr(root.list())):
            assert secret not in text
        assert secret.encode() not in pickle.dumps(root)
        assert secret.encode() not in pickle.dumps(child)


def test_s3_root_survives_pickle(root: StorageRoot) -> None:
    root.write_bytes("k", b"payload")
    clone = pickle.loads(pickle.dumps(root))
    assert clone.read_bytes("k") == b"payload"


def test_endpoint_from_environment(
    s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The S3-specific variable wins over the global one, for boto3 and pyarrow alike.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    assert s3_endpoint_from_env() == s3_server
    root = StorageRoot(f"s3://{s3_bucket}/p")
    root.write_bytes("k", b"v")
    fs, base = root.arrow_filesystem()
    with fs.open_input_stream(f"{base}/k") as f:
        assert f.read() == b"v"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert s3_endpoint_from_env() == "http://127.0.0.1:9"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert s3_endpoint_from_env() is None


# ------------------------------------------------------------------- one error hierarchy


def test_errors_are_ambient_errors(root: StorageRoot) -> None:
    """Missing files, bad keys, bad JSON and busy leases raise the project's error types,
    which still are the builtins older callers catch."""
    with pytest.raises(NotFoundError) as missing:
        root.read_bytes("nope.bin")
    assert isinstance(missing.value, FileNotFoundError)
    assert str(missing.value) == f"no such file or object: {root.uri_for('nope.bin')}"
    with pytest.raises(NotFoundError):
        root.open_input("nope.bin")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        root.read_bytes("a/../b")
    with pytest.raises(ConfigError, match="run name"):
        validate_name("a/b", what="run name")
    root.write_bytes("bad.json", b"{")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        root.read_json("bad.json")
    with pytest.raises(DataError, match="nan.json"):
        root.write_json("nan.json", {"x": float("inf")})
    assert root.acquire_lease("lease", "someone-else", ttl_s=30)
    with LeaseKeeper(root, "lease", "me", ttl_s=30) as keeper:
        assert not keeper.held
        with pytest.raises(LeaseError, match="held by someone-else.*; use another --name"):
            keeper.require("use another --name")


def test_unreachable_endpoint_names_it_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://AKIDUSER:s3cr3tpass@127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    root = StorageRoot("s3://some-bucket/p")
    for call in (lambda: root.read_bytes("k"), lambda: root.exists("k")):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert "127.0.0.1:9" in message and "s3://some-bucket/p/k" in message, message
        assert "s3cr3tpass" not in message and "AKIDUSER" not in message
        assert "\n" not in message


# ------------------------------------------------- relative locations stay inside their root


@pytest.mark.parametrize("escape", ["../../etc", "..", "a/../../b", "./../x", "data/../../.."])
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_relative_location_cannot_leave_storage_root(
    storage: str, escape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "store") if storage == "local" else "s3://lab/ambient"
    monkeypatch.setenv("AMBIENT_STORAGE", root)
    with pytest.raises(ConfigError) as info:
        resolve_location(escape)
    assert repr(escape) in str(info.value) and root in str(info.value)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_relative_location_is_normalised_inside_root(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "store") if storage == "local" else "s3://lab/ambient"
    monkeypatch.setenv("AMBIENT_STORAGE", root)
    assert resolve_location("data/maze") == f"{root}/data/maze"
    assert resolve_location("data/../annotations/./a") == f"{root}/annotations/a"
    # What the user names explicitly is theirs to choose.
    assert resolve_location("/abs/elsewhere") == "/abs/elsewhere"
    assert resolve_location("s3://other/x") == "s3://other/x"
    assert resolve_location(tmp_path.as_uri()) == tmp_path.as_uri()
    assert resolve_location("~/x") == os.path.expanduser("~/x")


def test_resolve_local_stays_in_ambient_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBIENT_HOME", str(tmp_path / "home"))
    home = tmp_path / "home"
    assert resolve_local("runs/a") == home / "runs" / "a"
    assert resolve_local("runs/../b") == home / "b"
    assert resolve_local(str(tmp_path / "abs")) == tmp_path / "abs"
    for escape in ("../x", "runs/../../x"):
        with pytest.raises(ConfigError) as info:
            resolve_local(escape)
        assert repr(escape) in str(info.value) and str(home) in str(info.value)
    with pytest.raises(ConfigError, match="must be a local path"):
        resolve_local("s3://lab/runs")


# ------------------------------------------------------------------------ shared helpers


def test_kill_tree_kills_children_and_tolerates_dead() -> None:
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline and not psutil.Process(proc.pid).children():
        time.sleep(0.05)
    child = psutil.Process(proc.pid).children()[0]
    assert kill_tree(proc.pid) == []
    assert proc.wait(timeout=5) == -9
    # The grandchild went too (a zombie until its new parent reaps it).
    with contextlib.suppress(psutil.NoSuchProcess):
        assert child.status() == psutil.STATUS_ZOMBIE
    assert kill_tree(proc.pid) == []  # already gone: nothing to do, no error
