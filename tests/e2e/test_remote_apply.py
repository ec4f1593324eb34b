"""apply with a remote: a request a teammate rendered is taken from the remote, verified and
unpaid; every video a run downloads is pushed; a remote that cannot be reached is a warning.

Each test runs real processes' worth of work in-process through the CLI: the simulator on
loopback as the provider, and a folder or moto's S3 server on loopback as the remote. What a
run paid for is read from the simulator's own count of submissions.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.apply_fixtures import FAST, lock_of, shot_files, statuses, storyboard_text, write_board
from support.apply_fixtures import apply as apply_args
from support.chains import HEAD as CHAIN_HEAD
from support.chains import A, B, C
from support.s3_server import BUCKET, FAKE_ENV, S3Server
from support.simulator_fixtures import KEY, SimClient

from kling_pipeline.cli import main
from kling_pipeline.output.media import probe_video


@dataclass(frozen=True)
class Remote:
    url: str
    endpoint: str | None = None
    server: S3Server | None = None

    def args(self) -> list[str]:
        return ["--remote", self.url] + (
            ["--remote-endpoint-url", self.endpoint] if self.endpoint else [])

    def fs(self):  # type: ignore[no-untyped-def]
        import fsspec

        if self.endpoint:
            return fsspec.filesystem("s3", endpoint_url=self.endpoint, skip_instance_cache=True)
        return fsspec.filesystem("file")

    @property
    def root(self) -> str:
        return self.url.removeprefix("s3://")

    def names(self) -> list[str]:
        fs = self.fs()
        try:
            return sorted(str(p).removeprefix(self.root).lstrip("/")
                          for p in fs.find(self.root))
        except FileNotFoundError:
            return []


@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "folder":
        return Remote(str(tmp_path / "remote"))
    server: S3Server = request.getfixturevalue("s3")
    return Remote(f"s3://{BUCKET}/{uuid.uuid4().hex}", server.endpoint, server)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "1", "NOVITA_API_KEY": KEY},
                              catch_exceptions=False)


def apply(board: Path, server: str, remote: Remote, *args: str) -> Result:
    return run("apply", str(board), "--base-url", server, "--yes", *FAST, *remote.args(),
               *args)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def paid(sim: SimClient) -> int:
    return sum(sim.stats()["submissions"].values())


SHOTS = [("dawn", "A harbour at dawn"), ("boats", "Boats leave"), ("gulls", "Gulls wheel")]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_a_request_a_teammate_rendered_is_taken_from_the_remote_unpaid(
        remote: Remote, tmp_path: Path, sim: SimClient) -> None:
    """A renders three shots and (without a push command) they reach the remote; B, in
    another storyboard with the same requests under other names and one new shot, pays for
    the new one only."""
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS)
    first = apply(a, sim.base_url, remote)
    assert first.exit_code == 0, first.output
    assert "3 pushed" in first.output
    assert len([n for n in remote.names() if n.startswith("index/")]) == 3
    assert paid(sim) == 3

    (tmp_path / "b").mkdir()
    b = write_board(tmp_path / "b", [("opening", "A harbour at dawn"), ("exit", "Boats leave"),
                                     ("birds", "Gulls wheel"), ("night", "Night falls")],
                    name="other")
    planned = run("plan", str(b), *remote.args())
    assert planned.exit_code == 0, planned.output
    assert "= opening" in planned.output and "in the remote" in planned.output
    assert "+ night" in planned.output
    assert "1 to add" in planned.output and "(3 from the remote)" in planned.output

    second = apply(b, sim.base_url, remote)
    assert second.exit_code == 0, second.output
    assert paid(sim) == 4  # the new shot only
    assert "3 video(s) taken, 1 pushed" in second.output
    assert "= opening" in second.output and "from remote" in second.output
    lock = lock_of(b)
    assert {e["status"] for e in lock.values()} == {"done"}
    same = lock_of(a)
    assert lock["opening"]["output"] == same["dawn"]["output"]
    assert lock["opening"]["task_id"] == same["dawn"]["task_id"]  # the index's task id
    videos = shot_files(b, "other")
    assert len(videos) == 4 and all(abs(v.duration - 3) < 0.5 for v in videos.values())


def test_a_fresh_clone_applies_from_the_remote_with_the_provider_unreachable(
        remote: Remote, tmp_path: Path, sim: SimClient) -> None:
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS)
    assert apply(a, sim.base_url, remote).exit_code == 0
    (tmp_path / "b").mkdir()
    for name in ("board.yaml", "board.lock.json"):
        shutil.copyfile(tmp_path / "a" / name, tmp_path / "b" / name)
    b = tmp_path / "b/board.yaml"
    result = apply(b, closed_port(), remote)
    assert result.exit_code == 0, result.output
    assert "3 video(s) taken" in result.output
    assert files(tmp_path / "a/renders/demo") == files(tmp_path / "b/renders/demo")
    assert (tmp_path / "b/board.lock.json").read_bytes() == \
        (tmp_path / "a/board.lock.json").read_bytes()


def test_a_chain_is_taken_from_the_remote_round_by_round(tmp_path: Path,
                                                         sim: SimClient) -> None:
    """b's key is known only once a's video is here, c's once b's is: three rounds."""
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "a").mkdir()
    a = tmp_path / "a/board.yaml"
    a.write_text(CHAIN_HEAD + A + B + C)
    assert apply(a, sim.base_url, remote).exit_code == 0
    before = paid(sim)
    (tmp_path / "b").mkdir()
    b = tmp_path / "b/board.yaml"
    b.write_text(CHAIN_HEAD.replace("name: demo", "name: again") + C + B + A)
    result = apply(b, sim.base_url, remote)
    assert result.exit_code == 0, result.output
    assert paid(sim) == before
    assert "3 video(s) taken" in result.output
    assert {k: e["key"] for k, e in lock_of(b).items()} == \
        {k: e["key"] for k, e in lock_of(a).items()}


def _entry_path(remote: Remote, key: str) -> str:
    return f"{remote.root}/index/{key}.json"


def _new_key(board: Path, shot_id: str) -> str:
    out = run("plan", str(board), "--json", "--no-remote")
    return str(next(s["key"] for s in json.loads(out.output)["shots"] if s["id"] == shot_id))


def test_a_forged_index_entry_is_refused_and_never_used(tmp_path: Path,
                                                        sim: SimClient) -> None:
    """A writer of the remote points a 10 s request at a real 3 s video (the entry claims
    10 s): the bytes match their name, the decoded duration does not. Refused, named, never
    used; the shot is paid for (the plan said so before), and its real entry replaces the
    forged one."""
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS[:1])
    assert apply(a, sim.base_url, remote).exit_code == 0
    real = lock_of(a)["dawn"]["output"]

    (tmp_path / "b").mkdir()
    b = write_board(tmp_path / "b", [("long", "A long take")], duration=10, name="b")
    key = _new_key(b, "long")
    forged = {"format": 1, "sha256": real["sha256"], "size": real["size"], "duration": 10.0,
              "task_id": "forged-task", "endpoint": "kling-v3.0-pro-t2v"}
    Path(_entry_path(remote, key)).write_text(json.dumps(forged))
    before = paid(sim)
    result = apply(b, sim.base_url, remote)
    assert result.exit_code == 0, result.output
    assert "+ long" in result.output  # the plan shown before paying says it is paid
    assert "lasts 3.00 s; 10 s were asked for" in result.output
    assert "Refused" in result.output
    assert paid(sim) == before + 1
    entry = lock_of(b)["long"]
    assert entry["task_id"] != "forged-task" and entry["output"]["sha256"] != real["sha256"]
    assert abs(probe_video(next(iter(shot_files(b, "b").values())).path).duration - 10) < 1
    replaced = json.loads(Path(_entry_path(remote, key)).read_text())
    assert replaced["sha256"] == entry["output"]["sha256"]


def test_an_entry_for_another_model_is_refused_without_a_download(tmp_path: Path,
                                                                 sim: SimClient) -> None:
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "b").mkdir()
    b = write_board(tmp_path / "b", [("one", "One")], name="b")
    key = _new_key(b, "one")
    Path(remote.url, "index").mkdir(parents=True)
    Path(_entry_path(remote, key)).write_text(json.dumps(
        {"format": 1, "sha256": "ab" * 32, "size": 10, "duration": 3.0, "task_id": "t",
         "endpoint": "kling-v1.6-i2v"}))
    result = apply(b, sim.base_url, remote)
    assert result.exit_code == 0, result.output
    assert "the entry is for 'kling-v1.6-i2v', the request for 'kling-v3.0-pro-t2v'" \
        in result.output


def test_a_damaged_remote_object_falls_back_to_its_task_id(remote: Remote, tmp_path: Path,
                                                          sim: SimClient) -> None:
    """The object's bytes do not match its name (same size): refused; its entry agrees with
    the request, so the video is fetched from the provider by the entry's task id: free."""
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS[:1])
    assert apply(a, sim.base_url, remote).exit_code == 0
    output = lock_of(a)["dawn"]["output"]
    path = f"{remote.root}/objects/{output['sha256'][:2]}/{output['sha256']}.mp4"
    fs = remote.fs()
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.rm(path)
    fs.pipe_file(path, bytes(data))

    (tmp_path / "b").mkdir()
    b = write_board(tmp_path / "b", [("opening", "A harbour at dawn")], name="b")
    before = paid(sim)
    result = apply(b, sim.base_url, remote)
    assert result.exit_code == 0, result.output
    assert paid(sim) == before  # nothing paid: the task was followed
    assert "its bytes hash to" in result.output and "refused" in result.output
    assert "fetched from the provider by task" in result.output
    entry = lock_of(b)["opening"]
    assert entry["task_id"] == lock_of(a)["dawn"]["task_id"]
    assert hashlib.sha256(next(iter(shot_files(b, "b").values())).path.read_bytes()) \
        .hexdigest() == entry["output"]["sha256"]


