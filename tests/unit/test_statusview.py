from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kling_pipeline.output.names import shot_file_name
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output
from kling_pipeline.storyboard.load import load_storyboard
from kling_pipeline.storyboard.render import ShotRequest
from kling_pipeline.views.status import (
    NOT_DOWNLOADED,
    STATES,
    UNCONFIRMED,
    ShotStatus,
    apply_refresh,
    collect_status,
    render_status_json,
    render_status_text,
)

BOARD = "version: 1\nname: demo\ndefaults: {model: kling-v3.0-pro-t2v, duration: 5}\nshots:\n"
# The storyboard's shots in order, with the status of each one's lock entry (boat has none).
STATUS_OF = {"harbour": "done", "dawn": "done", "pier": "done", "boat": "", "gulls": "queued",
             "waves": "processing", "rain": "rendered", "mist": "submitting", "fog": "unknown",
             "storm": "failed", "night": "lost"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "cache")
    yield opened
    opened.close()


def load(write_storyboard: Callable[[str], Path], ids: list[str]) -> list[ShotRequest]:
    """Shots with these ids, prompted by their id; 'pier' lasts 8 s, the others 5 s."""
    text = BOARD + "".join(f"  - {{id: {i}, prompt: {i}{', duration: 8' * (i == 'pier')}}}\n"
                           for i in ids)
    return load_storyboard(write_storyboard(text), use_cache=False).shots


def entry(shot: ShotRequest, status: str, **fields: Any) -> LockEntry:
    """The entry a run would have written for `shot`; `fields` override any field."""
    return LockEntry(**{"key": shot.key, "key_scheme": 1, "endpoint": shot.endpoint,
                        "request": shot.body, "status": status, "take": shot.take,
                        "task_id": f"task-{shot.id}", **fields})


def put_video(store: Store, data: bytes) -> Output:
    """A real object in the store, as a download would leave it."""
    temp, sha = store.temp_file(), hashlib.sha256(data).hexdigest()
    temp.write_bytes(data)
    store.ingest(temp, sha)
    return Output(sha, len(data), 5.0)


def place_file(out_dir: Path, name: str, data: bytes) -> None:
    (out_dir / "shots").mkdir(parents=True, exist_ok=True)
    (out_dir / "shots" / name).write_bytes(data)


@pytest.fixture
def rows(write_storyboard: Callable[[str], Path], store: Store,
         tmp_path: Path) -> list[ShotStatus]:
    """One shot per state; harbour's video is in the cache and the output folder."""
    shots = {s.id: s for s in load(write_storyboard, list(STATUS_OF))}
    video = put_video(store, b"harbour video")
    store.record(shots["harbour"].key, CachedResult(video, "task-harbour", "kling-v3.0-pro-t2v"))
    place_file(tmp_path / "out", "001-harbour.mp4", b"harbour video")
    extra: dict[str, dict[str, Any]] = {
        "harbour": {"output": video}, "dawn": {"output": Output("d" * 64, 99, 5.0)},
        "storm": {"error": "ILLEGAL_PROMPT: not allowed"},
        "pier": {"key": "e" * 64, "request": {**shots["pier"].body, "duration": 5}}}
    lock = LockFile("demo", {i: entry(shots[i], status, **extra.get(i, {}))
                             for i, status in STATUS_OF.items() if status})
    lock.shots["dusk"] = entry(shots["boat"], "done", key="f" * 64, task_id="task-dusk")
    return collect_status(list(shots.values()), lock, store, tmp_path / "out")


def test_shot_file_name_pads_to_the_storyboard_size() -> None:
    assert shot_file_name(1, "harbour", 11) == "001-harbour.mp4"
    assert shot_file_name(42, "a", 999) == "042-a.mp4"
    assert shot_file_name(7, "a", 1000) == "0007-a.mp4"
    for bad in (0, 4):
        with pytest.raises(ValueError, match=rf"position {bad} is not in 1\.\.3"):
            shot_file_name(bad, "a", 3)


def test_every_state_with_marks_and_notes(rows: list[ShotStatus]) -> None:
    got = [(row.id, (row.position, row.state, row.task_id, row.in_cache, row.in_output,
                     row.note)) for row in rows]
    flying, maybe = "task {}: the next apply picks it up", UNCONFIRMED
    assert got == list({  # storyboard order, then lock entries no longer in the storyboard
        "harbour": (1, "done", "task-harbour", True, True, ""),
        "dawn": (2, "done", "task-dawn", False, False, NOT_DOWNLOADED),
        "pier": (3, "changed", None, False, False, "edited since the lock: duration"),
        "boat": (4, "new", None, False, False, "never submitted"),
        "gulls": (5, "queued", "task-gulls", False, False, flying.format("queued")),
        "waves": (6, "processing", "task-waves", False, False, flying.format("processing")),
        "rain": (7, "rendered", "task-rain", False, False, flying.format("rendered")),
        "mist": (8, "unknown", "task-mist", False, False, maybe),
        "fog": (9, "unknown", "task-fog", False, False, maybe),
        "storm": (10, "failed", "task-storm", False, False, "ILLEGAL_PROMPT: not allowed"),
        "night": (11, "lost", "task-night", False, False, "its task can no longer be fetched"),
        "dusk": (None, "removed", "task-dusk", False, False, "no longer in the storyboard"),
    }.items())
    assert (rows[2].endpoint, rows[2].duration, rows[-1].duration) == (rows[0].endpoint, 8, None)


