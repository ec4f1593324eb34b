"""The lock file, format v1 (docs/lockfile.md): per shot, what was asked and what was paid for.

It lives beside the storyboard and is committed to git, so it is deterministic (sorted keys,
one field per line), holds no secret, and is only ever replaced atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from kling_pipeline.errors import LockFileError
from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.speed import gc_paused

LOCK_VERSION = 1
Status = Literal["submitting", "unknown", "queued", "processing", "rendered", "done", "failed",
                 "lost"]
STATUSES: tuple[str, ...] = get_args(Status)
IN_FLIGHT: frozenset[str] = frozenset({"queued", "processing", "rendered"})
AMBIGUOUS: frozenset[str] = frozenset({"submitting", "unknown"})


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


_ENTRY_FIELDS = {f.name for f in fields(LockEntry)}
_REQUIRED = ("key", "key_scheme", "endpoint", "request", "status")
_REQ_SET = frozenset(_REQUIRED)
# Field types a hand-edited or corrupted lock must still have (the planner hashes and
# compares them: a list as `key` or `request` crashed it).
_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("key", str, "text"), ("key_scheme", int, "a whole number"), ("endpoint", str, "text"),
    ("request", dict, "a mapping"), ("take", int, "a whole number"),
    *((name, (str, type(None)), "text or null")
      for name in ("task_id", "submitted_at", "updated_at", "finished_at", "error")),
)


def _entry(shot_id: str, raw: Any, where: str) -> LockEntry:
    if not isinstance(raw, dict):
        raise LockFileError(f"{where}: shots.{shot_id} must be a mapping")
    unknown = sorted(raw.keys() - _ENTRY_FIELDS)
    missing = [] if raw.keys() >= _REQ_SET else [n for n in _REQUIRED if n not in raw]
    if unknown or missing:
        raise LockFileError(f"{where}: shots.{shot_id}: "
                            + (f"unknown fields {unknown} " if unknown else "")
                            + (f"missing fields {missing}" if missing else ""))
    for name, kinds, what in _TYPES:
        value = raw.get(name)
        if name in raw and not (isinstance(value, kinds) and not isinstance(value, bool)):
            raise LockFileError(f"{where}: shots.{shot_id}.{name}: must be {what}, got "
                                f"{json.dumps(value)[:60]}; restore the lock file from git")
    if not isinstance(raw["status"], str) or raw["status"] not in STATUSES:
        raise LockFileError(f"{where}: shots.{shot_id}.status: {raw['status']!r} is not one of "
                            + ", ".join(STATUSES))
    output = raw.get("output")
    try:
        values = dict(raw)
        if output is not None:
            values["output"] = Output(str(output["sha256"]), int(output["size"]),
                                      float(output["duration"]))
        return LockEntry(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise LockFileError(f"{where}: shots.{shot_id}: {exc}") from exc


def read_lock(path: Path, storyboard: str) -> LockFile:
    """The lock at `path`, or an empty one if there is none yet."""
    with gc_paused():
        return _read_lock(path, storyboard)


def _read_lock(path: Path, storyboard: str) -> LockFile:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return LockFile(storyboard)
    except OSError as exc:
        raise LockFileError(f"{path}: cannot read the lock file: {exc.strerror}") from exc
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LockFileError(f"{path}: the lock file is not UTF-8 text (byte {exc.start} is "
                            f"0x{text[exc.start]:02x}); restore it from git") from exc
    except RecursionError as exc:
        raise LockFileError(f"{path}: the lock file nests too deeply to be a lock file; "
                            "restore it from git") from exc
    except json.JSONDecodeError as exc:
        raise LockFileError(f"{path}:{exc.lineno}:{exc.colno}: the lock file is not valid "
                            f"JSON ({exc.msg}); if a merge left conflict markers, resolve them "
                            "by keeping both sides' shots") from exc
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        found = data.get("lock_version") if isinstance(data, dict) else None
        raise LockFileError(f"{path}: not a kling-pipeline lock file of format "
                            f"{LOCK_VERSION} (lock_version is {found!r})")
    shots = data.get("shots")
    if not isinstance(shots, dict):
        raise LockFileError(f"{path}: `shots` must be a mapping of shot id to entry")
    return LockFile(str(data.get("storyboard", storyboard)),
                    {str(k): _entry(str(k), v, str(path)) for k, v in shots.items()})


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