def test_an_unreachable_remote_is_a_warning_and_the_render_goes_on(
        tmp_path: Path, sim: SimClient) -> None:
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS[:2])
    dead = Remote(f"s3://{BUCKET}/x", closed_port())
    saved = {k: __import__("os").environ.get(k) for k in FAKE_ENV}
    __import__("os").environ.update(FAKE_ENV)
    try:
        result = apply(a, sim.base_url, dead)
    finally:
        for k, v in saved.items():
            if v is None:
                __import__("os").environ.pop(k, None)
            else:
                __import__("os").environ[k] = v
    assert result.exit_code == 0, result.output
    assert "warning: the remote s3://team/x" in result.output
    assert "going on without the remote" in result.output
    assert FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in result.output
    assert set(e["status"] for e in lock_of(a).values()) == {"done"}


def test_no_push_and_no_remote(tmp_path: Path, sim: SimClient) -> None:
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS[:1], extra=f"remote: {remote.url}")
    result = run("apply", str(a), "--base-url", sim.base_url, "--yes", *FAST, "--no-push")
    assert result.exit_code == 0, result.output
    names = remote.names()  # its claim only: the run claimed the key, pushed nothing
    assert len(names) == 1 and names[0].startswith("claims/"), names
    (tmp_path / "a/renders").rename(tmp_path / "a/old")
    shutil.rmtree(tmp_path / "a/.kling-cache")
    # --no-remote: the storyboard's remote is not read; the video comes by task id
    again = run("apply", str(a), "--base-url", sim.base_url, "--yes", *FAST, "--no-remote")
    assert again.exit_code == 0 and "Remote" not in again.output, again.output
    clash = run("apply", str(a), "--no-remote", "--remote", remote.url)
    assert clash.exit_code == 2 and "--remote and --no-remote" in clash.output


