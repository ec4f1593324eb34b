"""apply against kill -9, Ctrl-C and a second apply: real processes, a real simulator.

Each test runs `python -m kling_pipeline apply` as a child process (cwd tmp_path, its own API
key per run) against a simulator served from this process behind `Gate`, an ASGI middleware
that lets the test choose its moments deterministically:

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

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support.apply_fixtures import shot_files, storyboard_text, submissions
from support.simulator_fixtures import SimClient

from kling_pipeline.key import body_digest
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.runner import running_simulator
from kling_pipeline.state.lockfile import LockFile, read_lock

T = TypeVar("T")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="uses /proc process states and inotify")]

NAME = "demo"
WAIT = 30.0  # the longest any single wait may take before the test fails
SLOW = SimulatorConfig(time_scale=0.5, queue_delay=0.2)  # a 3 s shot: queued 0.2 s, 1.5 s work


def task_ids(lock: LockFile) -> set[str]:
    return {e.task_id for e in lock.shots.values() if e.task_id}


def count(lock: LockFile, status: str) -> int:
    return sum(1 for e in lock.shots.values() if e.status == status)


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.001)


def process_state(pid: int) -> str:
    """The one-letter state of a process (`T`: stopped), from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return text.rsplit(")", 1)[1].split()[0]


# -- the gate in front of the simulator ---------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """Hold the `nth` request of a kind in a run (None: every one) until released or killed.

    Kinds: `post` (on arrival, before any task is made), `posted` (its answer has been sent; the
    child was stopped with SIGSTOP first, so it cannot have read it), `result` (task-result),
    `file` (a download, on arrival), `file-body` (a download, after half its bytes went out).
    """

    kind: str
    nth: int | None = 1



async def _read_whole(receive: Receive) -> Receive:
    """Read a request's body now; a `receive` that hands it to the app as if it came later."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay

