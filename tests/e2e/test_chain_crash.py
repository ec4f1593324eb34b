"""kill -9 in a chain of shots (a -> b -> c, x beside them), then a rerun: each shot paid once.

b starts on a's last frame and c on b's, so b's request (and key) exists only once a's video is
downloaded, verified and its frame taken; c's only once b's is. Each test runs `python -m
kling_pipeline apply` as a child process against a slow simulator behind the crash harness's
`Gate` (tests/support/crash_harness.py: it holds the request a moment names, and kills only
outside the ambiguity window unless a test steps into it on purpose), kills it with SIGKILL at
one moment of the chain, then reruns apply in a new child process to the end and proves, with
the simulator's own counters: every shot `done`, no request body made two tasks, as many tasks
as shots, every task id the kill left is the one that finished, each dependent keyed by the
frame of the video its upstream actually has, and every video in the output folder decodes.

Inside b's ambiguity window (its POST arrived, its answer never read) the rerun must not guess:
b is `unknown`, c is `blocked` naming b, nothing is paid, and only `--resubmit-unknown` sends b
again (the one body paid twice here, at the user's word).
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support.apply_fixtures import shot_files
from support.crash_harness import (
    NAME,
    SLOW,
    Gate,
    Hold,
    Moment,
    Project,
    assert_all_rendered,
    assert_every_paid_task_is_in_the_lock,
    kill_at,
    process_state,
    wait_for,
)
from support.simulator_fixtures import SimClient

from kling_pipeline.frames import FrameRef, extract_frame
from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.simulator.runner import running_simulator
from kling_pipeline.state.lockfile import LockFile

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="uses /proc process states")]

CHAIN = f"""version: 1
name: {NAME}
provider: {{requests_per_minute: 6000}}
defaults: {{model: kling-v3.0-pro-i2v, duration: 3}}
shots:
  - {{id: a, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "A lighthouse at dusk"}}
  - {{id: b, prompt: "The keeper climbs", image: {{shot: a, frame: last}}}}
  - {{id: c, prompt: "The lamp turns", image: {{shot: b, frame: last}}}}
  - {{id: x, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "Gulls, unrelated"}}
"""
SHOTS = 4
# Slow enough that a lock-file moment is seen and killed long before the next (a 3 s shot:
# queued 0.2 s, then 0.75 s of work; a's done and b's intent are 0.13-0.2 s apart).
SPEED = replace(SLOW, time_scale=0.25)
I2V = "kling-v3.0-pro-i2v"  # b and c, and only they, are posted to it: b first, then c
EDGES = (("b", "a"), ("c", "b"))  # (shot, the shot whose last frame is its image)


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(gate: Gate) -> Iterator[str]:
    """This module's simulator: slow, behind the gate (overrides conftest's `server`)."""
    with running_simulator(SPEED, wrap=gate.wrap) as url:
        yield url


@pytest.fixture
def chain(tmp_path: Path, sim: SimClient, gate: Gate) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    project = Project(root, sim, gate, SHOTS, CHAIN)
    yield project
    for child in project.children:  # a failed test leaves no child behind
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


# -- reading the lock by shot --------------------------------------------------------------------


def status(lock: LockFile, shot_id: str) -> str | None:
    found = lock.shots.get(shot_id)
    return None if found is None else found.status


def task_of(lock: LockFile, shot_id: str) -> str | None:
    found = lock.shots.get(shot_id)
    return None if found is None else found.task_id


def states(lock: LockFile) -> dict[str, str | None]:
    """Each shot's status, None where the lock has no entry (never submitted)."""
    return {shot_id: status(lock, shot_id) for shot_id in "abcx"}


RENDERING = ("queued", "processing")
AFTER_POST = ("queued", "processing", "rendered", "done")


def left(**expected: str | tuple[str, ...] | None) -> Callable[[LockFile], bool]:
    """The kill left these statuses (a tuple: one of them; None: no entry); each shot with a
    status past `submitting` has its task id."""

    def check(lock: LockFile) -> bool:
        for shot_id, wanted in expected.items():
            found = status(lock, shot_id)
            options = wanted if isinstance(wanted, tuple) else (wanted,)
            if found not in options:
                return False
            if found is not None and found != "submitting" and not task_of(lock, shot_id):
                return False
        return True

    return check


