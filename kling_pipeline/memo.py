"""Small JSON memo files in the project's cache folder (rendered templates, image digests).

A memo only saves work: losing it, or failing to write it (a read-only checkout), changes no
result. Entries not used by a run are dropped when it saves, so a memo never outgrows the
storyboard it serves.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes


class JsonMemo:
    """A str -> JSON value memo backed by one file, written once at the end of a run."""

    def __init__(self, path: Path | None, version: str) -> None:
        self.path = path
        self.version = version
        self._old: dict[str, Any] = {}
        self._used: dict[str, Any] = {}
        self._dirty = False
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_bytes())
                if isinstance(loaded, dict) and loaded.get("version") == version:
                    entries = loaded.get("entries")
                    if isinstance(entries, dict):
                        self._old = entries

    def get(self, key: str) -> Any:
        if key in self._used:
            return self._used[key]
        value = self._old.get(key)
        if value is not None:
            self._used[key] = value
        return value

    def put(self, key: str, value: Any) -> None:
        self._used[key] = value
        self._dirty = True

    def save(self) -> None:
        """Write the entries used in this run, if anything changed; never fails the run."""
        if self.path is None:
            return
        if not self._dirty and len(self._used) == len(self._old):
            return
        payload = {"version": self.version, "entries": self._used}
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.path, json.dumps(payload, separators=(",", ":"))
                               .encode("utf-8"))
