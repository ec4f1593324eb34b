"""`gc`: find, and only when asked delete, the cached videos that no lock file references.

An object a lock references is a paid video: deleting it may mean paying again. So gc is
careful in one direction only, and every doubt keeps a file:

- The locks of "the project" are every `*.lock.json` under its folder, recursively, except in
  hidden folders (`.git`, `.kling-cache`, ...), `node_modules`, `renders` and virtualenvs
  (folders holding `pyvenv.cfg`). Symlinked folders are not followed: a storyboard reached
  through one keeps its cache beside its real place (`default_cache_dir` resolves the path).
- `x.simulated.lock.json` references the simulated store (`<cache>/simulated/`); every lock,
  that one included (it is also the real lock of a storyboard named `x.simulated.yaml`),
  references the real store (`<cache>/`).
- An object is kept when a lock entry of any status names it as its `output`, or when the
  store's index records it as the video of a task id that a lock entry holds (a run between
  download and lock write: the entry has the task id but no output yet).
- A lock file that cannot be read, or a project folder that cannot be listed, stops gc before
  it deletes anything (`KlingPipelineError` naming the file).
- Only `objects/ab/<sha256>.mp4` (64 lowercase hex digits, in the folder of its first two) are
  ever candidates. Anything else under `objects/` (other names, symlinks, misplaced files) is
  never touched, only listed in `GcReport.ignored`.
- Frames taken from videos (`frames/`, state/framestore.py) are a cache of work, not paid for:
  a frame's record is kept while its video is kept, and a frame's PNG while a kept record or
  any lock entry's request (as `sha256:<digest>`) names it; the others are listed and deleted
  with the videos. Nothing else outside `objects/` and `frames/` is considered.

`find_garbage` only reads: it creates no folder and changes no file (the index is read through
a read-only SQLite connection, which may leave SQLite's empty `-wal`/`-shm` files beside it).
`delete_garbage` reads every lock again just before deleting, so a run that finished meanwhile
saves its video.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kling_pipeline.errors import KlingPipelineError, LockFileError
from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.sizes import human_size
from kling_pipeline.state.lockfile import LockFile, read_lock
from kling_pipeline.target import SIMULATED
from kling_pipeline.textsafe import clip, printable

LOCK_SUFFIX = ".lock.json"
SIMULATED_LOCK_SUFFIX = f".{SIMULATED}{LOCK_SUFFIX}"
SKIPPED_FOLDERS = frozenset({"node_modules", "renders"})
_OBJECT_NAME = re.compile(r"[0-9a-f]{64}\.mp4")
_FRAME_NAME = re.compile(r"[0-9a-f]{64}\.png")


@dataclass(frozen=True)
class Garbage:
    """One unreferenced object."""

    sha256: str
    path: Path
    size: int
    task_ids: tuple[str, ...]  # task ids the store's index recorded for it (may be empty)
    keys: tuple[str, ...]  # request keys in the index that point to it


@dataclass(frozen=True)
class GcReport:
    """What `find_garbage` saw."""

    stores: tuple[Path, ...]  # store roots examined (those that exist)
    locks: tuple[Path, ...]  # lock files read
    kept: int  # referenced objects
    kept_bytes: int
    garbage: tuple[Garbage, ...]  # sorted by path
    project: Path | None = None  # the folder searched for locks (searched again by delete)
    ignored: tuple[Path, ...] = ()  # files under objects/ that are not store objects
    partial_downloads: int = 0  # `tmp/download-*.part` files (apply removes day-old ones)
    simulated_only: bool = False  # only the simulated store was examined (gc --simulate)
    frames: tuple[tuple[Path, int], ...] = ()  # frame files no kept video or lock needs

    @property
    def total_bytes(self) -> int:
        return sum(g.size for g in self.garbage)

    @property
    def frame_bytes(self) -> int:
        return sum(size for _, size in self.frames)


# -- the project's locks ---------------------------------------------------------------------

def _skipped(folder: Path) -> bool:
    return (folder.name.startswith(".") or folder.name in SKIPPED_FOLDERS
            or (folder / "pyvenv.cfg").exists())


def project_lock_files(project: Path) -> list[Path]:
    """Every `*.lock.json` of the project, sorted; a folder that cannot be listed is an error
    (its locks might keep objects)."""

    def fail(exc: OSError) -> None:
        raise KlingPipelineError(
            f"{exc.filename}: cannot look for lock files here ({exc.strerror}); gc deletes "
            "nothing while part of the project cannot be read") from exc

    found: list[Path] = []
    for folder, dirs, files in os.walk(project, onerror=fail):
        base = Path(folder)
        dirs[:] = sorted(d for d in dirs if not _skipped(base / d))
        found += (base / name for name in files if name.endswith(LOCK_SUFFIX))
    return sorted(found)


def read_locks(paths: Iterable[Path]) -> list[tuple[Path, LockFile]]:
    """Each lock file read (also by `gc --remote`, remote/gc.py); one that cannot be read is
    a KlingPipelineError naming it, raised before anything is deleted."""
    read = []
    for path in paths:
        try:
            read.append((path, read_lock(path, path.name.removesuffix(LOCK_SUFFIX))))
        except LockFileError as exc:
            reason = str(exc) if isinstance(exc, LockFileError) else f"{path}: {exc}"
            raise KlingPipelineError(
                f"{reason}\ngc deletes nothing while a lock file cannot be read: fix {path} "
                "(or move it out of the project if it is not a kling-pipeline lock), then run "
                "gc again") from exc
    return read


@dataclass
class LockRefs:
    """What some locks reference: object digests, and task ids (with or without an output)."""

    shas: set[str] = field(default_factory=set)
    task_ids: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)  # digests of images the requests hold

    def add(self, lock: LockFile) -> None:
        for entry in lock.shots.values():
            if entry.output is not None:
                self.shas.add(entry.output.sha256)
            if entry.task_id:
                self.task_ids.add(entry.task_id)
            self.images.update(value[len(IMAGE_DIGEST_PREFIX):]
                               for value in entry.request.values()
                               if isinstance(value, str) and value.startswith(IMAGE_DIGEST_PREFIX))


# -- the store --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _IndexEntry:
    key: str
    sha256: str
    task_id: str | None


def _parse(raw: Any) -> tuple[str, str | None] | None:
    """(sha256, task id) of an index value, None for anything else."""
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        return None
    task_id = data.get("task_id")
    return str(data["sha256"]), (str(task_id) if task_id else None)


def _sha_of(raw: Any) -> str | None:
    parsed = _parse(raw)
    return parsed[0] if parsed else None


def _read_index(root: Path) -> list[_IndexEntry]:
    """The store's index entries, read without writing: diskcache itself writes its settings
    into the database each time it opens one, so its table is read with a read-only connection.
    Values are JSON text (`Store.record`), which diskcache keeps inline (mode 1, raw)."""
    database = root / "index" / "cache.db"
    if not database.is_file():
        return []
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=30)
        try:
            rows = connection.execute("SELECT key, value FROM Cache WHERE raw = 1 AND mode = 1")
            found = []
            for key, raw in rows:
                parsed = _parse(raw)
                if isinstance(key, str) and parsed is not None:
                    found.append(_IndexEntry(key, *parsed))
            return found
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise KlingPipelineError(f"{database}: cannot read the cache index ({exc}); gc deletes "
                                 "nothing without it") from exc


def _scan_objects(objects: Path) -> tuple[list[tuple[str, Path, int]], list[Path]]:
    """(sha256, path, size) of the store's objects, and the other files found under objects/."""
    found: list[tuple[str, Path, int]] = []
    ignored: list[Path] = []
    for folder, dirs, files in os.walk(objects):
        base = Path(folder)
        ignored += (base / d for d in dirs if (base / d).is_symlink())
        for name in files:
            path = base / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if (_OBJECT_NAME.fullmatch(name) and base.parent == objects
                    and base.name == name[:2] and stat.S_ISREG(info.st_mode)):
                found.append((name[:64], path, info.st_size))
            else:
                ignored.append(path)
    return found, ignored


