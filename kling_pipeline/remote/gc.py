"""`gc --remote`: find, and only when asked delete, the remote's objects no lock references.

Careful in one direction only, as the local gc (state/gc.py, whose lock reading this uses):

- The locks are those `gc` reads: every `*.lock.json` of the project (the storyboard's folder
  and below). They are read before the remote is asked anything, so a lock that cannot be read
  stops gc before it makes a request, let alone deletes.
- An object is kept when a lock entry of any status names it as its `output` (real and
  simulated locks alike: the remote does not know which is which), or when an index entry
  points to it with a task id a lock entry holds (a run between its upload and its lock write).
- What is there is learned by one recursive listing of `index/`, then one of `objects/` (in
  that order: push writes an object before its index entry, so an entry listed has its object
  listed too unless it really is absent), and the index entries' bodies are read in one batch
  (`fs.cat` of the list, concurrent on S3). No request is made per object.
- Only `objects/<aa>/<sha256>.mp4` names are candidates; anything else is never touched.
- With `--force`, every lock of the project is read again just before deleting, and an object
  one of them references now is skipped. The index entries go first (those pointing to an
  object deleted, and those whose object is absent and no lock references), then the objects:
  an entry never points to an object gc deleted.

This project's locks are all gc knows. A remote serves every branch of the project and any
other project pushed to it; what only those reference looks unreferenced here
(docs/remote.md, "gc --remote").
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.remote.store import json_object
from kling_pipeline.remote.url import remote_failure, shown
from kling_pipeline.sizes import human_size
from kling_pipeline.state.gc import LockRefs, project_lock_files, read_locks
from kling_pipeline.textsafe import clip, printable

if TYPE_CHECKING:
    from kling_pipeline.remote.store import RemoteStore

_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteGarbage:
    """One remote object no lock references."""

    sha256: str
    size: int
    keys: tuple[str, ...]  # index entries pointing to it
    task_ids: tuple[str, ...]  # the task ids those entries record


@dataclass(frozen=True)
class Entry:
    """An index entry as gc reads it: the video it names and the task that made it."""

    sha256: str
    task_id: str | None


@dataclass(frozen=True)
class RemoteGcReport:
    """What `find_remote_garbage` saw (and, after `delete_remote_garbage`, what went)."""

    remote: str  # the remote as messages name it (no secret)
    project: Path  # the folder whose locks count
    locks: tuple[Path, ...]
    kept: int  # objects a lock references
    kept_bytes: int
    garbage: tuple[RemoteGarbage, ...]  # sorted by sha256
    dangling: tuple[str, ...]  # index keys whose object is absent (and no lock needs)
    entries: dict[str, Entry]  # every readable index entry, by key
    unreadable: tuple[str, ...] = ()  # index keys whose body is not an entry: left alone
    deleted: tuple[RemoteGarbage, ...] | None = None  # None: nothing was deleted (no --force)
    deleted_keys: int = 0
    # Claims settled: their key's video is in the index and kept, and none of their files
    # changed for longer than the claim expiry (key -> the claim files).
    settled_claims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deleted_claims: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.garbage)

    @property
    def index_keys(self) -> tuple[str, ...]:
        """The index entries --force deletes with the objects."""
        shas = {item.sha256 for item in self.garbage}
        return tuple(sorted({*self.dangling,
                             *(k for k, e in self.entries.items() if e.sha256 in shas)}))


def _parse(raw: bytes) -> Entry | None:
    """Lenient on purpose: an entry with a video's name is never deleted as unreadable."""
    data = json_object(raw)
    if data is None:
        return None
    sha, task_id = data.get("sha256"), data.get("task_id")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        return None
    return Entry(sha, str(task_id) if task_id else None)


