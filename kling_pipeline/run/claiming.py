"""Claims around a POST: what the executor asks the remote before it pays, and tells it after.

The local protocol (DESIGN.md) keeps one machine from paying twice; a claim in the remote
(remote/claims.py) keeps two machines from paying once each. Around every POST:

1. **Claim** the request key, after the pacing wait and just before the intent is written.
   Won: submit. Held by a claim that knows its task id: do not submit; follow that task (a
   read, free) and record it in this machine's lock. Held by a live claim without a task id
   yet: wait for it (polling the claim), until it has one, is released, expires, or the shot's
   `--max-wait` ends (then it is left for the next run, unpaid). Held by a claim whose POST
   was ambiguous (`unknown`): the request may have been billed on that machine; it is not
   submitted here either, unless `--resubmit-unknown` says to.
2. After the POST: the task id goes into the claim as soon as it is in the lock file; an
   ambiguous POST marks the claim `unknown`; a POST that provably made no task releases it.

And before a run: a claim this checkout made in a run that was killed is put right from the
lock (`reconcile`): the task id the lock holds goes into it, and a shot the lock says is
`unknown` marks it `unknown`, so another machine waiting on it does not wait out the expiry.
An update the remote could not hear when it was due (out of reach then, or at that rerun) is
kept in the store (owed.py) and made by the next run that reaches the remote.

A remote that cannot be reached is a warning (RemoteSession); the run goes on without
claims, as it would without a remote.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.errors import RemoteError, UsageError
from kling_pipeline.events import Note
from kling_pipeline.remote.claims import DEFAULT_EXPIRY, Claim, Claims, Held, Won
from kling_pipeline.run.owed import Owed, OwedClaims
from kling_pipeline.state.lockfile import AMBIGUOUS, IN_FLIGHT, LockEntry, LockFile

if TYPE_CHECKING:
    from kling_pipeline.remote.session import RemoteSession

CLAIM_POLL = 1.0  # seconds between two looks at another machine's claim
FRESH_TASK = 120.0  # seconds after its claim got it that a task may not be listed yet
EXPIRY_ENV = "KLING_PIPELINE_CLAIM_EXPIRY"


@dataclass(frozen=True)
class Go:
    """Submit; `claim` is this run's (None: the run goes without claims)."""

    claim: Claim | None


@dataclass(frozen=True)
class Follow:
    """Do not submit: another machine's POST made `task_id`; follow it. `fresh`: the claim
    got its task id moments ago (the provider may not list the task yet)."""

    task_id: str
    host: str
    fresh: bool = True


@dataclass(frozen=True)
class Stand:
    """Do not submit, and say why (the shot is left for a later run, unpaid)."""

    note: str


Decision = Go | Follow | Stand


def _who(claim: Claim) -> str:
    return f"another machine ({claim.host})" if claim.host else "another machine"


