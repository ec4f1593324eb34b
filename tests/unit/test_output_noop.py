"""A rerun of apply with nothing to do: it writes nothing, yet still leaves the folder whole.

The folder's files are trusted by their stamps (size, mtime_ns, inode, device, kept in the
store): these tests change the folder the ways a person or a tool does (delete a file, change a
byte, touch one, reformat the manifest, lose the stamps) and check that the next apply notices
and puts back exactly what is wrong, and that a rerun after it touches nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support.apply_fixtures import apply, write_board
from support.simulator_fixtures import SimClient

from kling_pipeline.output.stamps import FolderStamps

SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water")]
MADE = ["index.html", "manifest.json", "final.mp4", "shots/001-harbour.mp4",
        "shots/002-gulls.mp4", "thumbs/001-harbour.jpg", "thumbs/002-gulls.jpg"]


@pytest.fixture
def board(tmp_path: Path, sim: SimClient) -> Path:
    """A storyboard of two shots applied once: the folder is whole."""
    path = write_board(tmp_path, SHOTS)
    result = apply(path, sim.base_url)
    assert result.exit_code == 0, result.output
    return path


def folder_of(board: Path) -> Path:
    return board.parent / "renders" / "demo"


def rerun(board: Path, sim: SimClient) -> Result:
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    return result


def stamps_of(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file apply made, and of the folders holding them."""
    paths = [*MADE, ".", "shots", "thumbs"]
    return {name: (os.stat(folder / name).st_ino, os.stat(folder / name).st_mtime_ns)
            for name in paths}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def stamps_file(board: Path) -> Path:
    folder = folder_of(board)
    return FolderStamps(folder, board.parent / ".kling-cache").path


def test_a_noop_apply_writes_nothing_in_the_folder_nor_its_stamps(
        board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    before, kept = stamps_of(folder), os.stat(stamps_file(board)).st_mtime_ns
    result = rerun(board, sim)
    assert "(unchanged)" in result.output and "making final.mp4" not in result.output
    assert stamps_of(folder) == before
    assert os.stat(stamps_file(board)).st_mtime_ns == kept


def test_a_deleted_shot_video_and_thumbnail_are_put_back(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    video, thumb = folder / "shots/002-gulls.mp4", folder / "thumbs/002-gulls.jpg"
    digest, picture = sha256(video), thumb.read_bytes()
    final = stamps_of(folder)["final.mp4"]
    video.unlink()
    thumb.unlink()
    rerun(board, sim)
    assert sha256(video) == digest == manifest_of(folder)["shots"][1]["sha256"]
    assert thumb.read_bytes() == picture
    assert stamps_of(folder)["final.mp4"] == final  # the same shots: the same cut, kept
    after = stamps_of(folder)
    rerun(board, sim)
    assert stamps_of(folder) == after


def test_a_replaced_shot_video_is_linked_again(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    video = folder / "shots/001-harbour.mp4"
    digest = sha256(video)
    video.unlink()
    shutil.copyfile(folder / "shots/002-gulls.mp4", video)  # another shot's video in its place
    rerun(board, sim)
    assert sha256(video) == digest


def test_a_changed_byte_in_the_final_cut_is_noticed_and_the_cut_rebuilt(
        board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    cut = folder / "final.mp4"
    good = sha256(cut)
    assert manifest_of(folder)["final"]["sha256"] == good
    with cut.open("r+b") as handle:  # same size, one byte different, in place
        handle.seek(cut.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert sha256(cut) != good
    result = rerun(board, sim)
    assert "making final.mp4" in result.output and "(rebuilt)" in result.output
    assert sha256(cut) == manifest_of(folder)["final"]["sha256"]


def test_a_touched_final_cut_with_the_same_bytes_is_kept(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    cut = folder / "final.mp4"
    os.utime(cut, ns=(1_000_000_000, 1_000_000_000))
    inode = cut.stat().st_ino
    result = rerun(board, sim)
    assert "making final.mp4" not in result.output and "(unchanged)" in result.output
    assert cut.stat().st_ino == inode  # hashed, found right, not rewritten


def test_an_edited_page_or_manifest_is_written_again(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    page, manifest = (folder / "index.html").read_bytes(), (folder / "manifest.json").read_bytes()
    (folder / "index.html").write_text("<p>someone's notes</p>")
    (folder / "manifest.json").write_text(json.dumps(json.loads(manifest)))  # same data, one line
    rerun(board, sim)
    assert (folder / "index.html").read_bytes() == page
    assert (folder / "manifest.json").read_bytes() == manifest


def test_a_record_edited_in_the_manifest_is_made_again_from_the_lock(
        board: Path, sim: SimClient) -> None:
    """The same layout, one value changed by hand: a rerun reuses last run's records only
    from a manifest it wrote itself, so the edit does not survive."""
    folder = folder_of(board)
    manifest = (folder / "manifest.json").read_text()
    assert '"prompt": "A harbour at dawn"' in manifest
    (folder / "manifest.json").write_text(
        manifest.replace('"prompt": "A harbour at dawn"', '"prompt": "A harbour at dusk"'))
    rerun(board, sim)
    assert (folder / "manifest.json").read_text() == manifest


def test_a_changed_thumbnail_is_made_again(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    thumb = folder / "thumbs/001-harbour.jpg"
    picture = thumb.read_bytes()
    thumb.write_bytes(picture[:100])
    rerun(board, sim)
    assert thumb.read_bytes() == picture


def test_lost_stamps_cost_a_check_not_a_write(board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    before = stamps_of(folder)
    stamps_file(board).unlink()
    result = rerun(board, sim)
    assert "(unchanged)" in result.output
    assert stamps_of(folder) == before
    assert stamps_file(board).is_file()


def test_a_folder_from_before_stamps_keeps_its_cut_and_learns_its_digest(
        board: Path, sim: SimClient) -> None:
    folder = folder_of(board)
    data = manifest_of(folder)
    del data["final"]["sha256"]  # as written before the digest was kept
    (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    stamps_file(board).unlink()
    cut = stamps_of(folder)["final.mp4"]
    result = rerun(board, sim)
    assert "(unchanged)" in result.output and stamps_of(folder)["final.mp4"] == cut
    assert manifest_of(folder)["final"]["sha256"] == sha256(folder / "final.mp4")
