"""`kling-pipeline gc` end to end: real renders from the simulator, then the cache cleaned."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner, Result
from support.apply_fixtures import apply, lock_of, write_board
from support.chains import HEAD, A, B
from support.simulator_fixtures import SimClient

from kling_pipeline.cli import main
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockstore import hold_run_lock

SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water")]


def gc(board: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["gc", str(board), *args], env={"NO_COLOR": "1"},
                              catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gc_lists_then_deletes_only_what_no_lock_references(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    old = lock_of(board)["gulls"]
    write_board(tmp_path, [SHOTS[0], ("gulls", "Gulls fighting over a fish")])
    assert apply(board, sim.base_url).exit_code == 0
    store = Store(tmp_path / ".kling-cache")
    referenced = {shot["output"]["sha256"] for shot in lock_of(board).values()}
    orphan = store.object_path(old["output"]["sha256"])

    listed = gc(board)
    assert listed.exit_code == 0, listed.output
    assert f"- {old['output']['sha256'][:12]}" in listed.output
    assert f"task {old['task_id']}" in listed.output
    assert "1 unreferenced object" in listed.output and "--force" in listed.output
    assert orphan.is_file()  # listing deletes nothing

    deleted = gc(board, "--force")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted:" in deleted.output and not orphan.exists()
    for sha in referenced:
        assert digest(store.object_path(sha)) == sha
    requests = sim.stats()["requests"]
    again = apply(board, sim.base_url)  # nothing a lock needs is gone: no request, no payment
    assert again.exit_code == 0 and "2 up to date (0 submitted" in again.output
    assert sim.stats()["requests"] == requests
    assert "nothing to collect" in gc(board).output


def test_gc_waits_for_a_running_apply_and_then_stops_without_deleting(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    orphan = Store(tmp_path / ".kling-cache").object_path(
        lock_of(board)["harbour"]["output"]["sha256"])
    write_board(tmp_path, [("harbour", "A harbour at night"), SHOTS[1]])
    assert apply(board, sim.base_url).exit_code == 0
    with hold_run_lock(board.with_name("board.lock.json"), 0):
        result = gc(board, "--force", "--lock-timeout", "0.2s")
    assert result.exit_code == 1
    assert "is working on board.lock.json" in result.output and orphan.is_file()


def test_gc_on_a_cache_outside_the_project_says_what_it_cannot_see(
        tmp_path: Path) -> None:
    project = tmp_path / "film"
    project.mkdir()
    board = write_board(project, SHOTS)
    result = gc(board, "--cache-dir", str(tmp_path / "shared-cache"))
    assert result.exit_code == 0
    assert "outside the project" in result.output and "nothing to collect" in result.output
    assert not (tmp_path / "shared-cache").exists()


CHAIN = HEAD + A + B


def test_gc_collects_the_frames_of_videos_no_lock_needs(tmp_path: Path, sim: SimClient) -> None:
    """Frames are work, not money: a frame of a video gc deletes goes with it; the frame a
    lock's request names, and the frames of kept videos, stay (a plan needs them)."""
    board = tmp_path / "board.yaml"
    board.write_text(CHAIN, encoding="utf-8")
    assert apply(board, sim.base_url).exit_code == 0
    frames = tmp_path / ".kling-cache" / "frames"
    first = {path for path in frames.rglob("*") if path.is_file()}
    board.write_text(CHAIN.replace("at dusk", "at dawn"), encoding="utf-8")
    assert apply(board, sim.base_url).exit_code == 0
    now = {path for path in frames.rglob("*") if path.is_file()}
    assert len(first) == 2 and not first & (now - first)  # a PNG and its record per render
    listed = gc(board)
    assert "2 frame files" in listed.output and "deleted with --force" in listed.output
    assert {path for path in frames.rglob("*") if path.is_file()} == now  # listing deletes nothing
    deleted = gc(board, "--force")
    assert deleted.exit_code == 0, deleted.output
    left = {path for path in frames.rglob("*") if path.is_file()}
    assert left == now - first and left  # the old video's frame went with it
    named = lock_of(board)["b"]["request"]["image"].removeprefix("sha256:")
    assert any(path.name == f"{named}.png" for path in left)
    # the plan still needs no frame taken again: b is up to date
    plan = CliRunner().invoke(main, ["plan", str(board)], catch_exceptions=False)
    assert "Nothing to submit" in plan.output
