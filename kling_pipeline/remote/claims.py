"""Claims in the remote: no two machines pay for one request key (issue 12, item 6).

Before a POST, a machine claims the request key in the remote with an atomic exclusive create;
a machine that loses the race does not submit, it follows the winner's task id:

    <root>/claims/<request key>/<generation:08d>.json

The latest generation is the claim in force. Generations exist so that taking a claim over
(one released, or one whose holder died before it knew a task id) is itself an exclusive
create, of generation n+1, on every backend, with no compare-and-swap of an existing file.
Only the holder ever rewrites its own generation: to record the task id as soon as it is
known (`submitted`), to say its POST was ambiguous and may have been billed (`unknown`), or
that its POST provably made no task (`released`: anyone may claim again).

The exclusive create, per backend:
- S3 (s3, s3a): a PUT with `If-None-Match: *` (s3fs `pipe_file(mode="create")`). S3 makes it
  atomic; a 412 means another holder's file is there. A 409 ConditionalRequestConflict (S3's
  answer when another conditional write of the name is in flight) is asked again, briefly.
  An S3-compatible server that ignores the header (an old MinIO, ...) would overwrite
  silently, another machine's claim and task id with it: `exclusive_creates_hold` finds that
  out, once per run before its first claim, and such a run makes no claims (and says so).
- a folder (file, local): the claim is written whole beside its name, then hard-linked to
  the name (`link` fails when the name exists; readers never see half a claim); where the
  file system has no hard links, `os.open(O_CREAT | O_EXCL)`, one write, fsync. Atomic for
  the machines that share one file system (a local disk, NFS v3 and later, SMB); a drive
  synced by a client (Dropbox, OneDrive, ...) lets each machine create its own copy, so it
  gives no protection across machines.
- anything else is not `supported`: fsspec's generic `pipe_file(mode="create")` checks and
  then writes, which two machines can both pass. The caller goes on without claims.

A conditional PUT whose answer was lost can be sent again by botocore or s3fs; the second
answer is a 412 for the first one's own file. Each claim therefore carries a random `nonce`,
and a lost race that reads back our own nonce is a win.

A claim made just before a POST, whose holder died before it knew a task id, expires
DEFAULT_EXPIRY (600 s) after its `claimed_at`. That must exceed the longest single POST
attempt, which the API client bounds as a whole (run/apiclient.SUBMIT_CEILING, 300 s: a free
connection, the body and the answer; httpx's own timeouts are per network operation, so a
server dripping its answer could stretch them), with margin for the moments between the claim
and the POST and for clocks: machines are assumed to be
NTP-close (the expiry compares this machine's clock with the claimer's). A holder that waits
between two attempts (a 429) supersedes its own claim before the next one, which gives it a
fresh `claimed_at` atomically. A claim that holds a task id, or is `unknown`, never expires.

A latest file that is not a valid claim (a folder's file read between its create and its
write, junk) counts as a `claimed` claim of holder "" made at the file's modification time:
it blocks until it expires, and never crashes a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from kling_pipeline.errors import RemoteError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.url import remote_failure, shown

CLAIM_FORMAT = 1
DEFAULT_EXPIRY = 600.0
State = Literal["claimed", "submitted", "unknown", "released"]
STATES: tuple[str, ...] = get_args(State)
_STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the lock file's utc_now() format
_KEY = re.compile(r"^[0-9a-f]{64}$")
_GENERATION = re.compile(r"(?:^|/)(\d{8})\.json$")
_CLAIM_FILE = re.compile(r"(?:^|/)claims/([0-9a-f]{64})/\d{8}\.json$")
_CONDITIONAL_PUT = frozenset({"s3", "s3a"})
_FOLDER = frozenset({"file", "local"})
_CONFLICT_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds between asks after a 409


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_STAMP)


def _parse_stamp(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    return datetime.strptime(text, _STAMP).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Claim:
    """One generation of a request key's claim, as the remote holds it."""

    key: str
    generation: int
    holder: str
    host: str
    claimed_at: datetime
    updated_at: datetime
    state: State
    task_id: str | None
    note: str
    nonce: str  # random per claim made; "" for a file that is not a valid claim

    def age(self, now: datetime) -> float:
        """Seconds since the claim was made."""
        return (now - self.claimed_at).total_seconds()

    def to_bytes(self) -> bytes:
        return json.dumps({"format": CLAIM_FORMAT, "key": self.key,
                           "generation": self.generation, "holder": self.holder,
                           "host": self.host, "claimed_at": _stamp(self.claimed_at),
                           "updated_at": _stamp(self.updated_at), "state": self.state,
                           "task_id": self.task_id, "note": self.note, "nonce": self.nonce},
                          sort_keys=True, indent=1).encode() + b"\n"


