"""push and pull against a folder remote, a real S3 protocol server (moto on loopback) and
fsspec's in-memory file system (any backend fsspec has works the same way).

Clone A renders on the simulator and pushes; clone B, with only the storyboard and the lock
file, pulls with no provider at all and gets A's output folder, byte for byte. Every object
moved is verified: a remote object whose bytes do not match its name is refused and named and
never enters the store. A push or pull with nothing to move costs a bounded number of requests.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.apply_fixtures import apply, statuses, write_board
from support.chains import HEAD as CHAIN_HEAD
from support.chains import A, B, C
from support.s3_server import BUCKET, FAKE_ENV, S3Server
from support.simulator_fixtures import SimClient

from kling_pipeline.cli import main


@dataclass(frozen=True)
class Remote:
    kind: str
    url: str
    endpoint: str | None
    server: S3Server | None

    def args(self) -> list[str]:
        found = ["--remote", self.url]
        return found + (["--remote-endpoint-url", self.endpoint] if self.endpoint else [])

    def object_path(self, sha: str) -> str:
        return f"{self.url}/objects/{sha[:2]}/{sha}.mp4"

    def write(self, sha: str, data: bytes) -> None:
        import fsspec

        options = {"endpoint_url": self.endpoint, "skip_instance_cache": True} \
            if self.endpoint else {}
        with fsspec.open(self.object_path(sha), "wb", **options) as handle:
            handle.write(data)


@pytest.fixture(params=["folder", "s3", "memory"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """A folder, S3 on loopback, and fsspec's in-memory file system: any fsspec backend."""
    if request.param == "folder":
        return Remote("folder", str(tmp_path / "remote"), None, None)
    if request.param == "memory":
        return Remote("memory", f"memory://team/{uuid.uuid4().hex}", None, None)
    server: S3Server = request.getfixturevalue("s3")
    return Remote("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", server.endpoint, server)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "1", **(env or {})},
                              catch_exceptions=False)


SHOTS = [("dawn", "A harbour at dawn"), ("boats", "Boats leave"), ("gulls", "Gulls wheel")]


def render_a(folder: Path, server: str, shots: list[tuple[str, str]] = SHOTS) -> Path:
    folder.mkdir()
    board = write_board(folder, shots)
    result = apply(board, server)
    assert result.exit_code == 0, result.output
    return board


def clone(board: Path, folder: Path) -> Path:
    """A fresh clone: the storyboard and the lock file only (what git holds)."""
    folder.mkdir()
    for name in ("board.yaml", "board.lock.json"):
        shutil.copyfile(board.with_name(name), folder / name)
    return folder / "board.yaml"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_a_clone_pulls_the_output_folder_byte_for_byte(remote: Remote, tmp_path: Path,
                                                        sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url)
    pushed = run("push", str(a), *remote.args())
    assert pushed.exit_code == 0, pushed.output
    assert "3 uploaded, 0 already there, 3 index entries written" in pushed.output
    assert pushed.output.startswith("[00:")  # progress lines come first

    before = sim.stats()["requests"]
    b = clone(a, tmp_path / "b")
    pulled = run("pull", str(b), *remote.args())
    assert pulled.exit_code == 0, pulled.output
    assert "3 downloaded, 0 already here" in pulled.output
    assert sim.stats()["requests"] == before  # the provider was never called

    out_a, out_b = files(tmp_path / "a/renders/demo"), files(tmp_path / "b/renders/demo")
    assert {name.split("/")[0] for name in out_a} >= {
        "shots", "thumbs", "final.mp4", "manifest.json", "index.html"}
    # Every file, index.html included (its links are relative), is the same bytes.
    assert out_a.keys() == out_b.keys()
    assert [n for n in out_a if out_a[n] != out_b[n]] == []

    again = run("pull", str(b), *remote.args())
    assert again.exit_code == 0 and "remote not asked" in again.output, again.output


