"""Shots that build on shots, over the simulator on loopback: a shot takes the last (first, or
timed) frame of another shot's video as its image, so the storyboard is a graph.

What these prove with the simulator's own counters and the files left behind: upstream shots
render first; a dependent's request carries the frame's bytes, keyed by their digest; an edit
upstream cascades to exactly the shots built on it; a diamond renders its branches at once;
a failed upstream blocks its dependents without paying for them; `--only` renders what the
shot needs; a fresh clone with the lock file gets every video back by task id, unpaid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
from click.testing import CliRunner, Result
from PIL import Image, ImageChops, ImageOps, ImageStat
from support.apply_fixtures import apply, lock_of
from support.chains import HEAD, A, B, C, X
from support.simulator_fixtures import KEY, SimClient

from kling_pipeline.cli import main
from kling_pipeline.frames import FrameRef, extract_frame
from kling_pipeline.key import IMAGE_DIGEST_PREFIX

CHAIN = HEAD + A + B + C + X
DIAMOND = HEAD + """\
  - {id: d, prompt: "The beam meets the ship", image: {shot: b, frame: last},
     end_image: {shot: c, frame: first}}
  - {id: b, prompt: "The ship", image: {shot: a, at: 1.5}}
  - {id: c, prompt: "The beam", image: {shot: a, frame: last}}
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "Night sea"}
"""


def write(folder: Path, text: str) -> Path:
    board = folder / "board.yaml"
    board.write_text(text, encoding="utf-8")
    return board


def plan(board: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["plan", str(board), *args],
                              env={"NOVITA_API_KEY": KEY, "NO_COLOR": "1"},
                              catch_exceptions=False)


def applied(board: Path, sim: SimClient, *args: str, code: int = 0) -> Result:
    result = apply(board, sim.base_url, *args)
    assert result.exit_code == code, result.output
    return result


def video_of(board: Path, shot_id: str) -> Path:
    folder = board.parent / "renders" / "demo" / "shots"
    found = [path for path in folder.iterdir() if path.stem.endswith(f"-{shot_id}")]
    assert len(found) == 1, found
    return found[0]


def submissions(sim: SimClient) -> int:
    total: int = sim.stats()["submissions_total"]
    return total


def tasks(board: Path) -> dict[str, str | None]:
    return {shot_id: entry["task_id"] for shot_id, entry in lock_of(board).items()}


def test_a_chain_renders_upstream_first_and_keys_each_shot_by_its_frame(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    shown = plan(board)
    assert "last frame of a, rendered first" in shown.output
    assert "take frames of shots rendered first (a cascade)" in shown.output
    before = submissions(sim)
    applied(board, sim)
    assert submissions(sim) - before == 4
    lock = lock_of(board)
    assert {entry["status"] for entry in lock.values()} == {"done"}
    for shot_id, upstream in (("b", "a"), ("c", "b")):
        frame = extract_frame(video_of(board, upstream), FrameRef("last"))
        assert lock[shot_id]["request"]["image"] == IMAGE_DIGEST_PREFIX + frame.sha256
        # its submission came after the video it starts on was downloaded
        assert lock[shot_id]["submitted_at"] >= lock[upstream]["finished_at"]
    again = plan(board)
    assert "Nothing to submit" in again.output and "4 unchanged" in again.output
    applied(board, sim)
    assert submissions(sim) - before == 4


def test_the_first_frame_of_a_chained_shot_continues_the_last_of_its_upstream(
        tmp_path: Path, sim: SimClient) -> None:
    """The animatic is continuous: the simulator starts an image-to-video clip on its image.
    Bound: a mean difference of 2 levels of 255 per channel (measured 0.45-0.52: H.264 at
    the simulator's quality loses a little, twice); a's last frame and c's first, a whole
    shot apart, differ by about 8."""
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    last_a = _decoded(video_of(board, "a"), last=True)
    first_b = _decoded(video_of(board, "b"), last=False)
    last_b = _decoded(video_of(board, "b"), last=True)
    first_c = _decoded(video_of(board, "c"), last=False)
    assert _difference(last_a, first_b) <= 2.0
    assert _difference(last_b, first_c) <= 2.0
    # the bound tells frames apart: a's last and c's first differ by a whole shot's motion
    assert _difference(last_a, first_c) > 2.0
    assert _difference(last_a, ImageOps.invert(last_a)) > 60.0


def _decoded(video: Path, *, last: bool) -> Image.Image:
    with av.open(str(video)) as container:
        images = (frame.to_image() for frame in container.decode(video=0))
        chosen: Image.Image | None = next(images) if not last else None
        if last:
            for chosen in images:  # noqa: B007 (the loop keeps the last one)
                pass
        assert chosen is not None
        return chosen


def _difference(one: Image.Image, other: Image.Image) -> float:
    if one.size != other.size:
        other = other.resize(one.size)
    return sum(ImageStat.Stat(ImageChops.difference(one, other)).mean) / 3


def test_an_edit_upstream_cascades_to_exactly_the_shots_built_on_it(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    first = tasks(board)
    write(tmp_path, CHAIN.replace("A lighthouse at dusk", "A lighthouse at dawn"))
    shown = plan(board)
    lines = shown.output.splitlines()
    assert any(line.startswith("  ~ a") for line in lines)
    assert "image: <image " in shown.output and "<last frame of a, which changes>" in shown.output
    assert any(line.startswith("  ~ b") for line in lines)
    assert any(line.startswith("  ~ c") for line in lines)
    assert any(line.startswith("  = x") for line in lines)
    assert "Plan: 0 to add, 3 to change, 1 unchanged" in shown.output
    document = json.loads(plan(board, "--json").output)
    edges = {shot["id"]: shot.get("inputs") for shot in document["shots"]}
    assert edges["b"] == [{"field": "image", "shot": "a", "frame": "last", "at": None,
                           "sha256": None}]
    assert edges["x"] is None and document["cascade_shots"] == 2
    before = submissions(sim)
    applied(board, sim)
    assert submissions(sim) - before == 3
    after = tasks(board)
    assert [shot for shot in first if first[shot] != after[shot]] == ["a", "b", "c"]
    assert max(sim.stats()["submissions"].values()) == 1  # no body sent twice
    document = json.loads(plan(board, "--json").output)
    b = next(shot for shot in document["shots"] if shot["id"] == "b")
    assert b["action"] == "noop" and b["inputs"][0]["sha256"] == \
        b["request"]["image"][len(IMAGE_DIGEST_PREFIX):]


def test_a_diamond_renders_both_branches_at_once_and_the_join_after_them(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, DIAMOND)
    before = submissions(sim)
    applied(board, sim, "--jobs", "4")
    assert submissions(sim) - before == 4
    lock = lock_of(board)
    assert lock["d"]["submitted_at"] >= max(lock["b"]["finished_at"], lock["c"]["finished_at"])
    assert lock["b"]["submitted_at"] >= lock["a"]["finished_at"]
    # the branches overlap: each was submitted before the other's render was complete (the
    # simulator's own clock, in ms; the lock's is in seconds)
    times = {shot_id: sim.result(lock[shot_id]["task_id"])["extra"]["debug_info"]
             for shot_id in "bc"}
    assert int(times["b"]["submit_time_ms"]) < int(times["c"]["complete_time_ms"])
    assert int(times["c"]["submit_time_ms"]) < int(times["b"]["complete_time_ms"])
    at = extract_frame(video_of(board, "a"), FrameRef("at", 1.5))
    assert lock["b"]["request"]["image"] == IMAGE_DIGEST_PREFIX + at.sha256
    end = extract_frame(video_of(board, "c"), FrameRef("first"))
    assert lock["d"]["request"]["end_image"] == IMAGE_DIGEST_PREFIX + end.sha256


def test_a_failed_upstream_blocks_its_dependents_unpaid(tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN.replace("A lighthouse at dusk", "SIMULATE_FAILURE at dusk"))
    before = submissions(sim)
    result = applied(board, sim, code=1)
    assert submissions(sim) - before == 2  # a and x; b and c never sent
    lock = lock_of(board)
    assert lock["a"]["status"] == "failed" and "b" not in lock and "c" not in lock
    assert "blocked" in result.output and "needs a frame of 'a', which is failed" in result.output
    shown = plan(board)
    assert "needs a frame of 'a', which is failed (--retry-failed" in shown.output
    assert "needs a frame of 'b', which is blocked" in shown.output
    assert "2 blocked" in shown.output
    again = applied(board, sim, code=1)  # blocked from the plan on: still nothing paid
    assert submissions(sim) - before == 2
    summary = next(line for line in again.output.splitlines() if line.startswith("Apply:"))
    assert "1 failed" in summary and "2 blocked" in summary, summary


def test_only_renders_the_shots_a_shot_takes_frames_of(tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    before = submissions(sim)
    result = applied(board, sim, "--only", "c")
    assert "rendered for c, which needs its frame (not in --only)" in result.output
    assert "rendered for b, which needs its frame (not in --only)" in result.output
    assert submissions(sim) - before == 3
    assert set(lock_of(board)) == {"a", "b", "c"}


def test_plan_only_shows_what_apply_only_would_do(tmp_path: Path) -> None:
    """`plan --only` is apply's selection, priced before anything is paid: the matching shot,
    the shots whose frames it waits for (said why), and not the unrelated one."""
    board = write(tmp_path, CHAIN)
    shown = plan(board, "--only", "c")
    assert shown.exit_code == 0, shown.output
    assert "rendered for c, which needs its frame (not in --only)" in shown.output
    assert "rendered for b, which needs its frame (not in --only)" in shown.output
    planned = [line.split()[1] for line in shown.output.splitlines()
               if line.startswith("  + ")]
    assert planned == ["a", "b", "c"], shown.output
    assert "3 to add" in shown.output, shown.output
    everything = plan(board)
    assert "4 to add" in everything.output, everything.output
    nothing = plan(board, "--only", "nope-*")
    assert nothing.exit_code == 2 and "nope-* matches no shot id" in nothing.output


def test_a_fresh_clone_with_the_lock_gets_every_video_back_by_task_id(
        tmp_path: Path, sim: SimClient) -> None:
    first = tmp_path / "first"
    first.mkdir()
    board = write(first, CHAIN)
    applied(board, sim)
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(board, clone / "board.yaml")
    shutil.copy(first / "board.lock.json", clone / "board.lock.json")
    cloned = clone / "board.yaml"
    before = submissions(sim)
    result = applied(cloned, sim)
    assert submissions(sim) == before, result.output
    assert lock_of(cloned) == lock_of(board)
    for shot_id in "abcx":
        assert video_of(cloned, shot_id).read_bytes() == video_of(board, shot_id).read_bytes()


@pytest.mark.parametrize("edit", ["swap", "rename"])
def test_reordering_or_renaming_a_chain_costs_nothing(tmp_path: Path, sim: SimClient,
                                                      edit: str) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    before = submissions(sim)
    lines = CHAIN.splitlines()
    if edit == "swap":  # the dependent before the shot it takes a frame of
        text = "\n".join([*lines[:5], lines[6], lines[5], *lines[7:]]) + "\n"
    else:
        text = CHAIN.replace("id: a,", "id: opening,").replace("shot: a,", "shot: opening,")
    write(tmp_path, text)
    shown = plan(board)
    assert "Nothing to submit" in shown.output, shown.output
    applied(board, sim)
    assert submissions(sim) == before



def test_a_shot_with_two_inputs_shows_only_the_one_that_changes(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, DIAMOND)
    applied(board, sim)
    write(tmp_path, DIAMOND.replace('"The beam"', '"The beam, brighter"'))
    shown = plan(board).output
    d = shown[shown.index("  ~ d"):shown.index("  = b")]
    assert "end_image: <image " in d and "<first frame of c, which changes>" in d
    assert "  image:" not in d  # b's frame is known and the same


def test_forcing_an_upstream_shot_cascades_to_its_dependents(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    shown = plan(board, "--force", "a").output
    for line in ("  ~ a", "  ~ b", "  ~ c", "  = x"):
        assert line in shown, shown
    assert "<last frame of a, which changes>" in shown


def test_validate_gives_a_chained_shot_no_key_before_its_frames(tmp_path: Path) -> None:
    board = write(tmp_path, CHAIN)
    result = CliRunner().invoke(main, ["validate", str(board), "--json"])
    assert result.exit_code == 0, result.output
    keys = {shot["id"]: shot["key"] for shot in json.loads(result.output)["shots"]}
    assert keys["b"].startswith("pending-") and not keys["a"].startswith("pending-")


def test_status_says_which_shots_wait_for_frames(tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    write(tmp_path, CHAIN.replace("A lighthouse at dusk", "A lighthouse at dawn"))
    result = CliRunner().invoke(main, ["status", str(board), "--json"],
                                catch_exceptions=False)
    rows = {row["id"]: row for row in json.loads(result.output)["shots"]}
    assert [rows[s]["state"] for s in "abcx"] == ["changed", "waiting", "waiting", "done"]
    assert rows["b"]["note"].startswith("its key waits for the last frame of a")


def paid(sim: SimClient) -> list[int]:
    """Tasks made per distinct request body."""
    return sorted(sim.stats()["submissions"].values())


# Two shots that differ only in how they name the same frame of one upstream shot: their keys
# are provisional (different) when planned, and equal once the frame is taken at run time.
SAME_FRAME_TWICE = HEAD + (
    '  - {id: a, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "A lighthouse"}\n'
    '  - {id: c, prompt: "The keeper climbs", image: {shot: a, frame: first}}\n'
    '  - {id: d, prompt: "The keeper climbs", image: {shot: a, at: 0}}\n')


@pytest.mark.parametrize("with_remote", [False, True], ids=["no-remote", "folder-remote"])
def test_two_shots_whose_keys_become_equal_at_run_time_are_paid_once(
        tmp_path: Path, sim: SimClient, with_remote: bool) -> None:
    board = tmp_path / "board.yaml"
    board.write_text(SAME_FRAME_TWICE)
    # Every answer takes 0.5 s: c's POST is still unanswered (its lock entry `submitting`, its
    # claim `claimed`) when d, made exact at the same moment as c, comes to submit.
    sim.configure(latency=0.5)
    remote = ("--remote", str(tmp_path / "remote")) if with_remote else ()
    result = apply(board, sim.base_url, *remote)
    assert result.exit_code == 0, result.output
    lock = lock_of(board)
    assert lock["c"]["key"] == lock["d"]["key"]  # one request
    assert paid(sim) == [1, 1], result.output  # a once, the shared request once
    assert lock["c"]["task_id"] == lock["d"]["task_id"]
