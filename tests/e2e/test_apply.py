"""apply end to end: the CLI against the simulator over loopback HTTP, real MP4 files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.apply_fixtures import apply, lock_of, shot_files, statuses, submissions, write_board
from support.simulator_fixtures import SimClient

from kling_pipeline.cli import main

SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water"),
         ("storm", "A storm rolls in")]


def test_apply_renders_every_shot_as_a_real_video_in_storyboard_order(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert "Apply: 3 done (3 submitted in this run)" in result.output
    files = shot_files(board)
    assert list(files) == ["001-harbour.mp4", "002-gulls.mp4", "003-storm.mp4"]
    lock = lock_of(board)
    for name, video in files.items():
        entry = lock[name[4:-4]]
        assert entry["status"] == "done" and entry["task_id"]
        assert entry["output"]["sha256"] == video.sha256
        assert entry["output"]["size"] == video.path.stat().st_size
        assert abs(video.duration - 3) < 0.2 and abs(entry["output"]["duration"] - 3) < 0.2
        assert entry["submitted_at"] <= entry["finished_at"]
    assert submissions(sim.stats()) == [1, 1, 1]


def test_a_second_apply_with_nothing_changed_makes_no_request_and_no_write(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    lock_file = board.with_name("board.lock.json")
    before, requests = lock_file.read_bytes(), sim.stats()["requests"]
    shutil.rmtree(tmp_path / "renders")  # the output folder is rebuilt from the store
    result = apply(board, sim.base_url, key=None)  # no key needed: nothing to ask the API
    assert result.exit_code == 0, result.output
    assert "3 up to date (0 submitted" in result.output
    assert sim.stats()["requests"] == requests
    assert lock_file.read_bytes() == before
    assert len(shot_files(board)) == 3


def test_an_edit_renders_only_that_shot_and_undoing_it_is_free(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    old_sha = lock_of(board)["gulls"]["output"]["sha256"]
    write_board(tmp_path, [SHOTS[0], ("gulls", "Gulls fighting over a fish"), SHOTS[2]])
    result = apply(board, sim.base_url)
    assert result.exit_code == 0 and "1 done, 2 up to date (1 submitted" in result.output
    assert sim.stats()["submissions_total"] == 4
    write_board(tmp_path, SHOTS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0 and "same request as a video in the local cache" in result.output
    assert sim.stats()["submissions_total"] == 4
    assert lock_of(board)["gulls"]["output"]["sha256"] == old_sha
    assert shot_files(board)["002-gulls.mp4"].sha256 == old_sha


def test_two_shots_with_one_request_pay_once(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, [("a", "The same sea"), ("b", "The same sea")])
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert submissions(sim.stats()) == [1]
    files = shot_files(board)
    assert files["001-a.mp4"].sha256 == files["002-b.mp4"].sha256
    assert lock_of(board)["a"]["task_id"] == lock_of(board)["b"]["task_id"]


def test_removed_and_reordered_shots_follow_the_storyboard(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    write_board(tmp_path, [SHOTS[2], SHOTS[0]])
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert list(shot_files(board)) == ["001-storm.mp4", "002-harbour.mp4"]
    assert set(lock_of(board)) == {"storm", "harbour"}
    assert sim.stats()["submissions_total"] == 3


def test_without_a_terminal_and_without_yes_nothing_is_submitted(
        tmp_path: Path, sim: SimClient) -> None:
    from click.testing import CliRunner

    from kling_pipeline.cli import main

    board = write_board(tmp_path, SHOTS)
    result = CliRunner().invoke(main, ["apply", str(board), "--base-url", sim.base_url],
                                env={"NOVITA_API_KEY": "k"})
    assert result.exit_code == 1
    assert "--yes" in result.output and "no terminal" in result.output
    assert not board.with_name("board.lock.json").exists()
    assert sim.stats()["requests"] == {}


def test_a_missing_key_is_named_and_nothing_is_written(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    result = apply(board, sim.base_url, key=None)
    assert result.exit_code == 1
    assert "NOVITA_API_KEY" in result.output and "--simulate" in result.output
    assert "Traceback" not in result.output
    assert sim.stats()["requests"] == {}


def test_a_wrong_key_stops_all_submitting_with_one_message(tmp_path: Path, sim: SimClient) -> None:
    sim.configure(accepted_keys=["the-right-key"])
    board = write_board(tmp_path, [(f"s{i}", f"Shot number {i}") for i in range(8)])
    result = apply(board, sim.base_url, "--jobs", "2", key="a-wrong-key")
    assert result.exit_code == 1
    assert "Submitting stopped: INVALID_API_KEY" in result.output
    assert sim.stats()["requests"]["POST /v3/async/{slug}"] <= 2
    # Intents of refused submissions are taken back, and a run that recorded nothing leaves
    # no lock file and no output folder behind (issue 9, item 4).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".board.lock.json.run", ".kling-cache",
                                                          "board.yaml"]
    assert "Output: none written" in result.output
    assert "a-wrong-key" not in result.output


def test_an_empty_balance_stops_submitting_and_a_later_run_goes_on(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(balance=2)
    board = write_board(tmp_path, [(f"s{i}", f"Shot number {i}") for i in range(4)])
    result = apply(board, sim.base_url, "--jobs", "1")
    assert result.exit_code == 1
    assert "BILLING_BALANCE_NOT_ENOUGH" in result.output
    assert "2 done, 2 not submitted" in result.output
    assert sorted(statuses(board).values()) == ["done", "done"]
    sim.configure(balance=10)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert submissions(sim.stats()) == [1, 1, 1, 1]


def test_a_failed_task_is_reported_the_others_finish_and_retry_failed_renders_it(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, [*SHOTS, ("wreck", "A ship SIMULATE_FAILURE on the rocks")])
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert statuses(board) == {"harbour": "done", "gulls": "done", "storm": "done",
                               "wreck": "failed"}
    assert "moderation" in lock_of(board)["wreck"]["error"].lower()
    assert "--retry-failed" in result.output
    again = apply(board, sim.base_url)
    assert again.exit_code == 1 and sim.stats()["submissions_total"] == 4
    sim.configure(fail_marker="NOTHING_FAILS_NOW")
    retried = apply(board, sim.base_url, "--retry-failed")
    assert retried.exit_code == 0, retried.output
    assert statuses(board)["wreck"] == "done"


def test_a_refused_request_fails_that_shot_only(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, [SHOTS[0], ("bad", "SIMULATE_ILLEGAL_PROMPT here")])
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert statuses(board) == {"harbour": "done", "bad": "failed"}
    assert "ILLEGAL_PROMPT" in lock_of(board)["bad"]["error"]
    assert "task_id" not in lock_of(board)["bad"]


def test_success_without_a_video_url_is_a_failure_not_a_hang(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(no_url_rate=1.0)
    board = write_board(tmp_path, SHOTS[:1])
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert "no video URL" in lock_of(board)["harbour"]["error"]


def test_an_expired_url_is_refreshed_by_asking_again(tmp_path: Path, sim: SimClient) -> None:
    sim.configure(expired_url_rate=0.5, seed=3)
    board = write_board(tmp_path, SHOTS)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    assert stats["faults"]["expired_url"] >= 1 and stats["errors"]["AccessDenied"] >= 1
    assert submissions(stats) == [1, 1, 1]


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_a_truncated_download_is_fetched_again_never_submitted_again(
        tmp_path: Path, sim: SimClient, mode: str) -> None:
    sim.configure(truncate_rate=1.0, truncate_mode=mode)
    board = write_board(tmp_path, SHOTS[:1])
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    entry = lock_of(board)["harbour"]
    assert entry["status"] == "rendered" and "download failed" in entry["error"]
    assert not (tmp_path / "renders" / "demo" / "shots").exists() or not shot_files(board)
    sim.configure(truncate_rate=0.0)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert submissions(sim.stats()) == [1]
    assert len(shot_files(board)) == 1


def test_a_shot_past_max_wait_stays_in_flight_and_the_next_run_resumes_it(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(time_scale=1.0)  # a 3 s video takes 3 s
    board = write_board(tmp_path, SHOTS[:1])
    result = apply(board, sim.base_url, "--max-wait", "1s")
    assert result.exit_code == 1
    entry = lock_of(board)["harbour"]
    assert entry["status"] in ("queued", "processing") and entry["task_id"]
    assert "--max-wait" in result.output
    sim.configure(time_scale=0.04)
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert lock_of(board)["harbour"]["task_id"] == entry["task_id"]
    assert submissions(sim.stats()) == [1]


def test_a_fresh_clone_fetches_by_task_id_and_names_what_cannot_be_fetched(
        tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    lock_file = board.with_name("board.lock.json")
    # As cloned days later: the recorded times cannot equal this run's clock by chance
    # (regression: a re-fetch rewrote finished_at and updated_at, unless in the same second).
    recorded = re.sub(rb'"(finished|updated)_at": "[^"]+"', rb'"\1_at": "2020-01-02T03:04:05Z"',
                      lock_file.read_bytes())
    lock_file.write_bytes(recorded)
    shutil.rmtree(tmp_path / ".kling-cache")
    shutil.rmtree(tmp_path / "renders")
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert len(shot_files(board)) == 3 and sim.stats()["submissions_total"] == 3
    assert lock_file.read_bytes() == recorded  # the same videos again: nothing to commit
    # The provider forgets the tasks: nothing is paid again without --force.
    sim.http.post("/_simulator/reset")
    shutil.rmtree(tmp_path / ".kling-cache")
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert "can no longer be fetched" in result.output and "--force harbour" in result.output
    assert set(statuses(board).values()) == {"lost"}
    assert all("output" in entry for entry in lock_of(board).values())  # what was paid for
    assert sim.stats()["submissions_total"] == 0
    result = apply(board, sim.base_url, "--force", "harbour")
    assert statuses(board)["harbour"] == "done"
    assert sim.stats()["submissions_total"] == 1


def test_only_and_force_select_shots(tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, [("wave-1", "Wave one"), ("wave-2", "Wave two"),
                                   ("pier", "A pier")])
    result = apply(board, sim.base_url, "--only", "wave-*")
    assert result.exit_code == 0, result.output
    assert set(lock_of(board)) == {"wave-1", "wave-2"}
    first = lock_of(board)["wave-1"]["task_id"]
    result = apply(board, sim.base_url, "--force", "wave-1")
    assert result.exit_code == 0, result.output
    assert lock_of(board)["wave-1"]["task_id"] != first
    assert set(lock_of(board)) == {"wave-1", "wave-2", "pier"}
    bad = apply(board, sim.base_url, "--only", "nothing-*")
    assert bad.exit_code == 2 and "matches no shot" in bad.output


def test_an_ambiguous_submission_is_never_sent_again_unasked(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(drop_after_rate=1.0)  # the task is made, the answer never arrives
    board = write_board(tmp_path, SHOTS[:1])
    result = apply(board, sim.base_url)
    assert result.exit_code == 1
    assert statuses(board) == {"harbour": "unknown"}
    assert "--resubmit-unknown" in result.output
    sim.configure(drop_after_rate=0.0)
    assert apply(board, sim.base_url).exit_code == 1
    assert submissions(sim.stats()) == [1]
    result = apply(board, sim.base_url, "--resubmit-unknown")
    assert result.exit_code == 0, result.output
    assert submissions(sim.stats()) == [2]  # asked for: paid twice, knowingly


def test_429_and_5xx_on_submit_are_retried_where_no_task_was_made(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(error_rate=0.2, error_codes=[500, 503], rpm_limit=3, rate_window=1.0, seed=2)
    board = write_board(tmp_path, [(f"s{i}", f"Shot number {i}") for i in range(6)])
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    assert submissions(stats) == [1] * 6
    assert stats["errors"].get("RATE_LIMIT_EXCEEDED", 0) + stats["errors"].get(
        "CREATE_TASK_FAILED", 0) + stats["errors"].get("SERVICE_UNAVAILABLE", 0) > 0


def test_the_key_is_never_written_anywhere(tmp_path: Path, sim: SimClient) -> None:
    key = "sk-live-DO-NOT-LEAK-4f1c2a9e"
    sim.configure(accepted_keys=[key], failure_rate=0.3, drop_after_rate=0.2, seed=2)
    board = write_board(tmp_path, [(f"s{i}", f"Shot number {i}") for i in range(6)])
    result = apply(board, sim.base_url, key=key)
    outputs = result.output + apply(board, sim.base_url, key="wrong-" + key).output
    assert key not in outputs
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    hashed = hashlib.sha256(key.encode()).hexdigest()
    assert all(hashed not in p.name for p in tmp_path.rglob("*"))


def test_status_is_offline_and_refresh_asks_about_shots_in_flight(
        tmp_path: Path, sim: SimClient) -> None:
    import json

    from click.testing import CliRunner

    from kling_pipeline.cli import main

    sim.configure(time_scale=2.0)  # 3 s of video take 6 s
    board = write_board(tmp_path, SHOTS[:2])
    assert apply(board, sim.base_url, "--max-wait", "1s").exit_code == 1
    requests = dict(sim.stats()["requests"])
    runner = CliRunner()
    offline = runner.invoke(main, ["status", str(board), "--json"], env={"NO_COLOR": "1"})
    assert offline.exit_code == 0, offline.output
    rows = {row["id"]: row for row in json.loads(offline.output)["shots"]}
    assert {row["state"] for row in rows.values()} <= {"queued", "processing"}
    assert sim.stats()["requests"] == requests  # no network without --refresh
    live = runner.invoke(main, ["status", str(board), "--refresh", "--base-url", sim.base_url],
                         env={"NOVITA_API_KEY": "k", "NO_COLOR": "1"})
    assert live.exit_code == 0, live.output
    assert "live: processing" in live.output or "live: queued" in live.output
    assert sim.stats()["requests"]["GET /v3/async/task-result"] == requests[
        "GET /v3/async/task-result"] + 2
    assert "POST /v3/async/{slug}" not in set(sim.stats()["requests"]) - set(requests)


def test_a_shot_removed_while_in_flight_is_still_fetched_into_the_cache(
        tmp_path: Path, sim: SimClient) -> None:
    sim.configure(time_scale=1.0)
    board = write_board(tmp_path, SHOTS[:2])
    assert apply(board, sim.base_url, "--max-wait", "1s").exit_code == 1
    sim.configure(time_scale=0.04)
    write_board(tmp_path, SHOTS[:1])  # gulls removed while its paid task renders
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert set(lock_of(board)) == {"harbour"}
    assert list(shot_files(board)) == ["001-harbour.mp4"]
    write_board(tmp_path, SHOTS[:2])  # back again: from the cache, not paid twice
    result = apply(board, sim.base_url)
    assert result.exit_code == 0, result.output
    assert submissions(sim.stats()) == [1, 1]
    assert list(shot_files(board)) == ["001-harbour.mp4", "002-gulls.mp4"]


def test_plan_knows_the_local_cache_and_a_missing_key_stops_before_any_write(
        tmp_path: Path, sim: SimClient) -> None:
    from click.testing import CliRunner

    from kling_pipeline.cli import main

    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    lock_file = board.with_name("board.lock.json")
    lock_file.unlink()  # e.g. a branch without the lock: the videos are still here
    planned = CliRunner().invoke(main, ["plan", str(board)], env={"NO_COLOR": "1"})
    assert planned.exit_code == 0
    assert planned.output.count("same request as a video in the local cache") == 3
    assert apply(board, sim.base_url, key=None).exit_code == 0  # nothing to ask: no key needed
    write_board(tmp_path, [*SHOTS[:2], ("new", "A new shot")])  # one removed, one new
    before = lock_file.read_bytes()
    result = apply(board, sim.base_url, key=None)
    assert result.exit_code == 1 and "NOVITA_API_KEY" in result.output
    assert lock_file.read_bytes() == before


def test_plan_reads_the_store_apply_used_with_cache_dir(tmp_path: Path, sim: SimClient) -> None:
    """A prompt changed and changed back is `=` (reused from the store, no charge) in the plan,
    when the plan looks in the store apply used; it used to look only in the default one."""
    store = tmp_path / "elsewhere"
    board = write_board(tmp_path, [("a", "a heron at dawn")])
    assert apply(board, sim.base_url, "--cache-dir", str(store)).exit_code == 0
    write_board(tmp_path, [("a", "a heron at dusk")])
    assert apply(board, sim.base_url, "--cache-dir", str(store)).exit_code == 0
    write_board(tmp_path, [("a", "a heron at dawn")])

    def action(*args: str) -> str:
        printed = CliRunner().invoke(main, ["plan", str(board), "--json", *args])
        assert printed.exit_code == 0, printed.output
        shot: str = json.loads(printed.output)["shots"][0]["action"]
        return shot

    assert action("--cache-dir", str(store)) == "reuse"
    assert action() == "update"

