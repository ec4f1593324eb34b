from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_pipeline.state.cache import CachedResult, Store, place
from kling_pipeline.state.lockfile import Output

KEY = "k" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "cache")
    try:
        yield store
    finally:
        store.close()


def download(store: Store, data: bytes) -> tuple[Path, str]:
    temp = store.temp_file()
    temp.write_bytes(data)
    return temp, hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# -- objects --------------------------------------------------------------------------------------

def test_temp_files_are_new_empty_parts_in_tmp(store: Store) -> None:
    first, second = store.temp_file(), store.temp_file()
    assert first != second
    for temp in (first, second):
        assert temp.parent == store.tmp and temp.name.startswith("download-")
        assert temp.suffix == ".part" and temp.read_bytes() == b""


def test_ingest_moves_the_download_in_read_only(store: Store) -> None:
    data = b"\x00\x00\x00\x18ftypmp42 a real enough video"
    temp, sha = download(store, data)
    final = store.ingest(temp, sha)
    assert final == store.root / "objects" / sha[:2] / f"{sha}.mp4"
    assert final == store.object_path(sha)
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    assert not temp.exists()
    assert list(store.tmp.iterdir()) == []


def test_a_second_ingest_of_the_same_content_keeps_one_copy(store: Store) -> None:
    data = b"same bytes twice"
    temp1, sha = download(store, data)
    final = store.ingest(temp1, sha)
    inode = final.stat().st_ino
    temp2, sha2 = download(store, data)
    assert sha2 == sha
    assert store.ingest(temp2, sha) == final
    assert not temp2.exists()
    assert final.stat().st_ino == inode and final.read_bytes() == data
    assert files_under(store.objects) == [final]
    assert list(store.tmp.iterdir()) == []


def test_different_contents_are_different_objects(store: Store) -> None:
    finals = [store.ingest(*download(store, bytes([n]) * 100)) for n in range(3)]
    assert len(set(finals)) == 3
    assert files_under(store.objects) == sorted(finals)


def test_has_object_checks_presence_and_size(store: Store) -> None:
    temp, sha = download(store, b"12345")
    store.ingest(temp, sha)
    assert store.has_object(Output(sha, 5, 5.0))
    assert not store.has_object(Output(sha, 6, 5.0))
    assert not store.has_object(Output("f" * 64, 5, 5.0))


# -- the index ------------------------------------------------------------------------------------

def test_record_and_lookup_round_trip(store: Store) -> None:
    temp, sha = download(store, b"video")
    store.ingest(temp, sha)
    result = CachedResult(Output(sha, 5, 5.04), "t-42", "kling-v3.0-pro-t2v")
    store.record(KEY, result)
    assert store.lookup(KEY) == result
    assert store.lookup("other") is None


def test_a_recorded_result_survives_reopening(tmp_path: Path) -> None:
    first = Store(tmp_path / "cache")
    temp, sha = download(first, b"video")
    first.ingest(temp, sha)
    result = CachedResult(Output(sha, 5, 5.0), None, "kling-v1.6-i2v")
    first.record(KEY, result)
    first.close()
    first.close()
    second = Store(tmp_path / "cache")
    try:
        assert second.lookup(KEY) == result
    finally:
        second.close()


def test_record_overwrites_an_older_result(store: Store) -> None:
    outputs = []
    for data in (b"take one", b"take two!"):
        temp, sha = download(store, data)
        store.ingest(temp, sha)
        outputs.append(Output(sha, len(data), 5.0))
    store.record(KEY, CachedResult(outputs[0], "t-1", "e"))
    store.record(KEY, CachedResult(outputs[1], "t-2", "e"))
    assert store.lookup(KEY) == CachedResult(outputs[1], "t-2", "e")


def test_lookup_is_none_when_the_object_was_deleted(store: Store) -> None:
    temp, sha = download(store, b"video")
    final = store.ingest(temp, sha)
    store.record(KEY, CachedResult(Output(sha, 5, 5.0), "t-1", "e"))
    final.unlink()
    assert store.lookup(KEY) is None


def test_lookup_is_none_when_the_size_differs(store: Store) -> None:
    temp, sha = download(store, b"video")
    store.ingest(temp, sha)
    store.record(KEY, CachedResult(Output(sha, 999, 5.0), "t-1", "e"))
    assert store.lookup(KEY) is None


