"""probe_video trusts only whole videos, and turns every bad file into a MediaError."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from kling_pipeline.output.media import MediaError, VideoInfo, probe_video
from kling_pipeline.simulator.video import ClipSpec, render_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real 4 s 9:16 clip with sound: its tail is audio, the likeliest part to be cut off."""
    return render_clip(ClipSpec(segments=(("a kite over a field", 4.0),), aspect_ratio="9:16",
                                sound=True))


def _write(tmp_path: Path, data: bytes, name: str = "video.mp4") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_whole_clip(tmp_path: Path, clip: bytes) -> None:
    info = probe_video(_write(tmp_path, clip))
    assert info == VideoInfo(duration=4.0, width=180, height=320, fps=12.0, has_audio=True,
                             codec="h264")


def test_headers_only(tmp_path: Path) -> None:
    path = _write(tmp_path, render_clip(ClipSpec(segments=(("x", 3.0),))))
    info = probe_video(str(path), decode=False)
    assert (info.duration, info.width, info.height, info.has_audio) == (3.0, 320, 180, False)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path: Path, clip: bytes, keep: float) -> None:
    path = _write(tmp_path, clip[: int(len(clip) * keep)])
    with pytest.raises(MediaError, match="truncated"):
        probe_video(path)


def test_truncated_by_one_byte_is_refused(tmp_path: Path, clip: bytes) -> None:
    with pytest.raises(MediaError, match="truncated"):
        probe_video(_write(tmp_path, clip[:-1]))


def test_headers_only_cannot_see_truncation(tmp_path: Path, clip: bytes) -> None:
    """The documented limit of decode=False: the index at the front still promises it all."""
    assert probe_video(_write(tmp_path, clip[: len(clip) // 2]), decode=False).duration == 4.0


def test_damaged_middle_is_refused(tmp_path: Path, clip: bytes) -> None:
    middle = len(clip) // 2
    damaged = clip[:middle] + bytes(range(256)) * 8 + clip[middle + 2048:]
    with pytest.raises(MediaError):
        probe_video(_write(tmp_path, damaged))


@pytest.mark.parametrize(("data", "words"), [
    (b"", "empty"),
    (b"this is not a video at all " * 40, "not a readable video"),
    (bytes(range(256)) * 64, "not a readable video"),
    (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, "not a readable video"),
])
def test_bad_bytes_are_refused_in_plain_words(tmp_path: Path, data: bytes, words: str) -> None:
    with pytest.raises(MediaError, match=words) as caught:
        probe_video(_write(tmp_path, data))
    assert "video.mp4" in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot be read"):
        probe_video(tmp_path / "absent.mp4")
    with pytest.raises(MediaError):
        probe_video(tmp_path)


def test_a_still_image_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
    with pytest.raises(MediaError, match="still image"):
        probe_video(path)


def test_audio_only_file_has_no_video(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48_000, layout="mono")
        for index in range(20):
            frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            frame.planes[0].update(bytes(4096))
            frame.sample_rate = 48_000
            frame.pts = index * 1024
            frame.time_base = Fraction(1, 48_000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(path)


def test_a_file_cut_before_its_codec_is_named_in_plain_words(tmp_path: Path,
                                                              clip: bytes) -> None:
    """Cut early enough, the stream names no codec: PyAV then gave None where a codec
    context should be, and the message was 'AttributeError: NoneType ...'. Every cut of the
    first kilobytes now reads as plain words, never as a Python exception's name."""
    import re

    python_error = re.compile(r"\b[A-Z][a-zA-Z]+Error\b")
    codec_less = 0
    for cut in range(40, 3000, 23):
        path = _write(tmp_path, clip[:cut], f"cut-{cut}.mp4")
        with pytest.raises(MediaError) as refused:
            probe_video(path)
        message = str(refused.value)
        assert not python_error.search(message), (cut, message)
        codec_less += "names no codec" in message
    assert codec_less, "no cut fell before the codec: the case is not exercised"
