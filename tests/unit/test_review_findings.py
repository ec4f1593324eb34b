"""Review findings about claims and the remote, shown on real parts (a folder remote in
tmp_path, Claims and Claimer as a run makes them): each test is marked xfail (strict) until the
product is fixed. See tests/e2e/test_review_findings_cli.py for the ones that need the simulator.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kling_pipeline.remote.claims import Claims, Won
from kling_pipeline.remote.session import RemoteSession
from kling_pipeline.remote.store import IndexEntry, RemoteStore
from kling_pipeline.remote.url import RemoteSpec
from kling_pipeline.run.claiming import Claimer, Follow, Go, holder_id

KEY = "ab" * 32


async def _never_stops(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return False


def _claims(remote: Path, holder: str, host: str, clock: list[datetime] | None = None,
            ) -> Claims:
    """One machine's claims, over its own open of the remote."""
    if clock is None:
        return Claims(RemoteStore(RemoteSpec(str(remote))), holder, host)
    return Claims(RemoteStore(RemoteSpec(str(remote))), holder, host, clock=lambda: clock[0])


def _claimer(claims: Claims, renew: dict[str, str] | None = None,
             forced: frozenset[str] = frozenset()) -> Claimer:
    return Claimer(claims, RemoteSession(claims.remote.spec, [].append), renew=renew,
                   forced=forced, poll=0.01)


def _before(claimer: Claimer, deadline: float = 0.3) -> object:
    return asyncio.run(claimer.before_post(KEY, _never_stops, time.monotonic() + deadline))


def test_two_runners_restoring_one_cached_store_do_not_both_submit(tmp_path: Path) -> None:
    lock_path = tmp_path / "checkout" / "board.lock.json"  # the same path on every runner
    first_store = tmp_path / "runner-1" / ".kling-cache"
    holder_id(first_store, lock_path)  # an earlier CI job made it; the CI cache saved it
    second_store = tmp_path / "runner-2" / ".kling-cache"
    shutil.copytree(first_store, second_store)  # the next two jobs restore that cache
    remote = tmp_path / "remote"
    one = _claims(remote, holder_id(first_store, lock_path), "runner-1")
    two = _claims(remote, holder_id(second_store, lock_path), "runner-2")

    first = _before(_claimer(one))
    assert isinstance(first, Go) and first.claim is not None  # runner 1 is about to POST
    # Runner 2, a second later, wants the same request: runner 1's claim is live (no task id
    # yet); runner 2 must wait for it (and follow its task), not POST too.
    second = _before(_claimer(two))
    assert not isinstance(second, Go), second
    # (what happens: both are Go; the claim in force is now runner 2's generation 2)


def test_a_task_claimed_after_a_forced_run_began_is_followed_even_in_the_same_second(
        tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    here = [second + timedelta(microseconds=200_000)]
    there = [second + timedelta(microseconds=700_000)]
    forced = _claimer(_claims(remote, "a", "host-a", here), forced=frozenset({KEY}))
    # The run (--force) began at .2 s; at .7 s of the same second, another machine claims the
    # request and records its task: a new render, made after this run began.
    other = _claims(remote, "b", "host-b", there)
    won = other.claim(KEY)
    assert isinstance(won, Won)
    other.record_task(won.claim, "task-b")
    here[0] = second + timedelta(microseconds=900_000)
    got = _before(forced)
    # docs/remote.md: "A claim that got its task after the run began is another machine's
    # new render: followed."
    assert isinstance(got, Follow) and got.task_id == "task-b", got


def _nested(depth: int = 100_000) -> bytes:
    return b"[" * depth


def test_a_deeply_nested_claim_file_is_junk_not_a_crash(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    path = remote / "claims" / KEY / "00000001.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(_nested())
    got = _before(_claimer(_claims(remote, "a", "host-a")))
    assert not isinstance(got, Go)  # junk is a claim of holder "" until it expires


def test_a_deeply_nested_index_entry_is_refused_not_a_crash() -> None:
    assert IndexEntry.parse(_nested()) is None
