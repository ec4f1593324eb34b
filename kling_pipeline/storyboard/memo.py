"""Small JSON memo files in the project's cache folder (rendered templates, image digests).

A memo only saves work: losing it, or failing to write it (a read-only checkout), changes no
result. A file is read only when a run first asks it something, and written only when the run
added to it. Entries the run did not use are kept (the next edit may need them again) up to
`max_entries`; past that, unused entries are dropped first. A file that is not a regular file,
is larger than MAX_FILE_BYTES or does not parse is ignored, never read whole: a 3 GB file put
in its place ended the run with exit 3 (MemoryError), a FIFO would have blocked it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes

MAX_FILE_BYTES = 64 * 1024 * 1024  # a memo of 100,000 entries of a few hundred bytes: ~40 MB


def _read_memo_file(path: Path) -> bytes | None:
    """The file's bytes, or None when it is not a regular file or larger than MAX_FILE_BYTES."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(file.fileno())
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_FILE_BYTES:
            return None
        data = file.read(MAX_FILE_BYTES + 1)
    return data if len(data) <= MAX_FILE_BYTES else None


class JsonMemo:
    """A str -> JSON value memo backed by one file, written once at the end of a run."""

    def __init__(self, path: Path | None, version: str, max_entries: int = 100_000) -> None:
        self.path = path
        self.version = version
        self.max_entries = max_entries
        self._old: dict[str, Any] | None = None
        self._used: dict[str, Any] = {}
        self._dirty = False

    def _load(self) -> dict[str, Any]:
        if self._old is None:
            self._old = {}
            if self.path is not None:
                with contextlib.suppress(OSError, ValueError, RecursionError):
                    data = _read_memo_file(self.path)
                    loaded = json.loads(data) if data is not None else None
                    if isinstance(loaded, dict) and loaded.get("version") == self.version \
                            and isinstance(loaded.get("entries"), dict):
                        self._old = loaded["entries"]
        return self._old

    def get(self, key: str) -> Any:
        if key in self._used:
            return self._used[key]
        value = self._load().get(key)
        if value is not None:
            self._used[key] = value
        return value

    def put(self, key: str, value: Any) -> None:
        self._used[key] = value
        self._dirty = True

    def save(self) -> None:
        """Write the memo if this run added to it; never fails the run."""
        if self.path is None or not self._dirty:
            return
        entries = dict(self._load())
        entries.update(self._used)
        if len(entries) > self.max_entries:
            unused = [k for k in entries if k not in self._used]
            for key in unused[: len(entries) - self.max_entries]:
                del entries[key]
        payload = {"version": self.version, "entries": entries}
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.path, json.dumps(payload, separators=(",", ":"))
                               .encode("utf-8"))