def test_lookup_without_an_index_does_not_create_one(store: Store) -> None:
    assert store.lookup(KEY) is None
    assert not store.root.exists()
    store.root.mkdir()
    assert store.lookup(KEY) is None
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("raw", [
    "not json", "[]", "{}", '{"sha256": "a", "size": "many", "duration": 5, "endpoint": "e"}',
    '{"sha256": "a", "size": 5, "duration": 5}', 42,
])
def test_a_damaged_index_entry_is_a_miss(tmp_path: Path, raw: object) -> None:
    import diskcache

    index = diskcache.Cache(str(tmp_path / "cache" / "index"))
    index[KEY] = raw
    index.close()
    store = Store(tmp_path / "cache")
    try:
        assert store.lookup(KEY) is None
    finally:
        store.close()


# -- clean_tmp ------------------------------------------------------------------------------------

def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_clean_tmp_removes_only_old_parts(store: Store) -> None:
    old, fresh, recent = store.temp_file(), store.temp_file(), store.temp_file()
    age(old, 25 * 3600)
    age(recent, 23 * 3600)
    other_old = store.tmp / "notes.txt"
    other_old.write_text("keep me")
    age(other_old, 30 * 24 * 3600)
    foreign_part = store.tmp / "upload-1.part"
    foreign_part.write_text("not ours")
    age(foreign_part, 30 * 24 * 3600)
    store.clean_tmp()
    assert not old.exists()
    assert fresh.exists() and recent.exists() and other_old.exists() and foreign_part.exists()


def test_clean_tmp_without_a_tmp_folder(store: Store) -> None:
    store.clean_tmp()
    assert not store.tmp.exists()


# -- place ----------------------------------------------------------------------------------------

@pytest.fixture
def obj(store: Store) -> Path:
    temp, sha = download(store, b"the video bytes")
    return store.ingest(temp, sha)


def test_place_hard_links(obj: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "shots" / "01-establishing.mp4"
    place(obj, dest)
    assert dest.read_bytes() == b"the video bytes"
    assert dest.stat().st_ino == obj.stat().st_ino and dest.samefile(obj)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["01-establishing.mp4"]


def test_place_twice_is_a_no_op(obj: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "a.mp4"
    place(obj, dest)
    place(obj, dest)
    assert dest.samefile(obj) and obj.stat().st_nlink == 2
    assert [p.name for p in dest.parent.iterdir()] == ["a.mp4"]


def test_place_replaces_another_file_atomically(store: Store, obj: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "a.mp4"
    dest.parent.mkdir()
    dest.write_bytes(b"an older take")
    reader = dest.open("rb")
    try:
        place(obj, dest)
        assert reader.read() == b"an older take"  # an open reader keeps the old file whole
    finally:
        reader.close()
    assert dest.samefile(obj) and dest.read_bytes() == b"the video bytes"
    other = store.ingest(*download(store, b"another video"))
    place(other, dest)
    assert dest.samefile(other) and not dest.samefile(obj)
    assert [p.name for p in dest.parent.iterdir()] == ["a.mp4"]


def test_place_recovers_from_a_stale_temp(obj: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "a.mp4"
    dest.parent.mkdir()
    (dest.parent / ".a.mp4.tmp").write_bytes(b"left by a killed run")
    place(obj, dest)
    assert dest.samefile(obj)
    assert [p.name for p in dest.parent.iterdir()] == ["a.mp4"]


def test_place_copies_where_a_link_is_impossible(obj: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    dest = tmp_path / "other-disk" / "a.mp4"
    place(obj, dest)
    assert dest.read_bytes() == obj.read_bytes()
    assert not dest.samefile(obj)
    assert [p.name for p in dest.parent.iterdir()] == ["a.mp4"]


def test_an_object_found_whole_is_not_looked_for_again_in_the_same_store(store: Store) -> None:
    """One command asks for each object twice (its jobs, then the folder): the second
    answer comes from the first. A new Store (the next command) looks again."""
    temp, sha = download(store, b"12345")
    store.ingest(temp, sha)
    assert store.has_object(Output(sha, 5, 5.0))
    path = store.object_path(sha)
    path.chmod(0o644)
    path.unlink()
    assert store.has_object(Output(sha, 5, 5.0))  # remembered: nothing deletes under a run
    assert not Store(store.root).has_object(Output(sha, 5, 5.0))
    assert not store.has_object(Output(sha, 6, 5.0))  # another size is another question
