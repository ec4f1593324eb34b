from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from kling_pipeline.cli import main
from kling_pipeline.plan.planner import make_plan
from kling_pipeline.plan.pricing import PriceTable
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, read_lock, write_lock
from kling_pipeline.storyboard.load import load_storyboard, lock_path_for
from kling_pipeline.views.plan import render_text

BOARD = """version: 1
name: plan
defaults: {model: kling-v3.0-pro-t2v, duration: 5}
shots:
%s
"""


def lock_all(path: Path, status: str = "done", **fields: object) -> LockFile:
    """A lock in which every shot of `path` has `status` (as if a run had happened)."""
    loaded = load_storyboard(path, use_cache=False)
    lock = LockFile(loaded.board.name)
    for shot in loaded.shots:
        lock.shots[shot.id] = LockEntry(
            key=shot.key, key_scheme=1, endpoint=shot.endpoint, request=shot.body,
            status=status, take=shot.take, task_id=f"task-{shot.id}",  # type: ignore[arg-type]
            output=Output("0" * 64, 10, 5.0) if status == "done" else None,
            **fields)  # type: ignore[arg-type]
    write_lock(lock_path_for(path), lock)
    return lock


def plan_of(path: Path, **options: object) -> dict[str, str]:
    loaded = load_storyboard(path, use_cache=False)
    lock = read_lock(lock_path_for(path), loaded.board.name)
    plan = make_plan(loaded.board.name, loaded.shots, lock, PriceTable({}),
                     **options)  # type: ignore[arg-type]
    return {item.id: item.symbol + item.action for item in plan.items}