def test_a_no_op_apply_asks_the_remote_nothing(s3: S3Server, tmp_path: Path,
                                               sim: SimClient) -> None:
    remote = Remote(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.endpoint, s3)
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS)
    assert apply(a, sim.base_url, remote).exit_code == 0
    start = s3.count()
    again = apply(a, sim.base_url, remote)
    assert again.exit_code == 0, again.output
    planned = run("plan", str(a), *remote.args())
    assert planned.exit_code == 0, planned.output
    assert s3.since(start) == []


def test_a_remote_that_ignores_conditional_writes_is_a_warning_and_makes_no_claims(
        s3: S3Server, tmp_path: Path, sim: SimClient) -> None:
    """An S3-compatible server that drops If-None-Match (an old MinIO) would let a claim
    overwrite another machine's: apply says so once, claims nothing, and still renders,
    pushes and takes from the remote."""
    remote = Remote(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.endpoint, s3)
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS[:2])
    s3.ignores_conditions = True
    try:
        result = apply(a, sim.base_url, remote)
    finally:
        s3.ignores_conditions = False
    assert result.exit_code == 0, result.output
    assert result.output.count("ignores conditional writes (If-None-Match)") == 1
    assert "submits without them" in result.output
    assert set(e["status"] for e in lock_of(a).values()) == {"done"}
    names = remote.names()
    assert not [name for name in names if name.startswith("claims/")], names
    assert len([name for name in names if name.startswith("index/")]) == 2, names


