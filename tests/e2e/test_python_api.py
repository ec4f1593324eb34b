"""The Python API (docs/python-api.md): every documented example runs, and each call of
`Project` does what its command does, checked against the command itself where there is one.

apply is driven two ways: on the built-in simulator (real loopback HTTP, real MP4s), and over
`httpx.MockTransport` through `Project.apply(transport=...)`, the seam the façade offers.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from support.apply_fixtures import write_board
from support.imports import heavy_after

import kling_pipeline
from kling_pipeline import (
    CancelToken,
    Declined,
    Event,
    FolderStep,
    NoApiKey,
    Project,
    RemoteGcReport,
    RunEnded,
    RunStarted,
    ShotUpdate,
    StoryboardError,
    UsageError,
)
from kling_pipeline.cli import main
from kling_pipeline.simulator.video import ClipSpec, render_clip

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python-api.md"
BASE = "https://router.example"


def doc_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_every_example_of_the_doc_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The page's python blocks, in order, in one namespace, in a copy of the lighthouse."""
    shutil.copytree(ROOT / "examples" / "lighthouse", tmp_path / "lighthouse")
    monkeypatch.chdir(tmp_path / "lighthouse")
    examples = doc_examples()
    assert len(examples) >= 4
    namespace: dict[str, Any] = {}
    for number, code in enumerate(examples, 1):
        exec(compile(code, f"{DOC.name} example {number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "lighthouse 6 shots" in out
    assert "broken.yaml:6:15: shots[0] (a).duration: must be 3..15" in out


def test_the_exports_are_the_api_and_importing_them_is_cheap() -> None:
    for name in kling_pipeline.__all__:
        assert getattr(kling_pipeline, name) is not None, name
    assert heavy_after("import kling_pipeline") == []
    with pytest.raises(AttributeError):
        kling_pipeline.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


# -- validate and plan ----------------------------------------------------------------------

def test_validate_returns_the_shots_and_raises_every_located_problem(tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron at dawn"), ("b", "a kite")])
    valid = Project.open(board).validate()
    assert (valid.name, [s.id for s in valid.shots], valid.seconds) == ("demo", ["a", "b"], 6)
    board.write_text(board.read_text().replace("duration: 3", "duration: 99"))
    with pytest.raises(StoryboardError) as caught:
        Project.open(board).validate()
    [problem] = caught.value.diagnostics
    assert (problem.file, problem.line, problem.location) == (str(board), 4, "defaults.duration")


def test_the_plan_holds_what_plan_json_prints(tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron"), ("b", "a kite"), ("c", "a gull")])
    plan = Project.open(board).plan()
    printed = json.loads(CliRunner().invoke(main, ["plan", str(board), "--json"]).output)
    assert printed["storyboard"] == plan.storyboard
    assert [(s["id"], s["action"], s["symbol"], s["key"], s["request"], s["estimated_cost_usd"])
            for s in printed["shots"]] == [
        (i.id, i.action, i.symbol, i.shot.key, i.shot.body, i.estimate)
        for i in plan.items if i.shot is not None]
    assert (printed["has_work"], printed["estimated_cost_usd"]) == (plan.has_work,
                                                                    plan.estimated_cost)


def test_a_selection_that_names_no_shot_is_a_usage_error(tmp_path: Path) -> None:
    project = Project.open(write_board(tmp_path, [("a", "a heron")]))
    with pytest.raises(UsageError) as caught:
        project.plan(force=["nope"])
    assert (str(caught.value), caught.value.option) == ("no shot named nope", "--force")
    with pytest.raises(UsageError) as caught:
        project.apply(only=["z*"], api_key="k")
    assert caught.value.option == "--only"


# -- apply over a MockTransport (the transport seam) ------------------------------------------

class FakeApi:
    """Plays the API: every POST makes a task that is done at the first poll, whose video is
    a real MP4 of the asked duration; counts submissions."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._clip = render_clip(ClipSpec(segments=(("x", 3.0),)))
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            with self._lock:
                self.posts.append(json.loads(request.content))
                return httpx.Response(200, json={"task_id": f"t-{len(self.posts)}"})
        if request.url.path.endswith("/task-result"):
            task_id = request.url.params["task_id"]
            return httpx.Response(200, json={
                "task": {"task_id": task_id, "status": "TASK_STATUS_SUCCEED", "eta": 0,
                         "progress_percent": 100, "reason": ""},
                "videos": [{"video_url": f"https://files.example/{task_id}.mp4",
                            "video_url_ttl": "3600", "video_type": "mp4"}]})
        return httpx.Response(200, content=self._clip,
                              headers={"content-type": "video/mp4"})


def test_apply_through_a_mock_transport_reports_events_and_writes_the_lock(
        tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron"), ("b", "a kite")])
    api, events = FakeApi(), []
    plans: list[Any] = []
    report = Project.open(board).apply(
        api_key="sk-test", base_url=BASE, on_plan=lambda plan: plans.append(plan) is None,
        on_event=events.append, transport=httpx.MockTransport(api))
    assert report.ok and report.exit_code == 0 and not report.missing
    assert [(r.shot_ids, r.outcome, r.submitted) for r in report.results] == [
        (("a",), "done", True), (("b",), "done", True)]
    assert [p["prompt"] for p in api.posts] == ["a heron", "a kite"]
    assert plans == [report.plan]
    assert isinstance(events[0], RunStarted) and events[0].total == 2
    assert [(e.label, e.state) for e in events if isinstance(e, ShotUpdate)
            and e.label == "a"][-1] == ("a", "done")
    ended = [i for i, e in enumerate(events) if isinstance(e, RunEnded)]
    assert len(ended) == 1 and all(isinstance(e, FolderStep) for e in events[ended[0] + 1:])
    lock = json.loads(board.with_name("board.lock.json").read_text())
    assert {k: v["status"] for k, v in lock["shots"].items()} == {"a": "done", "b": "done"}
    assert report.folder is not None and report.folder.manifest.final is not None
    # A second apply pays nothing: the plan is all up to date.
    again = Project.open(board).apply(api_key="sk-test", base_url=BASE,
                                      transport=httpx.MockTransport(api))
    assert again.ok and len(api.posts) == 2
    assert {r.outcome for r in again.results} == {"up to date"}


def test_on_plan_saying_no_writes_and_submits_nothing(tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron")])
    api = FakeApi()
    with pytest.raises(Declined):
        Project.open(board).apply(api_key="sk-test", base_url=BASE, on_plan=lambda _: False,
                                  transport=httpx.MockTransport(api))
    assert api.posts == []
    assert not (tmp_path / "board.lock.json").exists() and not (tmp_path / "renders").exists()


def test_a_token_cancelled_before_the_run_submits_nothing_and_says_interrupted(
        tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron"), ("b", "a kite")])
    api, cancel = FakeApi(), CancelToken()
    cancel.cancel()
    assert cancel.cancelled
    report = Project.open(board).apply(api_key="sk-test", base_url=BASE, cancel=cancel,
                                       transport=httpx.MockTransport(api))
    assert api.posts == [] and report.interrupted and report.exit_code == 130
    assert {r.outcome for r in report.results} == {"not submitted"}
    assert not board.with_name("board.lock.json").exists()  # a run that recorded nothing


def test_a_cancel_during_the_run_winds_down_keeping_every_task_id(tmp_path: Path) -> None:
    """Cancelled from the event callback as the first task id lands: no new submission,
    and the task ids already made stay in the lock for the next run."""
    board = write_board(tmp_path, [("a", "a heron"), ("b", "a kite"), ("c", "a gull")])
    api, cancel = FakeApi(), CancelToken()

    def on_event(event: Event) -> None:
        if isinstance(event, ShotUpdate) and event.state == "queued":
            cancel.cancel()

    report = Project.open(board).apply(api_key="sk-test", base_url=BASE, jobs=1,
                                       cancel=cancel, on_event=on_event,
                                       transport=httpx.MockTransport(api))
    assert report.interrupted and len(api.posts) == 1
    lock = json.loads(board.with_name("board.lock.json").read_text())
    assert [e["task_id"] for e in lock["shots"].values()] == ["t-1"]


def test_no_key_is_an_error_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOVITA_API_KEY", raising=False)
    board = write_board(tmp_path, [("a", "a heron")])
    with pytest.raises(NoApiKey, match="NOVITA_API_KEY"):
        Project.open(board).apply(base_url=BASE, transport=httpx.MockTransport(FakeApi()))
    assert not (tmp_path / "board.lock.json").exists() and not (tmp_path / "renders").exists()


# -- on the simulator: status and manifest ---------------------------------------------------

def test_status_and_manifest_after_a_simulated_apply(tmp_path: Path) -> None:
    board = write_board(tmp_path, [("a", "a heron"), ("b", "a kite")])
    project = Project.open(board, simulate=True)
    assert project.manifest() is None
    assert [row.state for row in project.status()] == ["new", "new"]
    report = project.apply()
    assert report.ok
    rows = project.status()
    assert [(r.id, r.state, r.in_cache, r.in_output) for r in rows] == [
        ("a", "done", True, True), ("b", "done", True, True)]
    manifest = project.manifest()
    assert manifest is not None and manifest.final is not None
    assert [s.file for s in manifest.shots] == ["shots/001-a.mp4", "shots/002-b.mp4"]
    assert manifest.final.duration == pytest.approx(6.0, abs=0.2)
    printed = json.loads(CliRunner().invoke(main, ["status", str(board), "--simulate",
                                                   "--json"]).output)
    assert [s["state"] for s in printed["shots"]] == [r.state for r in rows]


# -- the remote: gc_remote ------------------------------------------------------------------

def test_gc_remote_lists_then_deletes_only_what_no_lock_references(tmp_path: Path) -> None:
    """A folder remote, through the public API only: a shot rendered again leaves its old
    video on the remote; gc_remote names it, deletes it (and its index entry) only with
    force, and what the lock references still pulls."""
    folder, remote = tmp_path / "project", str(tmp_path / "remote")
    folder.mkdir()
    board = write_board(folder, [("a", "a heron"), ("b", "a kite")])
    first = Project.open(board, simulate=True)
    assert first.apply().ok and first.push(remote=remote).ok
    manifest = first.manifest()
    assert manifest is not None
    [old] = [shot.sha256 for shot in manifest.shots if shot.id == "b"]
    assert old is not None
    write_board(folder, [("a", "a heron"), ("b", "a kite at dusk")])
    project = Project.open(board, simulate=True)
    assert project.apply().ok and project.push(remote=remote).ok

    listed = project.gc_remote(remote=remote)
    assert isinstance(listed, RemoteGcReport)
    assert [item.sha256 for item in listed.garbage] == [old] and listed.deleted is None
    assert (listed.kept, len(listed.index_keys)) == (2, 1)
    assert [path.name for path in listed.locks] == ["board.simulated.lock.json"]
    assert len(list((tmp_path / "remote").rglob(f"{old}.mp4"))) == 1  # listing deletes nothing

    deleted = project.gc_remote(remote=remote, force=True)
    assert deleted.deleted is not None
    assert [item.sha256 for item in deleted.deleted] == [old] and deleted.deleted_keys == 1
    assert list((tmp_path / "remote").rglob(f"{old}.mp4")) == []
    again = project.gc_remote(remote=remote)
    assert (again.garbage, again.dangling, again.kept) == ((), (), 2)
    teammate = Project.open(board, simulate=True, cache_dir=tmp_path / "teammate-cache",
                            out_dir=tmp_path / "teammate-renders")
    pulled = teammate.pull(remote=remote)
    assert pulled.ok and len(pulled.downloaded) == 2