class Gate:
    """See the module docstring. The middleware runs on the simulator's thread; the test
    thread reads `held`/`active` and calls the methods; `_mutex` orders the two."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._released = threading.Event()
        self._dead: set[str] = set()
        self._key = ""
        self._lock_path: Path | None = None
        self._pid = 0
        self._holds: tuple[Hold, ...] = ()
        self._counts: Counter[str] = Counter()
        self._answered: set[str] = set()  # task ids answered to the current run
        self._recorded: set[str] = set()  # ... and seen in its lock file
        self._in_app = 0  # POSTs admitted whose answer has not been sent yet
        self.held = 0
        self.active = 0  # HTTP requests inside the middleware

    # -- the test's side ---------------------------------------------------------------------

    def start(self, key: str, lock_path: Path, *holds: Hold) -> None:
        """A new run with this API key writes this lock file; hold these requests."""
        with self._mutex:
            self._key, self._lock_path, self._pid, self._holds = key, lock_path, 0, holds
            self._counts.clear()
            self._answered.clear()
            self._recorded.clear()
            self._released.clear()

    def attach(self, pid: int) -> None:
        with self._mutex:
            self._pid = pid

    def hold(self, *holds: Hold) -> None:
        with self._mutex:
            self._holds = holds

    def release(self) -> None:
        """Let every held request go on; hold nothing more in this run."""
        with self._mutex:
            self._holds = ()
            self._released.set()

    def kill_if_quiet(self) -> bool:
        """SIGKILL the child if no task it paid for is unknown to its lock file."""
        with self._mutex:
            if not self._quiet():
                return False
            self._kill()
            return True

    def kill_now(self) -> None:
        with self._mutex:
            self._kill()

    def settle(self, base_url: str) -> None:
        """After a child died: let the server finish whatever it still had from it."""
        httpx.get(f"{base_url}/_simulator/stats", timeout=10)  # one turn of its event loop
        wait_for(lambda: self.active == 0, "the simulator to finish the dead child's requests")

    def _kill(self) -> None:
        assert self._pid, "no child attached"
        self._dead.add(self._key)
        os.kill(self._pid, signal.SIGKILL)

    def _quiet(self) -> bool:
        if self._in_app:
            return False
        missing = self._answered - self._recorded
        if missing and self._lock_path is not None:
            self._recorded |= task_ids(read_lock(self._lock_path, NAME))
            missing -= self._recorded
        return not missing

    # -- the middleware ----------------------------------------------------------------------

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def gated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            with self._mutex:
                self.active += 1
            try:
                await self._route(app, scope, receive, send)
            finally:
                with self._mutex:
                    self.active -= 1

        return gated

    async def _route(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        key = _bearer(scope)
        if path.startswith("/_simulator/files/"):
            await self._file(app, scope, receive, send)
        elif scope["method"] == "POST" and path.startswith("/v3/async/") and key in self._dead:
            await _unavailable(send)
        elif key != self._key or key in self._dead:
            await app(scope, receive, send)
        elif scope["method"] == "POST" and path.startswith("/v3/async/"):
            await self._post(app, scope, receive, send, key)
        else:
            if path == "/v3/async/task-result" and self._count("result")[0]:
                await self._hold()
            await app(scope, receive, send)

    def _count(self, kind: str, then: str = "") -> tuple[bool, bool]:
        """Count a request of `kind`; whether a Hold of `kind`, and of `then`, wants it."""
        with self._mutex:
            self._counts[kind] += 1
            n = self._counts[kind]
            return (any(h.kind == kind and h.nth in (None, n) for h in self._holds),
                    any(h.kind == then and h.nth in (None, n) for h in self._holds))

    async def _hold(self, before: Awaitable[T] | None = None) -> T | None:
        """Hold the request until released (or its child is dead); `before` is awaited first
        (no other POST is let in meanwhile), and its result returned."""
        key = self._key
        got = None
        if before is not None:
            with self._mutex:
                self._in_app += 1
            try:
                got = await before
            finally:
                with self._mutex:
                    self._in_app -= 1
        with self._mutex:
            self.held += 1
        try:
            deadline = time.monotonic() + WAIT
            while (not self._released.is_set() and key not in self._dead
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.001)
            return got
        finally:
            with self._mutex:
                self.held -= 1

    async def _post(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                    key: str) -> None:
        on_arrival, after_answer = self._count("post", "posted")
        if on_arrival:  # the whole request is here (headers alone make no task), not yet handled
            receive = await self._hold(before=_read_whole(receive)) or receive
        admitted = False
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._mutex:
                if key in self._dead:
                    break
                if self.held == 0 and self._quiet():
                    self._in_app += 1
                    admitted = True
                    break
            await asyncio.sleep(0.001)
        if not admitted:
            await _unavailable(send)
            return
        status, body, counted = 0, b"", True

        async def answer(message: Message) -> None:
            nonlocal status, body, counted
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    task_id = json.loads(body).get("task_id") if status == 200 else None
                    if after_answer:
                        await self._stop_child()
                    with self._mutex:
                        if task_id:
                            self._answered.add(task_id)
                        self._in_app -= 1
                        counted = False
            await send(message)

        try:
            await app(scope, receive, answer)
        finally:
            if counted:
                with self._mutex:
                    self._in_app -= 1
        if after_answer:
            await self._hold()

    async def _stop_child(self) -> None:
        os.kill(self._pid, signal.SIGSTOP)
        deadline = time.monotonic() + WAIT
        while process_state(self._pid) != "T" and time.monotonic() < deadline:
            await asyncio.sleep(0.001)

    async def _file(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        on_arrival, mid_body = self._count("file", "file-body")
        if on_arrival:
            await self._hold()
        if not mid_body:
            await app(scope, receive, send)
            return

        async def halfway(message: Message) -> None:
            data = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if len(data) > 1:
                half = len(data) // 2
                await send({"type": "http.response.body", "body": data[:half],
                            "more_body": True})
                await self._hold()
                message = {**message, "body": data[half:]}
            await send(message)

        await app(scope, receive, halfway)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1").partition(" ")[2].strip())
    return ""


async def _unavailable(send: Send) -> None:
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"code":503,"reason":"SERVICE_UNAVAIL'
                b'ABLE","message":"the client is gone (test gate)","metadata":{}}'})


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(gate: Gate) -> Iterator[str]:
    """This module's simulator: slow, behind the gate (overrides conftest's `server`)."""
    with running_simulator(SLOW, wrap=gate.wrap) as url:
        yield url


# -- the project and its child processes -------------------------------------------------------


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout)


class Project:
    """A storyboard of `shots` 3 s shots in tmp_path, and the apply runs made on it."""

    def __init__(self, root: Path, sim: SimClient, gate: Gate, shots: int) -> None:
        self.root, self.sim, self.gate, self.shots = root, sim, gate, shots
        self.board = root / "board.yaml"
        self.lock_path = root / "board.lock.json"
        self.logs = root.parent / f"{root.name}-logs"
        self.logs.mkdir()
        self.board.write_text(storyboard_text(
            [(f"s{i}", f"Shot {i} of the crash test") for i in range(shots)], name=NAME))
        self.runs = 0
        self.children: list[Child] = []

    def lock(self) -> LockFile:
        return read_lock(self.lock_path, NAME)

    def start(self, *args: str, key: str, holds: tuple[Hold, ...] = (),
              watched: bool = True) -> Child:
        """`apply --yes --jobs 2 ARGS` in a child process; the gate watches it if `watched`
        (it watches one run at a time)."""
        self.runs += 1
        log = self.logs / f"run-{self.runs}-{key}.log"
        if watched:
            self.gate.start(key, self.lock_path, *holds)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kling_pipeline", "apply", str(self.board),
                 "--base-url", self.sim.base_url, "--yes", "--jobs", "2", "--max-wait", "60s",
                 *args],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "NOVITA_API_KEY": key, "NO_COLOR": "1", "TERM": "dumb"})
        if watched:
            self.gate.attach(proc.pid)
        self.children.append(Child(proc, log))
        return self.children[-1]

    def run(self, *args: str, key: str, watched: bool = True) -> tuple[int, str]:
        child = self.start(*args, key=key, watched=watched)
        return child.wait(), child.output()

    def billed(self) -> dict[str, int]:
        """Tasks made per body hash, from the simulator's counters."""
        made: dict[str, int] = self.sim.stats()["submissions"]
        return made

    def tasks(self) -> dict[str, str]:
        """Every task the simulator made: task id -> body hash."""
        return {t["task_id"]: t["body_hash"] for t in self.sim.http.get("/_simulator/tasks")
                .json()}


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


