"""Claims in the remote (kling_pipeline.remote.claims), on a folder and on a real S3 protocol
server (moto on loopback, its conditional writes made atomic as S3's are).

Every case runs on both backends; time moves through the `clock` parameter, never by sleeping.
Holders are separate `Claims` over separate opens of the remote, as separate machines are.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.s3_server import BUCKET, FAKE_ENV, S3Server

from kling_pipeline.errors import RemoteError
from kling_pipeline.remote.claims import DEFAULT_EXPIRY, Claim, Claims, Held, Won
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.url import RemoteSpec

KEY = hashlib.sha256(b"one request").hexdigest()
OTHER = hashlib.sha256(b"another request").hexdigest()


class Clock:
    """A clock the test moves (it starts at the real time: files' mtimes are real)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Backend:
    kind: str
    spec: RemoteSpec
    server: S3Server | None

    def claims(self, holder: str, clock: Clock | None = None) -> Claims:
        """One holder over its own open of the remote (as another machine would be)."""
        return Claims(RemoteStore(self.spec), holder, f"{holder}.example", clock=clock or Clock())

    def write(self, key: str, generation: int, data: bytes) -> None:
        """Put a file where a claim goes, bypassing Claims (junk, a partial write)."""
        store = RemoteStore(self.spec)
        path = f"{store.root}/claims/{key}/{generation:08d}.json"
        if self.kind == "folder":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        else:
            store.fs.pipe_file(path, data)


@pytest.fixture(params=["folder", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "folder":
        return Backend("folder", RemoteSpec(str(tmp_path / "remote")), None)
    server: S3Server = request.getfixturevalue("s3")
    spec = RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=server.endpoint)
    return Backend("s3", spec, server)


def won(outcome: Won | Held) -> Claim:
    assert isinstance(outcome, Won), outcome
    return outcome.claim


def held(outcome: Won | Held) -> Claim:
    assert isinstance(outcome, Held), outcome
    return outcome.claim


def test_the_first_claim_wins_generation_1_in_one_request(backend: Backend) -> None:
    a = backend.claims("ana")
    assert a.supported
    assert a.current(KEY) is None
    start = backend.server.count() if backend.server else 0
    claim = won(a.claim(KEY))
    if backend.server:
        assert backend.server.since(start) == [
            f"PUT /{BUCKET}/{backend.spec.url.rsplit('/', 1)[1]}/claims/{KEY}/00000001.json"]
    assert (claim.key, claim.generation, claim.holder, claim.host) == (KEY, 1, "ana",
                                                                      "ana.example")
    assert (claim.state, claim.task_id, claim.note) == ("claimed", None, "")
    assert backend.claims("bob").current(KEY) == claim


def test_the_claim_file_is_sorted_json_with_utc_times(backend: Backend) -> None:
    a = backend.claims("ana")
    won(a.claim(KEY))
    store = RemoteStore(backend.spec)
    text = store.fs.cat_file(f"{store.root}/claims/{KEY}/00000001.json").decode()
    found = json.loads(text)
    assert text == json.dumps(found, sort_keys=True, indent=1) + "\n"
    assert set(found) == {"format", "key", "generation", "holder", "host", "claimed_at",
                          "updated_at", "state", "task_id", "note", "nonce"}
    assert found["format"] == 1 and found["claimed_at"].endswith("Z")
    datetime.strptime(found["claimed_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_a_second_holder_is_held_by_the_first(backend: Backend) -> None:
    first = won(backend.claims("ana").claim(KEY))
    assert held(backend.claims("bob").claim(KEY)) == first


def test_eight_racing_holders_one_wins(backend: Backend) -> None:
    outcomes = race(backend, KEY, [backend.claims(f"h{n}") for n in range(8)])
    winners = [o.claim for o in outcomes if isinstance(o, Won)]
    assert len(winners) == 1
    assert all(o.claim.generation == 1 for o in outcomes)
    assert backend.claims("reader").current(KEY) == winners[0]


def test_eight_racing_holders_take_over_an_expired_claim_once(backend: Backend) -> None:
    won(backend.claims("ana").claim(KEY))
    clock = Clock()
    clock.advance(DEFAULT_EXPIRY + 1)
    outcomes = race(backend, KEY, [backend.claims(f"h{n}", clock) for n in range(8)])
    winners = [o.claim for o in outcomes if isinstance(o, Won)]
    assert len(winners) == 1 and winners[0].generation == 2
    assert backend.claims("reader", clock).current(KEY) == winners[0]


def race(backend: Backend, key: str, holders: list[Claims]) -> list[Won | Held]:
    for holder in holders:
        holder.current(OTHER)  # each holder's connection is open before the start
    start = threading.Barrier(len(holders))
    outcomes: list[Won | Held] = []
    errors: list[BaseException] = []

    def run(holder: Claims) -> None:
        start.wait()
        try:
            outcomes.append(holder.claim(key))
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(outcomes) == len(holders)
    return outcomes


def test_a_recorded_task_id_is_seen_by_another_holder(backend: Backend) -> None:
    a = backend.claims("ana")
    claim = a.record_task(won(a.claim(KEY)), "task-1")
    assert (claim.state, claim.task_id) == ("submitted", "task-1")
    b = backend.claims("bob")
    assert b.current(KEY) == claim
    assert held(b.claim(KEY)) == claim


def test_an_expired_claim_without_task_id_is_taken_over(backend: Backend) -> None:
    won(backend.claims("ana").claim(KEY))
    clock = Clock()
    b = backend.claims("bob", clock)
    clock.advance(DEFAULT_EXPIRY - 5)
    assert held(b.claim(KEY)).holder == "ana"
    clock.advance(10)
    taken = won(b.claim(KEY))
    assert (taken.generation, taken.holder, taken.state) == (2, "bob", "claimed")
    assert backend.claims("cy", clock).current(KEY) == taken


def test_an_expired_claim_holding_a_task_id_is_held(backend: Backend) -> None:
    a = backend.claims("ana")
    submitted = a.record_task(won(a.claim(KEY)), "task-1")
    clock = Clock()
    clock.advance(DEFAULT_EXPIRY * 100)
    assert held(backend.claims("bob", clock).claim(KEY)) == submitted


def test_an_unknown_claim_is_held_and_never_expires(backend: Backend) -> None:
    a = backend.claims("ana")
    unknown = a.mark_unknown(won(a.claim(KEY)), "read timeout after the body was sent")
    assert (unknown.state, unknown.note) == ("unknown", "read timeout after the body was sent")
    clock = Clock()
    clock.advance(DEFAULT_EXPIRY * 100)
    assert held(backend.claims("bob", clock).claim(KEY)) == unknown


def test_a_released_claim_is_claimed_again_at_the_next_generation(backend: Backend) -> None:
    a, b = backend.claims("ana"), backend.claims("bob")
    a.release(won(a.claim(KEY)), "400: no task was made")
    released = b.current(KEY)
    assert released is not None and (released.state, released.note) == ("released",
                                                                         "400: no task was made")
    second = won(b.claim(KEY))
    assert (second.generation, second.holder) == (2, "bob")
    b.release(second)
    assert won(a.claim(KEY)).generation == 3


def test_our_own_earlier_claim_is_held_and_can_be_superseded(backend: Backend) -> None:
    earlier = won(backend.claims("ana").claim(KEY))
    again = backend.claims("ana")  # the next run of the same holder
    mine = held(again.claim(KEY))
    assert mine == earlier and mine.holder == "ana"
    fresh = won(again.claim(KEY, supersede=mine))
    assert (fresh.generation, fresh.holder, fresh.state) == (2, "ana", "claimed")
    assert fresh.nonce != earlier.nonce
    assert backend.claims("bob").current(KEY) == fresh


def test_superseding_loses_to_whoever_superseded_first(backend: Backend) -> None:
    earlier = won(backend.claims("ana").claim(KEY))
    run_1, run_2 = backend.claims("ana"), backend.claims("ana")
    first = won(run_1.claim(KEY, supersede=earlier))
    assert held(run_2.claim(KEY, supersede=earlier)) == first


def test_superseding_a_claim_that_changed_since_it_was_read_is_held(backend: Backend) -> None:
    a = backend.claims("ana")
    read = won(a.claim(KEY))
    submitted = a.record_task(read, "task-1")  # the same generation, now with a task id
    assert held(backend.claims("ana").claim(KEY, supersede=read)) == submitted


def test_a_junk_latest_file_counts_as_a_claim_from_its_mtime(backend: Backend) -> None:
    won(backend.claims("ana").claim(KEY))
    backend.write(KEY, 2, b'{"format": 1, "key": "')  # a partial write of generation 2
    clock = Clock()
    junk = held(backend.claims("bob", clock).claim(KEY))
    assert (junk.generation, junk.holder, junk.state, junk.task_id) == (2, "", "claimed", None)
    assert abs(junk.age(clock())) < 120  # its mtime, on this machine's or the server's clock
    clock.advance(DEFAULT_EXPIRY + 120)
    assert won(backend.claims("bob", clock).claim(KEY)).generation == 3


@pytest.mark.parametrize("data", [b"", b"[1, 2]", b"\xff\xfe", b'{"format": 1}'])
def test_any_junk_is_read_as_a_claim(backend: Backend, data: bytes) -> None:
    backend.write(KEY, 1, data)
    found = backend.claims("bob").current(KEY)
    assert found is not None and (found.holder, found.state, found.nonce) == ("", "claimed", "")


def test_a_claim_file_of_another_key_or_generation_is_junk(backend: Backend) -> None:
    a = backend.claims("ana")
    claim = won(a.claim(OTHER))
    backend.write(KEY, 1, claim.to_bytes())
    found = backend.claims("bob").current(KEY)
    assert found is not None and found.holder == "" and found.note == "not a valid claim file"


def test_claimed_keys_lists_every_claimed_key(backend: Backend) -> None:
    a = backend.claims("ana")
    assert a.claimed_keys() == set()
    a.release(won(a.claim(KEY)))
    won(a.claim(KEY))
    won(a.claim(OTHER))
    assert backend.claims("bob").claimed_keys() == {KEY, OTHER}


def test_only_the_holder_updates_its_claim(backend: Backend) -> None:
    claim = won(backend.claims("ana").claim(KEY))
    with pytest.raises(ValueError, match="not held by 'bob'"):
        backend.claims("bob").record_task(claim, "task-1")


def test_a_key_that_is_not_a_request_key_is_refused(backend: Backend) -> None:
    with pytest.raises(ValueError, match="not a request key"):
        backend.claims("ana").claim("../../objects")


def test_a_conditional_put_conflict_is_asked_again(s3: S3Server) -> None:
    backend = Backend("s3", RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.endpoint), s3)
    a = backend.claims("ana")
    s3.conflicts = 2
    start = s3.count()
    assert won(a.claim(KEY)).generation == 1
    assert [r.split()[0] for r in s3.since(start)] == ["PUT", "PUT", "PUT"]


def test_a_conditional_put_whose_answer_was_lost_still_wins(s3: S3Server) -> None:
    """The PUT is applied and answered 500; the client sends it again and gets a 412 for its
    own file: the nonce read back says the claim is ours."""
    backend = Backend("s3", RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.endpoint), s3)
    s3.lost_answers = 1
    start = s3.count()
    claim = won(backend.claims("ana").claim(KEY))
    assert [r.split()[0] for r in s3.since(start)][:2] == ["PUT", "PUT"]  # it was sent again
    assert claim.generation == 1 and backend.claims("bob").current(KEY) == claim


def test_claims_are_not_supported_on_other_backends() -> None:
    claims = Claims(RemoteStore(RemoteSpec(f"memory://team/{uuid.uuid4().hex}")), "ana", "h")
    assert claims.supported is False
    with pytest.raises(RemoteError, match="cannot make an atomic claim"):
        claims.claim(KEY)


def test_an_unreachable_s3_endpoint_is_a_remote_error_without_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    spec = RemoteSpec(f"s3://{BUCKET}/x", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(RemoteError) as caught:
        Claims(RemoteStore(spec), "ana", "h").claim(KEY)
    text = f"{caught.value} {caught.value.detail}"
    assert "127.0.0.1:1" in text and "claiming" in text
    assert FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in text


def test_a_folder_claim_is_not_writable_over(tmp_path: Path) -> None:
    """The folder's create is O_EXCL: an existing name, even empty, is never written over."""
    backend = Backend("folder", RemoteSpec(str(tmp_path / "remote")), None)
    backend.write(KEY, 1, b"")
    assert held(backend.claims("ana").claim(KEY)).holder == ""
    assert os.path.getsize(tmp_path / "remote" / "claims" / KEY / "00000001.json") == 0


def test_exclusive_creates_hold_on_s3_and_in_a_folder(backend: Backend) -> None:
    """The probe a run makes before its first claim passes on both backends, and leaves no
    file in the remote (a folder needs no probe: `link` is exclusive by nature)."""
    a = backend.claims("ana")
    start = backend.server.count() if backend.server else 0
    assert a.exclusive_creates_hold()
    store = RemoteStore(backend.spec)
    if backend.server:
        sent = [request.split(" ")[0] for request in backend.server.since(start)]
        assert sent == ["PUT", "PUT", "DELETE"], backend.server.since(start)
    assert not store.fs.exists(f"{store.root}/claims/probe") or not store.fs.find(
        f"{store.root}/claims/probe")
    assert a.claimed_keys() == set()


def test_a_server_that_ignores_if_none_match_is_found_out(s3: S3Server) -> None:
    """An S3-compatible server that drops If-None-Match lets a second "create" overwrite:
    the probe says so, where a claim would have overwritten another machine's claim."""
    spec = RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint)
    first = Claims(RemoteStore(spec), "ana", "ana.example")
    won(first.claim(KEY))
    s3.ignores_conditions = True
    try:
        late = Claims(RemoteStore(spec), "bob", "bob.example")
        assert not late.exclusive_creates_hold()
        overwritten = late.claim(KEY)  # what a run would do without asking: it "wins"
        assert isinstance(overwritten, Won) and overwritten.claim.holder == "bob"
    finally:
        s3.ignores_conditions = False
    store = RemoteStore(spec)
    assert not store.fs.find(f"{store.root}/claims/probe")


def test_a_probe_left_by_a_killed_run_is_reused_and_removed(s3: S3Server) -> None:
    """A run killed between the probe's create and its delete leaves the holder's probe
    file: the next probe of that checkout is refused its create (the condition holds), says
    so, and removes the file."""
    spec = RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint)
    store = RemoteStore(spec)
    name = hashlib.sha256(b"ana").hexdigest()[:32]
    store.fs.pipe_file(f"{store.root}/claims/probe/{name}.json", b"{}")
    start = s3.count()
    assert Claims(store, "ana", "ana.example").exclusive_creates_hold()
    assert [request.split(" ")[0] for request in s3.since(start)] == ["PUT", "DELETE"]
    assert not store.fs.find(f"{store.root}/claims")