def test_a_pull_with_no_provider_at_all(remote: Remote, tmp_path: Path, sim: SimClient) -> None:
    """Clone B's storyboard points at a closed port: pull does not care (it never calls it)."""
    a = render_a(tmp_path / "a", sim.base_url)
    assert run("push", str(a), *remote.args()).exit_code == 0
    b = clone(a, tmp_path / "b")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    closed_url = f"http://127.0.0.1:{closed}"
    text = b.read_text().replace("provider: {", f"provider: {{base_url: '{closed_url}', ")
    b.write_text(text)  # base_url is not part of any key
    pulled = run("pull", str(b), *remote.args())
    assert pulled.exit_code == 0, pulled.output
    status = run("status", str(b))
    assert status.output.count("done") >= 3, status.output


def test_a_corrupted_remote_object_is_refused_named_and_not_stored(
        remote: Remote, tmp_path: Path, sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url)
    assert run("push", str(a), *remote.args()).exit_code == 0
    video = tmp_path / "a/renders/demo/shots/002-boats.mp4"
    data = bytearray(video.read_bytes())
    sha = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    remote.write(sha, bytes(data))

    b = clone(a, tmp_path / "b")
    pulled = run("pull", str(b), *remote.args())
    assert pulled.exit_code == 1, pulled.output
    assert "Refused" in pulled.output and "boats" in pulled.output and sha[:12] in pulled.output
    assert "2 downloaded" in pulled.output
    cache = tmp_path / "b/.kling-cache"
    assert not (cache / "objects" / sha[:2] / f"{sha}.mp4").exists()
    assert not list((cache / "tmp").glob("*"))
    assert not (tmp_path / "b/renders/demo/shots/002-boats.mp4").exists()


def test_a_truncated_remote_object_is_refused_without_download(
        remote: Remote, tmp_path: Path, sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url, SHOTS[:1])
    assert run("push", str(a), *remote.args()).exit_code == 0
    video = tmp_path / "a/renders/demo/shots/1-dawn.mp4"
    if not video.exists():
        video = next((tmp_path / "a/renders/demo/shots").glob("*.mp4"))
    sha = hashlib.sha256(video.read_bytes()).hexdigest()
    remote.write(sha, video.read_bytes()[:100])
    pulled = run("pull", str(clone(a, tmp_path / "b")), *remote.args())
    assert pulled.exit_code == 1
    assert "has 100 bytes" in pulled.output and sha[:12] in pulled.output


def test_a_no_op_push_and_pull_cost_a_few_requests(s3: S3Server, tmp_path: Path,
                                                    sim: SimClient) -> None:
    shots = [(f"s{n:02d}", f"Shot number {n}") for n in range(20)]
    a = render_a(tmp_path / "a", sim.base_url, shots)
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    args = ["--remote", url, "--remote-endpoint-url", s3.endpoint]
    first = run("push", str(a), *args)
    assert first.exit_code == 0 and "20 uploaded" in first.output, first.output

    start = s3.count()
    again = run("push", str(a), *args)
    assert again.exit_code == 0 and "0 uploaded, 20 already there" in again.output
    assert len(s3.since(start)) <= 3, s3.since(start)  # a listing of objects/ and of index/

    start = s3.count()
    pulled = run("pull", str(a), *args)  # every video is here: the remote is not asked
    assert pulled.exit_code == 0, pulled.output
    assert s3.since(start) == []

    b = clone(a, tmp_path / "b")
    start = s3.count()
    assert run("pull", str(b), *args).exit_code == 0
    listings = [r for r in s3.since(start) if not r.startswith("GET /team/")]
    assert len(listings) <= 3, listings  # one listing, then one GET per missing object
    start = s3.count()
    assert run("pull", str(b), *args).exit_code == 0
    assert s3.since(start) == []


