"""The executor over httpx.MockTransport: scripted API answers, a real lock file and store.

Each test builds real jobs (storyboard -> plan -> jobs) and runs them against a handler that
plays the API, so what is checked is the executor's own decisions: when it polls, when it
gives up, what it writes to the lock, in what order it reports.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.apply_fixtures import write_board

from kling_pipeline.plan.jobs import Job, make_jobs
from kling_pipeline.plan.planner import make_plan
from kling_pipeline.plan.pricing import PriceTable
from kling_pipeline.results import RunReport
from kling_pipeline.run.apiclient import KlingClient
from kling_pipeline.run.executor import Executor, RunOptions
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import LockEntry, LockFile
from kling_pipeline.state.lockstore import LockKeeper
from kling_pipeline.storyboard.load import load_storyboard

BASE = "https://router.example"
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
# Quick waits: the floor between polls, and the backoff of failed reads.
QUICK = {"min_poll": 0.01, "backoff_base": 0.01, "backoff_cap": 0.05}


class Quiet:
    """A Reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str]] = []

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None:
        self.updates.append((label, state))

    def message(self, text: str) -> None:
        self.updates.append(("", text))


class Run:
    """A storyboard of shots in tmp_path, its lock and store, ready to run against a handler."""

    def __init__(self, folder: Path, shots: list[tuple[str, str]],
                 lock: LockFile | None = None) -> None:
        board = write_board(folder, shots)
        self.shots = load_storyboard(board, use_cache=False).shots
        self.lock_path = folder / "board.lock.json"
        self.keeper = LockKeeper(self.lock_path, lock or LockFile("demo"))
        self.store = Store(folder / "cache")

    def jobs(self) -> list[Job]:
        plan = make_plan("demo", self.shots, self.keeper.lock, PriceTable({}))
        jobs, _ = make_jobs(plan, self.store)
        return jobs

    def run(self, handler: Handler, work: list[Job] | None = None,
            **options: Any) -> RunReport:
        async def go() -> RunReport:
            transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport) as http:
                executor = Executor(KlingClient(http, BASE, "sk-test-key"), self.keeper,
                                    self.store, RunOptions(**{**QUICK, **options}), Quiet())
                return await executor.run(work if work is not None else self.jobs())

        try:
            return asyncio.run(go())
        finally:
            self.store.close()


def task(status: str, eta: float | None = None, task_id: str = "t-1") -> httpx.Response:
    body: dict[str, Any] = {"task_id": task_id, "status": status, "reason": "", "eta": eta,
                            "progress_percent": 50}
    if status == "TASK_STATUS_FAILED":
        body["reason"] = "scripted failure"
    return httpx.Response(200, json={"task": body, "videos": []})


def submitted(task_id: str = "t-1") -> httpx.Response:
    return httpx.Response(200, json={"task_id": task_id})


def is_submit(request: httpx.Request) -> bool:
    return request.method == "POST"


def prompt_of(request: httpx.Request) -> str:
    prompt: str = json.loads(request.content)["prompt"]
    return prompt


# -- polling (issue 9, item 6) ------------------------------------------------------------------

def test_an_eta_of_zero_is_polled_at_the_floor_not_on_the_grown_schedule(tmp_path: Path) -> None:
    """Twelve answers of eta 1 then eta 0: the task is due, ask again at the floor interval.
    (Before: the interval had grown with every poll, to 0.01 x 1.5^13 = 2 s at the first 0.)"""
    answers = [task("TASK_STATUS_PROCESSING", 1)] * 12 + [task("TASK_STATUS_PROCESSING", 0)] * 3
    answers.append(task("TASK_STATUS_FAILED"))
    seen: list[float] = []

    async def api(request: httpx.Request) -> httpx.Response:
        if is_submit(request):
            return submitted()
        seen.append(time.monotonic())
        return answers[len(seen) - 1]

    report = Run(tmp_path, [("a", "one shot")]).run(api)
    assert [r.outcome for r in report.results] == ["failed"]
    first_zero, end = seen[12], seen[-1]
    # floor, then 1.5 x floor, then 2.25 x floor: well under a tenth of a second
    assert end - first_zero < 0.5, f"{end - first_zero:.2f} s from the first eta 0 to the end"


# -- statuses we do not know (issue 9, item 13) ---------------------------------------------------