def test_every_symbol(write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(BOARD % """
  - {id: same, prompt: one}
  - {id: edited, prompt: two}
  - {id: flying, prompt: three}
  - {id: broken, prompt: four}
  - {id: gone, prompt: five}
  - {id: maybe, prompt: six}""")
    lock = lock_all(path)
    lock.shots["flying"] = lock.shots["flying"].with_status("processing", output=None)
    lock.shots["broken"] = lock.shots["broken"].with_status("failed", output=None,
                                                            error="ILLEGAL_PROMPT")
    lock.shots["maybe"] = lock.shots["maybe"].with_status("unknown", output=None)
    write_lock(lock_path_for(path), lock)
    path.write_text(BOARD % """
  - {id: same, prompt: one}
  - {id: edited, prompt: TWO, duration: 6}
  - {id: flying, prompt: three}
  - {id: broken, prompt: four}
  - {id: maybe, prompt: six}
  - {id: renamed, prompt: five}
  - {id: brand-new, prompt: seven}""")
    assert plan_of(path) == {"same": "=noop", "edited": "~update", "flying": "?inflight",
                             "broken": "!failed", "maybe": "?unknown", "renamed": "=reuse",
                             "brand-new": "+create", "gone": "-remove"}
    assert plan_of(path, retry_failed=True, resubmit_unknown=True, force=["same"]) == {
        "same": "~update", "edited": "~update", "flying": "?inflight", "broken": "~update",
        "maybe": "~update", "renamed": "=reuse", "brand-new": "+create", "gone": "-remove"}


def test_changed_fields_are_listed_old_to_new(write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(BOARD % "  - {id: a, prompt: calm sea}")
    lock_all(path)
    path.write_text(BOARD % "  - {id: a, prompt: rough sea, duration: 8, take: 2}")
    loaded = load_storyboard(path, use_cache=False)
    plan = make_plan("plan", loaded.shots, read_lock(lock_path_for(path), "plan"),
                     PriceTable({}))
    text = render_text(plan)
    assert '      prompt: "calm sea" -> "rough sea"' in text
    assert "      duration: 5 -> 8" in text and "      take: 1 -> 2" in text
    assert "Plan: 0 to add, 1 to change, 0 unchanged, 0 in flight, 0 to remove." in text
    assert "Estimated cost: ~$0.90 for 8 s of video (estimate" in text


def test_plan_cli_json_and_detailed_exitcode(write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(BOARD % "  - {id: a, prompt: sea}\n  - {id: b, prompt: sky}")
    runner = CliRunner()
    result = runner.invoke(main, ["plan", str(path), "--json", "--detailed-exitcode"])
    assert result.exit_code == 2, result.output
    data = json.loads(result.output)
    assert data["summary"]["add"] == 2 and data["estimated_cost_usd"] == 1.12
    assert [s["symbol"] for s in data["shots"]] == ["+", "+"]
    lock_all(path)
    result = runner.invoke(main, ["plan", str(path), "--detailed-exitcode"])
    assert result.exit_code == 0, result.output
    assert "Plan: 0 to add, 0 to change, 2 unchanged" in result.output
    assert "Nothing to submit: no money would be spent." in result.output
    assert runner.invoke(main, ["plan", str(path), "--force", "nope"]).exit_code == 2


def test_price_overrides_by_slug_and_family(write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard("""version: 1
name: prices
provider:
  prices:
    kling-v3.0-pro: {per_second: 1.0, per_second_sound: 2.0}
    kling-v1.6-t2v: {per_second: 0.5}
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: p, duration: 4, sound: true}
  - {id: b, model: kling-v1.6-t2v, prompt: p, duration: 10}
""")
    result = CliRunner().invoke(main, ["plan", str(path), "--json"])
    costs = {s["id"]: s["estimated_cost_usd"] for s in json.loads(result.output)["shots"]}
    assert costs == {"a": 8.0, "b": 5.0}


def test_a_request_in_flight_under_another_id_is_in_flight(
        write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(BOARD % "  - {id: a, prompt: sea}")
    lock_all(path, status="processing")
    path.write_text(BOARD % "  - {id: a, prompt: sea}\n  - {id: twin, prompt: sea}")
    assert plan_of(path) == {"a": "?inflight", "twin": "?inflight"}


def test_a_video_of_the_request_in_the_cache_settles_a_failed_unknown_or_lost_shot(
        write_storyboard: Callable[[str], Path]) -> None:
    """Another task's video of the same request (another storyboard's, the remote's) is as
    good as the one that failed, was never confirmed or was lost: reused, unpaid. A shot in
    flight still follows its own task (paid, and never dropped for another)."""
    from kling_pipeline.state.cache import CachedResult

    path = write_storyboard(BOARD % """
  - {id: broken, prompt: one}
  - {id: maybe, prompt: two}
  - {id: gone, prompt: three}
  - {id: flying, prompt: four}""")
    lock = lock_all(path)
    lock.shots["broken"] = lock.shots["broken"].with_status("failed", output=None,
                                                            error="GET_RESULT_FAILED")
    lock.shots["maybe"] = lock.shots["maybe"].with_status("unknown", output=None)
    lock.shots["gone"] = lock.shots["gone"].with_status("lost", output=None)
    lock.shots["flying"] = lock.shots["flying"].with_status("queued", output=None)
    write_lock(lock_path_for(path), lock)
    video = CachedResult(Output("1" * 64, 10, 5.0), "other-task", "kling-v3.0-pro-t2v")
    assert plan_of(path, cached=lambda key: video) == {
        "broken": "=reuse", "maybe": "=reuse", "gone": "=reuse", "flying": "?inflight"}
    assert plan_of(path) == {"broken": "!failed", "maybe": "?unknown", "gone": "!lost",
                             "flying": "?inflight"}
    loaded = load_storyboard(path, use_cache=False)
    plan = make_plan(loaded.board.name, loaded.shots, read_lock(lock_path_for(path), "plan"),
                     PriceTable({}), cached=lambda key: video)
    assert plan.items[0].note == ("failed in the lock (GET_RESULT_FAILED); a video of the "
                                  "same request is in the cache")