def _read_entries(remote: RemoteStore, keys: set[str]) -> tuple[dict[str, Entry], list[str]]:
    """The index entries of `keys`, read in one batch; (readable by key, unreadable keys). An
    entry deleted since the listing is left out."""
    if not keys:
        return {}, []
    entries: dict[str, Entry] = {}
    unreadable: list[str] = []
    for key, body in remote.read_index(keys).items():
        entry = _parse(body)
        if entry is None:
            unreadable.append(key)
        else:
            entries[key] = entry
    return entries, unreadable


def _protected(entries: dict[str, Entry], refs: LockRefs) -> set[str]:
    """Objects kept: named by a lock's output, or the video of a task a lock knows."""
    return refs.shas | {e.sha256 for e in entries.values() if e.task_id in refs.task_ids}


def find_remote_garbage(remote: RemoteStore, project: Path) -> RemoteGcReport:
    """The remote's objects that no lock of `project` references. Reads only."""
    read = read_locks(project_lock_files(project))  # before the remote is asked anything
    locks = [path for path, _ in read]
    refs = LockRefs()
    for _, lock in read:
        refs.add(lock)
    keys = remote.list_index()
    objects = remote.list_objects()
    entries, unreadable = _read_entries(remote, keys)
    protected = _protected(entries, refs)
    garbage = []
    kept = kept_bytes = 0
    for sha, size in sorted(objects.items()):
        if sha in protected:
            kept += 1
            kept_bytes += size
            continue
        mine = [(key, e) for key, e in entries.items() if e.sha256 == sha]
        garbage.append(RemoteGarbage(sha, size, tuple(sorted(k for k, _ in mine)),
                                     tuple(sorted({e.task_id for _, e in mine if e.task_id}))))
    dangling = tuple(sorted(key for key, e in entries.items()
                            if e.sha256 not in objects and e.sha256 not in protected))
    doomed = {item.sha256 for item in garbage}
    videos = {key for key, e in entries.items() if e.sha256 in objects
              and e.sha256 not in doomed}
    return RemoteGcReport(shown(remote.spec), project, tuple(locks), kept, kept_bytes,
                          tuple(garbage), dangling, entries, tuple(sorted(unreadable)),
                          settled_claims=_settled_claims(remote, videos))


def _settled_claims(remote: RemoteStore, videos: set[str]) -> dict[str, tuple[str, ...]]:
    """The claims no machine needs any more: the index holds their key's video (a machine
    that plans finds it there first), and they are older than the claim expiry (no holder
    is between its claim and its answer). One listing of claims/, no body read."""
    from kling_pipeline.remote.claims import claim_files
    from kling_pipeline.run.claiming import claim_expiry

    now, expiry = datetime.now(UTC), claim_expiry()
    return {key: tuple(sorted(paths)) for key, (paths, newest) in claim_files(remote).items()
            if key in videos and newest is not None
            and (now - newest).total_seconds() > expiry}


def _remove(remote: RemoteStore, paths: list[str], what: str) -> None:
    """Delete `paths` (one bulk request per 1,000 on S3); one already gone is no error, and
    does not stop the others (a folder's rm stops at the first missing file)."""
    try:
        try:
            remote.fs.rm(paths)
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    remote.fs.rm_file(path)
    except Exception as exc:
        raise remote_failure(remote.spec, f"deleting {len(paths)} {what}", exc) from None


