"""Keys of shots that take frames of other shots (plan/inputs.py), over a real store: a real
video in it, a real lock entry naming it, real frames taken and kept."""

from __future__ import annotations

import hashlib
import shutil
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from kling_pipeline.frames import FrameRef, extract_frame
from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.plan.inputs import Inputs
from kling_pipeline.state.cache import Store
from kling_pipeline.state.framestore import FrameStore
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output
from kling_pipeline.storyboard.load import load_storyboard
from kling_pipeline.storyboard.render import ShotRequest

BOARD = """version: 1
name: t
defaults: {model: kling-v3.0-pro-i2v, duration: 5}
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "A"}
  - {id: b, prompt: "B", image: {shot: a, frame: last}}
  - {id: c, prompt: "C", image: {shot: b, frame: first}, end_image: {shot: a, at: 0.5}}
  - {id: d, prompt: "D", image: {shot: b, frame: last}}
"""


def video(path: Path, size: tuple[int, int], colours: list[tuple[int, int, int]]) -> Path:
    """A real H.264 MP4, one colour per frame at 2 fps."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=2)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index, colour in enumerate(colours):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, colour))
            frame.pts, frame.time_base = index, Fraction(1, 2)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def stored(store: Store, path: Path) -> Output:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    temp = store.temp_file()
    shutil.copyfile(path, temp)
    store.ingest(temp, digest)
    return Output(digest, len(data), 5.0)


def done(shot: ShotRequest, output: Output) -> LockEntry:
    return LockEntry(key=shot.key, key_scheme=1, endpoint=shot.endpoint, request=shot.body,
                     status="done", task_id="t-" + shot.id, output=output,
                     finished_at="2026-01-01T00:00:00Z")


@pytest.fixture
def shots(tmp_path: Path) -> dict[str, ShotRequest]:
    board = tmp_path / "board.yaml"
    board.write_text(BOARD, encoding="utf-8")
    return {shot.id: shot for shot in load_storyboard(board, use_cache=False).shots}


def test_before_the_upstream_video_exists_every_dependent_waits_with_a_provisional_key(
        tmp_path: Path, shots: dict[str, ShotRequest]) -> None:
    store = Store(tmp_path / "store")
    resolution = Inputs(store).resolve_all(list(shots.values()), LockFile("t"))
    keys = {shot.id: shot.key for shot in resolution.shots}
    assert keys["a"] == shots["a"].key
    assert keys["b"].startswith("pending-") and keys["c"].startswith("pending-")
    assert resolution.waiting["b"].upstream == ("a",)
    assert resolution.waiting["c"].upstream == ("b", "a")  # all of them, in field order
    assert not resolution.waiting["b"].blocked


def test_a_rendered_upstream_makes_the_key_exact_from_the_frame_bytes(
        tmp_path: Path, shots: dict[str, ShotRequest]) -> None:
    store = Store(tmp_path / "store")
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    output = stored(store, video(tmp_path / "a.mp4", (640, 360), colours))
    lock = LockFile("t", {"a": done(shots["a"], output)})
    resolution = Inputs(store).resolve_all(list(shots.values()), lock)
    b = resolution.by_id()["b"]
    expected = extract_frame(store.object_path(output.sha256), FrameRef("last"))
    assert b.body["image"] == IMAGE_DIGEST_PREFIX + expected.sha256
    assert b.local_images["image"].sha256 == expected.sha256
    assert b.local_images["image"].path.read_bytes() == expected.png  # kept in the store
    assert b.local_images["image"].path.stat().st_mode & 0o222 == 0  # read-only there
    assert not b.key.startswith("pending-") and "b" not in resolution.waiting
    assert resolution.waiting["c"].upstream == ("b", "a")  # b is not rendered yet
    # the same inputs give the same key, and the second time from the kept frame
    again = Inputs(store).resolve_all(list(shots.values()), lock).by_id()["b"]
    assert again.key == b.key
    # another upstream video, another key
    other = stored(store, video(tmp_path / "a2.mp4", (640, 360), colours[:2]))
    moved = LockFile("t", {"a": done(shots["a"], other)})
    assert Inputs(store).resolve_all(list(shots.values()), moved).by_id()["b"].key != b.key


def test_a_frame_the_api_would_refuse_blocks_the_shot_and_its_dependents(
        tmp_path: Path, shots: dict[str, ShotRequest]) -> None:
    store = Store(tmp_path / "store")
    output = stored(store, video(tmp_path / "a.mp4", (320, 180), [(9, 9, 9), (99, 99, 99)]))
    lock = LockFile("t", {"a": done(shots["a"], output)})
    resolution = Inputs(store).resolve_all(list(shots.values()), lock)
    assert "the last frame of 'a' is 320x180 px; both sides must be at least 300 px" \
        in resolution.waiting["b"].blocked
    # c's own frame of a is refused too, and said first; without it, b would be the reason
    assert resolution.waiting["c"].blocked.startswith("the frame at 0.5 s of 'a' is 320x180")
    assert resolution.waiting["d"].blocked == "needs 'b', which cannot be rendered"


def test_a_lost_frame_file_is_taken_again_to_the_same_bytes(
        tmp_path: Path, shots: dict[str, ShotRequest]) -> None:
    store = Store(tmp_path / "store")
    output = stored(store, video(tmp_path / "a.mp4", (640, 360), [(1, 2, 3), (250, 20, 90)]))
    lock = LockFile("t", {"a": done(shots["a"], output)})
    first = Inputs(store).resolve_all(list(shots.values()), lock).by_id()["b"]
    shutil.rmtree(FrameStore(store.root).root)
    second = Inputs(store).resolve_all(list(shots.values()), lock).by_id()["b"]
    assert second.key == first.key
    assert second.local_images["image"].path.is_file()