def test_a_simulated_apply_keeps_its_animatics_apart(tmp_path: Path) -> None:
    """An animatic has the request key of the render it previews: it goes to the remote's
    simulated/ part, where a real apply never looks."""
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "a").mkdir()
    board = tmp_path / "a/board.yaml"
    board.write_text(storyboard_text(SHOTS[:1], extra=f"remote: {remote.url}"))
    result = run("apply", str(board), "--simulate", *FAST)
    assert result.exit_code == 0, result.output
    names = remote.names()
    assert names and all(name.startswith("simulated/") for name in names)
    planned = run("plan", str(board))
    assert "+ dawn" in planned.output and "in the remote" not in planned.output


def test_only_and_force_decide_what_is_taken_from_the_remote(tmp_path: Path,
                                                             sim: SimClient) -> None:
    """--only takes only the shots it works on; --force renders anew (paid), never taking
    the remote's copy of the shot it names."""
    remote = Remote(str(tmp_path / "remote"))
    (tmp_path / "a").mkdir()
    a = write_board(tmp_path / "a", SHOTS)
    assert apply(a, sim.base_url, remote).exit_code == 0
    (tmp_path / "b").mkdir()
    b = write_board(tmp_path / "b", SHOTS, name="b")
    only = apply(b, sim.base_url, remote, "--only", "boats")
    assert only.exit_code == 0, only.output
    assert "1 video(s) taken" in only.output
    assert set(lock_of(b)) == {"boats"}
    before = paid(sim)
    forced = apply(b, sim.base_url, remote, "--force", "dawn")
    assert forced.exit_code == 0, forced.output
    assert paid(sim) == before + 1  # dawn, paid again as asked; gulls taken
    assert "1 video(s) taken" in forced.output
    assert lock_of(b)["dawn"]["task_id"] != lock_of(a)["dawn"]["task_id"]
    assert lock_of(b)["gulls"]["task_id"] == lock_of(a)["gulls"]["task_id"]


# -- claims: what --retry-failed replaces, and updates owed while the remote was out of reach

IN_FLIGHT = {"queued", "processing", "rendered"}


def paid_per_request(sim: SimClient) -> list[int]:
    """Tasks made per distinct request body."""
    return sorted(sim.stats()["submissions"].values())


def two_machines(tmp_path: Path, prompt: str) -> tuple[Path, Path]:
    boards = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        boards.append(write_board(tmp_path / name, [("one", prompt)]))
    return boards[0], boards[1]