def _frame_garbage(root: Path, kept_videos: set[str], refs: LockRefs) -> list[tuple[Path, int]]:
    """The frame records of videos not kept, and the PNGs neither a kept record nor a lock's
    request names (with their sizes)."""
    frames = root / "frames"
    if not frames.is_dir():
        return []
    garbage: list[tuple[Path, int]] = []
    named = set(refs.images)
    for record in sorted(frames.glob("of/v*/*/*.json")):
        video = record.parent.name
        if video in kept_videos:
            try:
                named.add(str(json.loads(record.read_text("utf-8"))["sha256"]))
                continue
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: it only saves time; a new one is made when needed
        garbage.append((record, _size(record)))
    for png in sorted(frames.glob("??/*.png")):
        if _FRAME_NAME.fullmatch(png.name) and png.name[:64] not in named \
                and png.parent.name == png.name[:2]:
            garbage.append((png, _size(png)))
    return garbage


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _protected(index: list[_IndexEntry], refs: LockRefs) -> set[str]:
    """Objects kept: named by a lock's output, or the video of a task a lock knows."""
    return refs.shas | {e.sha256 for e in index if e.task_id in refs.task_ids}


def _store_refs(cache_dir: Path, locks: list[tuple[Path, LockFile]],
                simulated_only: bool) -> list[tuple[Path, LockRefs]]:
    real, simulated = LockRefs(), LockRefs()
    for path, lock in locks:
        real.add(lock)
        if path.name.endswith(SIMULATED_LOCK_SUFFIX):
            simulated.add(lock)
    stores = [(cache_dir / SIMULATED, simulated)]
    return stores if simulated_only else [(cache_dir, real), *stores]


