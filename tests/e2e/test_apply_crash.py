"""apply against kill -9, Ctrl-C and a second apply: real processes, a real simulator.

Each test runs `python -m kling_pipeline apply` as a child process (cwd tmp_path, its own API
key per run) against a simulator served from this process behind `Gate`, an ASGI middleware
that lets the test choose its moments deterministically (tests/support/crash_harness.py):

- it can hold one chosen request (a POST once all of it has arrived, or just after its answer
  went out, a task-result, a download on arrival or half streamed) until the test releases it
  or kills the child;
- it admits one POST at a time, only while nothing is held and once every task id answered
  before is in the lock file, and `kill_if_quiet` kills only when no POST is between "made a
  task" and "task id on disk". So no kill lands in the ambiguity window by accident; the one
  test about that window steps into it on purpose;
- a POST that reaches it from a child already killed is refused, as if the child had died a
  moment earlier (the bytes were on the wire; a gateway may drop them).

The simulator's clock is slow (a 3 s shot renders in 1.5 s) so that every moment is reached
while a child is still working. Linux only: /proc process states and inotify.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.apply_fixtures import submissions
from support.crash_harness import (
    SLOW,
    Gate,
    Hold,
    Moment,
    Project,
    assert_all_rendered,
    assert_every_paid_task_is_in_the_lock,
    became,
    count,
    kill_at,
    process_state,
    task_ids,
    wait_for,
)
from support.simulator_fixtures import SimClient

from kling_pipeline.key import body_digest
from kling_pipeline.simulator.runner import running_simulator

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="uses /proc process states and inotify")]


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(gate: Gate) -> Iterator[str]:
    """This module's simulator: slow, behind the gate (overrides conftest's `server`)."""
    with running_simulator(SLOW, wrap=gate.wrap) as url:
        yield url


@pytest.fixture
def make_project(tmp_path: Path, sim: SimClient, gate: Gate) -> Iterator[Callable[[int], Project]]:
    made: list[Project] = []

    def make(shots: int) -> Project:
        root = tmp_path / "project"
        root.mkdir()
        made.append(Project(root, sim, gate, shots))
        return made[-1]

    yield make
    for project in made:  # a failed test leaves no child behind
        for child in project.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


# -- 1. kill -9 at ten moments -----------------------------------------------------------------


SHOTS = 10
MOMENTS = [
    Moment("a POST reaches the server (intent on disk, no task made yet)", (Hold("post"),),
           left=lambda lock: count(lock, "submitting") > 0 and not task_ids(lock)),
    Moment("a task id is recorded (a POST was answered and written down)",
           when=lambda start, now: bool(task_ids(now) - task_ids(start))),
    Moment("a shot turns processing", when=became("processing")),
    Moment("a task-result request reaches the server", (Hold("result"),)),
    Moment("a shot turns rendered (its download starts)", when=became("rendered")),
    Moment("a download is half streamed", (Hold("file-body"),),
           left=lambda lock: count(lock, "rendered") > 0),
    Moment("a shot turns done", when=lambda start, now: count(now, "done") > count(start, "done")),
    Moment("half the shots are done", when=lambda start, now: count(now, "done") >= SHOTS // 2),
    Moment("every shot has a task id", when=lambda start, now: len(task_ids(now)) == SHOTS),
    Moment("every shot is done (output folder and summary still to come)",
           when=lambda start, now: count(now, "done") == SHOTS),
]


def test_kill_9_at_ten_moments_then_a_rerun_finishes_every_shot_paying_once(
        make_project: Callable[[int], Project], sim: SimClient) -> None:
    project = make_project(SHOTS)
    resubmit: tuple[str, ...] = ()
    for number, moment in enumerate(MOMENTS, 1):
        kill_at(project, moment, *resubmit, key=f"kill-{number}")
        lock = assert_every_paid_task_is_in_the_lock(project)
        assert moment.left(lock), moment.name
        # A shot left `submitting` is reported unknown by the next run and never sent again
        # unasked; here the simulator proves it was never billed, so asking is safe.
        unbilled = [s for s, e in lock.shots.items() if e.status in ("submitting", "unknown")]
        resubmit = ("--resubmit-unknown",) if unbilled else ()
    code, output = project.run(*resubmit, key="final")
    assert code == 0, output
    assert_all_rendered(project)
    assert_every_paid_task_is_in_the_lock(project)


# -- 2. the ambiguity window -------------------------------------------------------------------


def test_a_kill_between_answer_and_record_leaves_the_shot_unknown_never_paid_twice(
        make_project: Callable[[int], Project], sim: SimClient) -> None:
    """The answer of the 2nd POST is sent while the child is stopped, then it is killed: the
    task exists and is billed, the child never read its id. No provider here lists tasks, so
    this is the one way a kill leaves a paid task unknown: the rerun says so, and pays nothing."""
    project = make_project(4)
    child = project.start(key="answered", holds=(Hold("posted", 2),))
    wait_for(lambda: project.gate.held, "the 2nd answer to be sent")
    assert process_state(child.proc.pid) == "T"  # stopped before the answer went out
    project.gate.kill_now()
    assert child.wait() == -signal.SIGKILL
    project.gate.settle(sim.base_url)
    lock = project.lock()
    assert count(lock, "submitting") == 1
    lost = next(s for s, e in lock.shots.items() if e.status == "submitting")
    lost_body = body_digest(lock.shots[lost].request)
    assert project.billed()[lost_body] == 1
    assert lost_body in project.tasks().values()  # made, billed, its id never seen
    sim.configure(time_scale=0.04)
    code, output = project.run(key="rerun")
    assert code == 1, output
    assert re.search(rf"^ +{lost} +unknown +- +submission not confirmed", output, re.M), output
    lock = project.lock()
    assert lock.shots[lost].status == "submitting" and lock.shots[lost].task_id is None
    assert {s: e.status for s, e in lock.shots.items() if s != lost} == {
        s: "done" for s in lock.shots if s != lost}
    assert project.billed()[lost_body] == 1
    assert submissions(sim.stats()) == [1] * project.shots


# -- 3. Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_keeps_every_task_id_and_a_rerun_resumes_them(
        make_project: Callable[[int], Project], sim: SimClient) -> None:
    """SIGINT while the 2nd POST is on the wire: the run stops submitting, keeps the answer
    that was on its way, leaves nothing `submitting`, and exits 130 at once."""
    project = make_project(6)
    child = project.start(key="interrupted", holds=(Hold("post", 2),))
    seen: dict[str, str] = {}

    def first_id_and_second_post() -> bool:
        if project.lock_path.exists():
            seen.update({s: e.task_id for s, e in project.lock().shots.items() if e.task_id})
        return bool(seen) and project.gate.held == 1

    wait_for(first_id_and_second_post, "a task id in the lock and the 2nd POST held")
    child.proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    wait_for(lambda: "stopping: no new submissions" in child.output(), "the stop message")
    project.gate.release()  # the POST the child sent before Ctrl-C gets its answer
    assert child.wait(timeout=10) == 130, child.output()
    assert time.monotonic() - interrupted < 5
    lock = assert_every_paid_task_is_in_the_lock(project)
    kept = {s: e.task_id for s, e in lock.shots.items() if e.task_id}
    assert seen.items() <= kept.items()
    assert len(kept) == 2 and len(project.billed()) == 2  # the one on the wire too
    assert {e.status for e in lock.shots.values()} <= {"queued", "processing"}
    assert "not submitted" in child.output()
    sim.configure(time_scale=0.04)
    code, output = project.run(key="resume")
    assert code == 0, output
    assert_all_rendered(project)
    assert {s: project.lock().shots[s].task_id for s in kept} == kept


@pytest.mark.parametrize("stalled", ["result", "file-body"])
def test_ctrl_c_does_not_wait_for_a_stalled_poll_or_download(
        make_project: Callable[[int], Project], sim: SimClient, stalled: str) -> None:
    """Both jobs wait on a server that stopped answering (task-result, or a download half
    sent): a read pays nothing, so Ctrl-C abandons it instead of waiting for the read timeout."""
    sim.configure(time_scale=0.04)
    project = make_project(2)
    child = project.start(key=f"stalled-{stalled}", holds=(Hold(stalled, None),))
    wait_for(lambda: project.gate.held == 2, "both jobs to wait on a stalled answer")
    child.proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    assert child.wait() == 130, child.output()
    assert time.monotonic() - interrupted < 5, child.output()
    project.gate.release()
    lock = assert_every_paid_task_is_in_the_lock(project)
    assert len(task_ids(lock)) == 2
    expected = "rendered" if stalled == "file-body" else "queued"
    assert {e.status for e in lock.shots.values()} == {expected}
    code, output = project.run(key=f"after-{stalled}")
    assert code == 0, output
    assert_all_rendered(project)


# -- 4. two runs at once -----------------------------------------------------------------------


class OpenWatch:
    """Linux inotify: has anyone opened this file since the watch began?"""

    IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def opened(self) -> bool:
        try:
            return bool(os.read(self.fd, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_a_second_apply_stops_naming_the_first_or_waits_for_it(
        make_project: Callable[[int], Project], sim: SimClient) -> None:
    project = make_project(6)
    run_file = project.root / ".board.lock.json.run"
    first = project.start(key="first")

    def holds_the_run_lock() -> bool:
        assert first.proc.poll() is None, first.output()
        return run_file.exists() and run_file.read_text().strip() == str(first.proc.pid)

    wait_for(holds_the_run_lock, "the first apply to hold the run lock")
    wait_for(lambda: project.lock_path.exists() and len(task_ids(project.lock())) == 2,
             "two task ids")
    # Freeze the first run: both its jobs wait on a held request, so it writes nothing.
    project.gate.hold(Hold("post", None), Hold("result", None), Hold("file", None))
    wait_for(lambda: project.gate.held == 2, "both jobs of the first apply to wait")
    before = snapshot(project.root)
    code, output = project.run("--lock-timeout", "1s", key="second", watched=False)
    assert code == 1, output
    assert f"pid {first.proc.pid}" in output and "--lock-timeout" in output
    assert snapshot(project.root) == before  # the second run wrote nothing
    watch = OpenWatch(run_file)
    try:
        waiter = project.start("--lock-timeout", "60s", key="waiter", watched=False)
        wait_for(watch.opened, "the waiting apply to try the run lock")
    finally:
        watch.close()
    assert waiter.proc.poll() is None
    sim.configure(time_scale=0.04)
    requests = sim.stats()["requests"]
    project.gate.release()
    assert first.wait() == 0, first.output()
    assert_all_rendered(project)
    after_first = sim.stats()["requests"]
    assert waiter.wait() == 0, waiter.output()
    assert "6 up to date (0 submitted" in waiter.output()
    assert sim.stats()["requests"] == after_first != requests  # the waiter asked nothing
    assert_every_paid_task_is_in_the_lock(project)