def delete_remote_garbage(remote: RemoteStore, report: RemoteGcReport) -> RemoteGcReport:
    """Delete the report's objects and index entries, except what a lock references now:
    every lock (the report's and any new one in the project) is read again first."""
    if not (report.garbage or report.dangling or report.settled_claims):
        return replace(report, deleted=())
    refs = LockRefs()
    for _, lock in read_locks(sorted({*report.locks, *project_lock_files(report.project)})):
        refs.add(lock)
    protected = _protected(report.entries, refs)
    doomed = tuple(item for item in report.garbage if item.sha256 not in protected)
    shas = {item.sha256 for item in doomed}
    keys = sorted({*(k for k in report.dangling if report.entries[k].sha256 not in protected),
                   *(k for k, e in report.entries.items() if e.sha256 in shas)})
    if keys:
        _remove(remote, [remote.index_path(key) for key in keys], "index entries")
    if doomed:
        paths = [remote.object_path(item.sha256) for item in doomed]
        _remove(remote, paths, "objects")
        if remote.spec.protocol == "file":  # a folder remote: no empty objects/ab/ left
            for folder in sorted({path.rpartition("/")[0] for path in paths}):
                with contextlib.suppress(Exception):
                    remote.fs.rmdir(folder)  # only when it is empty
    claims = [path for key, paths in report.settled_claims.items()
              if key not in keys for path in paths]
    if claims:
        _remove(remote, claims, "claims")
        if remote.spec.protocol == "file":  # no empty claims/<key>/ left
            for folder in sorted({path.rpartition("/")[0] for path in claims}):
                with contextlib.suppress(Exception):
                    remote.fs.rmdir(folder)
    return replace(report, deleted=doomed, deleted_keys=len(keys),
                   deleted_claims=len({k for k in report.settled_claims if k not in keys}))


# -- text -------------------------------------------------------------------------------------

def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def render_remote_gc_text(report: RemoteGcReport) -> str:
    """One line per unreferenced object, the totals, what to do next, and what gc cannot
    know. Task ids and keys (read from the remote) are shown through textsafe."""
    lines = [f"Remote {report.remote}:"]
    kept = (f"kept {_plural(report.kept, 'object')} ({human_size(report.kept_bytes)}) "
            f"referenced by {_plural(len(report.locks), 'lock file')}")
    width = max((len(human_size(g.size)) for g in report.garbage), default=0)
    for item in report.garbage:
        tasks = ("task " + ", ".join(clip(t) for t in item.task_ids)) if item.task_ids \
            else "no task id recorded"
        lines.append(f"- {item.sha256[:12]}  {human_size(item.size):>{width}}  {tasks}")
    what = f"{_plural(len(report.garbage), 'unreferenced object')} " \
           f"({human_size(report.total_bytes)})"
    entries = _plural(len(report.index_keys), "index entry", "index entries")
    claims = _plural(len(report.settled_claims), "settled claim")
    if report.deleted is None:
        if report.garbage or report.dangling:
            lines.append(f"{what} and {entries} to delete; {kept}")
        elif not report.settled_claims:
            lines.append(f"nothing to collect: {kept}")
        if report.settled_claims:
            lines.append(f"{claims} to delete (their videos are in the index)")
        if report.garbage or report.dangling or report.settled_claims:
            lines.append("run again with --force to delete them")
    else:
        freed = sum(item.size for item in report.deleted)
        if not report.garbage and not report.dangling:
            lines.append(f"nothing to collect: {kept}")
        else:
            of = f" of {what}" if len(report.deleted) < len(report.garbage) else ""
            lines.append(f"deleted: {_plural(len(report.deleted), 'object')} "
                         f"({human_size(freed)}){of} and "
                         f"{_plural(report.deleted_keys, 'index entry', 'index entries')}; "
                         f"{kept}")
            if of:
                lines.append("some were kept: a lock file referenced them by the time of "
                             "deleting (a run finished meanwhile)")
        if report.deleted_claims:
            lines.append(f"deleted: {_plural(report.deleted_claims, 'settled claim')}")
    if report.unreadable:
        odd = _plural(len(report.unreadable), "index entry", "index entries")
        lines.append(f"left alone: {odd} that cannot be read, e.g. "
                     f"index/{printable(report.unreadable[0])}.json")
    project = printable(str(report.project))
    lines.append(f"note: gc --remote knows only the lock files under {project}"
                 " (this checkout, this branch): a video only another branch or another project "
                 "sharing this remote references looks unreferenced here, and --force deletes it "
                 "(docs/remote.md)")
    return "\n".join(lines) + "\n"
