"""The local-directory backend: atomic and create-only writes that survive a crash.

Why: a reader must never see half a file, a manifest must be committed exactly once, and a
power cut must not lose a write that returned. Every write goes to a temp file in the same
directory, is fsynced, then renamed (replace) or hard-linked (create-only) into place, and the
directory entry is fsynced too. Compare-and-swap (for leases) runs under a directory flock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ambient_core.errors import NotFoundError, StorageError
from ambient_platform.storage.backend import FileInfo, Version
from ambient_platform.storage.keys import TMP_PREFIX

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs

__all__ = ["LocalBackend", "atomic_file", "dir_lock", "fsync_dir"]

# Errors of os.link that mean "this filesystem has no hard links", not "the key exists".
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
# OS errors the user can fix (permissions, a full or read-only disk, a file where a directory
# belongs): reported as StorageError naming the URI. Anything else (EIO, ...) stays as it is.
_USER_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    }
)


@contextlib.contextmanager
def _os_errors(action: str, uri: str) -> Iterator[None]:
    """Raise the user-fixable OS errors of the block as StorageError naming ``uri``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno in _USER_ERRNOS:
            raise StorageError(f"cannot {action} {uri}: {exc.strerror}") from exc
        raise


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_dir(directory: Path) -> None:
    """Make a rename/link in ``directory`` durable (the entry, not just the file data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(directory: Path) -> tuple[Path, IO[bytes]]:
    """A fresh temp file next to the destination (same filesystem, so os.replace is atomic).

    Created with mode 0o666 minus the umask, like a plain open(), rather than mkstemp's 0o600,
    so shared datasets stay readable by the group.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return tmp, os.fdopen(fd, "wb")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Temp file in the same directory + fsync + os.replace; the temp never survives."""
    tmp, f = _open_temp(path.parent)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        _unlink_quiet(tmp)


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive flock on a directory: serialises compare-and-swap across processes.

    flock locks belong to the open file description, so two threads of one process that each
    open the directory also exclude each other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exclusive_create(path: Path, data: bytes) -> bool:
    """Create-only write for filesystems without hard links (some FUSE/SMB mounts).

    O_EXCL still guarantees a single winner, but readers may briefly see the file while it is
    being written; on such filesystems readers must tolerate a short or empty manifest.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quiet(path)
        raise
    fsync_dir(path.parent)
    return True


def create_only(path: Path, data: bytes) -> bool:
    """Write ``path`` only if it does not exist; True if this call created it.

    The content goes to a temp file first and is hard-linked into place (link fails if the name
    exists), so the file appears complete and exactly one of several racing writers wins.
    """
    if path.exists():
        return False
    tmp, f = _open_temp(path.parent)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            return _exclusive_create(path, data)
        fsync_dir(path.parent)
        return True
    finally:
        _unlink_quiet(tmp)


class LocalBackend:
    """A directory on a local (or mounted) filesystem; see ``backend.Backend``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def uri(self) -> str:
        return self.path.as_uri()

    def file(self, key: str) -> Path:
        return self.path.joinpath(*key.split("/"))

    def uri_for(self, key: str) -> str:
        return self.file(key).as_uri()

    def child(self, key: str) -> LocalBackend:
        return LocalBackend(self.file(key))

    def read_bytes(self, key: str) -> bytes:
        uri = self.uri_for(key)
        with _os_errors("read", uri):
            try:
                return self.file(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise NotFoundError(uri) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        with _os_errors("write", self.uri_for(key)), atomic_file(self.file(key)) as f:
            f.write(data)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        with _os_errors("write", self.uri_for(key)):
            return create_only(self.file(key), data)

    def exists(self, key: str) -> bool:
        with _os_errors("read", self.uri_for(key)):
            return self.file(key).is_file()

    def delete(self, key: str) -> None:
        with _os_errors("delete", self.uri_for(key)):
            self.file(key).unlink(missing_ok=True)

    def listing(self, prefix: str) -> list[FileInfo]:
        """Walk only the directories that can hold keys starting with ``prefix``."""
        start = self.path.joinpath(*prefix.split("/")[:-1])
        found: list[FileInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.path).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")
            ]
            for name in filenames:
                key = rel + name
                if name.startswith(TMP_PREFIX) or not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # removed meanwhile, or a dangling symlink
                    continue
                found.append(FileInfo(key, st.st_size, str(st.st_mtime_ns)))
        return found

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        from pyarrow.fs import LocalFileSystem

        return LocalFileSystem(), str(self.path)

    def open_input(self, key: str) -> pyarrow.NativeFile:
        from pyarrow.fs import LocalFileSystem

        uri = self.uri_for(key)
        with _os_errors("read", uri):
            try:
                return LocalFileSystem().open_input_file(str(self.file(key)))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise NotFoundError(uri) from exc

    @contextlib.contextmanager
    def open_output(self, key: str) -> Iterator[IO[bytes]]:
        with _os_errors("write", self.uri_for(key)), atomic_file(self.file(key)) as f:
            yield f

    def read_versioned(self, key: str) -> tuple[bytes, Version] | None:
        """Content plus its compare-and-swap token, which locally is the content itself."""
        try:
            data = self.read_bytes(key)
        except FileNotFoundError:
            return None
        return data, data

    def replace_if(self, key: str, data: bytes, version: Version) -> bool:
        path = self.file(key)
        with _os_errors("write", self.uri_for(key)), dir_lock(path.parent):
            try:
                if path.read_bytes() != version:
                    return False
            except FileNotFoundError:
                return False
            with atomic_file(path) as f:
                f.write(data)
        return True

    def delete_if(self, key: str, version: Version) -> bool:
        path = self.file(key)
        with _os_errors("delete", self.uri_for(key)), dir_lock(path.parent):
            try:
                if path.read_bytes() != version:
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
        return True