class Claimer:
    """The claims of one run, made in threads (a claim is a blocking request or two)."""

    def __init__(self, claims: Claims, session: RemoteSession, *,
                 resubmit_unknown: bool = False, renew: Mapping[str, str] | None = None,
                 forced: Mapping[str, int] | None = None, poll: float = CLAIM_POLL,
                 owed: OwedClaims | None = None) -> None:
        self.claims = claims
        self.session = session
        self.owed = owed  # where an update the remote could not hear is kept for later
        self.resubmit_unknown = resubmit_unknown
        # Keys --retry-failed pays for again, with the failed task id this lock has: a claim
        # holding that very task is the render being replaced; one holding any other task is
        # a new render (a teammate's retry), to follow.
        self.renew = dict(renew or {})
        # Keys of shots named by --force, each with the latest generation of its claim when
        # the run began (0: none): every render made before the run is replaced; a claim of a
        # later generation is another machine's new render, followed (no clock involved).
        self.forced = dict(forced or {})
        self.poll = poll
        self._made: set[str] = set()  # nonces of the claims this run won: never superseded
        self._probe = threading.Lock()
        self._holds: bool | None = None  # the remote's exclusive creates hold (asked once)

    def _off(self, exc: RemoteError) -> Go:
        self.session.give_up(exc, "submitting without claims: another machine applying now "
                                  "could pay for the same requests")
        return Go(None)

    async def before_post(self, key: str, wait: Callable[[float], Awaitable[bool]],
                          deadline: float) -> Decision:
        """May this run POST the request `key`? (`wait(s)` sleeps, True when the run stops.)"""
        if self.session.down:
            return Go(None)
        try:
            if not await self._creates_hold():
                return Go(None)
        except RemoteError as exc:
            return self._off(exc)
        while True:
            try:
                got = await asyncio.to_thread(self.claims.claim, key)
                if isinstance(got, Held) and self._supersedes(got.claim, key):
                    got = await asyncio.to_thread(self.claims.claim, key, supersede=got.claim)
            except RemoteError as exc:
                return self._off(exc)
            if isinstance(got, Won):
                self._made.add(got.claim.nonce)
                return Go(got.claim)
            held = got.claim
            if held.task_id:
                age = (self.claims.clock() - held.updated_at).total_seconds()
                return Follow(held.task_id, held.host, fresh=age < FRESH_TASK)
            if held.state == "unknown":
                return Stand(f"{_who(held)} claimed this request at {held.claimed_at:%H:%M:%S} "
                             "UTC and could not confirm its submission: it may have been "
                             "billed there (--resubmit-unknown submits it here)")
            if time.monotonic() + self.poll > deadline:
                return Stand(f"{_who(held)} has claimed this request since "
                             f"{held.claimed_at:%H:%M:%S} UTC and has no task id yet; the next "
                             "run looks again")
            if await wait(self.poll):
                return Stand("the run stopped while another machine held this request's "
                             "claim")

    async def _creates_hold(self) -> bool:
        """Once per run, before its first claim: whether the remote's exclusive creates hold.
        Where they do not, a claim would overwrite another machine's (its task id with it):
        the run makes none, and says so once."""
        if self._holds is None:
            await asyncio.to_thread(self._ask_once)
        if not self._holds:
            self.session.note(Note(  # said once: the session keeps what it said
                f"warning: the remote {self.session.shown} ignores conditional writes "
                "(If-None-Match): its claims cannot keep two machines from paying for one "
                "request, so this run submits without them (docs/remote.md)"))
        return bool(self._holds)

    def _ask_once(self) -> None:
        with self._probe:  # the first job asks; the others wait for its answer
            if self._holds is None:
                self._holds = self.claims.exclusive_creates_hold()

    def _supersedes(self, held: Claim, key: str) -> bool:
        """Replace a claim this run may take: one holding the very task this run renders
        again on purpose, or for a forced shot any render made before the run; this
        checkout's own `claimed` one from an earlier run that never
        POSTed (the plan submits only where the lock says so), never one this run made (two
        shots whose requests became one while it ran), nor another machine's that restored
        this checkout's store (the host must match too); an `unknown` one when told to
        resubmit."""
        replaced = self.renew.get(key)
        if replaced is not None and held.task_id == replaced:
            return True
        if (held.state in ("submitted", "unknown")
                and held.generation <= self.forced.get(key, 0)):
            return True
        if held.task_id:
            return False
        if (held.state == "claimed" and own(self.claims, held)
                and held.nonce not in self._made):
            return True
        return held.state == "unknown" and self.resubmit_unknown

    async def submitted(self, claim: Claim | None, task_id: str) -> None:
        """The POST made `task_id` (already in the lock): into the claim, for the others."""
        await self._update(claim, Owed("submitted", task_id))

    async def ambiguous(self, claim: Claim | None, note: str) -> None:
        await self._update(claim, Owed("unknown", None, note))

    async def no_task(self, claim: Claim | None, note: str = "") -> None:
        """The POST provably made no task: anyone may claim the key again."""
        await self._update(claim, Owed("released", None, note))

    async def _update(self, claim: Claim | None, update: Owed) -> None:
        """Tell the claim how its POST ended; kept for a later run if the remote is out of
        reach (or was given up on) now."""
        if claim is None:
            return
        if not self.session.down:
            try:
                await asyncio.to_thread(settle_claim, self.claims, claim, update)
                return
            except RemoteError as exc:
                self._off(exc)
        if self.owed is not None:
            self.owed.add({claim.key: update})