def test_cache_and_output_cases(write_storyboard: Callable[[str], Path], store: Store,
                                tmp_path: Path) -> None:
    shots = load(write_storyboard, ["cached", "wrong-size", "edited", "keeper", "from-elsewhere",
                                    "no-task"])
    out = tmp_path / "out"
    one, two, three, four, five = (put_video(store, f"video {n}".encode() * n)
                                   for n in range(1, 6))
    store.record(shots[4].key, CachedResult(five, "task-x", shots[4].endpoint))
    place_file(out, "002-wrong-size.mp4", b"truncated")
    place_file(out, "003-edited.mp4", b"video 3" * 3)  # the video of the old request
    place_file(out, "004-keeper.mp4", b"video 4" * 4)
    lock = LockFile("demo", {
        "cached": entry(shots[0], "done", output=one),
        "wrong-size": entry(shots[1], "done", output=two),
        "edited": entry(shots[2], "done", output=three, key="e" * 64,
                        request={**shots[2].body, "prompt": "old"}),
        "lamp": entry(shots[3], "done", output=four),  # renamed to keeper
        "no-task": entry(shots[5], "done", output=Output("a" * 64, 1, 5.0), task_id=None),
    })
    got = {row.id: (row.state, row.in_cache, row.in_output, row.note)
           for row in collect_status(shots, lock, store, out)}
    cached = "in the local cache; apply puts it in the output folder"
    assert got == {
        "cached": ("done", True, False, cached),
        "wrong-size": ("done", True, False,
                       f"002-wrong-size.mp4 differs from the recorded video; {cached}"),
        "edited": ("changed", False, False,
                   "edited since the lock: prompt; 003-edited.mp4 is still the previous video"),
        "keeper": ("new", True, True, "same request as 'lamp' (done): no new charge"),
        "from-elsewhere": ("new", True, False,
                           "same request as a video in the local cache: no new charge"),
        "no-task": ("done", False, False,
                    "video not downloaded here, and no task id is recorded to fetch it by"),
        "lamp": ("removed", True, False, "no longer in the storyboard"),
    }


def test_text_table(rows: list[ShotStatus]) -> None:
    lines = render_status_text(rows, "demo").splitlines()
    assert lines[0] == "Storyboard demo: 11 shots, 1 removed"
    assert lines[2].split() == ["#", "ID", "STATE", "TASK", "CACHE", "OUT", "NOTE"]
    assert lines[3].split() == ["001", "harbour", "done", "task-harbour", "yes", "yes"]
    assert lines[14].split()[:2] == ["-", "dusk"]
    state_col, note_col = lines[2].index("STATE"), lines[2].index("NOTE")
    assert [line[state_col:].split()[0] for line in lines[3:15]] == [r.state for r in rows]
    assert lines[4][note_col:] == NOT_DOWNLOADED
    assert lines[5][note_col:] == "edited since the lock: duration"
    assert lines[3].index("yes") == lines[2].index("CACHE")
    assert lines[-1] == ("Status: 2 done, 1 changed, 1 new, 1 queued, 1 processing, 1 rendered, "
                         "2 unknown, 1 failed, 1 lost, 1 removed; 1 of 11 videos in the output "
                         "folder.")
    assert all(line == line.rstrip() for line in lines)
    empty = render_status_text([], "x").splitlines()
    assert empty[-1] == "Status: no shots; 0 of 0 videos in the output folder."


def test_json(rows: list[ShotStatus]) -> None:
    doc = render_status_json(rows, "demo")
    assert json.loads(json.dumps(doc))["storyboard"] == "demo"  # plain JSON types only
    assert doc["shots"][0] == {"id": "harbour", "position": 1, "endpoint": "kling-v3.0-pro-t2v",
                               "duration": 5, "state": "done", "task_id": "task-harbour",
                               "in_cache": True, "in_output": True, "note": ""}
    assert doc["shots"][-1]["position"] is None and doc["shots"][-1]["state"] == "removed"
    assert list(doc["summary"]) == list(STATES)
    assert doc["summary"] == {"done": 2, "changed": 1, "new": 1, "waiting": 0, "queued": 1,
                              "processing": 1, "rendered": 1, "unknown": 2, "failed": 1,
                              "lost": 1, "removed": 1}
    assert (doc["in_output"], doc["in_cache"]) == (1, 1)


def test_apply_refresh(rows: list[ShotStatus]) -> None:
    live = {"waves": ("PROCESSING", 40, ""), "gulls": ("QUEUED", None, ""),
            "rain": ("FAILED", None, "RENDER_ERROR"), "harbour": ("SUCCEED", 100, ""),
            "not-a-shot": ("SUCCEED", 100, "")}
    merged = {row.id: row for row in apply_refresh(rows, live)}
    assert merged["waves"].note == ("task processing: the next apply picks it up; "
                                    "live: processing 40%")
    assert merged["gulls"].note.endswith("; live: queued")
    assert merged["rain"].note.endswith("; live: failed: RENDER_ERROR")
    assert merged["rain"].state == "rendered"  # the lock's record; only apply changes it
    assert [row.id for row in apply_refresh(rows, live)] == [row.id for row in rows]
    assert all(merged[row.id] == row for row in rows if row.id not in live)
    assert merged["harbour"].note == "live: succeed 100%"  # no note before: no "; "
