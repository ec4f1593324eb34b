"""The storyboard's `remote:` and how a command chooses its remote (no network)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kling_pipeline.errors import StoryboardError, UsageError
from kling_pipeline.remote.url import RemoteSpec, choose_remote, scrub
from kling_pipeline.storyboard.load import load_storyboard
from kling_pipeline.storyboard.settings import BoardSettings, RemoteSettings

HEAD = """version: 1
name: demo
{remote}
shots:
  - {{id: a, model: kling-v3.0-pro-t2v, prompt: "A fox"}}
"""


@pytest.mark.parametrize(("line", "expected"), [
    ("remote: s3://bucket/films", RemoteSettings("s3://bucket/films")),
    ("remote: {url: 's3://b/p', endpoint_url: 'http://127.0.0.1:9000'}",
     RemoteSettings("s3://b/p", "http://127.0.0.1:9000")),
    ("", None),
])
def test_the_remote_setting_is_read_and_round_trips(
        write_storyboard: Callable[[str], Path], line: str,
        expected: RemoteSettings | None) -> None:
    path = write_storyboard(HEAD.format(remote=line))
    settings = load_storyboard(path, use_cache=False).settings
    assert settings.remote == expected
    data = settings.to_json()
    assert data is not None
    assert BoardSettings.from_json(data) == settings
    warm = load_storyboard(path).settings  # the memo's plain settings on a second load
    assert load_storyboard(path).settings == warm == settings


@pytest.mark.parametrize("line", [
    "remote: s3://AKID:secret-value@bucket/x",
    "remote: {url: 's3://b/p', endpoint_url: 'ftp://x'}",
    "remote: {url: 's3://b/p', region: x}",
    "remote: ''",
])
def test_a_bad_remote_setting_is_located(write_storyboard: Callable[[str], Path],
                                         line: str) -> None:
    with pytest.raises(StoryboardError) as caught:
        load_storyboard(write_storyboard(HEAD.format(remote=line)), use_cache=False)
    assert "remote" in str(caught.value)
    assert "secret-value" not in str(caught.value)


def test_the_option_then_the_environment_then_the_storyboard(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    board = RemoteSettings("../shared", None)
    monkeypatch.delenv("KLING_PIPELINE_REMOTE", raising=False)
    assert choose_remote(None, None, None, tmp_path) is None
    assert choose_remote(None, None, board, tmp_path / "x") == RemoteSpec(str(tmp_path / "shared"))
    monkeypatch.setenv("KLING_PIPELINE_REMOTE", "s3://env/p")
    assert choose_remote(None, "http://h:1", board, tmp_path) == RemoteSpec("s3://env/p",
                                                                            "http://h:1")
    assert choose_remote("folder", None, board, tmp_path) == RemoteSpec(str(tmp_path / "folder"))
    with pytest.raises(UsageError):
        choose_remote("/mnt/nas", "http://h:1", None, tmp_path)  # an endpoint is for S3
    with pytest.raises(UsageError):
        choose_remote("s3://b/p", "h:1", None, tmp_path)


def test_scrub_removes_secrets_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcdefgh12345678")
    assert scrub("bad signature for abcdefgh12345678") == "bad signature for ***"