def own(claims: Claims, claim: Claim) -> bool:
    """This checkout's claim on this machine: the same holder id and the same host (two CI
    runners that restore one cached store share the holder id, never the host)."""
    return claim.holder == claims.holder and claim.host == claims.host


def settle_claim(claims: Claims, claim: Claim, update: Owed) -> None:
    """Write `update` into this holder's `claim`."""
    if update.state == "submitted" and update.task_id:
        claims.record_task(claim, update.task_id)
    elif update.state == "unknown":
        claims.mark_unknown(claim, update.note)
    else:
        claims.release(claim, update.note)


def unsettled(lock: LockFile) -> dict[str, LockEntry]:
    """The lock's entries a claim of this checkout may not know the end of (by key): in
    flight with a task id, or unknown."""
    return {entry.key: entry for entry in lock.shots.values()
            if entry.status in AMBIGUOUS or (entry.status in IN_FLIGHT and entry.task_id)}


def generations_now(claims: Claims, keys: Iterable[str]) -> dict[str, int]:
    """The latest generation of each key's claim (0: none), as --force finds them when its
    run begins: one listing, and one look per key that has a claim."""
    claimed = claims.claimed_keys()
    found: dict[str, int] = {}
    for key in keys:
        claim = claims.current(key) if key in claimed else None
        found[key] = claim.generation if claim is not None else 0
    return found


_STOPPED = "the run that claimed it was stopped before it knew whether its submission was accepted"


def owed_by(lock: LockFile) -> dict[str, Owed]:
    """What this checkout's claims should say, as far as its lock knows: the task id of each
    shot in flight, `unknown` for each unknown one."""
    return {key: Owed("submitted", entry.task_id) if entry.task_id else
            Owed("unknown", None, _STOPPED) for key, entry in unsettled(lock).items()}


def reconcile(claims: Claims, session: RemoteSession, lock: LockFile,
              owed: OwedClaims | None = None) -> int:
    """Put this checkout's claims right: those a killed run left `claimed`, from the lock
    (the task id it holds, or `unknown`), and the updates owed from runs that could not reach
    the remote. Asks the remote nothing when there is nothing to put right; else one listing,
    and one look per such key that has a claim. Returns the claims changed; what cannot be
    said now (the remote out of reach) stays owed."""
    todo = {**(owed.load() if owed is not None else {}), **owed_by(lock)}
    if not todo or not claims.supported:
        return 0
    done: set[str] = set()  # put right, or not this checkout's to put right (any more)
    changed = 0
    if not session.down:
        try:
            claimed = claims.claimed_keys()
            for key in sorted(todo):
                claim = claims.current(key) if key in claimed else None
                if claim is not None and own(claims, claim) and claim.state == "claimed":
                    settle_claim(claims, claim, todo[key])
                    changed += 1
                done.add(key)
        except RemoteError as exc:
            session.give_up(exc, "going on without the remote")
    if owed is not None:  # what could not be said now waits for a run that can
        owed.keep({key: update for key, update in todo.items() if key not in done})
    return changed


def holder_id(store_root: Path, lock_path: Path) -> str:
    """This checkout's name in the claims it makes: a random id kept in its store, and the
    lock file it writes (two checkouts sharing one store are two holders). The same across
    runs, so a run recognises the claims of one that was killed."""
    path = store_root / "claims-holder"
    try:
        made = uuid.uuid4().hex
        store_root.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="ascii") as handle:
            handle.write(made + "\n")
        own = made
    except FileExistsError:
        own = path.read_text(encoding="ascii").strip()
    where = hashlib.sha256(str(lock_path.resolve()).encode()).hexdigest()[:12]
    return f"{own}:{where}"


def claim_expiry() -> float:
    """Seconds after which a claim without a task id may be taken over (EXPIRY_ENV, else
    the default of remote/claims.py)."""
    text = os.environ.get(EXPIRY_ENV, "").strip()
    if not text:
        return DEFAULT_EXPIRY
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(f"{EXPIRY_ENV}={text!r}: must be a number of seconds above 0")
    return value