def hold_when(shot_id: str, statuses: tuple[str, ...],
              make: Callable[[str], Hold]) -> Callable[[LockFile], tuple[Hold, ...]]:
    """Arm a hold of `shot_id`'s task (made from its task id) once its status is one of these."""

    def arm(lock: LockFile) -> tuple[Hold, ...]:
        task_id = task_of(lock, shot_id)
        return (make(task_id),) if task_id and status(lock, shot_id) in statuses else ()

    return arm


# -- 1. kill -9 at six moments of the chain, each on a fresh project ---------------------------


MOMENTS = [
    Moment("a is rendering: a's and x's task ids in the lock, a's video not downloaded",
           when=lambda start, now: bool(task_of(now, "a") and task_of(now, "x"))
           and status(now, "a") in RENDERING,
           left=left(a=RENDERING, b=None, c=None, x=RENDERING)),
    Moment("a's download is half streamed",
           # armed as soon as a's task id is known: a download follows "rendered" at once, and
           # a hold set only when the lock says so can come too late
           arm=hold_when("a", (*RENDERING, "rendered"),
                         lambda task: Hold("file-body", None, match=task)),
           left=left(a="rendered", b=None, c=None, x=AFTER_POST)),
    Moment("a is done in the lock; b's frame is being taken, its intent not yet written",
           when=lambda start, now: status(now, "a") == "done",
           left=left(a="done", b=None, c=None, x=AFTER_POST)),
    Moment("b's POST was answered and its task id recorded",
           when=lambda start, now: bool(task_of(now, "b")),
           left=left(a="done", b=RENDERING, c=None, x=AFTER_POST)),
    Moment("a task-result poll of c is held while c is processing",
           arm=hold_when("c", ("processing",), lambda task: Hold("result", None, match=task)),
           left=left(a="done", b="done", c="processing", x="done")),
    Moment("c's download is half streamed",
           arm=hold_when("c", ("processing", "rendered"),
                         lambda task: Hold("file-body", None, match=task)),
           left=left(a="done", b="done", c="rendered", x="done")),
]


def assert_chained(project: Project) -> None:
    """Each dependent's image is the digest of the last frame of the video its upstream has in
    the output folder, and it was submitted after that video was done."""
    lock = project.lock()
    videos = {Path(name).stem.rpartition("-")[2]: video.path
              for name, video in shot_files(project.board).items()}
    for shot_id, upstream in EDGES:
        frame = extract_frame(videos[upstream], FrameRef("last"))
        shot, up = lock.shots[shot_id], lock.shots[upstream]
        assert shot.request["image"] == IMAGE_DIGEST_PREFIX + frame.sha256, shot_id
        assert shot.submitted_at is not None and up.finished_at is not None
        assert shot.submitted_at >= up.finished_at, (shot_id, upstream)


def assert_finished_paying_once(project: Project, sim: SimClient,
                                kept: dict[str, str]) -> None:
    """Every shot done, its video decoding in the output folder; one task per request body,
    as many as shots; the task ids a kill left are the ones that finished."""
    assert_all_rendered(project)  # statuses, decoded videos, one task per body
    lock = assert_every_paid_task_is_in_the_lock(project)
    assert sim.stats()["submissions_total"] == SHOTS
    assert {shot_id: lock.shots[shot_id].task_id for shot_id in kept} == kept
    assert_chained(project)


@pytest.mark.parametrize("number", range(1, len(MOMENTS) + 1), ids=lambda n: f"moment-{n}")
def test_kill_9_in_a_chain_then_a_rerun_finishes_it_paying_once(
        chain: Project, sim: SimClient, number: int) -> None:
    moment = MOMENTS[number - 1]
    kill_at(chain, moment, key=f"moment-{number}")  # a key per run: the gate knows it died
    lock = assert_every_paid_task_is_in_the_lock(chain)
    assert moment.left(lock), (moment.name, states(lock))
    kept = {s: e.task_id for s, e in lock.shots.items() if e.task_id}
    sim.configure(time_scale=0.04)
    code, output = chain.run(key=f"moment-{number}-rerun")
    assert code == 0, output
    assert_finished_paying_once(chain, sim, kept)


