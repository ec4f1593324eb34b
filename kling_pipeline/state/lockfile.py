"""The lock file, format v1 (docs/lockfile.md): per shot, what was asked and what was paid for.

It lives beside the storyboard and is committed to git, so it is deterministic (sorted keys,
one field per line), holds no secret, and is only ever replaced atomically.

Git merges it, people edit it and old commits bring it back, so reading trusts nothing: every
field of every entry is checked (types, ranges, bools where numbers belong, NaN and numbers
too large to hold) and every problem of the file is reported at once, at its line and column.
It is the record of what was paid for: nothing in it is guessed or coerced.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from kling_pipeline.errors import MAX_SHOWN, LockFileError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.speed import gc_paused
from kling_pipeline.state.strictjson import Problem, bad_numbers, loads, report_lines, shown

LOCK_VERSION = 1
Status = Literal["submitting", "unknown", "queued", "processing", "rendered", "done", "failed",
                 "lost"]
STATUSES: tuple[str, ...] = get_args(Status)
IN_FLIGHT: frozenset[str] = frozenset({"queued", "processing", "rendered"})
AMBIGUOUS: frozenset[str] = frozenset({"submitting", "unknown"})
_FOLLOWED = IN_FLIGHT | {"lost"}  # statuses a task id came with


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Output:
    """The downloaded video: its digest names it in the cache."""

    sha256: str
    size: int
    duration: float


@dataclass(frozen=True)
class LockEntry:
    """One shot's record. `request` is the body as sent, local images as their digests."""

    key: str
    key_scheme: int
    endpoint: str
    request: dict[str, Any]
    status: Status
    take: int = 1
    task_id: str | None = None
    submitted_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    output: Output | None = None
    error: str | None = None

    def with_status(self, status: Status, **changes: Any) -> LockEntry:
        return replace(self, status=status, updated_at=utc_now(), **changes)


@dataclass
class LockFile:
    """All shots of one storyboard, by shot id."""

    storyboard: str
    shots: dict[str, LockEntry] = field(default_factory=dict)

    def by_key(self) -> dict[str, tuple[str, LockEntry]]:
        """Entries by request key (the first id in sorted order wins)."""
        found: dict[str, tuple[str, LockEntry]] = {}
        for shot_id in sorted(self.shots):
            entry = self.shots[shot_id]
            found.setdefault(entry.key, (shot_id, entry))
        return found


_ENTRY_FIELDS = frozenset(f.name for f in fields(LockEntry))
_REQUIRED = ("key", "key_scheme", "endpoint", "request", "status")
_REQ_SET = frozenset(_REQUIRED)
_TOP_FIELDS = ("lock_version", "shots", "storyboard")
_OUTPUT_FIELDS = ("sha256", "size", "duration")
_OUTPUT_SET = frozenset(_OUTPUT_FIELDS)
_STATUS_SET = frozenset(STATUSES)
_TEXT_OR_NULL = (str, type(None))
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ADVICE = "restore it from git, or correct what is named"


Check = Callable[[Any], "str | None"]


