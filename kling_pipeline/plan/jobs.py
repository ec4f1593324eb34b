"""From a plan to jobs: one job per request key that needs the network, or a local placement.

Shots that share a key share one job, so one request is paid for once however many shots ask
for it. A job either submits, follows a task id the lock already holds, places a video the store
already has, or only reports (failed and unknown shots, which a run never pays for unasked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kling_pipeline.events import label_of
from kling_pipeline.key import KEY_SCHEME
from kling_pipeline.plan.planner import PAID, Plan, PlanItem
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.lockfile import IN_FLIGHT, LockEntry, Output, Status, utc_now
from kling_pipeline.storyboard.render import ShotRequest

JobKind = Literal["submit", "follow", "place", "report"]
_RANK: dict[JobKind, int] = {"report": 0, "place": 1, "follow": 2, "submit": 3}


@dataclass
class Job:
    """The work for one request key, and the shot ids whose lock entries it writes."""

    key: str
    kind: JobKind
    shot: ShotRequest | None  # the first storyboard shot with this key (None: removed only)
    shot_ids: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)  # followed into the cache, then dropped
    task_id: str | None = None
    known_output: Output | None = None
    note: str = ""
    items: list[PlanItem] = field(default_factory=list)
    waits_for: tuple[str, ...] = ()  # shots whose frames make this job's key exact first

    @property
    def label(self) -> str:
        return label_of(self.shot_ids or self.removed_ids)

    @property
    def endpoint(self) -> str:
        if self.shot is not None:
            return self.shot.endpoint
        return self.items[0].entry.endpoint if self.items and self.items[0].entry else ""

    @property
    def duration(self) -> float | None:
        return float(self.shot.duration) if self.shot is not None else None


def entry_for(shot: ShotRequest, status: Status, **fields: object) -> LockEntry:
    """A fresh lock entry for a shot's current request."""
    now = utc_now()
    return LockEntry(key=shot.key, key_scheme=KEY_SCHEME, endpoint=shot.endpoint,
                     request=shot.body, status=status, take=shot.take,
                     updated_at=now, **fields)  # type: ignore[arg-type]


def _kind_and_source(item: PlanItem, store: Store) -> tuple[JobKind, LockEntry | None,
                                                               CachedResult | None]:
    entry = item.entry
    if item.action in PAID:
        return "submit", None, None
    if item.action == "noop" and entry is not None and entry.output is not None \
            and store.has_object(entry.output):
        return "place", entry, None  # its own video is in the store: no index read per shot
    if item.action in ("noop", "reuse"):
        cached = store.lookup(item.shot.key) if item.shot is not None else None
        if cached is not None:
            return "place", entry, cached
        if entry is not None and entry.output is not None and store.has_object(entry.output):
            return "place", entry, None
        if entry is not None and entry.task_id:
            return "follow", entry, None  # a fresh clone: fetch by task id, never pay again
        return "report", entry, None  # a twin submitted in this same run fills it in
    if item.action in ("inflight", "lost"):
        cached = store.lookup(item.shot.key) if item.shot is not None else None
        if cached is not None:  # the video is here already: nothing to fetch
            return "place", entry, cached
        return "follow", entry, None
    return "report", entry, None


def make_jobs(plan: Plan, store: Store) -> tuple[list[Job], dict[str, LockEntry | None]]:
    """Jobs in storyboard order, and the lock changes to make before any of them runs
    (entries of removed shots that hold nothing in flight are dropped)."""
    jobs: dict[str, Job] = {}
    changes: dict[str, LockEntry | None] = {}
    for item in plan.items:
        if item.action == "remove":
            entry = item.entry
            if entry is not None and entry.status in IN_FLIGHT and entry.task_id:
                job = jobs.setdefault(entry.key, Job(entry.key, "follow", None))
                job.removed_ids.append(item.id)
                job.items.append(item)
                if job.task_id is None:
                    job.task_id = entry.task_id
            else:
                changes[item.id] = None
            continue
        shot = item.shot
        assert shot is not None
        kind, source, cached = _kind_and_source(item, store)
        if shot.key not in jobs:
            jobs[shot.key] = Job(shot.key, kind, shot)
        job = jobs[shot.key]
        if job.shot is None:
            job.shot = shot
        job.shot_ids.append(item.id)
        job.items.append(item)
        if _RANK[kind] > _RANK[job.kind]:
            job.kind = kind
        if cached is not None:
            job.known_output, job.task_id = cached.output, job.task_id or cached.task_id
        elif source is not None and kind in ("place", "follow") and job.kind != "submit":
            if job.task_id is None or kind == "follow":
                job.task_id = source.task_id
            if source.output is not None and job.known_output is None:
                job.known_output = source.output
        if item.note and not job.note:
            job.note = item.note
        if item.waits_for and item.action != "blocked":
            job.waits_for = tuple(dict.fromkeys((*job.waits_for, *item.waits_for)))
    return list(jobs.values()), changes
