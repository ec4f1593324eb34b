"""kill -9 and Ctrl-C of real `apply` processes at moments the test chooses: the harness.

A test runs `python -m kling_pipeline apply` as a child process (cwd the project, its own API
key per run) against a simulator served from the test process behind `Gate`, an ASGI
middleware that lets the test choose its moments deterministically:

- it can hold one chosen request (a POST once all of it has arrived, or just after its answer
  went out, a task-result, a download on arrival or half streamed; the nth of its kind, or of
  those whose path contains a given text: a slug, a task id) until the test releases it or
  kills the child;
- it admits one POST at a time, only while nothing is held and once every task id answered
  before is in the lock file, and `kill_if_quiet` kills only when no POST is between "made a
  task" and "task id on disk". So no kill lands in the ambiguity window by accident; a test
  about that window steps into it on purpose (`Hold("posted")`, then `kill_now`);
- a POST that reaches it from a child already killed is refused, as if the child had died a
  moment earlier (the bytes were on the wire; a gateway may drop them).

The simulator's clock is slow (`SLOW`: a 3 s shot renders in 1.5 s) so that every moment is
reached while a child is still working. Linux only: /proc process states.

Each test module declares its own `gate` and `server` fixtures (module scope) from these, as
tests/e2e/test_apply_crash.py does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kling_pipeline.key import IMAGE_DIGEST_PREFIX, body_digest
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.state.framestore import FrameStore
from kling_pipeline.state.lockfile import LockFile, read_lock
from kling_pipeline.storyboard.images import data_uri
from kling_pipeline.storyboard.load import default_cache_dir
from support.apply_fixtures import shot_files, storyboard_text, submissions
from support.simulator_fixtures import SimClient

T = TypeVar("T")

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
    With `match`, only requests whose path (and query) contain it are counted for this hold:
    `Hold("post", 2, match="i2v")` is the run's 2nd POST to an image-to-video slug,
    `Hold("file-body", match=task_id)` the download of that task's video.
    """

    kind: str
    nth: int | None = 1
    match: str = ""


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
        self._seen: defaultdict[str, list[str]] = defaultdict(list)  # kind -> request targets
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
            self._seen.clear()
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
            if path == "/v3/async/task-result" and self._count(scope, "result")[0]:
                await self._hold()
            await app(scope, receive, send)

    def _count(self, scope: Scope, kind: str, then: str = "") -> tuple[bool, bool]:
        """Count a request of `kind`; whether a Hold of `kind`, and of `then`, wants it (its
        nth among this run's requests of `kind` that contain its `match`)."""
        target = _target(scope)
        with self._mutex:
            seen = self._seen[kind]
            seen.append(target)

            def wants(hold_kind: str) -> bool:
                return any(h.kind == hold_kind and h.match in target
                           and h.nth in (None, sum(1 for t in seen if h.match in t))
                           for h in self._holds)

            return wants(kind), wants(then)

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
        on_arrival, after_answer = self._count(scope, "post", "posted")
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
        on_arrival, mid_body = self._count(scope, "file", "file-body")
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


def _target(scope: Scope) -> str:
    """What a Hold's `match` is looked for in: the request's path, and its query if any."""
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope['path']}?{query}" if query else str(scope["path"])


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
    """A storyboard in `root` and the apply runs made on it: `shots` 3 s shots, or `text` (a
    storyboard named NAME of `shots` 3 s shots)."""

    def __init__(self, root: Path, sim: SimClient, gate: Gate, shots: int,
                 text: str | None = None) -> None:
        self.root, self.sim, self.gate, self.shots = root, sim, gate, shots
        self.board = root / "board.yaml"
        self.lock_path = root / "board.lock.json"
        self.logs = root.parent / f"{root.name}-logs"
        self.logs.mkdir()
        self.board.write_text(text if text is not None else storyboard_text(
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

    def sent_digest(self, request: dict[str, Any]) -> str:
        """The body hash the simulator counts for a lock entry's request: the body as sent,
        where each image held as a digest (a frame of another shot) is the data URI of the
        PNG in the project's frame store that has that digest."""
        body = dict(request)
        for wire, value in request.items():
            if isinstance(value, str) and value.startswith(IMAGE_DIGEST_PREFIX):
                sha256 = value[len(IMAGE_DIGEST_PREFIX):]
                png = FrameStore(default_cache_dir(self.board)).png_path(sha256).read_bytes()
                assert hashlib.sha256(png).hexdigest() == sha256, (wire, sha256)
                body[wire] = data_uri(png, "image/png")
        return body_digest(body)

    def tasks(self) -> dict[str, str]:
        """Every task the simulator made: task id -> body hash."""
        return {t["task_id"]: t["body_hash"] for t in self.sim.http.get("/_simulator/tasks")
                .json()}


def assert_every_paid_task_is_in_the_lock(project: Project) -> LockFile:
    """The lock parses; the tasks the simulator made are exactly the lock's task ids, each
    for the request its entry holds; no body made two tasks; any shot left `submitting` (its
    intent written, its POST never answered) was provably never billed."""
    lock = project.lock()
    billed = project.billed()
    assert all(n == 1 for n in billed.values()), billed
    recorded = {e.task_id: project.sent_digest(e.request) for e in lock.shots.values()
                if e.task_id}
    assert project.tasks() == recorded
    for shot_id, entry in lock.shots.items():
        if entry.status in ("submitting", "unknown"):
            assert project.sent_digest(entry.request) not in billed, shot_id
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


# -- kill -9 at a moment ----------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """When to kill: a request the gate holds, or a state of the lock file (at start, now);
    `left` checks the lock the kill left (for the moments only the server sees). `arm` gives
    holds to add once the lock shows what they name (a task id), () until it does."""

    name: str
    holds: tuple[Hold, ...] = ()
    when: Callable[[LockFile, LockFile], bool] | None = None
    left: Callable[[LockFile], bool] = lambda lock: True
    arm: Callable[[LockFile], tuple[Hold, ...]] | None = None


def became(status: str) -> Callable[[LockFile, LockFile], bool]:
    def check(start: LockFile, now: LockFile) -> bool:
        for shot_id, entry in now.shots.items():
            before = start.shots.get(shot_id)
            if entry.status == status and (before is None or (before.status, before.task_id)
                                           != (status, entry.task_id)):
                return True
        return False

    return check


def kill_at(project: Project, moment: Moment, *args: str, key: str) -> None:
    """Start apply and SIGKILL it at the moment; every version of the lock seen must parse."""
    start = project.lock()
    if moment.when is not None:
        assert not moment.when(start, start), f"{moment.name}: true before the run started"
    holds = moment.holds
    armed = moment.arm is None
    if moment.arm is not None and (more := moment.arm(start)):
        # the lock names what the hold needs already (a run after an earlier kill): hold from
        # the start, or a fast child may download before the hold is set
        holds, armed = (*holds, *more), True
    child = project.start(*args, key=key, holds=holds)
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
            if not armed and moment.arm is not None:
                more = moment.arm(now)
                if more:
                    project.gate.hold(*moment.holds, *more)
                    armed = True
        due = project.gate.held > 0 if moment.when is None else moment.when(start, now)
        if due and project.gate.kill_if_quiet():
            break
        code = child.proc.poll()
        assert code is None, f"{moment.name}: apply ended ({code}) first:\n{child.output()}"
        assert time.monotonic() < deadline, f"{moment.name}: not reached:\n{child.output()}"
        time.sleep(0.001)
    assert child.wait() == -signal.SIGKILL
    project.gate.settle(project.sim.base_url)
