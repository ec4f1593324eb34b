"""The folder's recipe: a sync whose inputs and files are as the last whole sync left them
does nothing at all (not even read the manifest); any change to an input or a file is a full
sync that puts the folder right.

Each test applies a two-shot storyboard over the simulator, then calls the folder's sync the
way `Project.apply` does, recording every step it takes (`checkpoint` hears of each file it is
about to look at or write): a no-op sync takes none.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.apply_fixtures import apply, write_board
from support.simulator_fixtures import SimClient

from kling_pipeline import Project
from kling_pipeline.output.folder import FolderResult, OutputFolder
from kling_pipeline.output.manifest import read_manifest
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import LockFile, read_lock

SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water")]


@pytest.fixture
def board(tmp_path: Path, sim: SimClient) -> Path:
    """A storyboard of two shots applied once: the folder is whole, its recipe recorded."""
    path = write_board(tmp_path, SHOTS)
    result = apply(path, sim.base_url)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def store(board: Path) -> Iterator[Store]:
    opened = Store(Project.open(board).target.store_root)
    yield opened
    opened.close()


def lock(board: Path) -> LockFile:
    project = Project.open(board)
    return read_lock(project.target.lock_path, project.name)


def sync(board: Path, store: Store, lock_file: LockFile | None = None, *,
         build_final: bool = True) -> tuple[FolderResult, list[str]]:
    """The folder's sync as apply runs it (with a Store of its own, as each command has);
    the steps it took."""
    project = Project.open(board)
    own = Store(store.root)
    try:
        folder = OutputFolder(project.target.out_dir, list(project.validate().shots), own,
                              storyboard=project.name, simulated=False)
        steps: list[str] = []
        result = folder.sync(lock_file or lock(board), build_final=build_final,
                             checkpoint=steps.append)
    finally:
        own.close()
    return result, steps


def out(board: Path) -> Path:
    return board.parent / "renders" / "demo"


def test_a_noop_sync_takes_no_step_and_reports_what_the_folder_holds(
        board: Path, store: Store) -> None:
    result, steps = sync(board, store)
    assert steps == []
    written = read_manifest(out(board) / "manifest.json")
    assert written is not None
    assert result.final == written.final and result.final is not None
    assert (result.shots, result.absent, result.rendered) == (2, (), 2)
    assert not result.final_built and result.strangers == [] and result.problems == []
    assert result.manifest == written  # read from the file when asked


def test_a_changed_lock_entry_is_a_full_sync(board: Path, store: Store) -> None:
    changed = lock(board)
    entry = changed.shots["gulls"]
    changed.shots["gulls"] = dataclasses.replace(entry, task_id="another-task")
    result, steps = sync(board, store, changed)
    assert "shots" in steps
    assert [shot.task_id for shot in result.manifest.shots][1] == "another-task"
    assert read_manifest(out(board) / "manifest.json") == result.manifest
    # ... and that lock's recipe is the one recorded now
    assert sync(board, store, changed)[1] == []


def test_a_video_gone_from_the_store_takes_the_shot_out_of_the_folder(
        board: Path, store: Store) -> None:
    entry = lock(board).shots["harbour"]
    assert entry.output is not None
    store.object_path(entry.output.sha256).unlink()
    result, steps = sync(board, store)
    assert steps and result.absent == (("harbour", "done"),)
    assert result.manifest.shots[0].file is None
    assert "not in the local cache" in (result.manifest.shots[0].error or "")
    assert not (out(board) / "shots" / "001-harbour.mp4").exists()


@pytest.mark.parametrize("name", ["shots/002-gulls.mp4", "thumbs/001-harbour.jpg",
                                  "final.mp4", "index.html", "manifest.json"])
def test_a_deleted_file_is_a_full_sync_that_puts_it_back(
        board: Path, store: Store, name: str) -> None:
    path = out(board) / name
    before = path.read_bytes()
    path.unlink()
    steps = sync(board, store)[1]
    assert steps and path.read_bytes() == before
    assert sync(board, store)[1] == []


def test_a_touched_file_is_checked_again(board: Path, store: Store) -> None:
    path = out(board) / "thumbs" / "002-gulls.jpg"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sync(board, store)[1]
    assert sync(board, store)[1] == []


def test_a_noop_sync_still_names_strangers_and_sweeps_dead_temp_files(
        board: Path, store: Store) -> None:
    (out(board) / "shots" / "notes.txt").write_text("mine")
    (out(board) / ".final.mp4.tmp").write_bytes(b"left by a kill")
    result, steps = sync(board, store)
    assert steps == []
    assert result.strangers == ["shots/notes.txt"]
    assert not (out(board) / ".final.mp4.tmp").exists()
    assert (out(board) / "shots" / "notes.txt").read_text() == "mine"


def test_an_interrupted_sync_that_drops_the_cut_records_no_recipe(
        board: Path, store: Store) -> None:
    changed = lock(board)
    del changed.shots["gulls"]  # the cut no longer matches; an interrupted run may not build
    result, steps = sync(board, store, changed, build_final=False)
    assert steps and result.final is None and not (out(board) / "final.mp4").exists()
    again, steps = sync(board, store, changed, build_final=True)
    assert steps, "a folder without its cut is not whole: the next sync must make it"
    assert again.final_built and (out(board) / "final.mp4").exists()
    assert sync(board, store, changed)[1] == []


def test_apply_of_other_shots_names_a_video_the_store_lost(
        board: Path, store: Store, sim: SimClient) -> None:
    """Regression: the record of a done shot whose video left the store was made with two
    `error` values, and the sync of any apply that did not fetch it back (`--only` another
    shot) ended in a TypeError."""
    entry = lock(board).shots["harbour"]
    assert entry.output is not None
    store.object_path(entry.output.sha256).unlink()
    result = apply(board, sim.base_url, "--only", "gulls")
    assert result.exit_code == 0, result.output
    shots = {shot.id: shot for shot in Project.open(board).manifest().shots}  # type: ignore[union-attr]
    assert shots["harbour"].file is None and "not in the local cache" in str(shots["harbour"].error)
    assert shots["gulls"].file == "shots/002-gulls.mp4"


def test_strangers_are_remembered_while_the_folders_hold_the_same_names(
        board: Path, store: Store) -> None:
    (out(board) / "notes.txt").write_text("mine")
    assert sync(board, store)[0].strangers == ["notes.txt"]
    assert sync(board, store)[0].strangers == ["notes.txt"]  # from the recipe's record
    (out(board) / "notes.txt").write_text("mine, longer")  # in place: still a stranger
    assert sync(board, store)[0].strangers == ["notes.txt"]
    (out(board) / "notes.txt").unlink()
    (out(board) / "thumbs" / "cover.png").write_bytes(b"also mine")
    result, steps = sync(board, store)
    assert steps == [] and result.strangers == ["thumbs/cover.png"]
