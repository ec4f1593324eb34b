"""The claim updates a checkout owes the remote (run/owed.py), and how a later run makes them
(claiming.reconcile, Claimer): a task id the remote could not hear when it was due is never
lost, so another machine never waits out the expiry and pays for a render already made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kling_pipeline.errors import RemoteError
from kling_pipeline.remote.claims import Claims, Won
from kling_pipeline.remote.session import RemoteSession
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.url import RemoteSpec
from kling_pipeline.run.claiming import Claimer, reconcile
from kling_pipeline.run.owed import Owed, OwedClaims
from kling_pipeline.state.lockfile import LockFile

KEY = "ab" * 32
OTHER = "cd" * 32


def _claims(remote: Path, holder: str = "a") -> Claims:
    return Claims(RemoteStore(RemoteSpec(str(remote))), holder, f"host-{holder}")


def _session(claims: Claims) -> RemoteSession:
    return RemoteSession(claims.remote.spec, [].append)


def test_updates_are_kept_merged_and_settled(tmp_path: Path) -> None:
    owed = OwedClaims(tmp_path / "store", "holder-1")
    assert owed.load() == {}
    owed.add({KEY: Owed("submitted", "task-1")})
    owed.add({OTHER: Owed("unknown", None, "stopped")})
    assert OwedClaims(tmp_path / "store", "holder-1").load() == {
        KEY: Owed("submitted", "task-1"), OTHER: Owed("unknown", None, "stopped")}
    assert OwedClaims(tmp_path / "store", "holder-2").load() == {}  # per holder
    owed.settle([KEY])
    assert owed.load() == {OTHER: Owed("unknown", None, "stopped")}
    owed.settle([OTHER])
    assert not owed.path.exists()


def test_settle_takes_any_iterable_of_keys(tmp_path: Path) -> None:
    """A generator of keys settles each of them, not only the first item's (it was turned
    into a set once per owed key, and a generator is empty the second time)."""
    owed = OwedClaims(tmp_path, "h")
    owed.add({KEY: Owed("submitted", "t-1"), OTHER: Owed("released"), "ef" * 32: Owed("released")})
    owed.settle(key for key in (KEY, OTHER))
    assert owed.load() == {"ef" * 32: Owed("released")}


def test_a_damaged_file_counts_as_empty(tmp_path: Path) -> None:
    owed = OwedClaims(tmp_path, "h")
    owed.path.parent.mkdir(parents=True)
    for junk in (b"{", b"[]", b'{"claims": {"k": {"state": "paid"}}}', b"[" * 100_000):
        owed.path.write_bytes(junk)
        assert owed.load() == {}


def test_a_task_id_the_remote_could_not_hear_is_made_by_the_next_run(tmp_path: Path) -> None:
    """A's POST made task-1 while the remote was out of reach: the claim still says
    `claimed`. The update is kept, and the next run that reaches the remote makes it, even
    though the shot is done by then (the lock no longer says anything is in flight)."""
    remote, store = tmp_path / "remote", tmp_path / "store"
    claims = _claims(remote)
    won = claims.claim(KEY)
    assert isinstance(won, Won)
    owed = OwedClaims(store, claims.holder)
    session = _session(claims)
    session.give_up(RemoteError("the remote is out of reach"), "going on without it")
    claimer = Claimer(claims, session, owed=owed)
    asyncio.run(claimer.submitted(won.claim, "task-1"))
    assert owed.load() == {KEY: Owed("submitted", "task-1")}
    current = claims.current(KEY)
    assert current is not None and current.state == "claimed"  # not heard

    later = _claims(remote)
    assert reconcile(later, _session(later), LockFile("demo"), owed) == 1
    current = later.current(KEY)
    assert current is not None and (current.state, current.task_id) == ("submitted", "task-1")
    assert owed.load() == {}


def test_a_rerun_that_cannot_reach_the_remote_keeps_what_it_owes(tmp_path: Path) -> None:
    remote, store = tmp_path / "remote", tmp_path / "store"
    claims = _claims(remote)
    owed = OwedClaims(store, claims.holder)
    owed.add({KEY: Owed("unknown", None, "stopped")})
    session = _session(claims)
    session.give_up(RemoteError("out of reach"), "going on without it")
    assert reconcile(claims, session, LockFile("demo"), owed) == 0
    assert owed.load() == {KEY: Owed("unknown", None, "stopped")}


def test_an_owed_update_of_a_claim_no_longer_ours_is_dropped(tmp_path: Path) -> None:
    """Another machine took the key over (or the claim is settled): nothing to write, and
    nothing owed any more."""
    remote, store = tmp_path / "remote", tmp_path / "store"
    theirs = _claims(remote, "b")
    won = theirs.claim(KEY)
    assert isinstance(won, Won)
    theirs.record_task(won.claim, "task-b")
    ours = _claims(remote, "a")
    owed = OwedClaims(store, ours.holder)
    owed.add({KEY: Owed("submitted", "task-a"), OTHER: Owed("released")})
    assert reconcile(ours, _session(ours), LockFile("demo"), owed) == 0
    current = ours.current(KEY)
    assert current is not None and current.task_id == "task-b"
    assert owed.load() == {}
