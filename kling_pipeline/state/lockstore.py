"""The lock file during a run: one writer at a time, rewritten atomically after every change.

`hold_run_lock` makes a second `apply` on the same storyboard wait (then stop, naming the
holder's pid) instead of racing the first one's writes. `LockKeeper` holds the lock file in
memory and writes it whole after every change, so a job goes on (polls after recording its task
id) only when a kill can no longer lose the record.

Two ways to the disk. `commit` (statuses, task ids) writes in a thread, and every change made
before a write began shares it, so the event loop never stops for an fsync. `record_now` (a
shot's intent to send) writes on the spot, blocking the loop for one write: the submit calls it
from inside the send, when the body is about to leave, and the body's bytes go to the socket
straight after, with no loop turn between. A kill can then leave a shot `submitting` whose body
never left only during the last flush of that one write (the folder's fsync after the rename,
a fraction of a millisecond); a write in a thread added a thread handoff and loop turns, in
which other jobs ran, to that window (1.5 ms median). Both ways take one lock around the
write, and neither puts an older version over a newer one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.state.lockfile import LockEntry, LockFile, LockText

if TYPE_CHECKING:
    import asyncio  # imported by the methods of a run's event loop: a no-op apply has none


class RunLockBusy(KlingPipelineError):
    """Another run holds the storyboard."""


def run_lock_path(lock_path: Path) -> Path:
    """`lighthouse.lock.json` -> `.lighthouse.lock.json.run` (a hidden file beside it)."""
    return lock_path.with_name(f".{lock_path.name}.run")


def _holder(path: Path) -> str:
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return text if text.isdigit() else ""


@contextlib.contextmanager
def hold_run_lock(lock_path: Path, timeout: float) -> Iterator[None]:
    """Hold the storyboard's run lock, waiting up to `timeout` seconds for another run.

    The holder writes its pid into the lock file (filelock >= 4 never truncates a held file),
    so a waiter can say who it waited for. The kernel drops the lock of a killed process.
    """
    import filelock

    path = run_lock_path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), timeout=max(0.0, timeout), poll_interval=0.1)
    try:
        lock.acquire()
    except filelock.Timeout:
        pid = _holder(path)
        who = f"pid {pid}" if pid else "another process"
        raise RunLockBusy(
            f"another apply ({who}) is working on {lock_path.name}; waited {timeout:g} s "
            "(--lock-timeout). Let it finish, or stop it, then run again.") from None
    try:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        yield
    finally:
        lock.release()


class LockKeeper:
    """The lock file of a run: every change goes to disk before the caller goes on."""

    def __init__(self, path: Path, lock: LockFile,
                 write: Callable[[Path, bytes], None] = atomic_write_bytes) -> None:
        """`write` puts bytes on disk durably (a test passes a slow one)."""
        self.path = path
        self.lock = lock
        self._write = write
        self.writes = 0
        self._text = LockText()
        self._version = 0  # changes made in memory
        self._on_disk = 0  # the newest version written (set under `_disk`, by either way)
        self._disk = threading.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []  # (version, its waiter)

    def get(self, shot_id: str) -> LockEntry | None:
        return self.lock.shots.get(shot_id)

    def _apply(self, changes: dict[str, LockEntry | None]) -> None:
        changed = False
        for shot_id, entry in changes.items():
            if entry is None:
                changed |= self.lock.shots.pop(shot_id, None) is not None
            elif self.lock.shots.get(shot_id) != entry:
                self.lock.shots[shot_id] = entry
                changed = True
        if changed:
            self._version += 1

    def _store(self, version: int, data: bytes) -> None:
        """Write `data` (the state at `version`) unless a newer state is already on disk."""
        with self._disk:
            if self._on_disk >= version:
                return
            self._write(self.path, data)
            self._on_disk = version
            self.writes += 1

    def _store_now(self) -> None:
        if self._on_disk < self._version:
            self._store(self._version, self._text.render(self.lock))

    def put(self, changes: dict[str, LockEntry | None]) -> None:
        """Set (or, with None, drop) entries, then write the file atomically, now (outside a
        run, or where nothing else may happen first)."""
        self._apply(changes)
        self._store_now()

    def settle(self) -> None:
        """Write now whatever is only in memory: after a run that was cancelled while a
        write was pending (the write in its thread finishes; a later change would be lost)."""
        self._store_now()

    def record_now(self, changes: dict[str, LockEntry | None]) -> None:
        """Set (or drop) entries and return with them on disk, blocking the event loop for
        the write (and for a write of `commit` under way, which it waits for): for the one
        record after which a request's bytes must leave at once (see the module's doc)."""
        self._apply(changes)
        self._store_now()
        self._release(lambda waiter: waiter.set_result(None), up_to=self._on_disk)

    async def commit(self, changes: dict[str, LockEntry | None]) -> None:
        """Set (or drop) entries; return as soon as a write holding them is on disk (not when
        the writer has caught up with changes made after them). Changes made in one loop turn
        share the next write."""
        import asyncio

        self._apply(changes)
        if self._on_disk >= self._version:
            return
        landed = asyncio.get_running_loop().create_future()
        self._waiting.append((self._version, landed))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._flush())
        await asyncio.shield(landed)

    async def _flush(self) -> None:
        """Write the newest state until the disk has caught up with memory, one write at a
        time, waking the waiters of each write as it lands; the bytes are rendered here, the
        fsync waits in a thread."""
        import asyncio

        try:
            while self._on_disk < self._version:
                version = self._version
                data = self._text.render(self.lock)
                await asyncio.to_thread(self._store, version, data)
                self._release(lambda waiter: waiter.set_result(None), up_to=self._on_disk)
        except (Exception, asyncio.CancelledError) as exc:  # each waiter raises it
            failure = exc
            self._release(lambda waiter: waiter.set_exception(failure), up_to=self._version)
            if isinstance(failure, asyncio.CancelledError):
                raise
        finally:
            self._writer = None

    def _release(self, settle: Callable[[asyncio.Future[None]], None], up_to: int) -> None:
        """Settle the waiters of every version up to `up_to` at once (one loop turn)."""
        still: list[tuple[int, asyncio.Future[None]]] = []
        for version, waiter in self._waiting:
            if version > up_to:
                still.append((version, waiter))
            elif not waiter.done():
                settle(waiter)
        self._waiting = still

    def discard_if_empty(self) -> None:
        """Remove the file when it records no shot: a run that recorded nothing (every POST
        refused or never sent) leaves nothing for git to show. Call it only for a lock that
        did not exist before the run: an empty lock somebody committed stays."""
        if not self.lock.shots:
            self.path.unlink(missing_ok=True)