def test_an_unreachable_remote_is_a_plain_error_without_the_secret(tmp_path: Path,
                                                                   s3: S3Server) -> None:
    board = write_board(tmp_path, SHOTS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = run("push", str(board), "--remote", "s3://team/x", "--remote-endpoint-url",
                 f"http://127.0.0.1:{closed}")
    assert result.exit_code == 1, result.output
    assert "error: the remote s3://team/x" in result.output
    assert "Traceback" not in result.output
    assert FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in result.output


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


def test_a_remote_of_an_unknown_protocol_is_a_plain_error(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    result = run("push", str(board), "--remote", "nosuchproto://bucket/x")
    assert result.exit_code == 1, result.output
    assert "error: the remote nosuchproto://bucket/x" in result.output
    assert "Traceback" not in result.output


def test_credentials_in_the_url_are_refused_and_not_echoed(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    result = run("push", str(board), "--remote", "s3://AKIDEXAMPLE:sekrit-value-99@bucket/x")
    assert result.exit_code == 2
    assert "sekrit-value-99" not in result.output
    assert "credentials" in result.output


def test_no_remote_named_is_a_usage_error(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    result = run("pull", str(board))
    assert result.exit_code == 2 and "no remote" in result.output


def test_the_storyboard_and_the_environment_name_the_remote(tmp_path: Path,
                                                            sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url, SHOTS[:1])
    text = a.read_text().replace("shots:\n", "remote: ../shared\nshots:\n")
    a.write_text(text)
    pushed = run("push", str(a))
    assert pushed.exit_code == 0 and "1 uploaded" in pushed.output, pushed.output
    assert list((tmp_path / "shared/objects").rglob("*.mp4"))
    env_remote = tmp_path / "from-env"
    pushed = run("push", str(a), env={"KLING_PIPELINE_REMOTE": str(env_remote)})
    assert pushed.exit_code == 0 and "1 uploaded" in pushed.output, pushed.output
    assert list((env_remote / "index").glob("*.json"))


def test_push_and_pull_work_on_the_simulated_renders(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    a = write_board(folder, SHOTS[:2])
    assert run("apply", "--simulate", str(a)).exit_code == 0
    remote = str(tmp_path / "remote")
    assert run("push", "--simulate", str(a), "--remote", remote).exit_code == 0
    b = tmp_path / "b"
    b.mkdir()
    for name in ("board.yaml", "board.simulated.lock.json"):
        shutil.copyfile(folder / name, b / name)
    pulled = run("pull", "--simulate", str(b / "board.yaml"), "--remote", remote)
    assert pulled.exit_code == 0 and "2 downloaded" in pulled.output, pulled.output
    assert files(folder / "renders/demo.simulated") == files(b / "renders/demo.simulated")


def test_a_missing_bucket_fails_each_upload_plainly(s3: S3Server, tmp_path: Path,
                                                    sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url, SHOTS[:2])
    result = run("push", str(a), "--remote", "s3://no-such-bucket/x", "--remote-endpoint-url",
                 s3.endpoint)
    assert result.exit_code == 1, result.output
    assert "Push to s3://no-such-bucket/x: 0 uploaded" in result.output
    assert "Failed:" in result.output and "bucket does not exist" in result.output
    assert "Traceback" not in result.output
    assert FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in result.output


def test_push_names_the_videos_the_local_store_lacks(remote: Remote, tmp_path: Path,
                                                     sim: SimClient) -> None:
    a = render_a(tmp_path / "a", sim.base_url, SHOTS[:2])
    b = clone(a, tmp_path / "b")
    result = run("push", str(b), *remote.args())
    assert result.exit_code == 1, result.output
    assert "Not in the local store (pull or apply first):" in result.output
    assert "dawn" in result.output and "boats" in result.output


CHAIN = CHAIN_HEAD + A + B + C


def test_a_chain_pulls_with_its_frames_byte_for_byte(tmp_path: Path, sim: SimClient) -> None:
    """Shots that start on another shot's frame: the clone takes the frames from the pulled
    videos, finds the keys of its lock file, and makes the same folder (frames/ included)."""
    (tmp_path / "a").mkdir()
    a = tmp_path / "a/board.yaml"
    a.write_text(CHAIN, encoding="utf-8")
    assert apply(a, sim.base_url).exit_code == 0
    remote = str(tmp_path / "remote")
    assert run("push", str(a), "--remote", remote).exit_code == 0
    before = sim.stats()["requests"]
    b = clone(a, tmp_path / "b")
    pulled = run("pull", str(b), "--remote", remote)
    assert pulled.exit_code == 0 and "3 downloaded" in pulled.output, pulled.output
    assert sim.stats()["requests"] == before
    out_a, out_b = files(tmp_path / "a/renders/demo"), files(tmp_path / "b/renders/demo")
    assert any(name.startswith("frames/") for name in out_a)
    assert out_a == out_b
    plan = run("plan", str(b), "--detailed-exitcode")
    assert plan.exit_code == 0, plan.output  # nothing left to do: every key is the lock's
