"""How a run ended, shot by shot: the outcome names, which of them count as success, and the
reports `apply` returns. Defined once here, because the executor makes them, the views show
them and the exit code is decided by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from kling_pipeline.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from kling_pipeline.state.lockfile import Output

if TYPE_CHECKING:
    from kling_pipeline.output.folder import FolderResult
    from kling_pipeline.plan.planner import Plan
    from kling_pipeline.remote.publish import Published

Outcome = Literal["done", "up to date", "failed", "unknown", "in flight", "lost",
                  "not submitted", "blocked"]  # blocked: an input shot has no video
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)  # the summary's order
SUCCESSFUL: frozenset[str] = frozenset({"done", "up to date"})
INTERRUPTED = "interrupted"  # a planned shot the run never reached (it has no ShotResult)


@dataclass(frozen=True)
class ShotResult:
    """How one job ended in this run (a job is one shot, or the removal of several)."""

    shot_ids: tuple[str, ...]
    outcome: Outcome
    task_id: str | None = None
    note: str = ""
    output: Output | None = None
    submitted: bool = False  # paid for in this run

    @property
    def ok(self) -> bool:
        return self.outcome in SUCCESSFUL


@dataclass
class RunReport:
    """What the executor did: one result per job, and why submitting stopped, if it did."""

    results: list[ShotResult] = field(default_factory=list)
    stop_reason: str = ""  # why submitting stopped early (account problem, no server)
    interrupted: bool = False
    published: Published | None = None  # what was pushed to the remote as it downloaded


@dataclass(frozen=True)
class RemoteUse:
    """What an apply did with its remote: the shots whose videos it took (verified), the
    copies it refused and why, the videos it pushed, and why it went on without the remote
    (`down`, "" when it did not)."""

    remote: str  # as messages name it
    taken: tuple[str, ...]  # shot ids
    refused: tuple[tuple[str, str], ...]  # (shot ids, reason)
    pushed: int
    not_pushed: int  # downloaded, not pushed (the remote failed, or the run stopped)
    down: str


@dataclass(frozen=True)
class ApplyReport:
    """What `Project.apply` did: the plan it followed, each shot's result, the shots it never
    reached, and the output folder it left (None when there was nothing to show)."""

    plan: Plan
    run: RunReport
    missing: tuple[str, ...]  # planned shots without a result: the run stopped first
    folder: FolderResult | None
    remote: RemoteUse | None = None  # None: the run had no remote

    @property
    def results(self) -> list[ShotResult]:
        return self.run.results

    @property
    def interrupted(self) -> bool:
        return self.run.interrupted

    @property
    def ok(self) -> bool:
        """Every planned shot is done or up to date."""
        return not self.run.interrupted and not self.missing and all(
            result.ok for result in self.run.results)

    @property
    def exit_code(self) -> int:
        if self.run.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if self.ok else EXIT_ERROR
