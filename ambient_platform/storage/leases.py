"""Leases: one writer at a time per annotation, on a laptop disk or on S3, without a server.

Why: two watchers (or a watcher and a manual ``ambient annotate``) must never annotate the same
shards at once, and a holder killed with -9 must not block the work forever. A lease is a small
JSON file (owner, expiry) written with create-if-absent; an expired lease is taken over with a
compare-and-swap on the exact version that was seen expired, so two contenders can never both
win. ``LeaseKeeper`` renews it from a thread and lets the holder check, before every commit,
that it still holds it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from ambient_core.errors import ConfigError, LeaseError
from ambient_platform.storage.backend import Version

__all__ = ["Lease", "LeaseKeeper", "LeaseLost", "LeaseStore", "acquire", "release"]

_ATTEMPTS = 5


class LeaseLost(LeaseError):
    """The lease was taken over by another owner (this holder stalled past its TTL)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The content of a lease file: who holds it and until when (Unix seconds, wall clock)."""

    owner: str
    acquired_at: float
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        """True once the lease may be taken over by another owner."""
        return (time.time() if now is None else now) >= self.expires_at


class _VersionedStore(Protocol):
    """The compare-and-swap primitives a lease needs (both backends have them)."""

    def write_if_absent(self, key: str, data: bytes) -> bool: ...

    def read_versioned(self, key: str) -> tuple[bytes, Version] | None: ...

    def replace_if(self, key: str, data: bytes, version: Version) -> bool: ...

    def delete_if(self, key: str, version: Version) -> bool: ...


class LeaseStore(Protocol):
    """What ``LeaseKeeper`` needs from a root (``StorageRoot`` is one)."""

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool: ...

    def release_lease(self, key: str, owner: str) -> bool: ...

    def read_lease(self, key: str) -> Lease | None: ...

    def uri_for(self, key: str) -> str: ...


def payload(owner: str, ttl_s: float) -> bytes:
    """A fresh lease file for ``owner``, valid ``ttl_s`` seconds from now."""
    now = time.time()
    body = {
        "owner": owner,
        "acquired_at": now,
        "expires_at": now + ttl_s,
        # A fresh nonce makes every lease write distinct, so compare-and-swap on its version
        # (bytes locally, ETag on S3) can never confuse an old lease with a renewed one.
        "nonce": uuid.uuid4().hex,
    }
    return json.dumps(body, sort_keys=True).encode()


def parse(data: bytes) -> Lease | None:
    """The lease in ``data``, or None if it is not a lease file (corrupt or foreign)."""
    try:
        body = json.loads(data)
        return Lease(
            owner=str(body["owner"]),
            acquired_at=float(body["acquired_at"]),
            expires_at=float(body["expires_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def acquire(store: _VersionedStore, key: str, owner: str, ttl_s: float) -> bool:
    """Take (or renew) the lease at ``key``; False if another owner holds an unexpired one.

    An expired or unreadable lease is replaced only if it still holds the version seen expired.
    """
    if not isinstance(owner, str) or not owner:
        raise ConfigError("lease owner must be a non-empty string")
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ConfigError(f"lease ttl_s must be a positive number of seconds, got {ttl_s!r}")
    for _ in range(_ATTEMPTS):
        data = payload(owner, float(ttl_s))
        if store.write_if_absent(key, data):
            return True
        current = store.read_versioned(key)
        if current is None:  # released between our create and our read: try again
            continue
        lease = parse(current[0])
        if lease is not None and lease.owner != owner and not lease.expired():
            return False
        if store.replace_if(key, data, current[1]):
            return True
    return False


def release(store: _VersionedStore, key: str, owner: str) -> bool:
    """Drop ``owner``'s lease at ``key``; False (nothing deleted) if someone else holds it."""
    current = store.read_versioned(key)
    if current is None:
        return False
    lease = parse(current[0])
    if lease is None or lease.owner != owner:
        return False
    return store.delete_if(key, current[1])


class LeaseKeeper:
    """Hold a lease for the length of a ``with`` block, renewing it from a daemon thread.

    ``held`` says whether it was acquired (``require()`` raises LeaseError when not). Work that
    must not be done twice calls ``check()`` before each commit: it raises LeaseLost once a
    renewal found another owner, so a stalled holder stops before it writes on top of its
    successor.
    """

    def __init__(self, root: LeaseStore, key: str, owner: str, ttl_s: float) -> None:
        self.root, self.key, self.owner, self.ttl_s = root, key, owner, float(ttl_s)
        self.held = False
        self._lost: str | None = None
        self._renewed = 0.0  # monotonic time of the last successful acquire or renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def new_owner() -> str:
        """``host/pid/nonce``: unique per holder, and tells a later process on the same host
        whether the holder is still alive."""
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    def _holder_died_here(self) -> bool:
        """True when the lease's holder was a process on this host that no longer exists
        (killed with -9, say): its lease need not be waited out."""
        holder = self.root.read_lease(self.key)
        if holder is None:
            return False
        parts = holder.owner.split("/")
        if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
            return False
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return self.root.release_lease(self.key, holder.owner)
        except PermissionError:
            return False
        return False

    def __enter__(self) -> LeaseKeeper:
        start = time.monotonic()
        self.held = self.root.acquire_lease(self.key, self.owner, self.ttl_s)
        if not self.held and self._holder_died_here():
            start = time.monotonic()
            self.held = self.root.acquire_lease(self.key, self.owner, self.ttl_s)
        self._renewed = start
        if self.held:
            self._thread = threading.Thread(target=self._renew, name="lease-renew", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            start = time.monotonic()
            try:
                if not self.root.acquire_lease(self.key, self.owner, self.ttl_s):
                    holder = self.root.read_lease(self.key)
                    self._lost = f"taken over by {holder.owner if holder else 'nobody'}"
                    return
                self._renewed = start
            except (OSError, ValueError):  # a storage hiccup: try again next period
                continue

    def require(self, hint: str = "") -> None:
        """Raise LeaseError naming the lease and its holder unless this keeper holds it."""
        if self.held:
            return
        holder = self.holder()
        who = "another owner"
        if holder is not None:
            who = f"{holder.owner} until {time.ctime(holder.expires_at)}"
        where = self.root.uri_for(self.key)
        raise LeaseError(f"lease {where} is held by {who}" + (f"; {hint}" if hint else ""))

    def check(self) -> None:
        """Raise LeaseLost if another owner holds the lease now, or may: renewals failed for
        so long that the lease could have expired (90% of its TTL, for clock slack)."""
        if self._lost is None and time.monotonic() - self._renewed > 0.9 * self.ttl_s:
            self._lost = f"not renewed for {time.monotonic() - self._renewed:.0f} s"
        if self._lost is not None:
            raise LeaseLost(f"lease {self.root.uri_for(self.key)} lost: {self._lost}")

    def holder(self) -> Lease | None:
        return self.root.read_lease(self.key)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and self._lost is None:
            self.root.release_lease(self.key, self.owner)
