"""The executor's side of claims (run/claiming.py) on a folder remote: what a run does with
each state of the claim it finds, and how a killed run's claims are put right."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.s3_server import BUCKET, S3Server

from kling_pipeline.events import Event, Note
from kling_pipeline.remote.claims import Claims, Won
from kling_pipeline.remote.session import RemoteSession
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.url import RemoteSpec
from kling_pipeline.run.claiming import (
    Claimer,
    Follow,
    Go,
    Stand,
    claim_expiry,
    holder_id,
    reconcile,
)
from kling_pipeline.state.lockfile import LockEntry, LockFile

KEY = "ab" * 32
OTHER = "cd" * 32


def _claims(root: Path, holder: str, clock: list[datetime] | None = None) -> Claims:
    when = clock or [datetime.now(UTC)]
    return Claims(RemoteStore(RemoteSpec(str(root))), holder, f"host-{holder}", expiry=60,
                  clock=lambda: when[0])


def _claimer(claims: Claims, events: list[Event] | None = None, *,
             resubmit_unknown: bool = False, forced: dict[str, int] | None = None) -> Claimer:
    session = RemoteSession(claims.remote.spec, (events if events is not None else []).append)
    return Claimer(claims, session, resubmit_unknown=resubmit_unknown, forced=forced,
                   poll=0.01)


async def _never_stops(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return False


def _before(claimer: Claimer, deadline: float = 5.0) -> Go | Follow | Stand:
    return asyncio.run(claimer.before_post(KEY, _never_stops, time.monotonic() + deadline))


def test_the_first_machine_goes_and_the_second_follows_its_task(tmp_path: Path) -> None:
    a, b = _claims(tmp_path, "a"), _claims(tmp_path, "b")
    first = _before(_claimer(a))
    assert isinstance(first, Go) and first.claim is not None
    asyncio.run(_claimer(a).submitted(first.claim, "task-1"))
    assert _before(_claimer(b)) == Follow("task-1", "host-a")


def test_a_live_claim_is_waited_for_until_it_has_a_task_id(tmp_path: Path) -> None:
    a, b = _claims(tmp_path, "a"), _claims(tmp_path, "b")
    won = _before(_claimer(a))
    assert isinstance(won, Go) and won.claim is not None

    async def both() -> Go | Follow | Stand:
        waiting = asyncio.ensure_future(
            _claimer(b).before_post(KEY, _never_stops, time.monotonic() + 5))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # b waits: a is between its claim and its answer
        await _claimer(a).submitted(won.claim, "task-1")
        return await waiting

    assert asyncio.run(both()) == Follow("task-1", "host-a")


def test_a_live_claim_past_the_deadline_leaves_the_shot_unpaid(tmp_path: Path) -> None:
    assert isinstance(_before(_claimer(_claims(tmp_path, "a"))), Go)
    held = _before(_claimer(_claims(tmp_path, "b")), deadline=0.05)
    assert isinstance(held, Stand) and "no task id yet" in held.note


def test_a_released_claim_is_taken(tmp_path: Path) -> None:
    a = _claims(tmp_path, "a")
    won = _before(_claimer(a))
    assert isinstance(won, Go)
    asyncio.run(_claimer(a).no_task(won.claim, "429"))
    again = _before(_claimer(_claims(tmp_path, "b")))
    assert isinstance(again, Go) and again.claim is not None
    assert again.claim.generation == 2


def test_an_unknown_claim_stops_others_unless_told_to_resubmit(tmp_path: Path) -> None:
    a = _claims(tmp_path, "a")
    won = _before(_claimer(a))
    assert isinstance(won, Go)
    asyncio.run(_claimer(a).ambiguous(won.claim, "timed out"))
    stood = _before(_claimer(_claims(tmp_path, "b")))
    assert isinstance(stood, Stand) and "could not confirm" in stood.note
    assert "host-a" in stood.note
    told = _before(_claimer(_claims(tmp_path, "b"), resubmit_unknown=True))
    assert isinstance(told, Go) and told.claim is not None and told.claim.generation == 2


def test_a_claim_of_this_checkout_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    assert isinstance(_before(_claimer(_claims(tmp_path, "a"))), Go)  # then killed
    rerun = _before(_claimer(_claims(tmp_path, "a")))
    assert isinstance(rerun, Go) and rerun.claim is not None
    assert rerun.claim.generation == 2


def test_an_expired_claim_is_taken_over(tmp_path: Path) -> None:
    clock = [datetime.now(UTC)]
    assert isinstance(_before(_claimer(_claims(tmp_path, "a", clock))), Go)
    clock[0] += timedelta(seconds=61)
    late = _before(_claimer(_claims(tmp_path, "b", clock)))
    assert isinstance(late, Go) and late.claim is not None and late.claim.holder == "b"


def test_a_remote_that_fails_is_one_warning_and_no_claims(tmp_path: Path) -> None:
    blocker = tmp_path / "remote"
    blocker.write_text("a file where the remote's folder should be")
    events: list[Event] = []
    claimer = _claimer(_claims(blocker, "a"), events)
    assert _before(claimer) == Go(None)
    assert _before(claimer) == Go(None)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert len(notes) == 1 and notes[0].startswith("warning: the remote")
    assert "submitting without claims" in notes[0]


def _entry(key: str, status: str, task_id: str | None) -> LockEntry:
    return LockEntry(key=key, key_scheme=1, endpoint="kling-v3.0-pro-t2v", request={},
                     status=status, task_id=task_id)  # type: ignore[arg-type]


def test_reconcile_puts_a_killed_runs_claims_right_from_its_lock(tmp_path: Path) -> None:
    a = _claims(tmp_path, "a")
    for key in (KEY, OTHER):
        assert isinstance(_before_key(a, key), Go)
    lock = LockFile(storyboard="demo", shots={"x": _entry(KEY, "queued", "task-9"),
                                        "y": _entry(OTHER, "unknown", None)})
    session = RemoteSession(a.remote.spec, [].append)
    assert reconcile(a, session, lock) == 2
    x, y = a.current(KEY), a.current(OTHER)
    assert x is not None and x.state == "submitted" and x.task_id == "task-9"
    assert y is not None and y.state == "unknown"
    assert reconcile(a, session, lock) == 0  # put right once
    # another checkout's claims are not this lock's to change
    assert reconcile(_claims(tmp_path, "b"), session, lock) == 0


def _before_key(claims: Claims, key: str) -> Go | Follow | Stand:
    return asyncio.run(_claimer(claims).before_post(key, _never_stops, time.monotonic() + 5))


def test_reconcile_asks_nothing_when_nothing_is_in_flight(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-remote"
    a = _claims(missing, "a")
    lock = LockFile(storyboard="demo", shots={"x": _entry(KEY, "done", "task-1")})
    assert reconcile(a, RemoteSession(a.remote.spec, [].append), lock) == 0
    assert not missing.exists()


def test_the_holder_is_the_same_across_runs_and_differs_per_lock(tmp_path: Path) -> None:
    store = tmp_path / ".kling-cache"
    first = holder_id(store, tmp_path / "a.lock.json")
    assert holder_id(store, tmp_path / "a.lock.json") == first
    assert holder_id(store, tmp_path / "b.lock.json") != first
    assert holder_id(tmp_path / "other-cache", tmp_path / "a.lock.json") != first


def test_the_expiry_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLING_PIPELINE_CLAIM_EXPIRY", raising=False)
    assert claim_expiry() == 600.0
    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "2.5")
    assert claim_expiry() == 2.5
    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "soon")
    with pytest.raises(Exception, match="must be a number of seconds above 0"):
        claim_expiry()


def test_a_key_rendered_again_on_purpose_supersedes_the_earlier_render(tmp_path: Path) -> None:
    """--force and --retry-failed pay for a key whose claim holds the very task this lock
    has (the render being replaced): that claim is superseded, not followed. A claim holding
    any other task is another machine's new render of it: followed, never paid twice."""
    clock = [datetime.now(UTC) - timedelta(hours=1)]
    a = _claims(tmp_path, "a", clock)
    won = _before(_claimer(a))
    assert isinstance(won, Go) and won.claim is not None
    asyncio.run(_claimer(a).submitted(won.claim, "old-task"))
    clock[0] = datetime.now(UTC)
    b = _claims(tmp_path, "b", clock)
    followed = _before(_claimer(b))
    assert isinstance(followed, Follow) and not followed.fresh  # an hour old: not fresh
    again = _before(Claimer(b, RemoteSession(b.remote.spec, [].append),
                            renew={KEY: "old-task"}, poll=0.01))
    assert isinstance(again, Go) and again.claim is not None
    assert again.claim.generation == 2
    asyncio.run(_claimer(b).submitted(again.claim, "new-task"))
    late = Claimer(a, RemoteSession(a.remote.spec, [].append), renew={KEY: "old-task"},
                   poll=0.01)
    got = asyncio.run(late.before_post(KEY, _never_stops, time.monotonic() + 5))
    assert isinstance(got, Follow) and got.task_id == "new-task" and got.fresh


