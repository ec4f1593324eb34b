"""Persistence across restarts, the clock model, URL signing, config checks and the command."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from support.simulator_fixtures import I2V, SimClient, png_uri, probe, t2v_body

from kling_pipeline.key import canonical_json
from kling_pipeline.simulator.command import config_from_options, simulator_command
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.faults import RateLimiter
from kling_pipeline.simulator.runner import running_simulator
from kling_pipeline.simulator.tasks import Task, body_hash, view
from kling_pipeline.simulator.urls import Signer


def test_a_restarted_simulator_knows_its_tasks_and_can_serve_their_videos(
        tmp_path: Path) -> None:
    config = SimulatorConfig(state_dir=str(tmp_path))
    body = {"image": png_uri(), "prompt": "kept", "duration": 3}
    with running_simulator(config) as url:
        sim = SimClient(url)  # not as a context manager: its reset would wipe the folder
        done = sim.submit(I2V, body)
        sim.wait(done)
        sim.configure(queue_delay=0.5)
        pending = sim.submit(body=t2v_body("still queued at restart"))
        assert sim.result(pending)["task"]["status"] == "TASK_STATUS_QUEUED"
        stored = sorted(p.name for p in (tmp_path / "tasks").iterdir())
        assert stored == sorted([f"{done}.json", f"{pending}.json"])
        old_url = sim.result(done)["videos"][0]["video_url"]
    with running_simulator(config) as url:
        sim = SimClient(url)
        assert httpx.get(old_url.replace(old_url.split("/_simulator")[0], url)).status_code \
            == 200  # the URL secret lives in the state folder too
        answer = sim.wait(done)
        assert answer["task"]["status"] == "TASK_STATUS_SUCCEED"
        facts = probe(httpx.get(answer["videos"][0]["video_url"]).content)
        assert abs(facts.duration - 3.0) < 0.2
        assert sim.wait(pending)["task"]["status"] == "TASK_STATUS_SUCCEED"
        assert sim.stats()["tasks_total"] == 2


def test_state_files_are_complete_json(tmp_path: Path) -> None:
    with running_simulator(SimulatorConfig(state_dir=str(tmp_path))) as url:
        task_id = SimClient(url).submit(body=t2v_body("on disk"))
    data = json.loads((tmp_path / "tasks" / f"{task_id}.json").read_text())
    assert data["task_id"] == task_id and data["body"] == t2v_body("on disk")
    assert data["body_hash"] == body_hash(t2v_body("on disk"))
    assert not list((tmp_path / "tasks").glob("*.tmp"))


def test_canonical_json_is_sorted_without_spaces() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def make_task(**changes: object) -> Task:
    fields: dict[str, object] = dict(
        task_id="t", slug="kling-v3.0-pro-t2v", body={}, body_hash="h", video_seconds=5,
        submitted_at=100.0, queue_seconds=10.0, generate_seconds=50.0, failure="",
        no_url=False, seed=1)
    fields.update(changes)
    return Task(**fields)  # type: ignore[arg-type]


def test_view_is_a_function_of_the_clock() -> None:
    task = make_task()
    assert view(task, 105.0).status == "TASK_STATUS_QUEUED"
    assert view(task, 105.0).eta == 55 and view(task, 105.0).progress == 0
    assert view(task, 135.0).status == "TASK_STATUS_PROCESSING"
    assert view(task, 135.0).progress == 50 and view(task, 135.0).eta == 25
    assert view(task, 160.0).status == "TASK_STATUS_SUCCEED"
    assert (view(task, 160.0).progress, view(task, 160.0).eta) == (100, 0)
    failing = make_task(failure="nope")
    assert view(failing, 200.0).status == "TASK_STATUS_FAILED"


def test_signer_refuses_forgery_and_expiry() -> None:
    signer = Signer.fresh()
    url = signer.url("http://h", "task", 60, now=1000.0)
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert signer.check("task", query["expires"], query["sig"], now=1059.0) == ""
    assert signer.check("task", query["expires"], query["sig"], now=1060.0) == "AccessDenied"
    assert signer.check("other", query["expires"], query["sig"], now=1000.0) \
        == "SignatureDoesNotMatch"
    assert Signer.fresh().check("task", query["expires"], query["sig"], now=1000.0) \
        == "SignatureDoesNotMatch"


def test_rate_limiter_window() -> None:
    limiter = RateLimiter()
    assert limiter.check("a", 2, 60) is None and limiter.check("a", 2, 60) is None
    wait = limiter.check("a", 2, 60)
    assert wait is not None and 59 < wait <= 60
    assert limiter.check("b", 2, 60) is None
    assert limiter.check("a", 0, 60) is None


def test_config_checks_every_knob() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        SimulatorConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="error_codes"):
        SimulatorConfig(error_codes=(418,))
    assert SimulatorConfig.realistic().time_scale == 12.0
    assert SimulatorConfig().replace({"accepted_keys": ["k"]}).accepted_keys == ("k",)


def test_command_help_lists_every_knob() -> None:
    result = CliRunner().invoke(simulator_command, ["--help"])
    assert result.exit_code == 0
    for flag in ("--port", "--time-scale", "--drop-after-rate", "--url-ttl", "--state-dir",
                 "--retry-after / --no-retry-after", "--accepted-keys", "--realistic"):
        assert flag in result.output


def test_command_refuses_a_non_loopback_host() -> None:
    result = CliRunner().invoke(simulator_command, ["--host", "0.0.0.0"])
    assert result.exit_code == 2 and "loopback" in result.output


def test_command_options_become_the_config() -> None:
    config = config_from_options(True, {"rpm_limit": 3, "accepted_keys": ("a", "b"),
                                        "retry_after": False, "balance": None,
                                        "forbidden_slugs": ()})
    assert (config.rpm_limit, config.accepted_keys, config.retry_after) == (3, ("a", "b"), False)
    assert config.time_scale == 12.0 and config.balance is None


def test_signed_url_lives_at_least_its_ttl() -> None:
    """Regression: the expiry was rounded down, so a 1 s URL issued at x.9 died 0.1 s later."""
    signer = Signer.fresh()
    url = signer.url("http://h", "task", 1, now=1000.9)
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert signer.check("task", query["expires"], query["sig"], now=1001.8) == ""
    assert signer.check("task", query["expires"], query["sig"], now=1002.0) == "AccessDenied"
