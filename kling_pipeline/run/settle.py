"""Settling the jobs that need no network: videos the store has, and shots only reported.

A run's jobs either ask the API something (submit, follow) or not (place a video the store
already has; report a failed, unknown, lost or blocked shot). The executor settles the second
kind before it starts the first (one lock write for all of them, none when every entry already
says so); a run with only that kind (a no-op apply) settles them here without an event loop,
the HTTP client, or asyncio imported (a fifth of what a no-op apply of 10,000 shots cost
beyond its plan).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kling_pipeline.events import Note, OnEvent, ShotUpdate
from kling_pipeline.plan.jobs import Job
from kling_pipeline.results import Outcome, RunReport, ShotResult
from kling_pipeline.run.ledger import Changes, Ledger
from kling_pipeline.state.lockfile import Output
from kling_pipeline.state.lockstore import LockKeeper

LOCAL: frozenset[str] = frozenset({"report", "place"})


class Reporter(Protocol):
    """Where a run says what happens (the CLI's live view or plain lines)."""

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None: ...

    def message(self, text: str) -> None: ...


class EventReporter:
    """A run's reporter, turned into events for the caller of `Project.apply`."""

    def __init__(self, on_event: OnEvent) -> None:
        self._on_event = on_event

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None:
        self._on_event(ShotUpdate(label, state, percent, note))

    def message(self, text: str) -> None:
        self._on_event(Note(text))


def needs_network(jobs: list[Job]) -> bool:
    """Some job asks the API something, or waits for a frame of a shot still to come."""
    return any(job.kind not in LOCAL or job.waits_for for job in jobs)


class Results:
    """A run's results, one per job, each told to the reporter (and to `on_result`)."""

    def __init__(self, ledger: Ledger, reporter: Reporter,
                 on_done: Callable[[Job, Output], None],
                 on_result: Callable[[Job, Outcome, Output | None], None] = (
                     lambda job, outcome, output: None)) -> None:
        self.ledger = ledger
        self.reporter = reporter
        self.on_done = on_done
        self.on_result = on_result
        self.report = RunReport()

    def add(self, job: Job, outcome: Outcome, note: str = "", output: Output | None = None,
            submitted: bool = False) -> ShotResult:
        result = ShotResult(tuple(job.shot_ids or job.removed_ids), outcome, job.task_id, note,
                            output, submitted)
        self.report.results.append(result)
        self.on_result(job, outcome, output)
        self.reporter.update(job.label, outcome, 100 if outcome == "done" else None, note)
        return result

    def reported(self, job: Job) -> None:
        """The result of a job that only reports its shot (nothing is paid for unasked)."""
        item = job.items[0]
        if item.action in ("noop", "reuse"):
            self.add(job, "lost", "recorded as done, but its video is not in the cache and "
                                  "there is no task id to fetch it by; --force "
                                  f"{item.id} renders it again (paid)")
            return
        outcome: Outcome = {"failed": "failed", "unknown": "unknown", "blocked": "blocked"}.get(
            item.action, "not submitted")  # type: ignore[assignment]
        self.add(job, outcome, item.note)

    def placed(self, places: list[Job]) -> tuple[Changes, set[str]]:
        """The lock changes of videos the store has, and the keys of the jobs that change
        anything (a shot already done with its video changes nothing)."""
        changes: Changes = {}
        keys: set[str] = set()
        for job in places:
            assert job.known_output is not None
            if self.ledger.settled(job, job.known_output):
                continue
            keys.add(job.key)
            changes.update(self.ledger.changes(job, "done", task_id=job.task_id,
                                               output=job.known_output,
                                               finished_at=self.ledger.finished_at(job)))
        return changes, keys

    def settled(self, jobs: list[Job], placed: set[str]) -> None:
        """The results of local jobs whose lock changes are on disk."""
        for job in jobs:
            if job.kind == "report":
                self.reported(job)
            else:
                assert job.known_output is not None
                if job.key in placed:  # a settled shot's file is the folder sync's
                    self.on_done(job, job.known_output)
                self.add(job, "up to date", job.note, job.known_output)

    def in_storyboard_order(self, jobs: list[Job]) -> None:
        """Results in the order of the jobs (the storyboard's), not the order they ended in."""
        position = {shot_id: i for i, job in enumerate(jobs)
                    for shot_id in job.shot_ids or job.removed_ids}
        self.report.results.sort(key=lambda r: position.get(r.shot_ids[0], len(position))
                                 if r.shot_ids else len(position))


def settle_jobs(jobs: list[Job], keeper: LockKeeper, reporter: Reporter,
                on_done: Callable[[Job, Output], None]) -> RunReport:
    """Settle a run whose jobs all need no network: one lock write at most, then a result
    for each, in storyboard order."""
    assert not needs_network(jobs)
    results = Results(Ledger(keeper), reporter, on_done)
    changes, placed = results.placed([job for job in jobs if job.kind == "place"])
    keeper.put(changes)
    results.settled(jobs, placed)
    results.in_storyboard_order(jobs)
    return results.report
