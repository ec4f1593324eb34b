"""Small JSON memo files in the project's cache folder (rendered templates, image digests).

A memo only saves work: losing it, or failing to write it (a read-only checkout), changes no
result. A file is read only when a run first asks it something, and written only when the run
added to it. Entries the run did not use are kept (the next edit may need them again) up to
`max_entries`; past that, unused entries are dropped first.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes


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
                with contextlib.suppress(OSError, ValueError):
                    loaded = json.loads(self.path.read_bytes())
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
