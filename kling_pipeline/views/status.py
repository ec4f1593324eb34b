"""Where each shot stands, offline: what the lock file, the local cache and the output folder hold.

`plan` says what a run would do; `status` says what is already there, so a person can see what
was paid for, what is still rendering and what is missing on this machine, without a network.
`--refresh` asks the API about tasks in flight; the CLI does that and apply_refresh merges the
answers in, so everything here stays pure. Ids, task ids, notes and the API's reasons come from
the lock file or a server: the text table shows them through textsafe, so they can neither drive
the terminal nor widen every row without bound.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from kling_pipeline.fsutil import size_or_none
from kling_pipeline.output.names import SHOTS, shot_file_name
from kling_pipeline.plan.planner import diff_requests
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import IN_FLIGHT, LockEntry, LockFile, Output, Status
from kling_pipeline.storyboard.frameinput import PENDING
from kling_pipeline.storyboard.render import ShotRequest
from kling_pipeline.textsafe import NOTE_LIMIT, clip

State = Literal["done", "changed", "new", "waiting", "queued", "processing", "rendered",
                "unknown", "failed", "lost", "removed"]
STATES: tuple[str, ...] = get_args(State)
_STATE_OF: dict[Status, State] = {
    "submitting": "unknown", "unknown": "unknown", "queued": "queued",
    "processing": "processing", "rendered": "rendered", "done": "done", "failed": "failed",
    "lost": "lost"}
UNCONFIRMED = "submission not confirmed; it may have been billed"
NOT_DOWNLOADED = "video not downloaded here; apply fetches it by task id (no new charge)"


@dataclass(frozen=True)
class ShotStatus:
    """One row of the status: a storyboard shot, or a lock entry no longer in the storyboard.

    `position` is 1-based (None for a removed entry); `task_id` is the task of the current
    request only (None for a changed shot, whose recorded task made the old request).
    """

    id: str
    position: int | None
    endpoint: str
    duration: int | None
    state: State
    task_id: str | None
    in_cache: bool
    in_output: bool
    note: str = ""


def _matching_note(entry: LockEntry) -> str:
    """The note of a shot whose lock entry was made for its current request."""
    if entry.status in IN_FLIGHT:
        return f"task {entry.status}: the next apply picks it up"
    if entry.status in ("submitting", "unknown"):
        return UNCONFIRMED
    if entry.status == "failed":
        return entry.error or "failed, no reason given"
    if entry.status == "lost":
        return "its task can no longer be fetched"
    return ""


def _other_note(shot: ShotRequest, entry: LockEntry | None,
                by_key: dict[str, tuple[str, LockEntry]], cached: bool) -> str:
    """Why a new or changed shot may still cost nothing, else what changed; for a shot
    whose key waits for frames, which ones."""
    frames = [f"{frame.label} of {frame.shot}" for frame in shot.frames
              if shot.body.get(frame.wire) == frame.placeholder]
    if frames:
        return (f"its key waits for the {'; the '.join(frames)}: apply renders or fetches "
                "that video first")
    twin = by_key.get(shot.key)
    if twin is not None and (twin[1].status == "done" or twin[1].status in IN_FLIGHT):
        return f"same request as {twin[0]!r} ({twin[1].status}): no new charge"
    if cached:
        return "same request as a video in the local cache: no new charge"
    if entry is None:
        return "never submitted"
    fields = ", ".join(change.field for change in diff_requests(entry, shot))
    return f"edited since the lock: {fields}" if fields else "edited since the lock"


def _shot_row(shot: ShotRequest, position: int, entry: LockEntry | None,
              by_key: dict[str, tuple[str, LockEntry]], store: Store, folder: str,
              name: str) -> ShotStatus:
    """`name` is the shot's file in `folder` (shots/ of the output folder, a plain string:
    two Path joins a shot were a tenth of `status` at 1,000 shots)."""
    video: Output | None
    state: State
    if entry is not None and entry.key == shot.key:
        state, task_id = _STATE_OF[entry.status], entry.task_id
        video, in_cache = _own_video(shot, entry, store)
        note = _matching_note(entry)
    else:
        cached = store.lookup(shot.key)
        video = cached.output if cached is not None else None
        state, task_id = ("new" if entry is None else "changed"), None
        if shot.key.startswith(PENDING):
            state = "waiting"  # for frames of shots not here yet: new, changed or the same
        twin = by_key.get(shot.key)
        if twin is not None and twin[1].status == "done":
            video = twin[1].output or video
        note = _other_note(shot, entry, by_key, cached is not None)
        in_cache = cached is not None or (video is not None and store.has_object(video))
    size = size_or_none(f"{folder}/{name}")
    in_output = video is not None and size == video.size
    if state == "done" and not in_output:
        if in_cache:
            note = "in the local cache; apply puts it in the output folder"
        elif task_id is None:
            note = "video not downloaded here, and no task id is recorded to fetch it by"
        else:
            note = NOT_DOWNLOADED
        if size is not None and video is not None:
            note = f"{name} differs from the recorded video; {note}"
    elif (state == "changed" and not in_output and entry is not None
          and entry.output is not None and size == entry.output.size):
        note += f"; {name} is still the previous video"
    return ShotStatus(shot.id, position, shot.endpoint, shot.duration, state, task_id,
                      in_cache, in_output, note)


def _own_video(shot: ShotRequest, entry: LockEntry, store: Store) -> tuple[Output | None, bool]:
    """The video of a shot whose entry holds its current request, and whether the store has it.

    The entry's own video found in the store settles both: the store's index (a database read
    per shot, most of what `status` did at 10,000 shots) is asked only when it does not.
    """
    if entry.output is not None and store.has_object(entry.output):
        return entry.output, True
    cached = store.lookup(shot.key)
    video = entry.output or (cached.output if cached is not None else None)
    return video, cached is not None or (video is not None and store.has_object(video))


def collect_status(shots: Sequence[ShotRequest], lock: LockFile, store: Store,
                   out_dir: Path) -> list[ShotStatus]:
    """One row per shot in storyboard order, then lock entries no longer in it; no network."""
    by_key = lock.by_key()
    folder = os.fspath(out_dir / SHOTS)
    rows = [_shot_row(shot, position, lock.shots.get(shot.id), by_key, store, folder,
                      shot_file_name(position, shot.id, len(shots)))
            for position, shot in enumerate(shots, 1)]
    for shot_id in sorted(set(lock.shots) - {shot.id for shot in shots}):
        entry = lock.shots[shot_id]
        in_cache = entry.output is not None and store.has_object(entry.output)
        rows.append(ShotStatus(shot_id, None, entry.endpoint, None, "removed", entry.task_id,
                               in_cache, False, "no longer in the storyboard"))
    return rows


def apply_refresh(rows: Sequence[ShotStatus],
                  states: Mapping[str, tuple[str, int | None, str]]) -> list[ShotStatus]:
    """Add live answers (status, progress %, reason) by shot id to the notes.

    The state stays what the lock file records: only `apply` changes the lock, so the table
    never claims more than a rerun of `status` without `--refresh` would show.
    """
    merged: list[ShotStatus] = []
    for row in rows:
        live = states.get(row.id)
        if live is None:
            merged.append(row)
            continue
        status, progress, reason = live
        text = f"live: {status.lower()}" + (f" {progress}%" if progress is not None else "")
        text += f": {reason}" if reason else ""
        merged.append(replace(row, note=f"{row.note}; {text}" if row.note else text))
    return merged


def _counts(rows: Sequence[ShotStatus]) -> dict[str, int]:
    return {state: sum(1 for row in rows if row.state == state) for state in STATES}


def render_status_text(rows: Sequence[ShotStatus], storyboard_name: str) -> str:
    """An aligned table for people, then one summary line."""
    shots = [row for row in rows if row.position is not None]
    removed = len(rows) - len(shots)
    head = f"Storyboard {clip(storyboard_name)}: {len(shots)} shots" + (
        f", {removed} removed" if removed else "")
    pad = max(3, len(str(len(shots))))  # as in the file names (outputs.shot_file_name)
    table = [["#", "ID", "STATE", "TASK", "CACHE", "OUT", "NOTE"]]
    for row in rows:
        table.append([f"{row.position:0{pad}d}" if row.position is not None else "-",
                      clip(row.id), row.state, clip(row.task_id or "-"),
                      "yes" if row.in_cache else "-", "yes" if row.in_output else "-",
                      clip(row.note, NOTE_LIMIT)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [head, ""]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                        strict=True)).rstrip()
              for line in table]
    counts = ", ".join(f"{n} {state}" for state, n in _counts(rows).items() if n)
    placed = sum(1 for row in shots if row.in_output)
    lines += ["", f"Status: {counts or 'no shots'}; {placed} of {len(shots)} videos in the "
                  "output folder."]
    return "\n".join(lines)


def render_status_json(rows: Sequence[ShotStatus], storyboard_name: str) -> dict[str, Any]:
    """The same for machines: every row, and the count of every state (zeros included)."""
    shots = [row for row in rows if row.position is not None]
    return {"storyboard": storyboard_name,
            "shots": [asdict(row) for row in rows],
            "summary": _counts(rows),
            "in_output": sum(1 for row in shots if row.in_output),
            "in_cache": sum(1 for row in shots if row.in_cache)}