def test_a_remote_whose_creates_are_not_exclusive_gets_no_claims(s3: S3Server) -> None:
    """On a server that ignores If-None-Match, a claim would overwrite another machine's
    (its task id with it): the run asks once, makes no claim, says so once, and goes on."""
    spec = RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint)

    def claims(holder: str) -> Claims:
        return Claims(RemoteStore(spec), holder, f"host-{holder}")

    a = claims("a")
    first = _before(_claimer(a))
    assert isinstance(first, Go) and first.claim is not None
    asyncio.run(_claimer(a).submitted(first.claim, "task-1"))
    s3.ignores_conditions = True
    try:
        events: list[Event] = []
        claimer = _claimer(claims("b"), events)
        start = s3.count()

        async def two_shots() -> list[Go | Follow | Stand]:
            return [await claimer.before_post(key, _never_stops, time.monotonic() + 5)
                    for key in (KEY, OTHER)]

        assert asyncio.run(two_shots()) == [Go(None), Go(None)]
        assert len(s3.since(start)) == 3  # the probe: two PUTs and a DELETE, once
    finally:
        s3.ignores_conditions = False
    notes = [event.text for event in events if isinstance(event, Note)]
    assert len(notes) == 1 and "ignores conditional writes (If-None-Match)" in notes[0]
    current = claims("c").current(KEY)
    assert current is not None and current.task_id == "task-1"  # a's claim is as it was