def find_garbage(cache_dir: Path, project: Path, *, simulated_only: bool = False) -> GcReport:
    """The objects of `cache_dir`'s real and simulated stores (only the simulated one with
    `simulated_only`, `gc --simulate`) that no lock of `project` references. Reads only."""
    locks = read_locks(project_lock_files(project))
    stores: list[Path] = []
    garbage: list[Garbage] = []
    ignored: list[Path] = []
    frames: list[tuple[Path, int]] = []
    kept = kept_bytes = partial = 0
    for root, refs in _store_refs(cache_dir, locks, simulated_only):
        if not root.is_dir():
            continue
        stores.append(root)
        objects, others = _scan_objects(root / "objects")
        ignored += others
        if (root / "tmp").is_dir():
            partial += sum(1 for _ in (root / "tmp").glob("download-*.part"))
        if not objects:
            frames += _frame_garbage(root, set(), refs)
            continue
        index = _read_index(root)
        protected = _protected(index, refs)
        frames += _frame_garbage(root, {sha for sha, _, _ in objects if sha in protected},
                                 refs)
        for sha, path, size in objects:
            if sha in protected:
                kept += 1
                kept_bytes += size
                continue
            mine = [e for e in index if e.sha256 == sha]
            garbage.append(Garbage(sha, path, size,
                                   tuple(sorted({e.task_id for e in mine if e.task_id})),
                                   tuple(sorted({e.key for e in mine}))))
    return GcReport(tuple(stores), tuple(path for path, _ in locks), kept, kept_bytes,
                    tuple(sorted(garbage, key=lambda g: g.path)), project,
                    tuple(sorted(ignored)), partial, simulated_only, tuple(frames))


# -- deleting ---------------------------------------------------------------------------------

def _store_root(report: GcReport, item: Garbage) -> Path:
    """The store an item belongs to; refuses a path that is not a store object of the report."""
    root = item.path.parents[2]
    if (root not in report.stores or _OBJECT_NAME.fullmatch(item.path.name) is None
            or item.path != root / "objects" / item.sha256[:2] / f"{item.sha256}.mp4"):
        raise ValueError(f"{item.path} is not an object of the stores examined")
    return root


def _forget(index: Any, keys: Iterable[str], sha256: str) -> None:
    """Remove the index entries that still point to the deleted object."""
    with index.transact():
        for key in keys:
            if _sha_of(index.get(key)) == sha256:
                index.delete(key)


