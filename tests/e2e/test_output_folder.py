"""The output folder after apply: final cut, manifest, contact sheet, and what stays or goes.

End to end: the CLI against the simulator over loopback HTTP, then the files themselves
decoded (the final cut's duration, its picture size, its audio) and the manifest checked
against the lock file and the bytes on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from support.apply_fixtures import apply, lock_of, write_board
from support.simulator_fixtures import SimClient

from kling_pipeline.cli import main
from kling_pipeline.output.folder import OutputFolder
from kling_pipeline.output.media import probe_video
from kling_pipeline.output.thumbnails import THUMB_WIDTH
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import read_lock
from kling_pipeline.storyboard.load import load_storyboard

SHOTS = [("harbour", "A harbour at {{ hour }}"), ("gulls", "Gulls over the water"),
         ("storm", "A storm rolls in")]
VARS = "vars: {hour: dawn}"


def out_dir(board: Path, name: str = "demo") -> Path:
    return board.parent / "renders" / name


def manifest_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def named_files(manifest: dict[str, Any]) -> set[str]:
    named = {manifest["page"]}
    if manifest["final"]:
        named.add(manifest["final"]["file"])
    for shot in manifest["shots"]:
        named.update(name for name in (shot["file"], shot["thumbnail"]) if name)
    return named


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def test_apply_makes_the_final_cut_the_manifest_and_the_page(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    folder = out_dir(board)
    manifest = manifest_of(folder)
    assert files_in(folder) == named_files(manifest) | {"manifest.json"}
    assert manifest["storyboard"] == "demo" and manifest["key_scheme"] == 1
    assert manifest["simulated"] is False
    lock = lock_of(board)
    start = 0.0
    for position, (shot, (shot_id, _)) in enumerate(zip(manifest["shots"], SHOTS,
                                                        strict=True), 1):
        video = folder / shot["file"]
        entry = lock[shot_id]
        assert shot["position"] == position and shot["id"] == shot_id
        assert shot["file"] == f"shots/{position:03d}-{shot_id}.mp4"
        assert shot["key"] == entry["key"] and shot["task_id"] == entry["task_id"]
        assert shot["endpoint"] == "kling-v3.0-pro-t2v" and shot["status"] == "done"
        assert shot["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
        assert shot["size"] == video.stat().st_size
        assert abs(shot["duration"] - probe_video(video).duration) < 0.01
        assert abs(shot["start"] - start) < 0.01
        start += shot["duration"]
        with Image.open(folder / shot["thumbnail"]) as thumb:
            # as wide as the video, at most THUMB_WIDTH (the page's cards are no wider)
            assert thumb.format == "JPEG" and thumb.width == min(shot["width"], THUMB_WIDTH)
    assert manifest["shots"][0]["prompt"] == "A harbour at dawn"  # as rendered and sent
    final = manifest["final"]
    cut = probe_video(folder / "final.mp4", decode=True)
    assert abs(cut.duration - start) < 1 / cut.fps + 0.01
    assert abs(final["duration"] - cut.duration) < 0.05
    assert (final["width"], final["height"]) == (cut.width, cut.height)
    assert final["size"] == (folder / "final.mp4").stat().st_size
    assert final["missing"] == [] and final["stream_copy"] is True
    page = (folder / "index.html").read_text()
    assert all(shot_id in page for shot_id, _ in SHOTS) and "A harbour at dawn" in page
    assert "Output: " in result.output and "final.mp4" in result.output


def test_nothing_changed_rebuilds_nothing(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    assert apply(board, sim.base_url).exit_code == 0
    folder = out_dir(board)
    before = {name: stamp(folder / name) for name in files_in(folder)
              if name.endswith((".mp4", ".jpg"))}
    manifest = (folder / "manifest.json").read_bytes()
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert "(unchanged)" in result.output and "making final.mp4" not in result.output
    assert {name: stamp(folder / name) for name in before} == before
    assert (folder / "manifest.json").read_bytes() == manifest


def test_an_edit_rebuilds_the_cut_and_only_that_shots_thumbnail(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    assert apply(board, sim.base_url).exit_code == 0
    folder = out_dir(board)
    kept = stamp(folder / "thumbs/001-harbour.jpg")
    final = stamp(folder / "final.mp4")
    write_board(tmp_path, [SHOTS[0], ("gulls", "Gulls fighting over a fish"), SHOTS[2]],
                extra=VARS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert "(rebuilt)" in result.output and "making final.mp4 from 3 shot(s) ..." in result.output
    assert stamp(folder / "final.mp4") != final
    assert stamp(folder / "thumbs/001-harbour.jpg") == kept
    manifest = manifest_of(folder)
    assert manifest["shots"][1]["prompt"] == "Gulls fighting over a fish"
    assert manifest["shots"][1]["sha256"] == lock_of(board)["gulls"]["output"]["sha256"]


def test_a_removed_shot_leaves_the_folder_but_not_the_cache(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    assert apply(board, sim.base_url).exit_code == 0
    gulls = lock_of(board)["gulls"]["output"]["sha256"]
    write_board(tmp_path, [SHOTS[0], SHOTS[2]], extra=VARS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    folder = out_dir(board)
    manifest = manifest_of(folder)
    assert files_in(folder) == named_files(manifest) | {"manifest.json"}
    assert sorted(p.name for p in (folder / "shots").iterdir()) == [
        "001-harbour.mp4", "002-storm.mp4"]
    assert not any("gulls" in name for name in files_in(folder))
    assert Store(tmp_path / ".kling-cache").object_path(gulls).is_file()
    cut = probe_video(folder / "final.mp4")
    assert abs(cut.duration - sum(s["duration"] for s in manifest["shots"])) < 0.1


def test_files_apply_did_not_make_are_left_alone_and_named(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    folder = out_dir(board)
    (folder / "shots").mkdir(parents=True)
    (folder / "notes.txt").write_text("client feedback")
    (folder / "shots" / "director-cut.mov").write_bytes(b"not ours")
    (folder / "shots" / ".001-harbour.mp4.tmp").write_bytes(b"left by a killed run")
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert (folder / "notes.txt").read_text() == "client feedback"
    assert (folder / "shots" / "director-cut.mov").read_bytes() == b"not ours"
    assert not (folder / "shots" / ".001-harbour.mp4.tmp").exists()
    assert "files apply did not make (left alone): shots/director-cut.mov, notes.txt" \
        in result.output


def test_a_failed_shot_is_left_out_of_the_cut_and_named(
        tmp_path: Path, sim: SimClient) -> None:
    shots = [SHOTS[0], ("broken", "SIMULATE_FAILURE in the harbour"), SHOTS[2]]
    board = write_board(tmp_path, shots, extra=VARS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 1, result.output
    folder = out_dir(board)
    manifest = manifest_of(folder)
    broken = manifest["shots"][1]
    assert broken["status"] == "failed" and broken["file"] is None
    assert "moderation" in broken["error"] and broken["start"] is None
    assert manifest["final"]["missing"] == ["broken"]
    assert [s["start"] for s in manifest["shots"]][2] == manifest["shots"][0]["duration"]
    assert "not here: broken (failed)" in result.output
    assert files_in(folder) == named_files(manifest) | {"manifest.json"}


def test_shots_of_other_shapes_are_letterboxed_and_sound_is_kept(
        tmp_path: Path, sim: SimClient) -> None:
    board = tmp_path / "board.yaml"
    board.write_text(
        "version: 1\nname: demo\nprovider: {requests_per_minute: 6000}\n"
        "defaults: {model: kling-v3.0-pro-t2v, duration: 3, aspect_ratio: '16:9'}\nshots:\n"
        "  - {id: wide, prompt: A wide harbour}\n"
        "  - {id: tall, prompt: A tall lighthouse, aspect_ratio: '9:16', sound: true}\n"
        "  - {id: wide-again, prompt: The sea at night}\n")
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    folder = out_dir(board)
    manifest = manifest_of(folder)
    wide = manifest["shots"][0]
    final = manifest["final"]
    assert (final["width"], final["height"]) == (wide["width"], wide["height"])
    assert final["stream_copy"] is False and final["has_audio"] is True
    cut = probe_video(folder / "final.mp4", decode=True)
    assert cut.has_audio and (cut.width, cut.height) == (wide["width"], wide["height"])
    assert abs(cut.duration - sum(s["duration"] for s in manifest["shots"])) < 0.2


def test_the_output_setting_and_out_choose_the_folder(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=f"{VARS}\noutput: cuts/v1")
    assert apply(board, sim.base_url).exit_code == 0
    assert (tmp_path / "cuts" / "v1" / "index.html").is_file()
    assert not (tmp_path / "renders").exists()
    elsewhere = tmp_path / "elsewhere"
    assert apply(board, sim.base_url, "--out", str(elsewhere)).exit_code == 0
    assert manifest_of(elsewhere)["final"] is not None


@pytest.mark.parametrize(("output", "says"), [
    (".git/renders", "inside a git repository's .git folder"),
    (".kling-cache/renders", "inside the cache"),
    (".kling-cache", "inside the cache"),
])
def test_an_output_folder_in_git_or_the_cache_is_refused_before_anything_is_written(
        tmp_path: Path, sim: SimClient, output: str, says: str) -> None:
    (tmp_path / ".git").mkdir()
    board = write_board(tmp_path, SHOTS, extra=f"{VARS}\noutput: {output}")
    result = apply(board, sim.base_url)
    assert result.exit_code == 1 and says in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / output / "index.html").exists()
    assert not (tmp_path / "board.lock.json").exists()
    assert sim.stats()["submissions_total"] == 0


def test_an_output_folder_holding_the_storyboard_is_refused_before_anything_is_written(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=f"{VARS}\noutput: .")
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert "holds the storyboard itself" in result.output and "Traceback" not in result.output
    written = {p.name for p in tmp_path.iterdir()} - {"board.yaml", ".kling-cache"}
    assert written == set()  # no lock file, no page, no manifest, no renders
    assert sim.stats()["submissions_total"] == 0


def test_a_foreign_page_in_the_chosen_folder_is_not_overwritten(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS, extra=VARS)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my site</h1>")
    result = apply(board, sim.base_url, "--out", str(site))
    assert result.exit_code == 1 and "already holds index.html" in result.output
    assert (site / "index.html").read_text() == "<h1>my site</h1>"


def test_two_storyboards_cannot_share_one_output_folder(tmp_path: Path, sim: SimClient) -> None:
    first = write_board(tmp_path, SHOTS, extra=f"{VARS}\noutput: shared")
    assert apply(first, sim.base_url).exit_code == 0
    before = files_in(tmp_path / "shared")
    second = tmp_path / "other.yaml"
    second.write_text(first.read_text().replace("name: demo", "name: other"))
    result = apply(second, sim.base_url)
    assert result.exit_code == 1
    assert "holds the render of storyboard 'demo'" in result.output
    assert files_in(tmp_path / "shared") == before


def test_a_cut_that_cannot_be_rebuilt_now_is_removed_not_left_stale(
        tmp_path: Path, sim: SimClient) -> None:
    """An interrupted run makes no cut; it must not leave one that no longer matches."""
    board = write_board(tmp_path, SHOTS, extra=VARS)
    assert apply(board, sim.base_url).exit_code == 0
    write_board(tmp_path, [SHOTS[0], SHOTS[2]], extra=VARS)
    loaded = load_storyboard(board)
    store = Store(tmp_path / ".kling-cache")
    folder = OutputFolder(out_dir(board), loaded.shots, store, storyboard="demo",
                          simulated=False)
    result = folder.sync(read_lock(board.with_name("board.lock.json"), "demo"),
                         build_final=False)
    store.close()
    assert result.manifest.final is None and not (out_dir(board) / "final.mp4").exists()
    assert all(shot.start is None for shot in result.manifest.shots)
    assert [shot.file for shot in result.manifest.shots] == [
        "shots/001-harbour.mp4", "shots/002-storm.mp4"]


def test_simulated_renders_have_their_own_folder_marked_as_such(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS[:2], extra=VARS)
    result = CliRunner().invoke(main, ["apply", str(board), "--simulate"],
                                env={"NO_COLOR": "1"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = out_dir(board, "demo.simulated")
    manifest = manifest_of(folder)
    assert manifest["simulated"] is True and manifest["final"]["missing"] == []
    assert "nothing billed" in (folder / "index.html").read_text()
