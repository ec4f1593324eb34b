"""RemoteStore's reading of objects and index entries (fsspec's in-memory file system and a
folder stand for any backend)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from kling_pipeline.remote.store import IndexEntry, RemoteStore
from kling_pipeline.remote.url import RemoteSpec


@pytest.mark.parametrize("kind", ["memory", "folder"])
def test_an_object_arrives_whole_and_hashed_on_the_way(kind: str, tmp_path: Path) -> None:
    url = f"memory://t/{uuid.uuid4().hex}" if kind == "memory" else str(tmp_path / "remote")
    store = RemoteStore(RemoteSpec(url))
    data = os.urandom(1 << 20) * 33 + b"tail"  # more than two of the ranges an object store
    sha = hashlib.sha256(data).hexdigest()     # is asked for at a time (16 MiB)
    path = store.object_path(sha)
    store.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    store.fs.pipe_file(path, data)
    for size in (len(data), None):
        dest = tmp_path / f"got-{size}"
        assert store.get_object(sha, dest, size) == sha
        assert dest.read_bytes() == data
    if kind == "memory":  # an object store reads what the listing said: one grown since
        short = tmp_path / "short"  # then does not hash to its name (refused by the caller)
        assert store.get_object(sha, short, len(data) - 4) != sha


def _entry(**changes: object) -> bytes:
    fields = {"format": 1, "sha256": "ab" * 32, "size": 10, "duration": 3.0,
              "task_id": "t-1", "endpoint": "kling-v3.0-pro-t2v", **changes}
    return json.dumps(fields).encode()


def test_an_index_entry_is_read_only_when_every_field_has_its_type() -> None:
    assert IndexEntry.parse(_entry()) == IndexEntry("ab" * 32, 10, 3.0, "t-1",
                                                    "kling-v3.0-pro-t2v")
    assert IndexEntry.parse(_entry(task_id=None)) is not None
    for bad in (b"not json", b"[]", _entry(sha256="AB" * 32), _entry(size="10"),
                _entry(size=0), _entry(size=True), _entry(duration=True),
                _entry(duration=-1), _entry(endpoint=None), _entry(task_id=7)):
        assert IndexEntry.parse(bad) is None, bad


def _nested(depth: int = 100_000) -> bytes:
    return b"[" * depth


def test_a_deeply_nested_index_entry_is_refused_not_a_crash() -> None:
    assert IndexEntry.parse(_nested()) is None
