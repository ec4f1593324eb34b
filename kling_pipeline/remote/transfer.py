"""push and pull: verified, concurrent moves between the local store and the remote.

Every object moved is hashed: push refuses a local object whose bytes do not match its name
(it would spread a damaged file to the team), pull refuses a remote one (it is deleted from
`tmp/`, named in the report, and never enters the store). What is where is learned from one
listing of the remote's `objects/` (and, for push, of `index/`), so a push or pull with
nothing to move costs a bounded number of requests whatever the number of shots; a pull
with nothing missing locally asks the remote nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kling_pipeline.errors import RemoteError
from kling_pipeline.events import OnEvent, ShotUpdate, label_of
from kling_pipeline.fsutil import sha256_file
from kling_pipeline.remote.store import RemoteStore, index_entry
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output

if TYPE_CHECKING:
    from kling_pipeline.output.folder import FolderResult

DEFAULT_JOBS = 8
_T = TypeVar("_T")


@dataclass(frozen=True)
class Video:
    """One video the lock references, and the shots (and request keys) that use it."""

    output: Output
    shot_ids: tuple[str, ...]
    entries: tuple[LockEntry, ...]

    @property
    def label(self) -> str:
        return label_of(self.shot_ids)


@dataclass(frozen=True)
class Problem:
    """A video that was not moved, and why."""

    sha256: str
    shot_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class PushReport:
    remote: str
    videos: int                              # videos the lock references
    uploaded: tuple[Video, ...]
    present: int                             # already in the remote
    index_written: int
    not_local: tuple[Problem, ...] = ()      # referenced, but not in the local store
    refused: tuple[Problem, ...] = ()        # local bytes that do not match their name
    failed: tuple[Problem, ...] = ()         # an upload the remote did not take

    @property
    def ok(self) -> bool:
        return not (self.not_local or self.refused or self.failed)


@dataclass(frozen=True)
class PullReport:
    remote: str | None                       # None: nothing was missing, the remote not asked
    videos: int
    downloaded: tuple[Video, ...]
    present: int                             # already in the local store
    missing: tuple[Problem, ...] = ()        # not in the remote
    refused: tuple[Problem, ...] = ()        # remote bytes that do not match their name
    failed: tuple[Problem, ...] = ()
    folder: FolderResult | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.refused or self.failed)


def referenced(lock: LockFile) -> list[Video]:
    """Every video the lock references, once each, in shot id order."""
    found: dict[str, tuple[Output, list[str], list[LockEntry]]] = {}
    for shot_id in sorted(lock.shots):
        entry = lock.shots[shot_id]
        if entry.output is None:
            continue
        _, ids, entries = found.setdefault(entry.output.sha256, (entry.output, [], []))
        ids.append(shot_id)
        entries.append(entry)
    return [Video(output, tuple(ids), tuple(entries)) for output, ids, entries in found.values()]


class BadBytes(Exception):
    """A downloaded object whose bytes do not hash to its name (the text says so)."""


@contextmanager
def fetched(remote: RemoteStore, store: Store, output: Output) -> Iterator[Path]:
    """The object of `output`, downloaded into the store's tmp/ and hashed on the way, for
    the caller to check further and move into the store (`store.ingest`); deleted after
    unless moved. RemoteError when the download fails, BadBytes when the bytes are not the
    ones its name says: such a file never enters the store."""
    temp = store.temp_file()
    try:
        digest = remote.get_object(output.sha256, temp, output.size)
        if digest != output.sha256:
            raise BadBytes(f"{remote.object_path(output.sha256)}: its bytes hash to {digest}, "
                           "not to its name")
        yield temp
    finally:
        temp.unlink(missing_ok=True)  # gone already when it was moved into the store


def each(items: Iterable[_T], work: Callable[[_T], None], jobs: int) -> None:
    """Run `work` over `items` in a thread pool; the first exception is raised after all."""
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="transfer") as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


def push(remote: RemoteStore, store: Store, lock: LockFile, *, jobs: int = DEFAULT_JOBS,
         on_event: OnEvent) -> PushReport:
    videos = referenced(lock)
    here = [video for video in videos if store.has_object(video.output)]
    not_local = tuple(Problem(v.output.sha256, v.shot_ids, "not in the local store")
                      for v in videos if not store.has_object(v.output))
    there = remote.list_objects()
    keys = remote.list_index()
    todo = [video for video in here if there.get(video.output.sha256) != video.output.size]
    uploaded: list[Video] = []
    refused: list[Problem] = []
    failed: list[Problem] = []

    def upload(video: Video) -> None:
        sha = video.output.sha256
        on_event(ShotUpdate(video.label, "uploading"))
        local = store.object_path(sha)
        if sha256_file(local) != sha:
            refused.append(Problem(sha, video.shot_ids, "the local copy's bytes do not match "
                                   "its name; not uploaded"))
            on_event(ShotUpdate(video.label, "refused", note="local bytes do not match"))
            return
        try:
            remote.put_object(local, sha)
        except RemoteError as exc:
            failed.append(Problem(sha, video.shot_ids, exc.detail or str(exc)))
            on_event(ShotUpdate(video.label, "failed", note=exc.detail or str(exc)))
            return
        uploaded.append(video)
        on_event(ShotUpdate(video.label, "uploaded"))

    each(todo, upload, jobs)
    bad = {problem.sha256 for problem in (*refused, *failed)}
    entries = [(entry, video) for video in here if video.output.sha256 not in bad
               for entry in video.entries if entry.key not in keys]
    each(entries, lambda pair: remote.put_index(
        pair[0].key, index_entry(pair[1].output, pair[0].task_id, pair[0].endpoint)), jobs)
    return PushReport(remote.spec.url, len(videos), tuple(uploaded), len(here) - len(todo),
                      len({entry.key for entry, _ in entries}), not_local, tuple(refused),
                      tuple(failed))


def pull(open_remote: Callable[[], RemoteStore], store: Store, lock: LockFile, *,
         jobs: int = DEFAULT_JOBS, on_event: OnEvent,
         on_stored: Callable[[Video], None] = lambda video: None) -> PullReport:
    """Download into the store every referenced video it lacks; the remote is opened (and
    listed, once) only when one is lacking. `on_stored` hears of each video as soon as it is
    in the store (from the transfer threads): the output folder takes it then."""
    videos = referenced(lock)
    wanted = [video for video in videos if not store.has_object(video.output)]
    if not wanted:
        return PullReport(None, len(videos), (), len(videos))
    remote = open_remote()
    there = remote.list_objects()
    missing: list[Problem] = []
    refused: list[Problem] = []
    failed: list[Problem] = []
    todo: list[Video] = []
    for video in wanted:
        size = there.get(video.output.sha256)
        if size is None:
            missing.append(Problem(video.output.sha256, video.shot_ids, "not in the remote"))
        elif size != video.output.size:
            refused.append(Problem(video.output.sha256, video.shot_ids,
                                   f"{remote.object_path(video.output.sha256)} has {size} "
                                   f"bytes, the lock file says {video.output.size}; not used"))
        else:
            todo.append(video)
    for problem in (*missing, *refused):
        on_event(ShotUpdate(", ".join(problem.shot_ids), "refused" if problem in refused
                            else "missing", note=problem.reason))
    downloaded: list[Video] = []

    def download(video: Video) -> None:
        sha = video.output.sha256
        on_event(ShotUpdate(video.label, "downloading"))
        try:
            with fetched(remote, store, video.output) as temp:
                store.ingest(temp, sha)
        except RemoteError as exc:
            failed.append(Problem(sha, video.shot_ids, exc.detail or str(exc)))
            on_event(ShotUpdate(video.label, "failed", note=exc.detail or str(exc)))
            return
        except BadBytes as exc:
            refused.append(Problem(sha, video.shot_ids, f"{exc}; refused, not used"))
            on_event(ShotUpdate(video.label, "refused", note="bytes do not match the name"))
            return
        downloaded.append(video)
        on_stored(video)
        on_event(ShotUpdate(video.label, "downloaded"))

    try:
        each(todo, download, jobs)
    finally:  # what arrived, by request key, in one transaction (each object is in already)
        store.record_many((entry.key, CachedResult(video.output, entry.task_id,
                                                   entry.endpoint))
                          for video in downloaded for entry in video.entries)
    return PullReport(remote.spec.url, len(videos), tuple(downloaded),
                      len(videos) - len(wanted), tuple(missing), tuple(refused), tuple(failed))