def _whole(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is int and value >= minimum:  # `type`: true is not a number here
            return None
        return f"must be a whole number >= {minimum}, got {shown(value)}"
    return check


def _text(value: Any) -> str | None:
    return None if type(value) is str and value else f"must be text, got {shown(value)}"


def _text_or_null(value: Any) -> str | None:
    return None if value is None or type(value) is str else \
        f"must be text or null, got {shown(value)}"


def _id_or_null(value: Any) -> str | None:
    return None if value is None or (type(value) is str and value) else \
        f"must be text or null, got {shown(value)}"


def _mapping(value: Any) -> str | None:
    return None if type(value) is dict else f"must be a mapping, got {shown(value)}"


def _status(value: Any) -> str | None:
    if type(value) is str and value in STATUSES:
        return None
    return f"{shown(value)} is not one of " + ", ".join(STATUSES)


_SIZE = _whole(0)


def _nothing(value: Any) -> str | None:
    return None  # `output` has its own check, with the places of its fields


_CHECKS: dict[str, Check] = {
    "key": _text, "key_scheme": _whole(1), "endpoint": _text, "request": _mapping,
    "status": _status, "take": _whole(1), "task_id": _id_or_null, "submitted_at": _text_or_null,
    "updated_at": _text_or_null, "finished_at": _text_or_null, "error": _text_or_null,
    "output": _nothing,
}
assert _CHECKS.keys() == _ENTRY_FIELDS


def _fields_problems(where: tuple[str | int, ...], raw: dict[str, Any], allowed: Sequence[str],
                     required: Sequence[str]) -> list[Problem]:
    """Unknown fields (at their names, with a likely meant one) and missing ones."""
    problems = []
    for name in sorted(raw.keys() - set(allowed)):
        near = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        problems.append(Problem((*where, name), f"unknown field {name!r}; {hint}allowed: "
                                                + ", ".join(allowed), at_key=True))
    missing = [n for n in required if n not in raw]
    if missing:
        problems.append(Problem(where, f"missing fields {missing}"))
    return problems


def _output(where: tuple[str | int, ...], raw: Any, problems: list[Problem]) -> Output | None:
    """The downloaded video's record; its digest names a file, so it must be a digest."""
    if type(raw) is not dict:
        problems.append(Problem(where, "must be a mapping {sha256, size, duration} or null, "
                                       f"got {shown(raw)}"))
        return None
    found = _fields_problems(where, raw, _OUTPUT_FIELDS, _OUTPUT_FIELDS)
    sha256: Any = raw.get("sha256")
    size: Any = raw.get("size")
    duration: Any = raw.get("duration")
    if "sha256" in raw and not (type(sha256) is str and _SHA256.fullmatch(sha256)):
        found.append(Problem((*where, "sha256"), "must be 64 lowercase hex digits (the "
                                                 f"video's sha256), got {shown(sha256)}"))
    why = _SIZE(size)
    if "size" in raw and why:
        found.append(Problem((*where, "size"), why))
    if "duration" in raw and not (type(duration) in (int, float) and 0 <= duration < math.inf):
        found.append(Problem((*where, "duration"), "must be a number of seconds >= 0, got "
                                                   + shown(duration)))
    problems += found
    return None if found else Output(sha256, size, float(duration))


def _good_output(raw: Any) -> bool:
    if type(raw) is not dict or raw.keys() != _OUTPUT_SET:
        return False
    sha256, size, duration = raw["sha256"], raw["size"], raw["duration"]
    return (type(sha256) is str and len(sha256) == 64 and _SHA256.fullmatch(sha256) is not None
            and type(size) is int and size >= 0
            and type(duration) in (float, int) and 0 <= duration < math.inf)


def _good(raw: dict[str, Any]) -> bool:
    """The common case, checked inline (a lock of 10,000 entries is read on every `plan`):
    True only if `_checked_entry` would find nothing; False sends the entry to it."""
    keys = raw.keys()
    if not (keys <= _ENTRY_FIELDS and keys >= _REQ_SET):
        return False
    get = raw.get
    key, scheme, endpoint, status = raw["key"], raw["key_scheme"], raw["endpoint"], raw["status"]
    take, task_id, output = get("take", 1), get("task_id"), get("output")
    return (type(key) is str and key != "" and type(scheme) is int and scheme >= 1
            and type(endpoint) is str and endpoint != "" and type(raw["request"]) is dict
            and type(status) is str and status in _STATUS_SET
            and type(take) is int and take >= 1
            and (task_id is None or (type(task_id) is str and task_id != ""))
            and (task_id is not None or status not in _FOLLOWED)
            and type(get("submitted_at")) in _TEXT_OR_NULL
            and type(get("updated_at")) in _TEXT_OR_NULL
            and type(get("finished_at")) in _TEXT_OR_NULL and type(get("error")) in _TEXT_OR_NULL
            and (output is None or _good_output(output)))


def _entry(shot_id: str, raw: Any, problems: list[Problem]) -> LockEntry | None:
    """One entry, or None with its problems added: every field is checked, all at once."""
    if type(raw) is dict and _good(raw):
        output = raw.get("output")
        if output is None:
            return LockEntry(**raw)
        return LockEntry(**{**raw, "output": Output(output["sha256"], output["size"],
                                                    float(output["duration"]))})
    return _checked_entry(shot_id, raw, problems)


def _checked_entry(shot_id: str, raw: Any, problems: list[Problem]) -> LockEntry | None:
    """The slow path: what exactly is wrong, field by field."""
    where = ("shots", shot_id)
    if type(raw) is not dict:
        problems.append(Problem(where, f"must be a mapping of fields, got {shown(raw)}"))
        return None
    before = len(problems)
    if not (raw.keys() <= _ENTRY_FIELDS and raw.keys() >= _REQ_SET):
        problems += _fields_problems(where, raw, sorted(_ENTRY_FIELDS), _REQUIRED)
    for name, value in raw.items():
        check = _CHECKS.get(name)
        why = check(value) if check is not None else None
        if why:
            problems.append(Problem((*where, name), why))
    status = raw.get("status")
    if type(status) is str and status in _FOLLOWED and not raw.get("task_id"):
        problems.append(Problem((*where, "status"), f"{status!r} needs the task_id of the "
                                                    "task it follows, and has none"))
    output = raw.get("output")
    if output is not None:
        output = _output((*where, "output"), output, problems)
    if len(problems) > before:
        return None
    return LockEntry(**raw) if output is None else LockEntry(**{**raw, "output": output})


def _parse(text: str, path: Path) -> tuple[Any, bool]:
    """The JSON value, and whether any number in it is a BadNumber."""
    try:
        return loads(text)
    except RecursionError as exc:
        raise LockFileError(f"{path}: the lock file nests too deeply to be a lock file; "
                            "restore it from git") from exc
    except json.JSONDecodeError as exc:
        raise LockFileError(f"{path}:{exc.lineno}:{exc.colno}: the lock file is not valid "
                            f"JSON ({exc.msg}); if a merge left conflict markers, resolve them "
                            "by keeping both sides' shots") from exc


def _refusal(path: Path, text: str, problems: list[Problem]) -> LockFileError:
    """All the problems of the file, each at its line and column, in file order."""
    lines = report_lines(str(path), text, problems)
    count = len(lines)
    if count > MAX_SHOWN:
        lines[MAX_SHOWN:] = [f"... and {count - MAX_SHOWN:,} more"]
    head = f"{path}: {count:,} error{'s' if count != 1 else ''} in the lock file ({_ADVICE}):"
    return LockFileError("\n".join([head, *lines]))


def _version_problem(data: Any) -> Problem | None:
    """Is this a lock file of our format at all? If not, nothing else in it is checked."""
    if type(data) is not dict:
        kind = "a list" if isinstance(data, list) else shown(data)
        return Problem((), f"not a kling-pipeline lock file of format {LOCK_VERSION} (it "
                           f"holds {kind}, not a mapping)")
    version = data.get("lock_version")
    if type(version) is int and version == LOCK_VERSION:
        return None
    found = shown(version) if "lock_version" in data else "missing"
    return Problem(("lock_version",), f"not a kling-pipeline lock file of format "
                                      f"{LOCK_VERSION} (lock_version is {found})")


def _document(data: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The top level's problems; the shots mapping (empty when it is not one)."""
    problems += _fields_problems((), data, _TOP_FIELDS, ("lock_version", "shots"))
    if "storyboard" in data and (why := _text(data["storyboard"])):
        problems.append(Problem(("storyboard",), why))
    shots = data.get("shots")
    if type(shots) is not dict:
        if "shots" in data:
            problems.append(Problem(("shots",), "`shots` must be a mapping of shot id to "
                                                f"entry, got {shown(shots)}"))
        return {}
    if "" in shots:
        problems.append(Problem(("shots", ""), "a shot id must not be empty", at_key=True))
    if _CONTROL.search("".join(shots)):
        problems += (Problem(("shots", k), "a shot id must not hold control characters, got "
                                           + shown(k), at_key=True)
                     for k in shots if _CONTROL.search(k))
    return shots


def read_lock(path: Path, storyboard: str) -> LockFile:
    """The lock at `path`, or an empty one if there is none yet."""
    with gc_paused():
        return _read_lock(path, storyboard)


def _read_lock(path: Path, storyboard: str) -> LockFile:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return LockFile(storyboard)
    except OSError as exc:
        raise LockFileError(f"{path}: cannot read the lock file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LockFileError(f"{path}: the lock file is not UTF-8 text (byte {exc.start} is "
                            f"0x{raw[exc.start]:02x}); restore it from git") from exc
    data, any_bad = _parse(text, path)
    fatal = _version_problem(data)
    if fatal is not None:
        raise LockFileError(report_lines(str(path), text, [fatal])[0])
    problems: list[Problem] = []
    shots = _document(data, problems)
    entries = {shot_id: _entry(shot_id, raw_entry, problems)
               for shot_id, raw_entry in shots.items()}
    if any_bad:
        problems += (p for shot_id, raw_entry in shots.items() if type(raw_entry) is dict
                     for p in bad_numbers(raw_entry.get("request"),
                                           ("shots", shot_id, "request")))
    if problems:
        raise _refusal(path, text, problems)
    return LockFile(data.get("storyboard", storyboard),
                    {k: v for k, v in entries.items() if v is not None})


def _plain(entry: LockEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _ENTRY_FIELDS:
        value = getattr(entry, name)
        if value is None:
            continue
        out[name] = value.__dict__ if isinstance(value, Output) else value
    return out


class LockText:
    """Renders lock files, each entry's JSON once until the entry changes.

    A run rewrites the whole file after every state change; re-serialising 1,000 unchanged
    entries each time cost ~40 ms per write. The bytes are exactly those of one `json.dumps`
    of the whole document (indent 2, sorted keys), which `test_lockfile` checks.
    """

    def __init__(self) -> None:
        self._fragments: dict[str, tuple[LockEntry, str]] = {}

    def _fragment(self, shot_id: str, entry: LockEntry) -> str:
        known = self._fragments.get(shot_id)
        if known is not None and known[0] is entry:
            return known[1]
        body = json.dumps(_plain(entry), indent=2, sort_keys=True, ensure_ascii=False)
        text = f"    {json.dumps(shot_id, ensure_ascii=False)}: " + body.replace("\n", "\n    ")
        self._fragments[shot_id] = (entry, text)
        return text

    def render(self, lock: LockFile) -> bytes:
        for gone in self._fragments.keys() - lock.shots.keys():
            del self._fragments[gone]
        ids = sorted(lock.shots)
        shots = ("{\n" + ",\n".join(self._fragment(k, lock.shots[k]) for k in ids) + "\n  }"
                 if ids else "{}")
        name = json.dumps(lock.storyboard, ensure_ascii=False)
        return (f'{{\n  "lock_version": {LOCK_VERSION},\n  "shots": {shots},\n'
                f'  "storyboard": {name}\n}}\n').encode()


def dumps_lock(lock: LockFile) -> bytes:
    """Deterministic bytes: same content, same file, whatever the order of events."""
    return LockText().render(lock)


def write_lock(path: Path, lock: LockFile, text: LockText | None = None) -> None:
    atomic_write_bytes(path, (text or LockText()).render(lock))
