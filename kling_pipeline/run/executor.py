"""Run jobs against the API: submit once, record the task id, poll, download, verify, store.

The submission protocol of DESIGN.md, step by step: the intent (`submitting`) is written to the
lock at the moment the POST's body is about to leave, and the body follows with no loop turn
between (not before: a burst would otherwise write a dozen intents for requests that never left,
all `unknown` after a kill); the POST is sent once, and its answer is on disk before its job does
anything else (the job waits for the write; see `LockKeeper`). A POST is sent again only when the
provider provably made no task; anything ambiguous leaves the shot `unknown`. Polls, downloads and
the lock all survive a stop: whatever is in flight keeps its task id for the next run. A stop
abandons a poll or a download at once (a read pays nothing); it never abandons a POST. A server
that cannot be reached at all stops the run's submitting after a few seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from kling_pipeline.output.media import MediaError, check_duration
from kling_pipeline.plan.jobs import Job
from kling_pipeline.results import SUCCESSFUL, Outcome, RunReport, ShotResult
from kling_pipeline.run.apierrors import (
    FAILED,
    PENDING,
    SUCCEED,
    AccountProblem,
    Ambiguous,
    ApiError,
    EndpointRefused,
    NotAccepted,
    NotSent,
    ReadUnreachable,
    Refused,
    TaskNotFound,
    TaskState,
    Transient,
    Unreachable,
    UrlExpired,
)
from kling_pipeline.run.claiming import Claimer, Follow, Go
from kling_pipeline.run.ledger import Ledger
from kling_pipeline.run.pacing import Reachability, SubmitLimiter, backoff_delay, next_poll_delay
from kling_pipeline.run.settle import Reporter, Results
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.lockfile import LockEntry, Output, utc_now
from kling_pipeline.state.lockstore import LockKeeper
from kling_pipeline.storyboard.images import ImageProblem
from kling_pipeline.storyboard.localimages import body_to_send

# How a submit job got its task id: its own POST, or another machine's claim (moments ago,
# or long enough ago that a provider not knowing the task means it is gone).
Submitted = Literal["paid", "followed", "followed, not fresh"]

if TYPE_CHECKING:
    from kling_pipeline.plan.inputs import Resolver
    from kling_pipeline.remote.claims import Claim
    from kling_pipeline.run.apiclient import KlingClient

T = TypeVar("T")


class _Stopped(Exception):
    """The run stopped while a read was waiting for the server; the read was abandoned."""


@dataclass(frozen=True)
class RunOptions:
    """How hard and how long to try; the defaults suit the real service."""

    jobs: int = 4
    requests_per_minute: int = 20
    max_wait: float = 3600.0  # seconds a shot is polled in one run before it is left in flight
    min_poll: float = 0.25
    max_poll: float = 30.0
    submit_attempts: int = 8  # tries of a POST that provably made no task
    read_failures: int = 8  # consecutive failed task-result calls before a shot is left
    download_attempts: int = 5
    download_backoff: float = 0.25  # a re-fetch costs nothing; the shot stays in flight anyway
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    # No connection at all (refused, no route, no DNS): give up after this long without a single
    # answer from the server; after `outage_after` if it answered earlier in the run.
    unreachable_after: float = 10.0
    outage_after: float = 120.0
    unreachable_retry: float = 1.0  # the wait between tries of a refused connection
    pending_polls: int = 40  # answers in a row with a status we do not know before leaving it


async def _wait_unless(event: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; True (at once) if `event` is or becomes set meanwhile."""
    if seconds <= 0:
        return event.is_set()
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Executor:
    """Works a list of jobs with at most `options.jobs` at a time."""

    def __init__(self, client: KlingClient | None, keeper: LockKeeper, store: Store,
                 options: RunOptions, reporter: Reporter,
                 on_done: Callable[[Job, Output], None] = lambda job, output: None,
                 rng: random.Random | None = None, resolver: Resolver | None = None,
                 on_stored: Callable[[Job, Output, bool], None] | None = None,
                 claimer: Claimer | None = None) -> None:
        self.client = client
        self.claimer = claimer  # claims in a remote: no two machines pay for one key
        # A video downloaded and recorded (pushed to a remote); True: its task was another
        # machine's (followed from its claim), which has likely pushed it already.
        self.on_stored = on_stored
        self.resolver = resolver  # for jobs that wait for frames of other shots
        self.ledger = Ledger(keeper)  # every lock entry the run writes is decided there
        self.store = store
        self.options = options
        self.reporter = reporter
        self.on_done = on_done
        self.results = Results(self.ledger, reporter, on_done, on_result=self._finished_as)
        self.rng = rng or random.Random()
        self.limiter = SubmitLimiter(options.requests_per_minute)
        self.reach = Reachability(options.unreachable_after, options.outage_after)
        self.report = self.results.report
        self._stop = asyncio.Event()  # Ctrl-C: wind down, keep every task id
        self._no_submit = False  # an account problem, a server out of reach, or a stop
        self._halted = asyncio.Event()  # set with _no_submit: wakes shots waiting to submit
        self._halt_note = ""  # what each shot not submitted says (the reason is said once)
        self._blocked_endpoints: dict[str, str] = {}
        self._followed: dict[str, str] = {}  # key -> the machine whose task this run followed
        # How each shot of the run ended, for the jobs that wait for its frames.
        self._finished: dict[str, asyncio.Future[tuple[Outcome, Output | None]]] = {}
        # Request keys a job of this run is submitting (or will): set once its POST ended.
        self._paying: dict[str, asyncio.Event] = {}

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop submitting now; polls and downloads give up at their next wait."""
        self.report.interrupted = True
        self._halt("the run was interrupted")
        self._stop.set()

    def _halt(self, note: str, reason: str = "") -> None:
        """No more submissions in this run; `reason` is said once, in the summary."""
        if not self._no_submit:
            self._halt_note = note
        if reason and not self.report.stop_reason:
            self.report.stop_reason = reason
        self._no_submit = True
        self._halted.set()

    async def _wait_to_submit(self, seconds: float) -> bool:
        """Wait before a submission, or return True at once when submitting has stopped."""
        return await _wait_unless(self._halted, seconds)

    async def _not_submitted(self, job: Job, previous: dict[str, LockEntry | None]) -> None:
        await self._unsubmitted(job, previous, f"submitting stopped: {self._halt_note}")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait, or return True at once when the run is stopping."""
        return await _wait_unless(self._stop, seconds)

    async def _read(self, read: Awaitable[T]) -> T:
        """Await a poll or a download, abandoning it (`_Stopped`) when the run stops, so that
        Ctrl-C never waits for a slow or stalled answer. Never used for a submit."""
        task = asyncio.ensure_future(read)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
        if not task.done():
            await asyncio.wait({task})  # let it close its connection and file
        if task.cancelled():
            raise _Stopped
        return task.result()

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff_delay(attempt, self.options.backoff_base, self.options.backoff_cap,
                             retry_after, self.rng)

    # -- the lock --------------------------------------------------------------------------

    def _result(self, job: Job, outcome: Outcome, note: str = "", output: Output | None = None,
                submitted: bool = False) -> ShotResult:
        return self.results.add(job, outcome, note, output, submitted)

    def _finished_as(self, job: Job, outcome: Outcome, output: Output | None) -> None:
        """Tell the jobs waiting for frames of this job's shots how it ended."""
        for shot_id in job.shot_ids:
            finished = self._finished.get(shot_id)
            if finished is not None and not finished.done():
                finished.set_result((outcome, output))

    # -- running ---------------------------------------------------------------------------

    async def run(self, jobs: list[Job]) -> RunReport:
        """Settle the jobs that need no network at once (one lock write for all of them),
        then work the others, at most `options.jobs` at a time."""
        slots = asyncio.Semaphore(max(1, self.options.jobs))
        loop = asyncio.get_running_loop()
        self._finished = {shot_id: loop.create_future() for job in jobs
                          for shot_id in job.shot_ids}
        self._paying = {job.key: asyncio.Event() for job in jobs
                        if job.kind == "submit" and not job.waits_for}

        async def one(job: Job) -> None:
            if job.waits_for:  # its key waits for frames of shots of this run
                ready = await self._after_inputs(job)
                if ready is None:
                    return
                ready = await self._one_payer(ready)
                if ready.kind in ("report", "place"):
                    await self._local([ready])
                    return
                job = ready
            try:
                async with slots:
                    await self._job(job)
            finally:
                self._posted(job)  # (after its POST already, unless it never got that far)

        try:
            await self._local([job for job in jobs if job.kind in ("report", "place")
                               and not job.waits_for])
            await asyncio.gather(*(one(job) for job in jobs
                                   if job.kind not in ("report", "place") or job.waits_for))
        finally:
            self.results.in_storyboard_order(jobs)
        return self.report

    async def _one_payer(self, job: Job) -> Job:
        """One POST per request key in a run: a job whose key, exact only now, is one that
        another job of this run is submitting waits for that POST to end, then is decided
        again against the lock (it follows that task, or pays itself if none was made). Two
        shots taking the same frame two ways (`frame: first`, `at: 0`) meet here."""
        assert self.resolver is not None and job.shot is not None
        while job.kind == "submit" and job.key in self._paying:
            await self._paying[job.key].wait()
            job = self.resolver.job_for(job, job.shot, self.ledger.keeper.lock)
        if job.kind == "submit":
            self._paying[job.key] = asyncio.Event()
        return job

    def _posted(self, job: Job) -> None:
        """The POST of `job` ended (a task, or none): its key's waiting twins go on."""
        if job.kind != "submit":
            return  # only the job that pays for a key may let its twins go on
        waiting = self._paying.pop(job.key, None)
        if waiting is not None:
            waiting.set()

    async def _after_inputs(self, job: Job) -> Job | None:
        """Wait until every shot `job` takes a frame of has ended, then make its key exact
        and decide it again (None: it cannot go, and its result says why)."""
        videos: dict[str, Output] = {}
        for upstream in job.waits_for:
            finished = self._finished.get(upstream)
            if finished is None:
                self._result(job, "blocked", f"needs a frame of {upstream!r}, which this run "
                                             "does not render")
                return None
            outcome, output = await finished
            if self.stopping and (outcome not in SUCCESSFUL or output is None):
                break  # said below: the stop, not the upstream, is why it was not sent
            if outcome not in SUCCESSFUL or output is None:
                self._result(job, "blocked", f"needs a frame of {upstream!r}, which is "
                                             f"{outcome}")
                return None
            videos[upstream] = output
        if self.stopping or self.resolver is None:
            self._result(job, "not submitted", "the run stopped before its input frames were "
                                               "ready")
            return None
        from kling_pipeline.frames import FrameError  # only a run with chained shots

        self.reporter.update(job.label, "taking frames", None,
                             ", ".join(f"from {up}" for up in job.waits_for))
        try:
            exact = await asyncio.to_thread(self.resolver.exact, job, videos)
        except (FrameError, ImageProblem) as exc:
            self._result(job, "blocked", str(exc))
            return None
        return self.resolver.job_for(job, exact, self.ledger.keeper.lock)

    async def _local(self, jobs: list[Job]) -> None:
        """Reports and videos the store has: 10,000 shots with nothing to do are 10,000
        results and, at most, one lock write (none when every entry already says so), not
        10,000 tasks each awaiting a write of nothing."""
        changes, placed = self.results.placed([job for job in jobs if job.kind == "place"])
        await self.ledger.commit(changes)
        self.results.settled(jobs, placed)

    def _unreachable(self, exc: ApiError) -> bool:
        """A connection failed: True once the server has been out of reach too long, when
        submitting stops for the whole run with one reason that names the server."""
        if not self.reach.failed():
            return False
        self._halt("the server could not be reached",
                   f"{exc}; no answer for {self.reach.waited():.0f} s. Check the base URL "
                   "(--base-url or provider.base_url) and the network")
        return True

    async def _job(self, job: Job) -> None:
        if self.client is None:  # cannot happen: the caller builds a client when needed
            self._result(job, "in flight", "no API client")
            return
        fresh = paid = False
        if job.kind == "submit":
            try:
                how = await self._submit(job, self.client)
            finally:
                self._posted(job)
            if how is None:
                return
            fresh, paid = how != "followed, not fresh", how == "paid"
        elif self.stopping:
            self._result(job, "in flight", "stopped before polling; the task id is kept")
            return
        state = await self._poll(job, self.client, fresh, paid)
        if state is None:
            return
        await self._download(job, self.client, state, paid)

    # -- submit ----------------------------------------------------------------------------

    async def _submit(self, job: Job, client: KlingClient) -> Submitted | None:
        """Submit once (again only where no task was made): "paid" when this run's task id is
        recorded, "followed" when another machine's is (its claim), None when neither."""
        shot = job.shot
        assert shot is not None
        if self._no_submit:
            self._result(job, "not submitted", f"submitting stopped: {self._halt_note}")
            return None
        blocked = self._blocked_endpoints.get(shot.endpoint)
        if blocked:
            self._result(job, "failed", blocked)
            return None
        try:
            wire = body_to_send(shot.body, shot.local_images)
        except (ImageProblem, OSError) as exc:
            self._result(job, "not submitted", f"{exc}")
            return None
        previous = self.ledger.before(job)
        attempt = limited = unreached = 0
        deadline = time.monotonic() + self.options.max_wait
        while True:
            self.reporter.update(job.label, "waiting", None, "")
            if (not await self.limiter.acquire(shot.endpoint, self._wait_to_submit)
                    or self._no_submit):
                await self._not_submitted(job, previous)
                return None
            claim = None
            if self.claimer is not None:
                self.reporter.update(job.label, "claiming")
                decision = await self.claimer.before_post(job.key, self._wait_to_submit,
                                                          deadline)
                if not isinstance(decision, Go):
                    self.limiter.forget(shot.endpoint)  # nothing was sent
                    if isinstance(decision, Follow):
                        return await self._follow(job, decision)
                    if self._no_submit:
                        await self._not_submitted(job, previous)
                        return None
                    await self._unsubmitted(job, previous, decision.note)
                    return None
                claim = decision.claim
            now = utc_now()
            self.reporter.update(job.label, "submitting")

            def sending(now: str = now) -> None:  # the body is about to leave
                self.ledger.record_intent(job, now)

            try:
                task_id = await client.submit(shot.endpoint, wire, on_send=sending)
            except Unreachable as exc:
                await self.ledger.restore(previous)
                await self._release(claim)
                self.limiter.forget(shot.endpoint)  # it never reached the server
                if self._unreachable(exc):
                    await self._not_submitted(job, previous)
                    return None
                unreached += 1
                delay = min(self.options.unreachable_retry, self._backoff(unreached))
                if unreached == 1:  # the URL is named once, when the run gives up
                    self.reporter.update(job.label, "retrying", None, "no connection yet")
                if await self._wait_to_submit(delay):
                    await self._not_submitted(job, previous)
                    return None
                continue
            except NotAccepted as exc:
                self.reach.answered()
                await self.ledger.restore(previous)
                await self._release(claim, str(exc))
                if exc.status == 429:
                    # Provably no task, and waiting is free: a rate-limited shot is never given
                    # up, only slowed (bounded by --max-wait like any wait of a shot).
                    limited += 1
                    delay = self._backoff(limited, exc.retry_after)
                    self.limiter.pause(shot.endpoint, delay)
                    if time.monotonic() + delay > deadline:
                        await self._unsubmitted(
                            job, previous, f"still rate limited after "
                                           f"{self.options.max_wait:g} s (--max-wait): {exc}")
                        return None
                else:
                    attempt += 1
                    if attempt >= self.options.submit_attempts:
                        await self._unsubmitted(
                            job, previous, f"not accepted after {attempt} tries: {exc}")
                        return None
                    delay = self._backoff(attempt, exc.retry_after)
                self.reporter.update(job.label, "retrying", None, str(exc))
                if await self._wait_to_submit(delay):
                    await self._not_submitted(job, previous)
                    return None
                continue
            except NotSent as exc:
                await self.ledger.restore(previous)  # nothing left this machine: never ambiguous
                await self._release(claim)
                self.limiter.forget(shot.endpoint)
                self._halt("the request could not be sent", str(exc))
                await self._not_submitted(job, previous)
                return None
            except Ambiguous as exc:
                await self.ledger.write(job, "unknown", submitted_at=now,
                                  error=f"submission not confirmed ({exc}); it may have been "
                                        "billed")
                if self.claimer is not None:
                    await self.claimer.ambiguous(claim, f"submission not confirmed ({exc})")
                self._result(job, "unknown", f"{exc}; it may have been billed "
                                             "(--resubmit-unknown submits it again)",
                             submitted=True)
                return None
            except AccountProblem as exc:
                self.reach.answered()
                await self._release(claim, str(exc))
                self._halt(exc.reason or "the provider refused the account", str(exc))
                await self._not_submitted(job, previous)
                return None
            except EndpointRefused as exc:
                await self._release(claim, str(exc))
                self._blocked_endpoints[shot.endpoint] = f"refused: {exc}"
                await self._refused(job, exc)
                return None
            except Refused as exc:
                await self._release(claim, str(exc))
                await self._refused(job, exc)
                return None
            self.reach.answered()
            job.task_id = task_id
            await self.ledger.write(job, "queued", submitted_at=now, task_id=task_id)
            if self.claimer is not None:  # the lock first, then the claim (docs/remote.md)
                await self.claimer.submitted(claim, task_id)
            self.reporter.update(job.label, "queued", 0, "")
            return "paid"

    async def _release(self, claim: Claim | None, note: str = "") -> None:
        """The POST provably made no task: another machine may claim the key now."""
        if self.claimer is not None:
            await self.claimer.no_task(claim, note)

    async def _follow(self, job: Job, claim: Follow) -> Submitted:
        """Another machine's POST made the task for this key: record it, poll it, free."""
        job.task_id = claim.task_id
        self._followed[job.key] = claim.host or "another machine"
        await self.ledger.write(job, "queued", task_id=claim.task_id)
        self.reporter.update(job.label, "queued", 0, f"following {self._followed[job.key]}")
        return "followed" if claim.fresh else "followed, not fresh"

    async def _unsubmitted(self, job: Job, previous: dict[str, LockEntry | None],
                           note: str) -> None:
        await self.ledger.restore(previous)
        self._result(job, "not submitted", note)

    async def _refused(self, job: Job, exc: ApiError) -> None:
        self.reach.answered()
        await self.ledger.write(job, "failed", error=str(exc), finished_at=utc_now())
        self._result(job, "failed", f"refused: {exc}")

    # -- poll ------------------------------------------------------------------------------

    async def _poll(self, job: Job, client: KlingClient, fresh: bool,
                    paid: bool) -> TaskState | None:
        """Ask about the task until it ends or the ceiling; its final state if it succeeded.
        `fresh`: a task made moments ago (the provider may not list it yet); `paid`: by
        this run."""
        task_id = job.task_id
        assert task_id is not None
        options = self.options
        deadline = time.monotonic() + options.max_wait
        failures = pending = 0
        due_since: float | None = None  # when the eta last said "more than 0 s" (or None)
        last_error: ApiError | None = None
        if fresh and await self._sleep(options.min_poll):
            self._result(job, "in flight", "stopped; the task id is kept", submitted=paid)
            return None
        last_status = ""
        while True:
            try:
                state = await self._read(client.result(task_id))
            except _Stopped:
                self._result(job, "in flight", "stopped; the task id is kept", submitted=paid)
                return None
            except AccountProblem as exc:
                self._halt(exc.reason or "the provider refused the account", str(exc))
                self._result(job, "in flight", f"cannot ask about the task: {exc}",
                             submitted=paid)
                return None
            except ReadUnreachable as exc:
                if self._unreachable(exc):
                    self._result(job, "in flight", "the server could not be reached; the task "
                                                   "id is kept and the next run picks it up",
                                 submitted=paid)
                    return None
                failures += 1
                last_error = exc
            except TaskNotFound as exc:
                self.reach.answered()
                if not fresh:
                    await self.ledger.write(
                        job, "lost", output=job.known_output,
                        finished_at=self.ledger.finished_at(job) if job.known_output else None,
                        error=f"the provider no longer knows task {task_id} ({exc})")
                    self._result(job, "lost", f"task {task_id} can no longer be fetched; "
                                              f"--force {job.label.split()[0]} renders it again "
                                              "(paid)")
                    return None
                failures += 1  # a task made moments ago: the provider may not list it yet
                last_error = exc
            except Transient as exc:
                if exc.status is not None:
                    self.reach.answered()
                failures += 1
                last_error = exc
            else:
                self.reach.answered()
                failures = 0
                if state.status == SUCCEED:
                    if state.video_url:
                        return state
                    await self.ledger.write(job, "failed", finished_at=utc_now(),
                                      error="the provider reported success but gave no video URL")
                    self._result(job, "failed", "succeeded without a video URL "
                                                "(--retry-failed renders it again)",
                                 submitted=paid)
                    return None
                if state.status == FAILED:
                    reason = state.reason or "the task failed without a reason"
                    await self.ledger.write(job, "failed", error=reason, finished_at=utc_now())
                    self._result(job, "failed", f"{reason} (--retry-failed renders it again)",
                                 submitted=paid)
                    return None
                pending = pending + 1 if state.status == PENDING else 0
                if pending > options.pending_polls:
                    self._result(job, "in flight", f"the provider answered {state.raw_status} "
                                                   f"{pending - 1} times in a row; the next run "
                                                   "asks again", submitted=paid)
                    return None
                if state.status != last_status and state.status != PENDING:
                    await self.ledger.write(job, state.status)  # type: ignore[arg-type]
                    last_status = state.status
                self.reporter.update(job.label, state.status, state.progress, "")
                # An eta of 0 (or none) means due now: the schedule counts from that moment.
                if state.eta is not None and state.eta > 0:
                    due_since = None
                elif due_since is None:
                    due_since = time.monotonic()
            if failures and last_error is not None:
                if failures >= options.read_failures:
                    self._result(job, "in flight", f"could not ask about the task ({last_error})"
                                                   "; the next run picks it up", submitted=paid)
                    return None
                delay = self._backoff(failures, last_error.retry_after)
            else:
                overdue = 0.0 if due_since is None else time.monotonic() - due_since
                delay = next_poll_delay(state.eta, overdue, options.min_poll, options.max_poll)
            if time.monotonic() + delay > deadline:
                self._result(job, "in flight", f"not finished after {options.max_wait:g} s "
                                               "(--max-wait); the next run picks it up",
                             submitted=paid)
                return None
            if await self._sleep(delay):
                self._result(job, "in flight", "stopped; the task id is kept", submitted=paid)
                return None

    # -- download --------------------------------------------------------------------------

    async def _download(self, job: Job, client: KlingClient, state: TaskState,
                        paid: bool) -> None:
        """Fetch, verify and store the video; retried (with a fresh URL if it expired)."""
        await self.ledger.write(job, "rendered")
        url = state.video_url
        problem = ""
        for attempt in range(1, self.options.download_attempts + 1):
            if self.stopping:
                break
            if url is None:
                url = await self._fresh_url(job, client)
                if url is None:
                    problem = problem or "no video URL"
                    continue
            self.reporter.update(job.label, "downloading", None, "")
            temp = self.store.temp_file()
            try:
                got = await self._read(client.download(url, temp, lambda: self.stopping))
                duration = await asyncio.to_thread(check_duration, temp, job.duration)
                self.store.ingest(temp, got.sha256)
            except _Stopped:
                break
            except UrlExpired as exc:
                problem, url = str(exc), None
                continue
            except (Transient, MediaError) as exc:
                problem = str(exc)
                if await self._sleep(backoff_delay(attempt, self.options.download_backoff,
                                                   self.options.backoff_cap, None, self.rng)):
                    break
                continue
            finally:
                temp.unlink(missing_ok=True)  # gone already when it was moved into the store
            output = Output(got.sha256, got.size, round(duration, 3))
            self.store.record(job.key, CachedResult(output, job.task_id, job.endpoint))
            same = job.known_output is not None and job.known_output.sha256 == output.sha256
            await self.ledger.write(job, "done", output=output, error=None,  # a re-fetch: no change
                              finished_at=self.ledger.finished_at(job) if same else utc_now())
            if job.removed_ids:  # paid, now safe in the store: the removed shots leave the lock
                await self.ledger.forget(job.removed_ids)
            if self.on_stored is not None:
                self.on_stored(job, output, job.key in self._followed)
            self.on_done(job, output)
            note = (f"submitted by {self._followed[job.key]}; this run followed its task"
                    if job.key in self._followed else "")
            if job.known_output is not None and job.known_output.sha256 != output.sha256:
                note = "fetched again by task id; the file differs from the one recorded"
            self._result(job, "done", note, output, submitted=paid)
            return
        note = "stopped before the download finished" if self.stopping else (
            f"download failed: {problem}")
        await self.ledger.write(job, "rendered", error=note)
        self._result(job, "in flight", f"{note}; the task id is kept and the next run "
                                       "downloads it", submitted=paid)

    async def _fresh_url(self, job: Job, client: KlingClient) -> str | None:
        """Ask task-result again: a presigned URL that expired is replaced by a new one."""
        assert job.task_id is not None
        try:
            state = await self._read(client.result(job.task_id))
        except (ApiError, _Stopped):
            return None
        return state.video_url if state.status == SUCCEED else None
