"""Review findings about claims and the remote that need the CLI and the simulator: each test
shows a way a run pays twice for one request, or crashes, and is marked xfail (strict) until
the product is fixed.

Each "machine" is a folder with the same storyboard text, its own lock file and its own store
(so its own claim holder), sharing one folder remote; the provider is the simulator on
loopback, and what was paid for is read from the simulator's own count of submissions.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.apply_fixtures import FAST, lock_of, statuses, write_board
from support.chains import HEAD
from support.s3_server import BUCKET, S3Server
from support.simulator_fixtures import KEY, SimClient

from kling_pipeline.cli import main

IN_FLIGHT = {"queued", "processing", "rendered"}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "1", "NOVITA_API_KEY": KEY},
                              catch_exceptions=False)


def apply(board: Path, server: str, *args: str) -> Result:
    return run("apply", str(board), "--base-url", server, "--yes", *FAST, *args)


def paid(sim: SimClient) -> list[int]:
    """Tasks made per distinct request body."""
    return sorted(sim.stats()["submissions"].values())


def two_machines(tmp_path: Path, prompt: str) -> tuple[Path, Path]:
    boards = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        boards.append(write_board(tmp_path / name, [("one", prompt)]))
    return boards[0], boards[1]


def test_retry_failed_does_not_pay_again_for_a_retry_another_machine_is_rendering(
        tmp_path: Path, sim: SimClient) -> None:
    remote = ("--remote", str(tmp_path / "remote"))
    a, b = two_machines(tmp_path, "A lighthouse at dusk")
    sim.configure(failure_rate=1.0)
    apply(a, sim.base_url, *remote)
    assert statuses(a) == {"one": "failed"}  # A paid once (task 1), and it failed
    apply(b, sim.base_url, *remote)
    assert statuses(b) == {"one": "failed"}  # B followed A's claim: task 1, free
    assert lock_of(b)["one"]["task_id"] == lock_of(a)["one"]["task_id"]
    assert paid(sim) == [1]

    sim.configure(failure_rate=0.0, time_scale=20.0)  # a 3 s shot now renders for a minute
    retried = apply(b, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert statuses(b)["one"] in IN_FLIGHT, retried.output  # B retried: task 2, rendering
    assert paid(sim) == [2]

    # A retries its own failed task 1. The claim in force holds B's task 2, made for the same
    # request after task 1 failed: it is not the render A replaces; A should follow it, free.
    again = apply(a, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert paid(sim) == [2], again.output
    assert lock_of(a)["one"]["task_id"] == lock_of(b)["one"]["task_id"]


def test_retry_failed_on_a_changed_shot_does_not_supersede_another_machines_render(
        tmp_path: Path, sim: SimClient) -> None:
    remote = ("--remote", str(tmp_path / "remote"))
    a, b = two_machines(tmp_path, "A lighthouse at dusk")
    sim.configure(failure_rate=1.0)
    apply(a, sim.base_url, *remote)
    assert statuses(a) == {"one": "failed"}  # the old request failed on A

    for board in (a, b):  # the storyboard changes (a commit both machines pull)
        board.write_text(board.read_text().replace("at dusk", "at dawn"))
    sim.configure(failure_rate=0.0, time_scale=20.0)
    started = apply(b, sim.base_url, *remote, "--max-wait", "1s")
    assert statuses(b)["one"] in IN_FLIGHT, started.output  # B pays for the new request
    assert paid(sim) == [1, 1]

    # Without --retry-failed, A's run follows B's claim (the shot changed: it is `~`, and
    # the claim holds a task). The flag is about A's failed OLD request, which A no longer
    # asks for; it must not make A pay for B's new one.
    again = apply(a, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert paid(sim) == [1, 1], again.output
    assert lock_of(a)["one"]["task_id"] == lock_of(b)["one"]["task_id"]


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
    # Every answer takes 1 s: c's POST is still unanswered (its lock entry `submitting`, its
    # claim `claimed`) when d, made exact at the same moment as c, comes to submit.
    sim.configure(latency=1.0)
    remote = ("--remote", str(tmp_path / "remote")) if with_remote else ()
    result = apply(board, sim.base_url, *remote)
    assert result.exit_code == 0, result.output
    lock = lock_of(board)
    assert lock["c"]["key"] == lock["d"]["key"]  # one request
    assert paid(sim) == [1, 1], result.output  # a once, the shared request once
    assert lock["c"]["task_id"] == lock["d"]["task_id"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_ftp_remote_is_a_warning_for_apply(tmp_path: Path,
                                                          sim: SimClient) -> None:
    (tmp_path / "a").mkdir()
    board = write_board(tmp_path / "a", [("one", "A lighthouse at dusk")])
    result = apply(board, sim.base_url, "--remote", f"ftp://127.0.0.1:{closed_port()}/x")
    assert "internal error" not in result.output, result.output
    assert result.exit_code == 0, result.output  # docs/remote.md: a warning, the run goes on
    assert statuses(board) == {"one": "done"}


def test_an_unreachable_ftp_remote_is_one_line_for_push(tmp_path: Path,
                                                        sim: SimClient) -> None:
    (tmp_path / "a").mkdir()
    board = write_board(tmp_path / "a", [("one", "A lighthouse at dusk")])
    assert apply(board, sim.base_url).exit_code == 0
    result = run("push", str(board), "--remote", f"ftp://127.0.0.1:{closed_port()}/x")
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output


def test_a_rerun_without_the_remote_still_settles_the_claim_a_killed_run_left(
        tmp_path: Path, sim: SimClient, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    prefix = uuid.uuid4().hex
    url = f"s3://{BUCKET}/{prefix}"
    up = ("--remote", url, "--remote-endpoint-url", s3.endpoint)
    down = ("--remote", url, "--remote-endpoint-url", f"http://127.0.0.1:{closed_port()}")
    a, b = two_machines(tmp_path, "A lighthouse at dusk")
    sim.configure(time_scale=0.3)  # a 3 s shot renders in 0.9 s
    first = apply(a, sim.base_url, *up, "--max-wait", "0.2s")
    assert statuses(a)["one"] in IN_FLIGHT, first.output
    key = lock_of(a)["one"]["key"]

    # docs/remote.md, crash table row 4: A killed after the task id is in its lock, before it
    # is in the claim. The claim is put back as it was at that moment.
    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint, skip_instance_cache=True)
    path = f"{BUCKET}/{prefix}/claims/{key}/00000001.json"
    claim = json.loads(fs.cat_file(path))
    assert claim["state"] == "submitted"
    claim.update(state="claimed", task_id=None)
    fs.pipe_file(path, json.dumps(claim, sort_keys=True, indent=1).encode() + b"\n")

    # A runs again at once ("any apply of that checkout within the expiry settles it"), but
    # the remote cannot be reached this time: a warning, and A finishes its paid shot.
    again = apply(a, sim.base_url, *down)
    assert "warning" in again.output and statuses(a) == {"one": "done"}, again.output
    assert apply(a, sim.base_url, *up).exit_code == 0  # and again, with the remote back
    assert paid(sim) == [1]

    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "1")  # the 10 minutes pass
    time.sleep(1.5)
    late = apply(b, sim.base_url, *up)
    assert paid(sim) == [1], late.output  # B follows A's task; it must not pay again
