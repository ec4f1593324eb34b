"""Two machines applying one storyboard with one remote, and kill -9 around a claim: each
request is paid for once, and no shot is lost (issue 12, item 6).

A "machine" is a project folder: the same storyboard, its own lock file and its own store
(so its own claim holder). Each test runs `python -m kling_pipeline apply --remote ...` as
real child processes, as tests/e2e/test_apply_crash.py does, against one simulator and one
remote: a folder, or moto's S3 server on loopback. What was paid for is read from the
simulator's own count (`submissions`: body hash -> tasks made).

Every moment is chosen, not hoped for:
- the Gate (tests/support/crash_harness.py) holds a POST of the process it watches (A), or
  stops A with SIGSTOP just after a POST's answer went out;
- an S3Hold (tests/support/s3_server.py) holds a request to the S3 server: a claim's
  exclusive create (applied, not yet answered: the claim is in the remote, A does not know
  it won), or a claim's update (not applied: the claim does not know the task id A's lock
  has), so that A can be killed between claim and POST, or between POST and claim update;
- the other process (B) runs unwatched by the gate (its requests go straight through). The
  test knows that B has met a claim once B has read the claim's file: an S3 GET of it that
  moto has answered (an S3Hold that only watches), or an open of it (inotify, on a folder
  remote). B reads a claim only when its own exclusive create lost to it, and decides from
  what it read: from then on it waits on that claim (no task id yet), follows it (a task
  id) or leaves the shot (unknown); it never pays for that key.

Linux only: the harness uses /proc and SIGSTOP, the folder remote's watch inotify.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import struct
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.crash_harness import (
    SLOW,
    Child,
    Gate,
    Hold,
    Project,
    assert_all_rendered,
    assert_every_paid_task_is_in_the_lock,
    process_state,
    wait_for,
)
from support.s3_server import BUCKET, S3Hold, S3Server
from support.simulator_fixtures import SimClient

from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.runner import running_simulator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses /proc process states, SIGSTOP and inotify")

SHOTS = 4
FAST_ENOUGH = SimulatorConfig(time_scale=0.1, queue_delay=0.05)
FOLLOWED = "this run followed its task"


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(gate: Gate) -> Iterator[str]:
    """This module's simulator, behind the gate: a 3 s shot renders in 0.3 s (the moments
    are held, not waited for; a test that wants renders to overlap slows it down)."""
    with running_simulator(FAST_ENOUGH, wrap=gate.wrap) as url:
        yield url


# -- the remote ----------------------------------------------------------------------------


_CLAIM_FILE = re.compile(r"claims/([0-9a-f]{64})/(\d{8})\.json$")


@dataclass(frozen=True)
class Remote:
    url: str
    server: S3Server | None = None  # the S3 server; None: a folder

    def args(self) -> tuple[str, ...]:
        if self.server is None:
            return ("--remote", self.url)
        return ("--remote", self.url, "--remote-endpoint-url", self.server.endpoint)

    @property
    def s3(self) -> S3Server:
        assert self.server is not None, "an S3 remote only"
        return self.server

    def fs(self) -> Any:
        import fsspec

        if self.server is not None:  # a new instance each time: no listing cached
            return fsspec.filesystem("s3", endpoint_url=self.server.endpoint,
                                     skip_instance_cache=True)
        return fsspec.filesystem("file")

    @property
    def root(self) -> str:
        return self.url.removeprefix("s3://")

    def claim_path(self, key: str, generation: int = 1) -> str:
        return f"{self.root}/claims/{key}/{generation:08d}.json"

    def claims(self) -> dict[str, list[dict[str, Any]]]:
        """Every claim file, read as JSON: request key -> its generations, oldest first."""
        fs = self.fs()
        try:
            paths = fs.find(f"{self.root}/claims")
        except FileNotFoundError:
            return {}
        found: defaultdict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for path in paths:
            if match := _CLAIM_FILE.search(str(path)):
                found[match.group(1)].append((int(match.group(2)),
                                              json.loads(fs.cat_file(path))))
        return {key: [claim for _, claim in sorted(gens, key=lambda g: g[0])]
                for key, gens in found.items()}

    def reads(self, keys: Iterable[str]) -> Reads:
        """Watch for reads of the first generation of these keys' claims, from now on."""
        keys = list(keys)
        if self.server is None:
            return _FolderReads({self.claim_path(key): key for key in keys})
        return _S3Reads(self.server, {key: self.server.hold(S3Hold(
            "GET", f"/{self.claim_path(key)}", block=False)) for key in keys})