def closed_port_number() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failed_on_a(tmp_path: Path, sim: SimClient) -> tuple[tuple[str, str], Path, Path]:
    """Two machines on one folder remote; A paid once for the shot (task 1), and it failed."""
    remote = ("--remote", str(tmp_path / "remote"))
    a, b = two_machines(tmp_path, "A lighthouse at dusk")
    sim.configure(failure_rate=1.0)
    apply_args(a, sim.base_url, *remote)
    assert statuses(a) == {"one": "failed"}
    return remote, a, b


def test_retry_failed_does_not_pay_again_for_a_retry_another_machine_is_rendering(
        tmp_path: Path, sim: SimClient) -> None:
    remote, a, b = failed_on_a(tmp_path, sim)
    apply_args(b, sim.base_url, *remote)
    assert statuses(b) == {"one": "failed"}  # B followed A's claim: task 1, free
    assert lock_of(b)["one"]["task_id"] == lock_of(a)["one"]["task_id"]
    assert paid_per_request(sim) == [1]

    sim.configure(failure_rate=0.0, time_scale=20.0)  # a 3 s shot now renders for a minute
    retried = apply_args(b, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert statuses(b)["one"] in IN_FLIGHT, retried.output  # B retried: task 2, rendering
    assert paid_per_request(sim) == [2]

    # A retries its own failed task 1. The claim in force holds B's task 2, made for the same
    # request after task 1 failed: it is not the render A replaces, so A follows it, free.
    again = apply_args(a, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert paid_per_request(sim) == [2], again.output
    assert lock_of(a)["one"]["task_id"] == lock_of(b)["one"]["task_id"]


def test_retry_failed_on_a_changed_shot_does_not_supersede_another_machines_render(
        tmp_path: Path, sim: SimClient) -> None:
    remote, a, b = failed_on_a(tmp_path, sim)  # the old request failed on A

    for board in (a, b):  # the storyboard changes (a commit both machines pull)
        board.write_text(board.read_text().replace("at dusk", "at dawn"))
    sim.configure(failure_rate=0.0, time_scale=20.0)
    started = apply_args(b, sim.base_url, *remote, "--max-wait", "1s")
    assert statuses(b)["one"] in IN_FLIGHT, started.output  # B pays for the new request
    assert paid_per_request(sim) == [1, 1]

    # Without --retry-failed, A's run follows B's claim (the shot changed: it is `~`, and
    # the claim holds a task). The flag is about A's failed OLD request, which A no longer
    # asks for; it does not make A pay for B's new one.
    again = apply_args(a, sim.base_url, *remote, "--retry-failed", "--max-wait", "1s")
    assert paid_per_request(sim) == [1, 1], again.output
    assert lock_of(a)["one"]["task_id"] == lock_of(b)["one"]["task_id"]


def test_a_rerun_without_the_remote_still_settles_the_claim_a_killed_run_left(
        tmp_path: Path, sim: SimClient, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    prefix = uuid.uuid4().hex
    url = f"s3://{BUCKET}/{prefix}"
    up = ("--remote", url, "--remote-endpoint-url", s3.endpoint)
    down = ("--remote", url, "--remote-endpoint-url", f"http://127.0.0.1:{closed_port_number()}")
    a, b = two_machines(tmp_path, "A lighthouse at dusk")
    sim.configure(time_scale=0.3)  # a 3 s shot renders in 0.9 s
    first = apply_args(a, sim.base_url, *up, "--max-wait", "0.2s")
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
    again = apply_args(a, sim.base_url, *down)
    assert "warning" in again.output and statuses(a) == {"one": "done"}, again.output
    assert apply_args(a, sim.base_url, *up).exit_code == 0  # and again, with the remote back
    assert paid_per_request(sim) == [1]

    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "1")  # the 10 minutes pass
    time.sleep(1.5)
    late = apply_args(b, sim.base_url, *up)
    assert paid_per_request(sim) == [1], late.output  # B follows A's task and does not pay again
