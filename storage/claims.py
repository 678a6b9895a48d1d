"""Who trains a run, and who drives a store: claims (`runs/run_id=ID/claims/attempt=NNNN.json`),
their heartbeats, and the driver lease of store kinds without exclusive create. Exactly-once
rests on one primitive, an exclusive create: locally a temporary file hard-linked into place,
on S3 a conditional PUT (storage/objectstore.py), elsewhere check-then-write under the lease.

`Claims` is a part of `Store` (storage/store.py), kept apart because it is its own protocol."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

from rethink.storage import envtime
from rethink.storage.errors import DamagedFileError, StoreError
from rethink.storage.layout import DRIVER_LEASE, RunPaths, attempt_of
from rethink.text import one_line

if TYPE_CHECKING:
    from rethink.storage.objectstore import S3Objects
    from rethink.storage.store import Store

CLAIM_TIMEOUT_S = envtime.seconds("RETHINK_CLAIM_TIMEOUT", 600.0)  # no heartbeat this long: stale
LEASE_SETTLE_S = 2.0  # a driver lease is read back this long after writing it (no exclusive create)


def now() -> datetime:
    return datetime.now(timezone.utc)


def beat_interval() -> float:
    """How often a live owner refreshes its claims and lease: a tenth of the claim timeout."""
    return CLAIM_TIMEOUT_S / 10


class Claims:
    """The claim and lease methods of `Store`; they use its files (read, write, listdir, ...)."""

    objects: S3Objects | None
    _beats: dict[str, float]
    _lease_lost: str | None = None  # why the driver lease was lost, once it was

    def claim(self, run_id: str, token: str) -> int | None:
        """Take the run for this task (identified by `token`). Returns the attempt number, or None
        when another live owner holds it. A claim is stale when its owner's process is gone (same
        host), when it carries our own token (Ray retried this task), or after CLAIM_TIMEOUT_S
        without a heartbeat."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        current = max(attempts, default=0)
        if current and not self._stale(paths.claim(current), token):
            return None
        attempt = current + 1
        owner = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "at": now().isoformat()}
        if not self._create_exclusive(paths.claim(attempt), json.dumps(owner).encode()):
            return None  # someone else took this attempt number first
        self._beats[paths.claim(attempt)] = time.monotonic()
        return attempt

    def owns(self, run_id: str, attempt: int) -> bool:
        """True while no later attempt has taken the run over; refreshes the heartbeat (called
        every epoch: on an object store the claim is rewritten at most every CLAIM_TIMEOUT_S/10)."""
        paths = RunPaths(run_id)
        later = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None and a > attempt]
        if later:
            return False
        self._beat(paths.claim(attempt))
        return True

    def beat(self, run_id: str, attempt: int) -> bool:
        """Refresh the claim's heartbeat now, whatever the epoch length (the worker's heartbeat
        thread calls this every beat_interval()): False, and nothing written, once a later attempt has
        taken the run over or the claim was released."""
        paths = RunPaths(run_id)
        if any(a is not None and a > attempt for a in map(attempt_of, self.listdir(paths.claims))):
            return False
        return self._beat(paths.claim(attempt), force=True)

    def _beat(self, relative: str, force: bool = False) -> bool:
        """Move the claim's mtime, by which others judge it live. Locally a utime; on S3 the
        claim is rewritten with a `beat` time by a PUT conditional on the version just read, so a
        release (or any other write) in between is never overwritten; a released or damaged
        claim there is left as it is (False). Unless `force`d, an object store's
        claim is rewritten at most every beat_interval()."""
        if self.local:
            if self._read_claim(relative).get("released"):
                return False
            self.files.touch(relative)  # type: ignore[attr-defined]  # storage/localfs.py: no link followed
            return True
        if not force and time.monotonic() - self._beats.get(relative, -float("inf")) < beat_interval():
            return True
        self._beats[relative] = time.monotonic()
        if self.objects is not None:
            found = self.objects.get(self.path(relative))
            owner = parse_owner(found[0]) if found else {}
            return bool(owner) and not owner.get("released") and self.objects.replace(
                self.path(relative), _beating(owner), etag=found[1])
        owner = self._read_claim(relative)  # no conditional put: safe under the one driver's lease
        if not owner or owner.get("released"):
            return False
        self.write(relative, _beating(owner))
        return True

    def release(self, run_id: str, attempt: int) -> None:
        """Mark the run's claim as given up (done, failed or cancelled), keeping its number."""
        relative = RunPaths(run_id).claim(attempt)
        self.write(relative, json.dumps(self._read_claim(relative) | {"released": now().isoformat()}).encode())

    def newest_claim(self, run_id: str) -> tuple[int, dict] | None:
        """The run's highest attempt and what its claim says ({} when damaged), live or not."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        if not attempts:
            return None
        return max(attempts), self._read_claim(paths.claim(max(attempts)))

    def _read_claim(self, relative: str) -> dict:
        """A claim's content; a damaged one reads as empty (stale: anyone may take the run)."""
        try:
            return parse_owner(self.read(relative) or b"{}")  # type: ignore[attr-defined]
        except DamagedFileError:  # past its size limit (storage/limits.py): damaged too
            return {}

    def claim_holder(self, run_id: str) -> dict | None:
        """The live owner of the run, if any (for waiting on runs another process trains)."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        if not attempts or self._stale(paths.claim(max(attempts)), token=None):
            return None
        return self._read_claim(paths.claim(max(attempts)))

    def claim_age(self, run_id: str) -> float | None:
        """Seconds since the run's newest claim last beat (its mtime); None when it has none."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        if not attempts:
            return None
        info = self._info(self.path(paths.claim(max(attempts))))
        return max(0.0, time.time() - info.mtime.timestamp()) if info.mtime else None

    def _stale(self, relative: str, token: str | None) -> bool:
        owner = self._read_claim(relative)
        if not owner:  # damaged or empty: nobody can be shown to hold it
            return True
        if owner.get("released") or (token is not None and owner.get("token") == token):
            return True
        if gone_from_here(owner):
            return True
        info = self._info(self.path(relative))
        mtime = info.mtime.timestamp() if info.mtime else 0.0
        return time.time() - mtime > CLAIM_TIMEOUT_S

    def _create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create the file with `data` only when it is absent; True for the one caller that did.
        Whoever loses reads the whole winner's file, never an empty or half one."""
        full = self.path(relative)
        if self.local:
            return _link_exclusive(self, relative, data)  # type: ignore[arg-type]
        if self.objects is not None:
            return self.objects.create(full, data)
        if self.exists(relative):  # no exclusive create here: check, then write (see driver_lease)
            return False
        self.write(relative, data)
        return True

    @contextmanager
    def driver_lease(self) -> Iterator[None]:
        """One driver at a time on a store kind without exclusive create (gs://, hdfs://, mock://),
        where two drivers' claims and grid freezes could both succeed: a lease file, read back
        LEASE_SETTLE_S after writing it (last writer wins), refreshed while the driver runs and
        deleted at its end; another live driver's lease is refused in one line. Local and S3
        stores need none (their creates are exclusive): there this does nothing."""
        if self.exclusive:
            yield
            return
        token = uuid.uuid4().hex
        owner = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "at": now().isoformat()}
        for check in ("before", "after"):
            held = self._read_claim(DRIVER_LEASE)
            if held.get("token") != token and not self._stale(DRIVER_LEASE, token=None):
                kind = self.uri.partition("://")[0] or self.fs.type_name
                raise StoreError(
                    f"another driver (host {held.get('host')}, pid {held.get('pid')}, since {held.get('at')}) "
                    f"is using store '{self.uri}', and {kind}:// stores have no exclusive create, so two "
                    f"drivers could train a run twice; wait for it to end, or use a local folder or s3:// store")
            if check == "before":
                self.write(DRIVER_LEASE, json.dumps(owner).encode())
                time.sleep(LEASE_SETTLE_S)  # a driver that checked as we did has written by now
        stop = threading.Event()

        def beat() -> None:
            """Refresh the lease while it is still ours. A driver paused past the timeout (a
            stopped process, a suspended laptop) may come back to find another driver's lease:
            then it stops beating, never overwriting it, and the scheduler stops (check_lease)."""
            while not stop.wait(beat_interval()):
                try:
                    held = self._read_claim(DRIVER_LEASE)
                    if held.get("token") != token:
                        self._lease_lost = (f"lost the store's driver lease to host {one_line(held.get('host'))[:80]} "
                                            f"pid {one_line(held.get('pid'))[:20]} (this driver was silent longer than "
                                            f"{CLAIM_TIMEOUT_S:g} s); stopped. `rethink resume` when that driver ends")
                        return
                    self.write(DRIVER_LEASE, _beating(owner))
                except Exception:  # noqa: BLE001 - retried next beat; stale only after CLAIM_TIMEOUT_S
                    continue

        self._lease_lost = None
        beating = threading.Thread(target=beat, name="rethink-driver-lease", daemon=True)
        beating.start()
        try:
            yield
        finally:
            stop.set()
            beating.join()
            if self._lease_lost is None and self._read_claim(DRIVER_LEASE).get("token") == token:
                self.delete(DRIVER_LEASE)
        self.check_lease()

    def check_lease(self) -> None:
        """Raise the one-line StoreError of a driver lease lost to another driver, if it was; the
        scheduler calls this every second, so a driver that lost its lease stops at once."""
        lost = getattr(self, "_lease_lost", None)
        if lost is not None:
            raise StoreError(lost)


def parse_owner(blob: bytes) -> dict:
    """A claim's (or lease's) JSON as a dict; damaged reads as {}."""
    try:
        owner = json.loads(blob)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _beating(owner: dict) -> bytes:
    return json.dumps(owner | {"beat": now().isoformat()}).encode()


def _link_exclusive(store: Store, relative: str, data: bytes) -> bool:
    """Create a local store's file only when absent: the whole file is hard-linked into place
    (the link fails when something is there), through storage/localfs.py, which follows no link
    inside the store; an OSError (a read-only disk) is one StoreError line."""
    with store._writing(relative):
        return store.files.create_exclusive(relative, data)


def gone_from_here(owner: dict) -> bool:
    """True when the owner (of a claim, lease or lock) ran on this host and its process is gone;
    a pid that is not a positive number counts as gone."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner.get("pid", 0))
        if pid <= 0:
            return True
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return True
    except PermissionError:
        return False
    return False