def assert_every_paid_task_is_in_the_lock(project: Project) -> LockFile:
    """The lock parses; the tasks the simulator made are exactly the lock's task ids, each
    for the request its entry holds; no body made two tasks; any shot left `submitting` (its
    intent written, its POST never answered) was provably never billed."""
    lock = project.lock()
    billed = project.billed()
    assert all(n == 1 for n in billed.values()), billed
    recorded = {e.task_id: body_digest(e.request) for e in lock.shots.values() if e.task_id}
    assert project.tasks() == recorded
    for shot_id, entry in lock.shots.items():
        if entry.status in ("submitting", "unknown"):
            assert body_digest(entry.request) not in billed, shot_id
    return lock


def assert_all_rendered(project: Project) -> None:
    lock = project.lock()
    assert {e.status for e in lock.shots.values()} == {"done"}
    assert len(lock.shots) == project.shots
    files = shot_files(project.board, NAME)
    assert len(files) == project.shots
    for name, video in files.items():  # every one decoded in full by shot_files
        entry = lock.shots[name[4:-4]]
        assert entry.output is not None and entry.output.sha256 == video.sha256
        assert abs(video.duration - 3) < 0.2, (name, video.duration)
    assert submissions(project.sim.stats()) == [1] * project.shots


# -- 1. kill -9 at ten moments -----------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """When to kill: a request the gate holds, or a state of the lock file (at start, now);
    `left` checks the lock the kill left (for the moments only the server sees)."""

    name: str
    holds: tuple[Hold, ...] = ()
    when: Callable[[LockFile, LockFile], bool] | None = None
    left: Callable[[LockFile], bool] = lambda lock: True


def became(status: str) -> Callable[[LockFile, LockFile], bool]:
    def check(start: LockFile, now: LockFile) -> bool:
        for shot_id, entry in now.shots.items():
            before = start.shots.get(shot_id)
            if entry.status == status and (before is None or (before.status, before.task_id)
                                           != (status, entry.task_id)):
                return True
        return False

    return check


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


def kill_at(project: Project, moment: Moment, *args: str, key: str) -> None:
    """Start apply and SIGKILL it at the moment; every version of the lock seen must parse."""
    start = project.lock()
    if moment.when is not None:
        assert not moment.when(start, start), f"{moment.name}: true before the run started"
    child = project.start(*args, key=key, holds=moment.holds)
    seen: tuple[int, int, int] | None = None
    now = start
    deadline = time.monotonic() + WAIT
    while True:
        try:
            info = project.lock_path.stat()
            version: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            version = None
        if version != seen:  # a new lock file: it must parse (read_lock raises if not)
            seen, now = version, project.lock()
        due = project.gate.held > 0 if moment.when is None else moment.when(start, now)
        if due and project.gate.kill_if_quiet():
            break
        code = child.proc.poll()
        assert code is None, f"{moment.name}: apply ended ({code}) first:\n{child.output()}"
        assert time.monotonic() < deadline, f"{moment.name}: not reached:\n{child.output()}"
        time.sleep(0.001)
    assert child.wait() == -signal.SIGKILL
    project.gate.settle(project.sim.base_url)


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