def delete_garbage(report: GcReport) -> int:
    """Delete the report's objects, their index entries and emptied `objects/ab/` folders;
    the bytes freed (a copy hard-linked elsewhere, e.g. under renders/, keeps its blocks).

    Just before deleting, every lock (the report's and any new one in the project) is read
    again, and an object any of them references now, in any store, is skipped.
    """
    if not report.garbage:
        return 0
    paths = set(report.locks)
    if report.project is not None:
        paths.update(project_lock_files(report.project))
    refs = LockRefs()
    for _, lock in read_locks(sorted(paths)):
        refs.add(lock)
    by_store: dict[Path, list[Garbage]] = {}
    for item in report.garbage:
        by_store.setdefault(_store_root(report, item), []).append(item)
    freed = 0
    for root, items in by_store.items():
        entries = _read_index(root)
        protected = _protected(entries, refs)
        index: Any = None
        try:
            for item in items:
                if item.sha256 in protected:
                    continue
                try:
                    info = item.path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                try:
                    item.path.unlink()
                except OSError as exc:
                    raise KlingPipelineError(f"{item.path}: cannot delete it ({exc.strerror})")\
                        from exc
                freed += info.st_size
                with contextlib.suppress(OSError):
                    item.path.parent.rmdir()  # only when it is empty
                keys = [e.key for e in entries if e.sha256 == item.sha256]
                if keys:
                    if index is None:
                        import diskcache

                        index = diskcache.Cache(str(root / "index"))
                    _forget(index, keys, item.sha256)
        finally:
            if index is not None:
                index.close()
    return freed


def delete_frames(report: GcReport) -> int:
    """Delete the frame files of the report that are still where it saw them: a frame is
    work, not money (taken again from its video when needed)."""
    freed = 0
    for path, size in report.frames:
        if not any(store / "frames" in path.parents for store in report.stores):
            raise ValueError(f"{path} is not a frame of the stores examined")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            freed += size
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when it is empty
    return freed


# -- text -------------------------------------------------------------------------------------

def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def render_gc_text(report: GcReport, *, freed: int | None = None) -> str:
    """One line per unreferenced object, then the total, and what to do next; `freed` is what
    `delete_garbage` returned, when it ran. Task ids (the API's, from the index) and file names
    are shown through textsafe: neither may drive the terminal."""
    kept = (f"kept {_plural(report.kept, 'object')} ({human_size(report.kept_bytes)}) "
            f"referenced by {_plural(len(report.locks), 'lock file')}")
    lines: list[str] = []
    if not report.garbage:
        lines.append(f"nothing to collect: {kept}")
    width = max((len(human_size(g.size)) for g in report.garbage), default=0)
    for item in report.garbage:
        root = item.path.parents[2]
        simulated = root.name == SIMULATED and (root.parent in report.stores
                                                 or report.simulated_only)
        where = "  (simulated)" if simulated else ""
        tasks = ("task " + ", ".join(clip(t) for t in item.task_ids)) if item.task_ids \
            else "no task id recorded"
        lines.append(f"- {item.sha256[:12]}  {human_size(item.size):>{width}}  {tasks}{where}")
    if report.garbage:
        what = f"{_plural(len(report.garbage), 'unreferenced object')} " \
               f"({human_size(report.total_bytes)})"
        if freed is None:
            lines.append(f"{what} to delete; {kept}")
            lines.append("run again with --force to delete them")
        else:
            lines.append(f"deleted: {human_size(freed)} freed of {what}; {kept}")
            if freed < report.total_bytes:
                lines.append("some were kept: a lock file referenced them by the time of "
                             "deleting (a run finished meanwhile)")
    if report.frames:
        what = f"{_plural(len(report.frames), 'frame file')} ({human_size(report.frame_bytes)}) " \
               "no kept video or lock file needs"
        lines.append(f"deleted: {what}" if freed is not None else
                     f"{what}: deleted with --force (a frame is taken again from its video)")
    if report.ignored:
        lines.append(f"left alone: {_plural(len(report.ignored), 'other file')} under objects/, "
                     f"e.g. {printable(str(report.ignored[0]))}")
    if report.partial_downloads:
        lines.append(f"{_plural(report.partial_downloads, 'partial download')} in tmp/ "
                     "(apply removes them once they are a day old)")
    return "\n".join(lines) + "\n"