class Reads:
    """Which of the watched claims someone has read (`seen`), since the watch began."""

    def seen(self) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop watching."""


class _S3Reads(Reads):
    def __init__(self, server: S3Server, watches: dict[str, S3Hold]) -> None:
        self.server, self.watches = server, watches

    def seen(self) -> set[str]:
        return {key for key, watch in self.watches.items() if watch.arrived.is_set()}

    def close(self) -> None:
        self.server.unhold(*self.watches.values())


class _FolderReads(Reads):
    """inotify IN_OPEN on the claim files: the folder remote reads a claim by opening it (a
    lost exclusive create opens nothing: O_EXCL fails)."""

    IN_OPEN = 0x20

    def __init__(self, paths: dict[str, str]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.keys: dict[int, str] = {}
        for path, key in paths.items():
            wd = libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify on {path}")
            self.keys[wd] = key
        self._seen: set[str] = set()

    def seen(self) -> set[str]:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            data = b""
        offset = 0
        while offset < len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, offset)
            offset += 16 + size
            if mask & self.IN_OPEN and wd in self.keys:
                self._seen.add(self.keys[wd])
        return set(self._seen)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def s3_remote(s3: S3Server) -> Iterator[Remote]:
    yield Remote(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3)
    s3.unhold()


@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "folder":
        return Remote(str(tmp_path / "remote"))
    made: Remote = request.getfixturevalue("s3_remote")
    return made


# -- the two machines ------------------------------------------------------------------------


@pytest.fixture
def machines(tmp_path: Path, sim: SimClient, gate: Gate) -> Iterator[tuple[Project, Project]]:
    """Two clones, `a` and `b`: one storyboard text, each its own lock and store."""
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        made.append(Project(tmp_path / name, sim, gate, SHOTS))
    yield made[0], made[1]
    for project in made:  # a failed test leaves no child behind
        for child in project.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


def key(who: str) -> str:
    """An API key for one run: the gate tells runs apart by it, and remembers dead ones."""
    return f"{who}-{uuid.uuid4().hex[:8]}"


def finished(child: Child, code: int = 0) -> str:
    assert child.wait() == code, child.output()
    return child.output()


def holder_of(project: Project) -> str:
    """The first part of the holder name in the claims this checkout makes (its store's id)."""
    found = list(project.root.rglob("claims-holder"))
    assert len(found) == 1, found
    return found[0].read_text().strip()


def task_ids_of(project: Project) -> dict[str, str | None]:
    return {shot_id: entry.task_id for shot_id, entry in project.lock().shots.items()}


def shot_of(project: Project, request_key: str) -> str:
    return next(s for s, e in project.lock().shots.items() if e.key == request_key)


def said(output: str, shot_id: str, outcome: str, note: str) -> bool:
    """The run's summary has this shot's line with this outcome and note."""
    return re.search(rf"^ +{re.escape(shot_id)} +{outcome} .*{re.escape(note)}", output,
                     re.M) is not None


def submitted(output: str) -> int:
    """How many shots the run says it submitted (paid for)."""
    found = re.search(r"^Apply: .*\((\d+) submitted in this run\)", output, re.M)
    assert found, output
    return int(found.group(1))


def assert_both_rendered_paying_once(a: Project, b: Project) -> None:
    """Every shot done on both machines, every body paid for once (the simulator's count),
    the follower's lock holding the payer's task ids."""
    for project in (a, b):
        assert_all_rendered(project)  # every video decoded, 3 s; submissions == [1] * SHOTS
        assert_every_paid_task_is_in_the_lock(project)
    assert task_ids_of(a) == task_ids_of(b)


def assert_claims_know(remote: Remote, project: Project) -> None:
    """The claim in force of every request key says `submitted`, with the lock's task id."""
    claims = remote.claims()
    lock = project.lock()
    assert set(claims) == {entry.key for entry in lock.shots.values()}
    for entry in lock.shots.values():
        latest = claims[entry.key][-1]
        assert (latest["state"], latest["task_id"]) == ("submitted", entry.task_id), latest


# -- 1. two machines at once -------------------------------------------------------------------


def test_two_machines_applying_at_once_pay_for_each_request_once(
        remote: Remote, machines: tuple[Project, Project], sim: SimClient) -> None:
    """A's first POST is held at the simulator (its claim made, its intent on disk, no task
    yet) until B has read one of A's claims: so B certainly meets a live claim without a
    task id, which it may neither pay for nor take. Then both run to the end, concurrently
    (the simulator slowed down so that renders overlap and later claims race too)."""
    a, b = machines
    sim.configure(**{name: getattr(SLOW, name) for name in ("time_scale", "queue_delay")})
    first = a.start(*remote.args(), key=key("a"), holds=(Hold("post"),))
    wait_for(lambda: a.gate.held == 1, "A's first POST to reach the simulator")
    claimed = {e.key: s for s, e in a.lock().shots.items() if e.status == "submitting"}
    assert claimed, a.lock()
    own = holder_of(a)
    claims = remote.claims()
    for request_key in claimed:  # A's, in the remote, no task id yet
        (only,) = claims[request_key]
        assert only["holder"].startswith(own + ":")
        assert (only["state"], only["task_id"]) == ("claimed", None)
    reads = remote.reads(claimed)
    try:
        second = b.start(*remote.args(), key=key("b"), watched=False)
        wait_for(reads.seen, "B to meet one of A's claims")
        met = reads.seen()
    finally:
        reads.close()
    billed = a.billed()  # A's POSTs are held, and B waits on A's claims: none paid
    assert not [s for s, e in a.lock().shots.items()
                if e.key in claimed and a.sent_digest(e.request) in billed], billed
    a.gate.release()
    output_a, output_b = finished(first), finished(second)
    assert_both_rendered_paying_once(a, b)
    assert_claims_know(remote, a)
    claims = remote.claims()
    for request_key in met:  # raced: B met A's claim, waited, and followed A's task
        assert said(output_b, claimed[request_key], "done", FOLLOWED), output_b
        assert len(claims[request_key]) == 1
        assert claims[request_key][0]["holder"].startswith(own + ":")
    for shot_id in task_ids_of(a):  # each shot: one machine paid, the other followed
        assert said(output_a, shot_id, "done", FOLLOWED) != \
            said(output_b, shot_id, "done", FOLLOWED), (output_a, output_b)
    assert submitted(output_a) + submitted(output_b) == SHOTS


# -- 2. kill -9 between claim and POST ---------------------------------------------------------


def kill_after_claiming(a: Project, remote: Remote) -> set[str]:
    """Start A and hold both its jobs' claims (exclusive creates applied, not yet answered:
    the claims are in the remote, A does not know it won); kill -9 A there. Returns the
    request keys claimed."""
    # the first generation of a key's claim (not the probe under claims/probe/ before it)
    creates = remote.s3.hold(S3Hold("PUT", "/00000001.json", conditional=True))
    child = a.start(*remote.args(), key=key("a"))
    wait_for(lambda: creates.reached == 2, "both of A's jobs to make their claim")
    a.gate.kill_now()
    assert child.wait() == -signal.SIGKILL
    remote.s3.unhold()
    a.gate.settle(a.sim.base_url)
    claims = remote.claims()
    assert len(claims) == 2, claims
    own = holder_of(a)
    for generations in claims.values():
        assert len(generations) == 1
        assert generations[0]["holder"].startswith(own + ":")
        assert (generations[0]["state"], generations[0]["task_id"]) == ("claimed", None)
    lock = a.lock()
    assert not [e for e in lock.shots.values() if e.status == "submitting" or e.task_id]
    assert a.billed() == {}  # no intent on disk: no POST was sent
    return set(claims)


@pytest.mark.parametrize("order", ["b-waits-on-the-young-claims", "a-reruns-first"])
def test_kill_9_between_claim_and_post_then_both_machines_pay_once(
        s3_remote: Remote, machines: tuple[Project, Project], sim: SimClient,
        order: str) -> None:
    """S3 only: a folder remote has no server to hold the claim's create at.

    b-waits-on-the-young-claims: B starts while A's dead claims are young (600 s expiry): its
    two jobs meet them and wait, paying nothing; A's rerun knows from its lock that it never
    POSTed, supersedes its own claims, pays once each; B follows. a-reruns-first: A's rerun
    pays once each; B then takes every video from the remote, paying nothing."""
    a, b = machines
    remote = s3_remote
    claimed = kill_after_claiming(a, remote)
    rerun: Child | None = None
    if order == "b-waits-on-the-young-claims":
        reads = remote.reads(claimed)
        try:
            second = b.start(*remote.args(), key=key("b"), watched=False)
            wait_for(lambda: reads.seen() == claimed, "B to meet both of A's claims")
        finally:
            reads.close()
        assert a.billed() == {}  # both of B's jobs wait: nothing paid yet
        rerun = a.start(*remote.args(), key=key("a-rerun"))
        finished(rerun)
        output = finished(second)
        for request_key in claimed:
            assert said(output, shot_of(b, request_key), "done", FOLLOWED), output
    else:
        rerun = a.start(*remote.args(), key=key("a-rerun"))
        finished(rerun)
        assert len(a.billed()) == SHOTS
        output = finished(b.start(*remote.args(), key=key("b"), watched=False))
        assert f"{SHOTS} video(s) taken" in output, output
    assert_both_rendered_paying_once(a, b)
    assert_claims_know(remote, a)
    claims = remote.claims()
    own = holder_of(a)
    for request_key in claimed:  # the rerun superseded its own claim: generation 2
        assert [g["holder"].split(":")[0] for g in claims[request_key]] == [own, own]
        assert claims[request_key][0]["state"] == "claimed"


# -- 3. kill -9 between the POST and the task id in the claim ------------------------------------


def test_kill_9_before_the_claim_is_told_the_task_id_the_rerun_tells_it(
        s3_remote: Remote, machines: tuple[Project, Project], sim: SimClient) -> None:
    """S3 only (the hold is the S3 server's). A's POST is answered and its task id is in A's
    lock; the claim's update (a plain PUT of its file) is held before it is applied, and A is
    killed: the claim stays `claimed`, without a task id. B starts and waits on it (young);
    A's rerun puts the task id from its lock into the claim (reconcile); B follows it."""
    a, b = machines
    remote = s3_remote
    updates = remote.s3.hold(S3Hold("PUT", "/claims/", conditional=False, applied=False))
    child = a.start(*remote.args(), "--jobs", "1", key=key("a"))
    wait_for(lambda: updates.reached == 1, "A's first claim update")
    assert a.gate.kill_if_quiet()  # no POST between answer and lock: the id is on disk
    assert child.wait() == -signal.SIGKILL
    updates.drop()  # as if A had died before its request was complete
    remote.s3.unhold()
    a.gate.settle(a.sim.base_url)
    paid = {s: e for s, e in a.lock().shots.items() if e.task_id}
    assert len(paid) == 1, a.lock()
    (shot_id, entry), = paid.items()
    assert entry.status in ("queued", "processing", "rendered")
    claims = remote.claims()
    assert len(claims) == 1 and len(claims[entry.key]) == 1
    assert (claims[entry.key][0]["state"], claims[entry.key][0]["task_id"]) == ("claimed", None)
    assert a.billed() == {a.sent_digest(entry.request): 1}

    reads = remote.reads([entry.key])
    try:
        second = b.start(*remote.args(), key=key("b"), watched=False)
        wait_for(reads.seen, "B to meet A's claim")
    finally:
        reads.close()
    assert a.billed()[a.sent_digest(entry.request)] == 1  # B waits: it did not pay
    rerun = a.start(*remote.args(), key=key("a-rerun"))
    finished(rerun)
    output = finished(second)
    assert said(output, shot_id, "done", FOLLOWED), output
    assert_both_rendered_paying_once(a, b)
    assert_claims_know(remote, a)
    latest = remote.claims()[entry.key]
    assert len(latest) == 1 and latest[0]["task_id"] == entry.task_id


def test_kill_9_between_post_and_answer_leaves_the_shot_unknown_on_both_machines(
        remote: Remote, machines: tuple[Project, Project], sim: SimClient) -> None:
    """The local protocol's ambiguity window: A's POST made a task (billed) and A is killed
    before reading the answer. A's rerun cannot know: the shot is `unknown` there, as without
    a remote, and its claim says so. B, waiting on that claim meanwhile, does not pay for it
    either: it is left `not submitted`, saying the other machine could not confirm."""
    a, b = machines
    child = a.start(*remote.args(), "--jobs", "1", key=key("a"), holds=(Hold("posted"),))
    wait_for(lambda: a.gate.held, "the first answer to be sent")
    assert process_state(child.proc.pid) == "T"  # stopped before the answer went out
    a.gate.kill_now()
    assert child.wait() == -signal.SIGKILL
    a.gate.settle(sim.base_url)
    lock = a.lock()
    (lost, entry), = ((s, e) for s, e in lock.shots.items() if e.status == "submitting")
    assert entry.task_id is None and not [e for e in lock.shots.values() if e.task_id]
    body = a.sent_digest(entry.request)
    assert a.billed() == {body: 1}  # made, billed, its id never seen
    claims = remote.claims()
    assert list(claims) == [entry.key]
    assert (claims[entry.key][0]["state"], claims[entry.key][0]["task_id"]) == ("claimed", None)

    reads = remote.reads([entry.key])
    try:
        second = b.start(*remote.args(), key=key("b"), watched=False)
        wait_for(reads.seen, "B to meet A's claim")
    finally:
        reads.close()
    rerun = a.start(*remote.args(), key=key("a-rerun"))
    output_a = finished(rerun, 1)
    output_b = finished(second, 1)
    assert said(output_a, lost, "unknown", "submission not confirmed"), output_a
    assert said(output_b, lost, "not submitted", "could not confirm its submission"), output_b
    claim = remote.claims()[entry.key]
    assert len(claim) == 1 and (claim[0]["state"], claim[0]["task_id"]) == ("unknown", None)
    billed = a.billed()
    assert billed[body] == 1 and sorted(billed.values()) == [1] * SHOTS
    for project in (a, b):
        entries = project.lock().shots
        assert entries.get(lost) is None or entries[lost].task_id is None
        others = {s: e.status for s, e in entries.items() if s != lost}
        assert others == {f"s{i}": "done" for i in range(SHOTS) if f"s{i}" != lost}
    assert {s: t for s, t in task_ids_of(a).items() if s != lost} == \
        {s: t for s, t in task_ids_of(b).items() if s != lost}
    assert a.lock().shots[lost].status == "submitting"  # as the local protocol leaves it


# -- 4. a claim that expires ------------------------------------------------------------------


def test_an_expired_claim_is_taken_over_and_its_holder_then_follows(
        s3_remote: Remote, machines: tuple[Project, Project], sim: SimClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dies between claim and POST. B, with KLING_PIPELINE_CLAIM_EXPIRY=2 and --no-push (so
    that A cannot simply take B's videos from the remote), waits for the claims to expire,
    takes them over and pays once each. A's rerun finds B's claims with task ids: it follows
    every one of them and pays nothing."""
    a, b = machines
    remote = s3_remote
    claimed = kill_after_claiming(a, remote)
    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "2")
    second = b.start(*remote.args(), "--no-push", key=key("b"), watched=False)
    monkeypatch.delenv("KLING_PIPELINE_CLAIM_EXPIRY")
    finished(second)
    assert sorted(a.billed().values()) == [1] * SHOTS
    claims = remote.claims()
    own_a, own_b = holder_of(a), holder_of(b)
    for request_key in claimed:
        assert [(g["holder"].split(":")[0], g["state"]) for g in claims[request_key]] == \
            [(own_a, "claimed"), (own_b, "submitted")]
    output = finished(a.start(*remote.args(), key=key("a-rerun")))
    for shot_id in task_ids_of(a):
        assert said(output, shot_id, "done", FOLLOWED), output
    assert_both_rendered_paying_once(a, b)
    assert_claims_know(remote, b)

