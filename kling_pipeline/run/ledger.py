"""What the executor writes in the lock file about its jobs, decided here without an event
loop: a job's shots in their new state, what "before" was, when a video was first finished.

The executor says what happened (submitted, queued, done, failed); the ledger turns that into
lock entries and hands them to `LockKeeper`, which puts them on disk. Two rules keep git quiet:
an entry that ends where the run found it gets its old entry back (time stamps included, so a
fresh clone fetching its videos by task id changes nothing), and a change of nothing but the
time is no change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kling_pipeline.plan.jobs import Job, entry_for
from kling_pipeline.state.lockfile import LockEntry, Output, Status, utc_now
from kling_pipeline.state.lockstore import LockKeeper

Changes = dict[str, LockEntry | None]


class Ledger:
    """The lock entries of a run's jobs, and the keeper that writes them."""

    def __init__(self, keeper: LockKeeper) -> None:
        self.keeper = keeper
        self.found = dict(keeper.lock.shots)  # the entries as the run found them

    def get(self, shot_id: str) -> LockEntry | None:
        return self.keeper.get(shot_id)

    def before(self, job: Job) -> Changes:
        """The job's entries now, to put back if its submission provably made no task."""
        return {shot_id: self.keeper.get(shot_id) for shot_id in job.shot_ids}

    def changes(self, job: Job, status: Status, **fields: object) -> Changes:
        """Every shot of the job in the same new state (the removed shots it carries too);
        an entry back where it began keeps its old time, and one that differs only in its
        time is left out."""
        changes: Changes = {}
        for shot_id in job.shot_ids:
            if job.shot is not None:
                old = self.keeper.get(shot_id)
                keep: dict[str, object] = {"task_id": job.task_id}
                if old is not None and old.key == job.key:
                    keep["submitted_at"] = old.submitted_at
                changes[shot_id] = entry_for(job.shot, status, **{**keep, **fields})
        for shot_id in job.removed_ids:
            old = self.keeper.get(shot_id)
            if old is not None:
                changes[shot_id] = old.with_status(status, **fields)
        for shot_id, entry in list(changes.items()):
            found = self.found.get(shot_id)
            if entry is not None and found is not None and replace(
                    entry, updated_at=found.updated_at) == found:
                entry = changes[shot_id] = found  # back where it began: no noise in git
            old = self.keeper.get(shot_id)
            if old is not None and entry is not None and replace(
                    entry, updated_at=old.updated_at) == old:
                del changes[shot_id]  # nothing but the time: no rewrite
        return changes

    def settled(self, job: Job, output: Output) -> bool:
        """Every shot of the job is already done with this video, from this task: recording
        it again would change nothing (the no-op apply of 10,000 shots asks 10,000 times)."""
        if job.removed_ids:
            return False
        for shot_id in job.shot_ids:
            entry = self.keeper.get(shot_id)
            if (entry is None or entry.status != "done" or entry.key != job.key
                    or entry.output != output or entry.task_id != job.task_id
                    or entry.error is not None or entry.finished_at is None):
                return False
        return True

    def finished_at(self, job: Job) -> str:
        """When the job's video was first finished: kept across re-fetches and placements."""
        for shot_id in job.shot_ids:
            for entry in (self.keeper.get(shot_id), self.found.get(shot_id)):
                if entry is not None and entry.finished_at and entry.key == job.key:
                    return entry.finished_at
        return utc_now()

    # -- to disk ---------------------------------------------------------------------------

    async def write(self, job: Job, status: Status, **fields: object) -> None:
        """Record the job's new state; return once it is on disk."""
        await self.keeper.commit(self.changes(job, status, **fields))

    def record_intent(self, job: Job, submitted_at: str) -> None:
        """Record that the job's POST is being sent, on disk before this returns (blocking:
        its body leaves straight after; see LockKeeper.record_now)."""
        self.keeper.record_now(self.changes(job, "submitting", submitted_at=submitted_at,
                                            task_id=None))

    async def commit(self, changes: Changes) -> None:
        """Record changes made by `changes` for several jobs at once; return once on disk."""
        await self.keeper.commit(changes)

    async def restore(self, previous: Changes) -> None:
        """Put entries back as they were (a submission that provably made no task)."""
        await self.commit(dict(previous))

    async def forget(self, shot_ids: Iterable[str]) -> None:
        """Drop entries (removed shots whose video is safe in the store)."""
        await self.commit(dict.fromkeys(shot_ids))
