"""Before an apply pays or polls: take from the remote what it already has, verified.

Two kinds of video come from the remote here, each proved before the store takes it:

- **the lock's own**: a shot the lock file records as done whose video the local store lacks
  (a fresh clone). The lock, which comes through git, names the bytes: the object must hash to
  that name and have that size.
- **the index's**: a shot whose request key the remote's index knows (a teammate rendered the
  same request, on another branch or in another storyboard). Nothing in an entry proves what
  the request produced, so the entry must agree with the request (its endpoint, a duration
  near the one asked for), the object must hash to the entry's name, and the video must decode
  whole to the duration asked for. Otherwise it is refused, named, and never used.

An object that failed only its bytes (damaged, missing) leaves the entry's task id to fetch
the video from the provider instead (reads are free); an entry that disagrees with its request
is not trusted for a task id either. What is taken is recorded in the local store under its
request key, so the plan that follows finds it there (`=`, "from remote") and pays nothing.

Rounds: a shot that takes a frame of another is keyed by that frame, so once an upstream
video arrives its dependents' keys are exact and are looked up in turn. The remote is opened
and listed (once each: `objects/` and `index/`) only when some shot lacks its video: a no-op
apply asks it nothing. A remote that cannot be reached is a warning; the apply goes on
without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kling_pipeline.errors import RemoteError
from kling_pipeline.events import Note, OnEvent, ShotUpdate, label_of
from kling_pipeline.output.media import MediaError, check_duration
from kling_pipeline.plan.inputs import rendered_video
from kling_pipeline.remote.session import RemoteSession
from kling_pipeline.remote.store import IndexEntry
from kling_pipeline.remote.transfer import BadBytes, each, fetched
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.lockfile import IN_FLIGHT, LockFile, Output

if TYPE_CHECKING:
    from kling_pipeline.plan.inputs import Waiting
    from kling_pipeline.remote.store import RemoteStore
    from kling_pipeline.storyboard.render import ShotRequest

ShotsNow = Callable[[], tuple[list["ShotRequest"], Mapping[str, "Waiting"]]]


@dataclass(frozen=True)
class Refusal:
    """A video the remote offered for a request and this apply did not use, and why."""

    shot_ids: tuple[str, ...]
    key: str
    reason: str


@dataclass
class RemoteFill:
    """What an apply took from the remote before planning."""

    remote: str  # as messages name it
    taken: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> shot ids
    refused: list[Refusal] = field(default_factory=list)
    # key -> task id: the remote's copy was refused but its entry agrees with the request:
    # fetch the video from the provider by that task instead (free).
    fallback: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Want:
    """One video to take: the shots it is for, what names it, and what proves it."""

    key: str
    shot_ids: tuple[str, ...]
    output: Output
    task_id: str | None
    endpoint: str
    duration: float | None  # the duration asked for, checked by decoding (index entries only)


def fill_from_remote(session: RemoteSession, store: Store, lock: LockFile,
                     shots_now: ShotsNow, *, selected: Callable[[str], bool],
                     jobs: int, on_event: OnEvent) -> RemoteFill:
    """Take every video the selected shots lack that the remote has and can prove (see the
    module's text); `shots_now` gives the shots keyed as the store makes them now."""
    fill = RemoteFill(session.shown)
    remote: RemoteStore | None = None
    objects: dict[str, int] = {}
    index: set[str] = set()
    looked: set[str] = set()
    while True:
        lacking = _lacking(shots_now, lock, store, selected, looked)
        if not lacking:
            return fill
        looked.update(shot.key for shot in lacking)
        try:
            if remote is None:
                remote = session.open()
                objects, index = remote.list_objects(), remote.list_index()
            wants = _wants(remote, lacking, lock, objects, index, fill)
        except RemoteError as exc:
            session.give_up(exc, "going on without the remote")
            return fill
        if not wants:
            return fill
        on_event(Note(f"taking {len(wants)} video(s) from the remote {fill.remote}"))
        taken: list[tuple[_Want, Output]] = []
        each(wants, functools.partial(_take, remote, store, fill, on_event, taken), jobs)
        # by request key, in one transaction: the next round's keys are made from these
        store.record_many((want.key, CachedResult(output, want.task_id, want.endpoint))
                          for want, output in taken)
        fill.taken.update((want.key, want.shot_ids) for want, _ in taken)
        if not taken:
            return fill


def _lacking(shots_now: ShotsNow, lock: LockFile, store: Store,
             selected: Callable[[str], bool], looked: set[str]) -> list[ShotRequest]:
    """The selected shots with an exact key whose video is not here (all the shots of such
    a key: one of them may be the lock's record of its video)."""
    shots, waiting = shots_now()
    lacking: dict[str, list[ShotRequest]] = {}
    for shot in shots:
        if shot.id in waiting or not selected(shot.id) or shot.key in looked:
            continue
        entry = lock.shots.get(shot.id)
        if entry is not None and entry.key == shot.key and entry.status in IN_FLIGHT:
            continue  # its own task is paid and followed (free): never dropped for another
        if shot.key in lacking or rendered_video(shot, lock, store) is None:
            lacking.setdefault(shot.key, []).append(shot)
    return [shot for same in lacking.values() for shot in same]


def peek_index(open_remote: Callable[[], RemoteStore], store: Store, lock: LockFile,
               shots_now: ShotsNow, *, selected: Callable[[str], bool]) -> tuple[set[str], str]:
    """For `plan`: the keys of lacking shots that the remote's index holds (one listing,
    nothing downloaded or checked), and a warning when the remote could not be read."""
    lacking = _lacking(shots_now, lock, store, selected, set())
    if not lacking:
        return set(), ""
    try:
        index = open_remote().list_index()
    except RemoteError as exc:
        return set(), f"{exc}; planned without the remote"
    return {shot.key for shot in lacking if shot.key in index}, ""


def _wants(remote: RemoteStore, lacking: Iterable[ShotRequest], lock: LockFile,
           objects: dict[str, int], index: set[str], fill: RemoteFill) -> list[_Want]:
    """What to download for the lacking shots: the lock's own video where it names one, else
    the index's entry for the key, each checked against the request before any download."""
    by_key: dict[str, list[ShotRequest]] = {}
    for shot in lacking:
        by_key.setdefault(shot.key, []).append(shot)
    ids = {key: tuple(sorted({s.id for s in shots} | {
        shot_id for shot_id, entry in lock.shots.items() if entry.key == key}))
        for key, shots in by_key.items()}
    wants: list[_Want] = []
    ask: list[str] = []
    for key, shots in by_key.items():
        own = next((entry for shot in shots if (entry := lock.shots.get(shot.id)) is not None
                    and entry.key == key and entry.status == "done" and entry.output), None)
        if own is not None and own.output is not None:
            if objects.get(own.output.sha256) == own.output.size:
                wants.append(_Want(key, ids[key], own.output, own.task_id, own.endpoint, None))
            # else: not in the remote; the plan fetches it by the lock's task id
        elif key in index:
            ask.append(key)
    bodies = remote.read_index(ask)
    for key in ask:
        shot = by_key[key][0]
        body = bodies.get(key)
        if body is None:
            continue  # deleted since the listing
        indexed = IndexEntry.parse(body)
        problem = _disagrees(indexed, shot)
        if indexed is None or problem:
            fill.refused.append(Refusal(ids[key], key, f"{remote.index_path(key)}: {problem}; "
                                        "not used"))
            continue
        output = Output(indexed.sha256, indexed.size, indexed.duration)
        if objects.get(indexed.sha256) != indexed.size:
            found = objects.get(indexed.sha256)
            fill.refused.append(Refusal(ids[key], key, (
                f"{remote.object_path(indexed.sha256)} is not in the remote" if found is None
                else f"{remote.object_path(indexed.sha256)} has {found} bytes, its index entry "
                     f"says {indexed.size}") + "; not used"))
            if indexed.task_id:
                fill.fallback[key] = indexed.task_id
            continue
        wants.append(_Want(key, ids[key], output, indexed.task_id, indexed.endpoint,
                           float(shot.duration)))
    return wants


def _disagrees(entry: IndexEntry | None, shot: ShotRequest) -> str:
    """Why an index entry cannot be what `shot`'s request produced ("" when it can be)."""
    if entry is None:
        return "not an index entry (sha256, size, duration, endpoint)"
    if entry.endpoint != shot.endpoint:
        return f"the entry is for {entry.endpoint!r}, the request for {shot.endpoint!r}"
    asked = float(shot.duration)
    if abs(entry.duration - asked) > max(1.0, 0.1 * asked):
        return f"the entry says {entry.duration:g} s; {asked:g} s were asked for"
    return ""


def _take(remote: RemoteStore, store: Store, fill: RemoteFill, on_event: OnEvent,
          taken: list[tuple[_Want, Output]], want: _Want) -> None:
    """Download one object and prove it (its sha256, and for an index entry its decoded
    duration) into the store; added to `taken` as it is, or refused."""
    label = label_of(want.shot_ids)
    on_event(ShotUpdate(label, "downloading", note="from the remote"))
    duration = want.output.duration
    try:
        with fetched(remote, store, want.output) as temp:
            if want.duration is not None:
                duration = round(check_duration(temp, want.duration), 3)
            store.ingest(temp, want.output.sha256)
    except RemoteError as exc:
        _refuse(fill, want, f"{exc.detail or exc}", on_event, label, fallback=True)
        return
    except BadBytes as exc:
        _refuse(fill, want, f"{exc}; refused, not used", on_event, label, fallback=True)
        return
    except MediaError as exc:
        _refuse(fill, want, f"{remote.object_path(want.output.sha256)}, named by the index "
                            f"entry {want.key[:12]}: {exc}; refused, not used", on_event,
                label, fallback=False)
        return
    taken.append((want, Output(want.output.sha256, want.output.size, duration)))
    on_event(ShotUpdate(label, "taken", note="from the remote, verified"))


def _refuse(fill: RemoteFill, want: _Want, reason: str, on_event: OnEvent, label: str, *,
            fallback: bool) -> None:
    fill.refused.append(Refusal(want.shot_ids, want.key, reason))
    if fallback and want.task_id and want.duration is not None:
        fill.fallback[want.key] = want.task_id  # the lock's own video is followed anyway
    on_event(ShotUpdate(label, "refused", note=reason))
