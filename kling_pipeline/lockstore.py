"""The lock file during a run: one writer at a time, rewritten atomically after every change.

`hold_run_lock` makes a second `apply` on the same storyboard wait (then stop, naming the
holder's pid) instead of racing the first one's writes. `LockKeeper` holds the lock file in
memory and writes it whole after every change. During a run, `commit` returns only once the
change is on disk, so a job goes on (polls after recording its task id, sends its POST after
recording its intent) only when a kill can no longer lose the record. The writes run in a
thread, one at a time, so the event loop never stops for an fsync (forty blocking fsyncs in a
row held every request between its intent and its first byte). Statuses and task ids share a
write (each takes every change made before it began); an intent gets one of its own, so its
request leaves the moment its record lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.lockfile import LockEntry, LockFile, LockText, write_lock


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
        self._written = 0  # ... of which on disk
        self._writer: asyncio.Task[None] | None = None
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []  # (version, its waiter)
        self._alone: deque[tuple[dict[str, LockEntry | None], asyncio.Future[None]]] = deque()

    def get(self, shot_id: str) -> LockEntry | None:
        return self.lock.shots.get(shot_id)

    def _apply(self, changes: dict[str, LockEntry | None]) -> bool:
        changed = False
        for shot_id, entry in changes.items():
            if entry is None:
                changed |= self.lock.shots.pop(shot_id, None) is not None
            elif self.lock.shots.get(shot_id) != entry:
                self.lock.shots[shot_id] = entry
                changed = True
        if changed:
            self._version += 1
        return changed

    def put(self, changes: dict[str, LockEntry | None]) -> None:
        """Set (or, with None, drop) entries, then write the file atomically, now (outside a
        run, or where nothing else may happen first)."""
        if self._apply(changes):
            write_lock(self.path, self.lock, self._text)
            self._written = self._version
            self.writes += 1

    def settle(self) -> None:
        """Write now whatever is only in memory: after a run that was cancelled while a
        write was pending (the write in its thread finishes; a later change would be lost)."""
        if self._written < self._version:
            write_lock(self.path, self.lock, self._text)
            self._written = self._version
            self.writes += 1

    async def commit(self, changes: dict[str, LockEntry | None], *,
                     alone: bool = False) -> None:
        """Set (or drop) entries; return as soon as a write holding them is on disk (not when
        the writer has caught up with changes made after them).

        Changes are made at once and share the next write, except `alone` ones (a shot's
        intent to send): each is made just before a write of its own, in turn. An intent that
        shared a write with 39 others waited for all 40 requests' framing after it landed, so
        a kill in those few milliseconds left 40 shots `unknown` that had not left; alone, a
        request goes out the moment its own record lands.
        """
        landed = asyncio.get_running_loop().create_future()
        if alone:
            self._alone.append((changes, landed))
        else:
            self._apply(changes)
            if self._written >= self._version:
                return
            self._waiting.append((self._version, landed))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._flush())
        await asyncio.shield(landed)

    async def _flush(self) -> None:
        """Write the newest state until the disk has caught up with memory, one write at a
        time, waking the waiters of each write as it lands; the bytes are rendered here, the
        fsync waits in a thread."""
        turn: asyncio.Future[None] | None = None
        try:
            while self._alone or self._written < self._version:
                turn = None
                if self._alone:
                    changes, turn = self._alone.popleft()
                    self._apply(changes)
                version = self._version
                if self._written < version:
                    data = self._text.render(self.lock)
                    await asyncio.to_thread(self._write, self.path, data)
                    self._written = version
                    self.writes += 1
                if turn is not None:
                    self._waiting.append((version, turn))
                self._release(lambda waiter: waiter.set_result(None), up_to=version)
        except (Exception, asyncio.CancelledError) as exc:  # each waiter raises it
            failure = exc
            if turn is not None:
                self._waiting.append((self._version, turn))
            for _, waiter in self._alone:
                self._waiting.append((self._version, waiter))
            self._alone.clear()
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
