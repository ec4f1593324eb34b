from __future__ import annotations

import json
from pathlib import Path

import pytest

from kling_pipeline.errors import LockFileError
from kling_pipeline.state.lockfile import (
    LockEntry,
    LockFile,
    Output,
    dumps_lock,
    read_lock,
    write_lock,
)


def entry(key: str = "k" * 64, **changes: object) -> LockEntry:
    values: dict[str, object] = {"key": key, "key_scheme": 1, "endpoint": "kling-v3.0-pro-t2v",
                                 "request": {"prompt": "p", "duration": 5}, "status": "done",
                                 "task_id": "t-1", "submitted_at": "2026-11-22T00:00:00Z",
                                 "output": Output("a" * 64, 1234, 5.0)}
    values.update(changes)
    return LockEntry(**values)  # type: ignore[arg-type]


def test_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    lock = LockFile("demo", {"b": entry("b" * 64), "a": entry("a" * 64, status="queued",
                                                               output=None)})
    path = tmp_path / "demo.lock.json"
    write_lock(path, lock)
    assert read_lock(path, "demo") == lock
    reordered = LockFile("demo", dict(reversed(list(lock.shots.items()))))
    assert dumps_lock(reordered) == path.read_bytes()
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and text.endswith("}\n")
    assert "null" not in text  # unset fields are left out, not written as null


def test_missing_lock_is_empty(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "none.lock.json", "demo") == LockFile("demo")


@pytest.mark.parametrize(("content", "expected"), [
    ('{"lock_version": 1, "shots": {\n<<<<<<< HEAD\n}}', "demo.lock.json:2:1: the lock file "
                                                         "is not valid JSON"),
    ('{"lock_version": 7, "shots": {}}', "lock_version is 7"),
    ('{"lock_version": 1, "shots": []}', "`shots` must be a mapping"),
    ('{"lock_version": 1, "shots": {"a": {"key": "k"}}}', "missing fields"),
    ('{"lock_version": 1, "shots": {"a": {"key": "k", "key_scheme": 1, "endpoint": "e", '
     '"request": {}, "status": "exploded"}}}', "'exploded' is not one of"),
])
def test_bad_lock_files_are_named_and_explained(tmp_path: Path, content: str,
                                                expected: str) -> None:
    path = tmp_path / "demo.lock.json"
    path.write_text(content)
    with pytest.raises(LockFileError) as caught:
        read_lock(path, "demo")
    assert expected in str(caught.value)


def test_a_lock_file_that_is_not_utf8_is_named_not_a_crash(tmp_path: Path) -> None:
    """Regression: invalid UTF-8 raised a bare UnicodeDecodeError (a 'bug', exit 3)."""
    path = tmp_path / "demo.lock.json"
    path.write_bytes(b'{"lock_version": 1, "shots": {"caf\xe9": {}}}')
    with pytest.raises(LockFileError, match=r"not UTF-8 text \(byte 34 is 0xe9\)"):
        read_lock(path, "demo")


def test_no_temp_file_is_left_behind(tmp_path: Path) -> None:
    write_lock(tmp_path / "x.lock.json", LockFile("x", {"a": entry()}))
    write_lock(tmp_path / "x.lock.json", LockFile("x", {"a": entry(status="failed",
                                                                   error="ILLEGAL_PROMPT")}))
    assert [p.name for p in tmp_path.iterdir()] == ["x.lock.json"]
    data = json.loads((tmp_path / "x.lock.json").read_text())
    assert data["shots"]["a"]["error"] == "ILLEGAL_PROMPT"


def _reference_bytes(lock: LockFile) -> bytes:
    """The format's definition: one json.dumps of the whole document."""
    data = {"lock_version": 1, "storyboard": lock.storyboard,
            "shots": {k: {f: (v.__dict__ if isinstance(v, Output) else v)
                          for f, v in vars(lock.shots[k]).items() if v is not None}
                      for k in lock.shots}}
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@pytest.mark.parametrize("shots", [
    {},
    {"a": entry()},
    {"wave-1": entry("1" * 64), "ünï-çødé": entry("2" * 64, request={
        "prompt": "Ein Leuchtturm \u00fcber\n\"Wellen\"", "multi_prompt": [
            {"prompt": "x", "duration": 3}], "cfg_scale": 0.5}), "z": entry(status="failed",
                                                                               error="no")},
])
def test_entry_fragments_give_the_bytes_of_one_json_dump(shots: dict[str, LockEntry]) -> None:
    from kling_pipeline.state.lockfile import LockText

    lock = LockFile("démo", dict(shots))
    text = LockText()
    assert text.render(lock) == _reference_bytes(lock)
    if shots:  # a changed entry is rendered again, unchanged ones reused
        first = sorted(shots)[0]
        lock.shots[first] = lock.shots[first].with_status("processing")
        assert text.render(lock) == _reference_bytes(lock)
        del lock.shots[first]
        assert text.render(lock) == _reference_bytes(lock)
