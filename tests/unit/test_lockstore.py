from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, read_lock
from kling_pipeline.state.lockstore import LockKeeper, RunLockBusy, hold_run_lock, run_lock_path


def entry(key: str = "a" * 64, **changes: object) -> LockEntry:
    values: dict[str, object] = {"key": key, "key_scheme": 1, "endpoint": "kling-v3.0-pro-t2v",
                                 "request": {"prompt": "p", "duration": 5}, "status": "submitting",
                                 "submitted_at": "2026-11-22T00:00:00Z"}
    values.update(changes)
    return LockEntry(**values)  # type: ignore[arg-type]


# -- LockKeeper -----------------------------------------------------------------------------------

def test_keeper_writes_only_when_something_changed(tmp_path: Path) -> None:
    path = tmp_path / "demo.lock.json"
    keeper = LockKeeper(path, LockFile("demo"))

    def put(changes: dict[str, LockEntry | None], writes: int) -> None:
        wrote = writes != keeper.writes
        inode = path.stat().st_ino if path.exists() else None
        keeper.put(changes)
        assert keeper.writes == writes
        if path.exists():
            assert read_lock(path, "demo") == keeper.lock
            assert (path.stat().st_ino != inode) == wrote  # each write replaces the file

    put({}, 0)
    assert not path.exists()
    put({"gone": None}, 0)
    assert not path.exists()
    put({"a": entry()}, 1)
    assert read_lock(path, "demo").shots == {"a": entry()}
    put({"a": entry()}, 1)
    put({"a": entry(status="queued", task_id="t-1")}, 2)
    assert keeper.get("a") == entry(status="queued", task_id="t-1")
    put({"a": entry(status="queued", task_id="t-1"), "missing": None}, 2)
    put({"b": entry("b" * 64), "c": entry("c" * 64)}, 3)
    assert set(read_lock(path, "demo").shots) == {"a", "b", "c"}
    done = entry(status="done", task_id="t-1", output=Output("f" * 64, 10, 5.0))
    put({"a": done, "b": None}, 4)
    assert read_lock(path, "demo").shots == {"a": done, "c": entry("c" * 64)}
    assert keeper.get("b") is None
    put({"c": None}, 5)
    put({"c": None}, 5)
    assert read_lock(path, "demo").shots == {"a": done}


def test_keeper_starts_from_an_existing_lock(tmp_path: Path) -> None:
    path = tmp_path / "demo.lock.json"
    first = LockKeeper(path, LockFile("demo"))
    first.put({"a": entry(status="queued", task_id="t-1")})
    keeper = LockKeeper(path, read_lock(path, "demo"))
    keeper.put({"a": entry(status="queued", task_id="t-1")})
    assert keeper.writes == 0
    keeper.put({"a": None})
    assert keeper.writes == 1
    assert read_lock(path, "demo") == LockFile("demo")


def test_every_put_is_on_disk_before_put_returns(tmp_path: Path) -> None:
    path = tmp_path / "demo.lock.json"
    keeper = LockKeeper(path, LockFile("demo"))
    for n in range(20):
        keeper.put({f"s{n:02}": entry(f"{n:064}", status="queued", task_id=f"t-{n}")})
        assert read_lock(path, "demo").shots[f"s{n:02}"].task_id == f"t-{n}"
    assert keeper.writes == 20
    assert [p.name for p in tmp_path.iterdir()] == ["demo.lock.json"]


# -- hold_run_lock --------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from kling_pipeline.state.lockstore import hold_run_lock
with hold_run_lock(Path(sys.argv[1]), timeout=5):
    print("held", flush=True)
    sys.stdin.readline()
"""

BARE_HOLDER = """
import fcntl, sys
fd = open(sys.argv[1], "a")
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = start(HOLDER, tmp_path / "demo.lock.json")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def start(script: str, arg: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(arg)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    return proc


def busy(lock_path: Path, timeout: float = 0.3) -> RunLockBusy:
    started = time.monotonic()
    with pytest.raises(RunLockBusy) as caught, hold_run_lock(lock_path, timeout=timeout):
        pytest.fail("took a lock that another process holds")
    assert timeout <= time.monotonic() - started < timeout + 2
    return caught.value


def test_commits_in_one_loop_turn_share_one_write_and_return_with_it_on_disk(
        tmp_path: Path) -> None:
    path = tmp_path / "demo.lock.json"
    keeper = LockKeeper(path, LockFile("demo"))

    async def one(i: int) -> set[str]:
        await keeper.commit({f"s{i}": entry()})
        return set(read_lock(path, "demo").shots)  # what is on disk when commit returns

    async def burst() -> list[set[str]]:
        return await asyncio.gather(*(one(i) for i in range(40)))

    seen = asyncio.run(burst())
    assert all(f"s{i}" in on_disk for i, on_disk in enumerate(seen))
    assert keeper.writes == 1


def test_a_commit_returns_with_its_own_write_not_after_later_ones(tmp_path: Path) -> None:
    """Changes that keep coming (connections opening one by one) must not hold back the
    shots whose records are already on disk: each waits for its own write only."""
    path = tmp_path / "demo.lock.json"

    def slow_write(target: Path, data: bytes) -> None:
        time.sleep(0.05)
        atomic_write_bytes(target, data)

    keeper = LockKeeper(path, LockFile("demo"), write=slow_write)
    returned: list[tuple[int, int]] = []  # (shot, writes done when its commit returned)

    async def one(i: int) -> None:
        await keeper.commit({f"s{i}": entry()})
        returned.append((i, keeper.writes))

    async def trickle() -> None:
        tasks = []
        for i in range(6):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0.03)  # a new change during every write
        await asyncio.gather(*tasks)

    asyncio.run(trickle())
    first = dict(returned)[0]
    assert first == 1 and keeper.writes > 1, returned


