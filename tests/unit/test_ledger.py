"""The ledger's decisions, without an event loop: which lock entries a job's news becomes.

Only `record_intent` (synchronous by design) touches the disk here; the async writes are the
executor's business and are covered by tests/unit/test_executor.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from support.apply_fixtures import write_board

from kling_pipeline.plan.jobs import Job, entry_for
from kling_pipeline.run.ledger import Ledger
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, read_lock
from kling_pipeline.state.lockstore import LockKeeper
from kling_pipeline.storyboard.load import load_storyboard
from kling_pipeline.storyboard.render import ShotRequest

OLD_TIME = "2026-01-01T00:00:00Z"


def shot(tmp_path: Path, prompt: str = "a heron at dawn") -> ShotRequest:
    board = write_board(tmp_path, [("a", prompt)])
    [loaded] = load_storyboard(board, use_cache=False).shots
    return loaded


def ledger(tmp_path: Path, **entries: LockEntry) -> Ledger:
    return Ledger(LockKeeper(tmp_path / "demo.lock.json", LockFile("demo", dict(entries))))


def job_for(request: ShotRequest, task_id: str | None = None, **kwargs: object) -> Job:
    return Job(request.key, "submit", request, shot_ids=[request.id], task_id=task_id,
               **kwargs)  # type: ignore[arg-type]


def test_a_new_shot_gets_a_fresh_entry_in_the_new_state(tmp_path: Path) -> None:
    request = shot(tmp_path)
    changes = ledger(tmp_path).changes(job_for(request), "submitting", submitted_at=OLD_TIME)
    entry = changes["a"]
    assert entry is not None
    assert (entry.key, entry.status, entry.task_id, entry.submitted_at, entry.request) == (
        request.key, "submitting", None, OLD_TIME, request.body)


def test_the_same_request_keeps_when_it_was_first_submitted(tmp_path: Path) -> None:
    request = shot(tmp_path)
    old = entry_for(request, "queued", task_id="t-1", submitted_at=OLD_TIME)
    changes = ledger(tmp_path, a=old).changes(job_for(request, "t-1"), "processing")
    entry = changes["a"]
    assert entry is not None and (entry.status, entry.submitted_at) == ("processing", OLD_TIME)


def test_a_change_of_nothing_but_the_time_is_no_change(tmp_path: Path) -> None:
    request = shot(tmp_path)
    old = replace(entry_for(request, "queued", task_id="t-1", submitted_at=OLD_TIME),
                  updated_at=OLD_TIME)
    book = ledger(tmp_path)
    book.keeper.lock.shots["a"] = old  # after the run began: not what it found
    assert book.changes(job_for(request, "t-1"), "queued") == {}


def test_an_entry_back_where_the_run_found_it_is_the_found_entry(tmp_path: Path) -> None:
    """A fresh clone fetching its video by task id ends `done` as the lock said: the very
    entry it found (its times too), so git shows nothing."""
    request = shot(tmp_path)
    output = Output("f" * 64, 1000, 3.0)
    found = replace(entry_for(request, "done", task_id="t-1", submitted_at=OLD_TIME,
                              finished_at=OLD_TIME, output=output), updated_at=OLD_TIME)
    book = ledger(tmp_path, a=found)
    book.keeper.lock.shots["a"] = found.with_status("rendered")  # during the run
    changes = book.changes(job_for(request, "t-1"), "done", output=output,
                           finished_at=OLD_TIME)
    assert changes == {"a": found}


def test_removed_shots_carried_by_a_job_get_the_same_state(tmp_path: Path) -> None:
    request = shot(tmp_path)
    gone = entry_for(request, "queued", task_id="t-9", submitted_at=OLD_TIME)
    book = ledger(tmp_path, old=gone)
    job = Job(request.key, "follow", None, removed_ids=["old"], task_id="t-9")
    changes = book.changes(job, "rendered")
    entry = changes["old"]
    assert entry is not None and (entry.status, entry.task_id) == ("rendered", "t-9")
    assert set(changes) == {"old"}


def test_finished_at_is_kept_for_the_same_request_and_new_otherwise(tmp_path: Path) -> None:
    request = shot(tmp_path)
    done = entry_for(request, "done", task_id="t-1", finished_at=OLD_TIME)
    assert ledger(tmp_path, a=done).finished_at(job_for(request)) == OLD_TIME
    other = replace(done, key="0" * 64)
    assert ledger(tmp_path, a=other).finished_at(job_for(request)) != OLD_TIME


def test_before_is_what_to_put_back(tmp_path: Path) -> None:
    request = shot(tmp_path)
    old = entry_for(request, "failed", error="refused")
    assert ledger(tmp_path, a=old).before(job_for(request)) == {"a": old}
    assert ledger(tmp_path).before(job_for(request)) == {"a": None}


def test_an_intent_is_on_disk_when_record_intent_returns(tmp_path: Path) -> None:
    request = shot(tmp_path)
    book = ledger(tmp_path)
    book.record_intent(job_for(request), OLD_TIME)
    entry = read_lock(tmp_path / "demo.lock.json", "demo").shots["a"]
    assert (entry.status, entry.submitted_at, entry.task_id) == ("submitting", OLD_TIME, None)


def test_settled_only_when_every_shot_is_done_with_this_video_from_this_task(
        tmp_path: Path) -> None:
    request = shot(tmp_path)
    output = Output("f" * 64, 1000, 3.0)
    done = entry_for(request, "done", task_id="t-1", output=output, finished_at=OLD_TIME)
    assert ledger(tmp_path, a=done).settled(job_for(request, "t-1"), output)
    for other in (replace(done, status="rendered"), replace(done, task_id="t-2"),
                  replace(done, output=Output("e" * 64, 1000, 3.0)),
                  replace(done, key="0" * 64), replace(done, error="x"),
                  replace(done, finished_at=None)):
        assert not ledger(tmp_path, a=other).settled(job_for(request, "t-1"), output), other
    assert not ledger(tmp_path).settled(job_for(request, "t-1"), output)
    carrying = job_for(request, "t-1", removed_ids=["old"])
    assert not ledger(tmp_path, a=done).settled(carrying, output)
