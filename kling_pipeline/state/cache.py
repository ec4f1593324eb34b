"""The content-addressed store of downloaded videos, and an index from request key to video.

Objects live in `objects/ab/<sha256>.mp4` (named by their content, so a file is never
overwritten with different bytes); the index (diskcache, values as JSON text, no pickles) maps a
request key to what it produced, so a shot whose request came back (an undone edit, a renamed
shot, another storyboard of the project) costs nothing. Downloads land in `tmp/` on the same
file system first, so moving one in is a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kling_pipeline.state.lockfile import Output

_STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class CachedResult:
    """What a request key produced: the video, and the task that made it."""

    output: Output
    task_id: str | None
    endpoint: str


class Store:
    """Objects by sha256 and results by request key, under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self._objects = os.fspath(self.objects)
        self.tmp = root / "tmp"
        self._index: Any = None
        # Objects found whole in this Store's life (one command): a no-op apply of 10,000
        # shots asked for each twice (planning its jobs, then the folder's recipe), 10,000
        # stats each time. An object never leaves the store under a run: only gc deletes,
        # under every run lock, and never an object a lock names.
        self._present: set[tuple[str, int]] = set()

    def _open_index(self) -> Any:
        if self._index is None:
            import diskcache

            self._index = diskcache.Cache(str(self.root / "index"))
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / f"{sha256}.mp4"

    def has_object(self, output: Output) -> bool:
        """True when the object is there with the recorded size (a cheap check, no hashing).

        A stat of a plain string: `status` and a no-op `apply` ask once per shot, and two
        Path joins cost more than the stat."""
        sha = output.sha256
        if (sha, output.size) in self._present:
            return True
        try:
            here = os.stat(f"{self._objects}/{sha[:2]}/{sha}.mp4").st_size == output.size
        except OSError:
            return False
        if here:
            self._present.add((sha, output.size))
        return here

    def lookup(self, key: str) -> CachedResult | None:
        """The result recorded for a request key, if its object is still in the store."""
        if self._index is None and not (self.root / "index").is_dir():
            return None  # no index yet: do not create one just to find nothing
        raw = self._open_index().get(key)
        if not isinstance(raw, str):
            return None
        try:
            data = json.loads(raw)
            result = CachedResult(Output(str(data["sha256"]), int(data["size"]),
                                         float(data["duration"])),
                                  data.get("task_id"), str(data["endpoint"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        return result if self.has_object(result.output) else None

    def record(self, key: str, result: CachedResult) -> None:
        self._open_index()[key] = _index_value(result)

    def record_many(self, results: Iterable[tuple[str, CachedResult]]) -> None:
        """Record several results in one transaction (a pull of 200 videos: one commit,
        not 200)."""
        index = self._open_index()
        with index.transact():
            for key, result in results:
                index[key] = _index_value(result)

    def temp_file(self) -> Path:
        """A new empty file in `tmp/` for a download to stream into."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=self.tmp)
        os.close(fd)
        return Path(name)

    def ingest(self, temp: Path, sha256: str) -> Path:
        """Move a verified download into the store under its digest."""
        final = self.object_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            temp.unlink(missing_ok=True)  # same content already there
        else:
            os.chmod(temp, 0o444)
            os.replace(temp, final)
        return final

    def clean_tmp(self) -> None:
        """Remove downloads abandoned by a killed run a day ago or more."""
        if not self.tmp.is_dir():
            return
        cutoff = time.time() - _STALE_TMP_SECONDS
        for path in self.tmp.glob("download-*.part"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def _index_value(result: CachedResult) -> str:
    return json.dumps({**result.output.__dict__, "task_id": result.task_id,
                       "endpoint": result.endpoint}, sort_keys=True)


def place(source: Path, dest: Path) -> None:
    """Put a store object at `dest`: a hard link where possible, else a copy; atomic."""
    with contextlib.suppress(OSError):
        if dest.samefile(source):
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.tmp")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, dest)