def test_a_record_now_is_on_disk_when_it_returns_and_wakes_the_commits_it_wrote(
        tmp_path: Path) -> None:
    """An intent is written on the spot (its request's body leaves straight after); the
    statuses already made share that write, and their commits return with it."""
    path = tmp_path / "demo.lock.json"
    keeper = LockKeeper(path, LockFile("demo"))

    async def run() -> tuple[set[str], set[str]]:
        queued = entry(status="queued", task_id="t-1")
        waiter = asyncio.ensure_future(keeper.commit({"done": queued}))
        await asyncio.sleep(0)  # the commit made its change; its write has not begun
        keeper.record_now({"intent": entry()})
        on_disk = set(read_lock(path, "demo").shots)
        await waiter
        return on_disk, set(read_lock(path, "demo").shots)

    at_record, at_end = asyncio.run(run())
    assert at_record == at_end == {"done", "intent"}
    assert keeper.writes == 1


def test_a_record_now_waits_for_a_write_under_way_and_never_goes_under_it(
        tmp_path: Path) -> None:
    """Two ways write the same file: the one in a thread (commit) and the one on the loop
    (record_now). An older state landing after a newer one would lose an intent."""
    path = tmp_path / "demo.lock.json"
    first_write_begun, go_on = threading.Event(), threading.Event()
    written: list[set[str]] = []

    def write(target: Path, data: bytes) -> None:
        if not written:
            first_write_begun.set()
            go_on.wait(5)
        atomic_write_bytes(target, data)
        written.append(set(read_lock(target, "demo").shots))

    keeper = LockKeeper(path, LockFile("demo"), write=write)

    async def run() -> None:
        waiter = asyncio.ensure_future(keeper.commit({"a": entry(status="queued", task_id="t-1")}))
        while not first_write_begun.is_set():
            await asyncio.sleep(0.005)
        threading.Timer(0.1, go_on.set).start()
        keeper.record_now({"b": entry()})  # blocks until the thread's write is done
        assert written == [{"a"}, {"a", "b"}]
        await waiter

    asyncio.run(run())
    assert set(read_lock(path, "demo").shots) == {"a", "b"}
    assert keeper.writes == 2


def test_a_failed_write_fails_its_commit(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir-is-a-file"
    path.write_text("in the way")
    keeper = LockKeeper(path / "demo.lock.json", LockFile("demo"))
    with pytest.raises(OSError):
        asyncio.run(keeper.commit({"a": entry()}))
    with pytest.raises(OSError):
        keeper.record_now({"b": entry()})


def test_run_lock_path_is_a_hidden_file_beside_the_lock(tmp_path: Path) -> None:
    assert run_lock_path(tmp_path / "lighthouse.lock.json") == \
        tmp_path / ".lighthouse.lock.json.run"


def test_holding_writes_the_pid_and_can_be_taken_again(tmp_path: Path) -> None:
    lock_path = tmp_path / "sub" / "demo.lock.json"
    with hold_run_lock(lock_path, timeout=0.3):
        assert run_lock_path(lock_path).read_text() == f"{os.getpid()}\n"
    with hold_run_lock(lock_path, timeout=0.3):
        pass
    assert not lock_path.exists()


def test_another_process_holding_the_lock_is_named(tmp_path: Path,
                                                   holder: subprocess.Popen[str]) -> None:
    lock_path = tmp_path / "demo.lock.json"
    exc = busy(lock_path)
    assert isinstance(exc, KlingPipelineError)
    message = str(exc)
    assert f"pid {holder.pid}" in message
    assert "--lock-timeout" in message and "demo.lock.json" in message and "0.3 s" in message
    assert run_lock_path(lock_path).read_text() == f"{holder.pid}\n"  # the waiter wrote nothing


def test_the_lock_is_free_after_the_holder_exits(tmp_path: Path,
                                                 holder: subprocess.Popen[str]) -> None:
    lock_path = tmp_path / "demo.lock.json"
    busy(lock_path)
    assert holder.stdin is not None
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert holder.wait(5) == 0
    with hold_run_lock(lock_path, timeout=0.3):
        assert run_lock_path(lock_path).read_text() == f"{os.getpid()}\n"


def test_the_lock_is_free_after_the_holder_is_killed(tmp_path: Path,
                                                     holder: subprocess.Popen[str]) -> None:
    lock_path = tmp_path / "demo.lock.json"
    busy(lock_path)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(5) == -signal.SIGKILL
    assert run_lock_path(lock_path).read_text() == f"{holder.pid}\n"  # stale pid, free lock
    with hold_run_lock(lock_path, timeout=0.3):
        assert run_lock_path(lock_path).read_text() == f"{os.getpid()}\n"


def test_a_waiter_gets_the_lock_when_it_frees_within_the_timeout(
        tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    lock_path = tmp_path / "demo.lock.json"
    assert holder.stdin is not None
    holder.stdin.write("done\n")
    holder.stdin.flush()
    with hold_run_lock(lock_path, timeout=3.0):
        assert run_lock_path(lock_path).read_text() == f"{os.getpid()}\n"


def test_a_holder_without_a_pid_is_another_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "demo.lock.json"
    proc = start(BARE_HOLDER, run_lock_path(lock_path))
    try:
        message = str(busy(lock_path, timeout=0.2))
        assert "another apply (another process) is working on demo.lock.json" in message
        assert "--lock-timeout" in message
    finally:
        proc.kill()
        proc.wait(5)


def test_an_error_inside_releases_the_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "demo.lock.json"
    with pytest.raises(ZeroDivisionError), hold_run_lock(lock_path, timeout=0.3):
        _ = 1 / 0
    with hold_run_lock(lock_path, timeout=0.3):
        pass
