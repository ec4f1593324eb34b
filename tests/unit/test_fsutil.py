"""fsutil on real files: atomic_write_bytes (durable or not) writes the whole data, makes the
parent folders, leaves no temp file, gives the file 0o666 & ~umask (not mkstemp's 0600), replaces
an old file whole, and on a failed write keeps the old file as it was; sha256_file hashes a
file's bytes; size_or_none gives a file's size, or None when there is no file."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from kling_pipeline.fsutil import atomic_write_bytes, sha256_file, size_or_none

DURABLE = pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temps(folder: Path) -> list[str]:
    """Temp files atomic_write_bytes names `.<name>.<random>.tmp`."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@DURABLE
def test_the_file_holds_the_data(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "out.bin"
    data = bytes(range(256)) * 100
    atomic_write_bytes(path, data, durable=durable)
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == ["out.bin"]


@DURABLE
def test_empty_data_makes_an_empty_file(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "empty"
    atomic_write_bytes(path, b"", durable=durable)
    assert path.read_bytes() == b""
    assert _temps(tmp_path) == []


@DURABLE
def test_parent_folders_are_made(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "a" / "b" / "c" / "out.json"
    atomic_write_bytes(path, b"{}", durable=durable)
    assert path.read_bytes() == b"{}"
    assert os.listdir(path.parent) == ["out.json"]


@DURABLE
def test_the_mode_follows_the_umask_not_mkstemp(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "shared.lock"
    atomic_write_bytes(path, b"x", durable=durable)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # mkstemp alone gives 0600


@DURABLE
def test_a_replaced_file_gets_the_umask_mode_too(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "shared.lock"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write_bytes(path, b"new", durable=durable)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


@DURABLE
def test_a_replaced_file_is_replaced_whole(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "out.txt"
    atomic_write_bytes(path, b"a much longer old content\n" * 50, durable=durable)
    old_inode = path.stat().st_ino
    atomic_write_bytes(path, b"short", durable=durable)
    assert path.read_bytes() == b"short"  # no tail of the old bytes
    assert path.stat().st_ino != old_inode  # a new file renamed over, not rewritten in place
    assert os.listdir(tmp_path) == ["out.txt"]


@DURABLE
def test_a_reader_holding_the_old_file_still_reads_it_whole(tmp_path: Path,
                                                            durable: bool) -> None:
    path = tmp_path / "out.txt"
    atomic_write_bytes(path, b"old bytes", durable=durable)
    with path.open("rb") as reader:
        atomic_write_bytes(path, b"new", durable=durable)
        assert reader.read() == b"old bytes"
    assert path.read_bytes() == b"new"


@DURABLE
def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "out.txt"
    path.write_bytes(b"old content")
    path.chmod(0o640)
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes", durable=durable)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["out.txt"]


@DURABLE
def test_a_failed_first_write_leaves_no_file(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "sub" / "out.txt"
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes", durable=durable)  # type: ignore[arg-type]
    assert not path.exists()
    assert os.listdir(path.parent) == []  # the folder was made, but holds nothing


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(1 << 20) + b"tail"  # more than one read block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_sha256_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(path) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_sha256_differs_when_one_byte_does(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"abc")
    two.write_bytes(b"abd")
    assert sha256_file(one) != sha256_file(two)


def test_sha256_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_size_or_none_gives_the_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    assert size_or_none(path) == 5
    assert size_or_none(str(path)) == 5
    path.write_bytes(b"")
    assert size_or_none(path) == 0  # an empty file is 0, not None


def test_size_or_none_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert size_or_none(tmp_path / "missing") is None
    assert size_or_none(tmp_path / "no-folder" / "missing") is None


def test_size_or_none_under_a_file_is_none(tmp_path: Path) -> None:
    """A path through a file (ENOTDIR) is not there either."""
    (tmp_path / "file").write_bytes(b"x")
    assert size_or_none(tmp_path / "file" / "child") is None