class Polls:
    """An API that accepts every submission, then answers polls from a script (its last
    answer again once the script runs out), counting them."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = answers
        self.count = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if is_submit(request):
            return submitted()
        self.count += 1
        return self.answers[min(self.count, len(self.answers)) - 1]


def test_an_unknown_status_keeps_polling_until_the_task_ends(tmp_path: Path) -> None:
    api = Polls(*[task("TASK_STATUS_UNKNOWN")] * 12, task("TASK_STATUS_FAILED"))
    run = Run(tmp_path, [("a", "one shot")])
    report = run.run(api)
    assert [(r.outcome, r.note) for r in report.results] == [
        ("failed", "scripted failure (--retry-failed renders it again)")]
    assert api.count == 13
    assert run.keeper.lock.shots["a"].status == "failed"


def test_an_unknown_status_without_end_is_left_in_flight_after_its_own_bound(
        tmp_path: Path) -> None:
    api = Polls(task("TASK_STATUS_UNKNOWN"))
    run = Run(tmp_path, [("a", "one shot")])
    report = run.run(api, pending_polls=5, max_poll=0.02)
    (result,) = report.results
    assert result.outcome == "in flight" and "TASK_STATUS_UNKNOWN 5 times" in result.note
    assert api.count == 6
    entry = run.keeper.lock.shots["a"]
    assert (entry.status, entry.task_id) == ("queued", "t-1")  # kept for the next run


# -- sending (issue 9, items 2, 3 and 13) ----------------------------------------------------------

def test_a_request_that_cannot_be_built_here_is_not_submitted_never_unknown(
        tmp_path: Path) -> None:
    """httpx refuses a header value h11 cannot send (LocalProtocolError): nothing left."""
    async def api(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value b'Bearer '")

    run = Run(tmp_path, [("a", "shot a"), ("b", "shot b")])
    report = run.run(api, jobs=1)
    assert [r.outcome for r in report.results] == ["not submitted", "not submitted"]
    assert "LocalProtocolError" in report.stop_reason and "may have" not in report.stop_reason
    assert run.keeper.lock.shots == {}  # the intent is taken back


def test_a_server_out_of_reach_stops_every_submission_after_the_stated_time(
        tmp_path: Path) -> None:
    tries = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ConnectError("[Errno 111] Connection refused")

    run = Run(tmp_path, [(f"s{i}", f"shot {i}") for i in range(6)])
    start = time.monotonic()
    report = run.run(api, jobs=2, unreachable_after=0.3, unreachable_retry=0.02,
                     requests_per_minute=3)
    took = time.monotonic() - start
    assert took < 2.0, f"{took:.1f} s"
    assert [r.outcome for r in report.results] == ["not submitted"] * 6
    assert {r.note for r in report.results} == {
        "submitting stopped: the server could not be reached"}
    assert report.stop_reason.startswith(f"could not connect to {BASE} (ConnectError: "
                                         "connection refused); no answer for")
    assert tries > 3  # tries that never connected do not use up the 3 per minute
    assert run.keeper.lock.shots == {}


def test_a_server_that_answers_is_not_out_of_reach(tmp_path: Path) -> None:
    """Refused connections between answers do not add up: only a silent server is given up."""
    calls = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        await asyncio.sleep(0.15)
        return httpx.Response(400, json={"code": 400, "reason": "ILLEGAL_PROMPT",
                                         "message": "scripted"})

    report = Run(tmp_path, [(f"s{i}", f"shot {i}") for i in range(4)]).run(
        api, jobs=1, unreachable_after=0.2, unreachable_retry=0.1)
    assert [r.outcome for r in report.results] == ["failed"] * 4
    assert report.stop_reason == ""


# -- the report ---------------------------------------------------------------------------------

def test_results_are_reported_in_storyboard_order_not_finishing_order(tmp_path: Path) -> None:
    async def api(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep({"shot a": 0.3, "shot b": 0.15, "shot c": 0.0}[prompt_of(request)])
        return httpx.Response(400, json={"code": 400, "reason": "ILLEGAL_PROMPT",
                                         "message": prompt_of(request)})

    report = Run(tmp_path, [("a", "shot a"), ("b", "shot b"), ("c", "shot c")]).run(api, jobs=3)
    assert [r.shot_ids for r in report.results] == [("a",), ("b",), ("c",)]


def test_a_follow_job_keeps_its_entry_when_the_server_is_out_of_reach(tmp_path: Path) -> None:
    """A paid task is never given up: its id stays in the lock for the next run."""
    folder = tmp_path
    first = Run(folder, [("a", "shot a")])
    shot = first.shots[0]
    entry = LockEntry(key=shot.key, key_scheme=1, endpoint=shot.endpoint, request=shot.body,
                      status="queued", task_id="t-paid", submitted_at="2020-01-01T00:00:00Z",
                      updated_at="2020-01-01T00:00:00Z")
    run = Run(folder, [("a", "shot a")], LockFile("demo", {"a": entry}))

    async def api(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    report = run.run(api, unreachable_after=0.2)
    (result,) = report.results
    assert result.outcome == "in flight" and result.task_id == "t-paid"
    assert run.keeper.lock.shots["a"] == entry


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_server_keeps_the_per_shot_backoff(tmp_path: Path, status: int) -> None:
    """Answers mean the server is up: no run-wide stop, the shot is tried again."""
    calls = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if not is_submit(request):
            return task("TASK_STATUS_FAILED")
        calls += 1
        if calls < 4:
            return httpx.Response(status, json={"code": status, "reason": "BUSY",
                                                "message": "later"})
        return submitted()

    report = Run(tmp_path, [("a", "shot a")]).run(api, unreachable_after=0.0)
    assert [r.outcome for r in report.results] == ["failed"] and calls == 4
    assert report.stop_reason == ""