def test_kill_9_at_every_moment_in_turn_then_a_rerun_finishes_the_chain(
        chain: Project, sim: SimClient) -> None:
    """The same project killed at each moment in turn: each run resumes what the last left."""
    for number, moment in enumerate(MOMENTS, 1):
        before = chain.lock()
        kill_at(chain, moment, key=f"turn-{number}")
        lock = assert_every_paid_task_is_in_the_lock(chain)
        assert moment.left(lock), (moment.name, states(lock))
        for shot_id, old in before.shots.items():  # a task id once recorded is never replaced
            assert old.task_id is None or lock.shots[shot_id].task_id == old.task_id, shot_id
    kept = {s: e.task_id for s, e in chain.lock().shots.items() if e.task_id}
    assert len(kept) == SHOTS
    sim.configure(time_scale=0.04)
    code, output = chain.run(key="turn-final")
    assert code == 0, output
    assert_finished_paying_once(chain, sim, kept)


# -- 2. b's POST arrived, its answer never read: b unknown, c blocked, nothing guessed ---------


def summary_row(output: str, shot_id: str) -> tuple[str, str]:
    """The run summary's row of a shot: (result, note)."""
    found = re.search(rf"^ +{shot_id} +(up to date|not submitted|in flight|\S+) +\S+ +(.*)$",
                      output, re.M)
    assert found, output
    return found.group(1), found.group(2)


def kill_inside_bs_submission(chain: Project, sim: SimClient, name: str,
                              answered: bool) -> tuple[str, dict[str, int]]:
    """Kill the first run in b's submission: its POST held once all of it arrived (no task
    made), or its answer sent while the child is stopped (a task made and billed, its id never
    read). b's body hash as sent, and the tasks billed per body hash."""
    child = chain.start(key=name, holds=(Hold("posted" if answered else "post", 1, match=I2V),))
    wait_for(lambda: chain.gate.held, "b's POST to be held")
    if answered:
        assert process_state(child.proc.pid) == "T"  # stopped before the answer went out
    chain.gate.kill_now()
    assert child.wait() == -signal.SIGKILL
    chain.gate.settle(sim.base_url)
    lock = chain.lock()
    assert states(lock) == {"a": "done", "b": "submitting", "c": None, "x": "done"}, states(lock)
    b_body = chain.sent_digest(lock.shots["b"].request)
    billed = chain.billed()
    assert billed.get(b_body, 0) == (1 if answered else 0), billed
    assert sum(billed.values()) == (3 if answered else 2)  # a, x (and b's lost task)
    sim.configure(time_scale=0.04)
    return b_body, billed


@pytest.mark.parametrize("answered", [False, True], ids=["held-on-arrival", "answer-unread"])
def test_a_kill_inside_bs_submission_leaves_b_unknown_and_c_unsent_until_asked(
        chain: Project, sim: SimClient, answered: bool) -> None:
    """To the client both kills are the same: b's body left, no answer came back. The rerun
    reports b unknown and c blocked on b, and pays nothing; only `--resubmit-unknown`
    sends b again (the one body that may be paid twice, at the user's word), and c follows."""
    name = "answer-unread" if answered else "held-on-arrival"
    b_body, billed = kill_inside_bs_submission(chain, sim, name, answered)
    kept = {s: e.task_id for s, e in chain.lock().shots.items() if e.task_id}

    code, output = chain.run(key=f"{name}-rerun")
    assert code == 1, output
    result, note = summary_row(output, "b")
    assert result == "unknown" and note.startswith("submission not confirmed"), output
    result, note = summary_row(output, "c")
    assert result == "blocked" and "needs a frame of 'b', which is unknown" in note, output
    applied = re.search(r"^Apply: .*$", output, re.M)
    assert applied and re.search(r"\b1 unknown\b.*\b1 blocked\b", applied.group()), output
    assert chain.billed() == billed  # nothing sent: neither b again nor c
    lock = chain.lock()
    assert states(lock) == {"a": "done", "b": "submitting", "c": None, "x": "done"}, states(lock)
    assert lock.shots["b"].task_id is None

    code, output = chain.run("--resubmit-unknown", key=f"{name}-resubmit")
    assert code == 0, output
    lock = chain.lock()
    assert {e.status for e in lock.shots.values()} == {"done"} and len(lock.shots) == SHOTS
    assert {shot_id: lock.shots[shot_id].task_id for shot_id in kept} == kept
    after = chain.billed()
    assert after[b_body] == (2 if answered else 1)  # the lost task, and the one asked for
    assert {h: n for h, n in after.items() if h != b_body} == {
        chain.sent_digest(e.request): 1 for s, e in lock.shots.items() if s != "b"}
    assert sim.stats()["submissions_total"] == SHOTS + (1 if answered else 0)
    assert len(shot_files(chain.board)) == SHOTS  # every video decoded in full
    assert_chained(chain)