def _host_claims(remote: Path, holder: str, host: str, clock: list[datetime] | None = None,
                 ) -> Claims:
    """One machine's claims, over its own open of the remote."""
    if clock is None:
        return Claims(RemoteStore(RemoteSpec(str(remote))), holder, host)
    return Claims(RemoteStore(RemoteSpec(str(remote))), holder, host, clock=lambda: clock[0])


def _before_briefly(claimer: Claimer, deadline: float = 0.3) -> object:
    return asyncio.run(claimer.before_post(KEY, _never_stops, time.monotonic() + deadline))


def test_two_runners_restoring_one_cached_store_do_not_both_submit(tmp_path: Path) -> None:
    lock_path = tmp_path / "checkout" / "board.lock.json"  # the same path on every runner
    first_store = tmp_path / "runner-1" / ".kling-cache"
    holder_id(first_store, lock_path)  # an earlier CI job made it; the CI cache saved it
    second_store = tmp_path / "runner-2" / ".kling-cache"
    shutil.copytree(first_store, second_store)  # the next two jobs restore that cache
    remote = tmp_path / "remote"
    one = _host_claims(remote, holder_id(first_store, lock_path), "runner-1")
    two = _host_claims(remote, holder_id(second_store, lock_path), "runner-2")

    first = _before_briefly(_claimer(one))
    assert isinstance(first, Go) and first.claim is not None  # runner 1 is about to POST
    # Runner 2, a second later, wants the same request: runner 1's claim is live (no task id
    # yet); runner 2 waits for it (and follows its task), and does not POST too.
    second = _before_briefly(_claimer(two))
    assert not isinstance(second, Go), second
    # (both runners have the holder id the cache restored: the host tells their claims apart)


def test_a_task_claimed_after_a_forced_run_began_is_followed_even_in_the_same_second(
        tmp_path: Path) -> None:
    """--force replaces the renders whose claims were there when its run began (by their
    generation, no clock): a claim made after that, even within the same second, is another
    machine's new render, followed."""
    remote = tmp_path / "remote"
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    here = [second + timedelta(microseconds=200_000)]
    there = [second + timedelta(microseconds=700_000)]
    # The run (--force) began at .2 s, when the key had no claim (generation 0)
    forced = _claimer(_host_claims(remote, "a", "host-a", here), forced={KEY: 0})
    # at .7 s of the same second, another machine claims the request and records its task
    other = _host_claims(remote, "b", "host-b", there)
    won = other.claim(KEY)
    assert isinstance(won, Won)
    other.record_task(won.claim, "task-b")
    here[0] = second + timedelta(microseconds=900_000)
    got = _before_briefly(forced)
    assert isinstance(got, Follow) and got.task_id == "task-b", got


def test_a_forced_run_replaces_the_render_claimed_before_it_began(tmp_path: Path) -> None:
    """The claim was there at the run's start (generation 1, with its task): --force pays
    for a new render, as a new generation; a render claimed after that is followed."""
    remote = tmp_path / "remote"
    other = _host_claims(remote, "b", "host-b")
    won = other.claim(KEY)
    assert isinstance(won, Won)
    other.record_task(won.claim, "task-old")
    forced = _claimer(_host_claims(remote, "a", "host-a"), forced={KEY: 1})
    got = _before_briefly(forced)
    assert isinstance(got, Go) and got.claim is not None and got.claim.generation == 2
    asyncio.run(forced.submitted(got.claim, "task-new"))
    again = _claimer(_host_claims(remote, "c", "host-c"), forced={KEY: 1})
    followed = _before_briefly(again)  # generation 2 came after this run began
    assert isinstance(followed, Follow) and followed.task_id == "task-new", followed


def _nested(depth: int = 100_000) -> bytes:
    return b"[" * depth


def test_a_deeply_nested_claim_file_is_junk_not_a_crash(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    path = remote / "claims" / KEY / "00000001.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(_nested())
    got = _before_briefly(_claimer(_host_claims(remote, "a", "host-a")))
    assert not isinstance(got, Go)  # junk is a claim of holder "" until it expires