@dataclass(frozen=True)
class Won:
    """This holder now holds the key: it may POST."""

    claim: Claim


@dataclass(frozen=True)
class Held:
    """The claim in force is not ours to take (another holder's live claim, one with a task
    id, an unknown one), or it is our own from an earlier run (`claim.holder` is ours): the
    caller decides."""

    claim: Claim


def parse_claim(key: str, generation: int, data: bytes, mtime: datetime) -> Claim:
    """The claim a file holds; one that is not a valid claim is a `claimed` claim of holder ""
    made at `mtime` (so it expires)."""
    try:
        return _strict_claim(key, generation, json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return Claim(key, generation, "", "", mtime, mtime, "claimed", None,
                     "not a valid claim file", "")


def _strict_claim(key: str, generation: int, found: dict[str, Any]) -> Claim:
    texts = [found[name] for name in ("holder", "host", "note", "nonce")]
    task_id, state = found["task_id"], found["state"]
    if (found["format"] != CLAIM_FORMAT or found["key"] != key
            or type(found["generation"]) is not int or found["generation"] != generation
            or not all(isinstance(text, str) for text in texts) or state not in STATES
            or not (task_id is None or (isinstance(task_id, str) and task_id))
            or (state == "submitted" and task_id is None)):
        raise ValueError("not a claim")
    holder, host, note, nonce = texts
    return Claim(key, generation, holder, host, _parse_stamp(found["claimed_at"]),
                 _parse_stamp(found["updated_at"]), state, task_id, note, nonce)


def _mtime(info: dict[str, Any]) -> datetime | None:
    """A listed file's modification time (a folder's `mtime`, S3's `LastModified`)."""
    moment = info.get("mtime", info.get("LastModified"))
    if isinstance(moment, datetime):
        return moment.astimezone(UTC)
    if isinstance(moment, (int, float)):
        return datetime.fromtimestamp(moment, UTC)
    return None


def claim_files(remote: RemoteStore) -> dict[str, tuple[list[str], datetime | None]]:
    """Every claim file by request key, with the newest one's modification time, from one
    recursive listing of claims/ (for gc --remote)."""
    try:
        listed: dict[str, Any] = remote.fs.find(f"{remote.root}/claims", detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:
        raise remote_failure(remote.spec, "listing claims/", exc) from None
    found: dict[str, tuple[list[str], datetime | None]] = {}
    for path, info in listed.items():
        key = _CLAIM_FILE.search(path)
        if key is None:
            continue
        paths, newest = found.setdefault(key.group(1), ([], None))
        paths.append(path)
        moment = _mtime(info)
        if moment is not None and (newest is None or moment > newest):
            found[key.group(1)] = (paths, moment)
    return found


def _lost_race(exc: BaseException) -> bool:
    """An exclusive create refused because the name is taken (s3fs names a 412 so only when
    the server says which condition failed)."""
    return isinstance(exc, FileExistsError) or _s3_code(exc) == "PreconditionFailed"


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def _check_key(key: str) -> None:
    if not _KEY.match(key):
        raise ValueError(f"not a request key: {key[:80]!r}")


class Claims:
    """The claims of one remote, made by one holder (a name that is the same across runs of
    the same checkout, so an earlier run's claim is recognised) on one host."""

    def __init__(self, remote: RemoteStore, holder: str, host: str,
                 expiry: float = DEFAULT_EXPIRY,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.remote = remote
        self.holder = holder
        self.host = host
        self.expiry = expiry
        self.clock = clock
        protocol = remote.spec.protocol
        self._folder = protocol in _FOLDER
        self.supported = self._folder or protocol in _CONDITIONAL_PUT

    # ---- reading

    def _path(self, key: str, generation: int) -> str:
        return f"{self.remote.root}/claims/{key}/{generation:08d}.json"

    def _list(self, folder: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.remote.fs.find(f"{self.remote.root}/{folder}",
                                                        detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise remote_failure(self.remote.spec, f"listing {folder}/", exc) from None
        return found

    def current(self, key: str) -> Claim | None:
        """The claim in force (the latest generation), None when the key has none."""
        _check_key(key)
        generations = {int(found.group(1)): (path, info)
                       for path, info in self._list(f"claims/{key}").items()
                       if (found := _GENERATION.search(path))}
        if not generations:
            return None
        latest = max(generations)
        path, info = generations[latest]
        try:
            data = self.remote.fs.cat_file(path)
        except Exception as exc:
            raise remote_failure(self.remote.spec, f"reading the claim {key[:12]}", exc) \
                from None
        return parse_claim(key, latest, data, _mtime(info) or self.clock())

    def claimed_keys(self) -> set[str]:
        """The request keys that have a claim, from one recursive listing."""
        return {found.group(1) for path in self._list("claims")
                if (found := _CLAIM_FILE.search(path))}

    # ---- claiming

    def exclusive_creates_hold(self) -> bool:
        """Whether the remote refuses a second exclusive create of one name, as claims need:
        a folder's `link` and S3 do; a server that ignores `If-None-Match` overwrites. Two
        conditional PUTs of a probe name no claim listing matches, then its delete: three
        requests, asked once per run that is about to pay (RemoteError when they fail).
        The name is the holder's own, so a run killed before the delete leaves one file, which
        the next probe of that checkout reuses."""
        if self._folder:
            return True
        name = hashlib.sha256(self.holder.encode()).hexdigest()[:32]
        path = f"{self.remote.root}/claims/probe/{name}.json"
        try:
            # a first create refused (a 412) shows the condition holds as well as a second
            return not (self._create_on_s3(path, b"{}") and self._create_on_s3(path, b"{}"))
        finally:
            with contextlib.suppress(Exception):
                self.remote.fs.rm_file(path)

    def claim(self, key: str, *, supersede: Claim | None = None) -> Won | Held:
        """Claim `key` for this holder. Without `supersede`: generation 1, else a generation
        after a released or expired claim, else Held. With `supersede=c`: generation
        c.generation + 1, only while c (unchanged) is the claim in force."""
        _check_key(key)
        if not self.supported:
            raise RemoteError(f"the remote {shown(self.remote.spec)} cannot make an atomic "
                              f"claim ({self.remote.spec.protocol}://)")
        if supersede is not None:
            return self._supersede(key, supersede)
        first = self._new(key, 1)
        if self._create(first):
            return Won(first)
        latest = self._current_after_race(key)
        if latest.nonce == first.nonce:
            return Won(latest)
        if not self._takeable(latest):
            return Held(latest)
        return self._exclusive(key, latest.generation + 1)

    def _supersede(self, key: str, earlier: Claim) -> Won | Held:
        latest = self.current(key)
        if latest is None:  # every generation was deleted: no claim is in force
            return self.claim(key)
        if latest != earlier:
            return Held(latest)
        return self._exclusive(key, earlier.generation + 1)

    def _takeable(self, latest: Claim) -> bool:
        if latest.state == "released":
            return True
        return (latest.state == "claimed" and latest.task_id is None
                and latest.age(self.clock()) > self.expiry)

    def _exclusive(self, key: str, generation: int) -> Won | Held:
        made = self._new(key, generation)
        if self._create(made):
            return Won(made)
        latest = self._current_after_race(key)
        return Won(latest) if latest.nonce == made.nonce else Held(latest)

    def _current_after_race(self, key: str) -> Claim:
        latest = self.current(key)
        if latest is None:
            raise RemoteError(f"the remote {shown(self.remote.spec)}: the claim {key[:12]} "
                              "was there for an exclusive create and gone when read")
        return latest

    def _new(self, key: str, generation: int) -> Claim:
        now = self.clock().replace(microsecond=0)
        return Claim(key, generation, self.holder, self.host, now, now, "claimed", None, "",
                     uuid.uuid4().hex)

    def _create(self, claim: Claim) -> bool:
        """Create the claim's file exclusively: False when the name is already taken."""
        path = self._path(claim.key, claim.generation)
        if self._folder:
            return self._create_in_folder(path, claim.to_bytes())
        return self._create_on_s3(path, claim.to_bytes())

    def _create_on_s3(self, path: str, data: bytes) -> bool:
        for pause in (*_CONFLICT_PAUSES, None):
            try:
                self.remote.fs.pipe_file(path, data, mode="create")
                return True
            except Exception as exc:
                if _lost_race(exc):
                    return False
                if pause is None or _s3_code(exc) != "ConditionalRequestConflict":
                    raise remote_failure(self.remote.spec, f"claiming {_short(path)}", exc) \
                        from None
                time.sleep(pause)  # another conditional write of the name is in flight
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_in_folder(self, path: str, data: bytes) -> bool:
        """Write the claim whole beside its name, then hard-link it to the name: the link
        fails if the name exists, and a reader never sees a claim half written (another
        machine reading a claim mid-write took it for junk, and junk expires by its mtime).
        A file system without hard links gets O_EXCL on the name, written in place."""
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            part = f"{path}.{uuid.uuid4().hex}.part"
            _write_all(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY
                               | getattr(os, "O_BINARY", 0), 0o644), data)
        except OSError as exc:
            raise remote_failure(self.remote.spec, f"claiming {_short(path)}", exc) from None
        try:
            os.link(part, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return self._create_in_place(path, data)  # no hard links here (some SMB shares)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(part)

    def _create_in_place(self, path: str, data: bytes) -> bool:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise remote_failure(self.remote.spec, f"claiming {_short(path)}", exc) from None
        try:
            _write_all(fd, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise remote_failure(self.remote.spec, f"claiming {_short(path)}", exc) from None
        return True

    # ---- the holder's own updates

    def record_task(self, claim: Claim, task_id: str) -> Claim:
        """The holder's POST made `task_id`: others follow it from now on."""
        return self._update(claim, state="submitted", task_id=task_id)

    def mark_unknown(self, claim: Claim, note: str) -> Claim:
        """The holder's POST was ambiguous (it may have been billed): nobody takes the key."""
        return self._update(claim, state="unknown", note=note)

    def release(self, claim: Claim, note: str = "") -> None:
        """The holder's POST provably made no task: anyone may claim the key again."""
        self._update(claim, state="released", note=note)

    def _update(self, claim: Claim, **changes: Any) -> Claim:
        if claim.holder != self.holder or not claim.nonce:
            raise ValueError(f"the claim {claim.key[:12]} generation {claim.generation} is "
                             f"not held by {self.holder!r}")
        updated = replace(claim, updated_at=self.clock().replace(microsecond=0), **changes)
        path = self._path(claim.key, claim.generation)
        try:
            if self._folder:
                atomic_write_bytes(Path(path), updated.to_bytes())
            else:
                self.remote.fs.pipe_file(path, updated.to_bytes())
        except Exception as exc:
            raise remote_failure(self.remote.spec, f"updating the claim {claim.key[:12]}",
                                 exc) from None
        return updated


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _short(path: str) -> str:
    """`claims/<key 12>.../<generation>` for a message."""
    found = re.search(r"claims/([0-9a-f]{12})[0-9a-f]*/(\d{8})\.json$", path)
    return f"{found.group(1)} generation {int(found.group(2))}" if found else path
