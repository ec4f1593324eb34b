"""`gc --remote` over a folder remote and a real S3 protocol server (moto on loopback).

Two versions of a shot are rendered on the simulator and both pushed: gc lists exactly the
one no lock references, deletes it (and its index entry) only with --force, keeps the others
byte for byte, lets a lock written between the listing and the delete save its object, stops
before deleting anything on a broken lock, and names an unreachable remote in one line.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.apply_fixtures import apply, lock_of, write_board
from support.s3_server import BUCKET, FAKE_ENV, S3Server
from support.simulator_fixtures import SimClient

from kling_pipeline.cli import main
from kling_pipeline.remote.gc import delete_remote_garbage, find_remote_garbage
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.url import RemoteSpec
from kling_pipeline.state.lockfile import LockFile, read_lock, write_lock

SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water")]


@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteSpec:
    if request.param == "folder":
        return RemoteSpec(str(tmp_path / "remote"))
    server: S3Server = request.getfixturevalue("s3")
    return RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", server.endpoint)


def args(spec: RemoteSpec) -> list[str]:
    return ["--remote", spec.url] + (["--remote-endpoint-url", spec.endpoint_url]
                                     if spec.endpoint_url else [])


def run(*argv: str) -> Result:
    return CliRunner().invoke(main, list(argv), env={"NO_COLOR": "1"}, catch_exceptions=False)


def remote_files(spec: RemoteSpec) -> dict[str, bytes]:
    """Every file of the remote by its path under the remote, read back."""
    store = RemoteStore(spec)
    found = store.fs.find(store.root)
    return {path[len(store.root) + 1:]: store.fs.cat_file(path) for path in sorted(found)}


def two_versions(folder: Path, server: str, spec: RemoteSpec,
                 rendered: bool = False) -> tuple[Path, dict[str, Any]]:
    """Render (unless `rendered`), push, change the gulls shot, render and push again; the
    old gulls entry as the lock file held it."""
    board = write_board(folder, SHOTS)
    if not rendered:
        assert apply(board, server).exit_code == 0
    assert run("push", str(board), *args(spec)).exit_code == 0
    old = lock_of(board)["gulls"]
    write_board(folder, [SHOTS[0], ("gulls", "Gulls fighting over a fish")])
    assert apply(board, server).exit_code == 0
    pushed = run("push", str(board), *args(spec))
    assert pushed.exit_code == 0 and "1 uploaded" in pushed.output, pushed.output
    return board, old


def test_gc_remote_lists_then_deletes_only_the_unreferenced_object(
        remote: RemoteSpec, tmp_path: Path, sim: SimClient) -> None:
    board, old = two_versions(tmp_path, sim.base_url, remote)
    orphan = old["output"]["sha256"]
    referenced = {shot["output"]["sha256"] for shot in lock_of(board).values()}
    before = remote_files(remote)
    assert len([p for p in before if p.startswith("objects/")]) == 3
    assert f"index/{old['key']}.json" in before

    listed = run("gc", str(board), *args(remote))
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if line.startswith("- ")]
    assert len(lines) == 1 and lines[0].startswith(f"- {orphan[:12]}"), listed.output
    assert f"task {old['task_id']}" in lines[0]
    assert "1 unreferenced object" in listed.output and "1 index entry to delete" \
        in listed.output
    assert "--force" in listed.output and "knows only the lock files" in listed.output
    assert remote_files(remote) == before  # listing deletes nothing

    deleted = run("gc", str(board), *args(remote), "--force")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted: 1 object" in deleted.output and "1 index entry" in deleted.output
    after = remote_files(remote)
    assert set(before) - set(after) == {f"objects/{orphan[:2]}/{orphan}.mp4",
                                        f"index/{old['key']}.json"}
    assert {path: before[path] for path in after} == after  # the rest byte for byte
    for sha in referenced:
        data = after[f"objects/{sha[:2]}/{sha}.mp4"]
        assert hashlib.sha256(data).hexdigest() == sha
    if remote.endpoint_url is None:  # a folder remote keeps no empty objects/ab/
        assert not (Path(remote.url) / "objects" / orphan[:2]).exists() or \
            any(sha[:2] == orphan[:2] for sha in referenced)
    again = run("gc", str(board), *args(remote))
    assert "nothing to collect: kept 2 objects" in again.output, again.output


def test_a_lock_written_after_the_listing_saves_its_object(
        remote: RemoteSpec, tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    old = read_lock(board.with_name("board.lock.json"), "board").shots["gulls"]
    assert old.output is not None
    board, _ = two_versions(tmp_path, sim.base_url, remote, rendered=True)
    store = RemoteStore(remote)
    report = find_remote_garbage(store, tmp_path)
    assert [item.sha256 for item in report.garbage] == [old.output.sha256]
    # meanwhile a run of another storyboard of the project records the old video
    write_lock(tmp_path / "other" / "other.lock.json", LockFile("other", {"x": old}))

    result = delete_remote_garbage(store, report)

    assert result.deleted == () and result.deleted_keys == 0
    files = remote_files(remote)
    sha = old.output.sha256
    assert f"objects/{sha[:2]}/{sha}.mp4" in files and f"index/{old.key}.json" in files
    text = run("gc", str(board), *args(remote)).output
    assert "nothing to collect: kept 3 objects" in text, text


def test_a_broken_lock_stops_it_before_it_deletes_anything(
        remote: RemoteSpec, tmp_path: Path, sim: SimClient) -> None:
    board, _ = two_versions(tmp_path, sim.base_url, remote)
    before = remote_files(remote)
    (tmp_path / "scene2").mkdir()
    broken = tmp_path / "scene2" / "scene2.lock.json"
    broken.write_text('{"version": 1, "shots": {<<<<<<< HEAD\n', encoding="utf-8")
    result = run("gc", str(board), *args(remote), "--force")
    assert result.exit_code == 1, result.output
    assert str(broken) in result.output and "gc deletes nothing" in result.output
    assert "Traceback" not in result.output
    assert remote_files(remote) == before


def test_an_unreachable_remote_is_a_plain_error(tmp_path: Path, s3: S3Server) -> None:
    board = write_board(tmp_path, SHOTS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = run("gc", str(board), "--remote", "s3://team/x", "--remote-endpoint-url",
                 f"http://127.0.0.1:{closed}", "--force")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: the remote s3://team/x"), result.output
    assert "Traceback" not in result.output
    assert FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in result.output


def test_the_listing_is_one_request_per_folder_and_one_batch_of_index_reads(
        s3: S3Server, tmp_path: Path, sim: SimClient) -> None:
    spec = RemoteSpec(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.endpoint)
    board, _ = two_versions(tmp_path, sim.base_url, spec)
    start = s3.count()
    assert run("gc", str(board), *args(spec)).exit_code == 0
    requests = s3.since(start)
    listings = [r for r in requests if "list-type=2" in r]
    # index/, objects/ and claims/ (absent here: s3fs asks once more to tell "empty" from
    # "missing")
    assert {r.split("prefix=")[1].split("&")[0].rsplit("%2F", 2)[1] for r in listings} == {
        "index", "objects", "claims"}, requests
    assert len(listings) <= 4, requests
    assert not any("/objects/" in r for r in requests if "list-type" not in r), requests


def test_index_entries_without_their_object_go_and_unreadable_ones_stay(
        remote: RemoteSpec, tmp_path: Path, sim: SimClient) -> None:
    board = write_board(tmp_path, SHOTS[:1])
    assert apply(board, sim.base_url).exit_code == 0
    assert run("push", str(board), *args(remote)).exit_code == 0
    store = RemoteStore(remote)
    absent, odd = "ab" * 32, "cd" * 32
    store.fs.pipe_file(store.index_path(absent),
                       b'{"format": 1, "sha256": "' + b"e" * 64 + b'", "task_id": "t-1"}')
    store.fs.pipe_file(store.index_path(odd), b"not an index entry")
    kept = {path: data for path, data in remote_files(remote).items()
            if absent not in path}

    listed = run("gc", str(board), *args(remote))
    assert listed.exit_code == 0, listed.output
    assert "0 unreferenced objects (0 B) and 1 index entry to delete" in listed.output
    assert f"left alone: 1 index entry that cannot be read, e.g. index/{odd}.json" \
        in listed.output
    deleted = run("gc", str(board), *args(remote), "--force")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted: 0 objects (0 B) and 1 index entry" in deleted.output
    assert remote_files(remote) == kept


def test_a_task_a_lock_holds_without_an_output_keeps_its_object(
        tmp_path: Path, sim: SimClient) -> None:
    """A run between its upload and its lock write: the entry has the task id, no output."""
    spec = RemoteSpec(str(tmp_path / "remote"))
    board = write_board(tmp_path, SHOTS)
    assert apply(board, sim.base_url).exit_code == 0
    old = read_lock(board.with_name("board.lock.json"), "board").shots["gulls"]
    board, _ = two_versions(tmp_path, sim.base_url, spec, rendered=True)
    in_flight = replace(old, status="processing", output=None, finished_at=None)
    write_lock(tmp_path / "other" / "other.lock.json", LockFile("other", {"x": in_flight}))
    listed = run("gc", str(board), *args(spec))
    assert "nothing to collect: kept 3 objects" in listed.output, listed.output


def test_remote_and_the_local_cache_options_do_not_mix(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    result = run("gc", str(board), "--remote", str(tmp_path / "r"), "--simulate")
    assert result.exit_code == 2 and "does not look at the local cache" in result.output
    result = run("gc", str(board), "--remote-endpoint-url", "http://127.0.0.1:1")
    assert result.exit_code == 2 and "goes with --remote" in result.output
    result = run("gc", str(board), "--remote")  # none named anywhere
    assert result.exit_code == 2 and "no remote" in result.output, result.output


def test_an_entry_deleted_by_someone_else_meanwhile_does_not_stop_the_others(
        remote: RemoteSpec, tmp_path: Path) -> None:
    write_board(tmp_path, SHOTS)
    store = RemoteStore(remote)
    keys = [f"{n}" * 64 for n in (1, 2, 3)]
    if remote.endpoint_url is None:
        store.fs.makedirs(f"{store.root}/index", exist_ok=True)
    for key in keys:
        store.fs.pipe_file(store.index_path(key), b'{"sha256": "' + b"e" * 64 + b'"}')
    report = find_remote_garbage(store, tmp_path)
    assert report.index_keys == tuple(keys)
    store.fs.rm_file(store.index_path(keys[0]))
    result = delete_remote_garbage(store, report)
    assert result.deleted == () and result.deleted_keys == 3
    assert not any(path.startswith("index/") for path in remote_files(remote))


def test_settled_claims_go_with_force_and_live_ones_stay(
        remote: RemoteSpec, tmp_path: Path, sim: SimClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An apply with a remote claims each key it pays for. Once the key's video is in the
    index and the claim is older than the expiry, nobody needs it: gc lists it and --force
    deletes it. A claim whose key has no video in the index (a run between its claim and its
    upload, or one that ended unknown) stays."""
    board = write_board(tmp_path, SHOTS)
    result = CliRunner().invoke(main, ["apply", str(board), "--base-url", sim.base_url,
                                       "--yes", *args(remote)],
                                env={"NOVITA_API_KEY": "sk-test", "NO_COLOR": "1"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = RemoteStore(remote)
    live = "ef" * 32
    store.fs.makedirs(f"{store.root}/claims/{live}", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/claims/{live}/00000001.json", b"{}")
    claims = [p for p in remote_files(remote) if "/claims/" in f"/{p}"]
    assert len(claims) == len(SHOTS) + 1

    young = run("gc", str(board), *args(remote))
    assert young.exit_code == 0 and "settled claim" not in young.output, young.output
    monkeypatch.setenv("KLING_PIPELINE_CLAIM_EXPIRY", "0.01")
    import time

    time.sleep(0.05)
    listed = run("gc", str(board), *args(remote))
    assert listed.exit_code == 0, listed.output
    assert f"{len(SHOTS)} settled claims to delete (their videos are in the index)" \
        in listed.output
    assert len([p for p in remote_files(remote) if "claims/" in p]) == len(SHOTS) + 1
    deleted = run("gc", str(board), *args(remote), "--force")
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted: {len(SHOTS)} settled claims" in deleted.output
    left = [p for p in remote_files(remote) if "claims/" in p]
    assert len(left) == 1 and live in left[0], left
    assert len([p for p in remote_files(remote) if "objects/" in p]) == len(SHOTS)
