"""write_thumbnail on real small MP4s: the JPEG shows the first frame at or after the middle,
is 480 px wide at most (aspect kept), returns the video's own size, replaces an old thumbnail
whole, leaves no temp file, and turns bad input into a MediaError. It also pins what it does
with a file cut short (it trusts the file to be whole): it shows the last frame that decodes."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image, ImageStat

from kling_pipeline.output.media import MediaError
from kling_pipeline.output.thumbnails import write_thumbnail

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
_TOLERANCE = 24  # per channel, after H.264 and JPEG; frames of the ramp are 8 apart in grey


def _clip(path: Path, colours: list[tuple[int, int, int]], *, size: tuple[int, int] = (320, 180),
          fps: int = 12, faststart: bool = True) -> Path:
    """A real H.264 MP4, one solid colour per frame, in order; no B-frames, so the file holds
    the frames in the order they are shown (a cut at a packet keeps exactly the frames before)."""
    width, height = size
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, colour in enumerate(colours):
            picture = Image.new("RGB", size, colour)
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _grey(index: int) -> tuple[int, int, int]:
    """The colour of frame `index` of a grey ramp: each frame 8 levels lighter than the last."""
    level = 16 + 8 * index
    return (level, level, level)


def _ramp(path: Path, frames: int) -> Path:
    return _clip(path, [_grey(index) for index in range(frames)])


def _thirds(path: Path, frames: int = 24, size: tuple[int, int] = (320, 180)) -> Path:
    """Red, then green, then blue, a third of the frames each."""
    return _clip(path, [(RED, GREEN, BLUE)[index * 3 // frames] for index in range(frames)],
                 size=size)


def _mean(path: Path) -> tuple[float, ...]:
    with Image.open(path) as image:
        return tuple(ImageStat.Stat(image.convert("RGB")).mean)


def _near(mean: tuple[float, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(got - want) <= _TOLERANCE for got, want in zip(mean, colour, strict=True))


def _video_packets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet with data, in file order."""
    with av.open(str(path)) as container:
        return [(packet.pos, packet.size)
                for packet in container.demux(container.streams.video[0])
                if packet.size and packet.pos is not None]


def _leftovers(folder: Path) -> list[str]:
    """Temp files atomic_write_bytes may leave: `.<name>.<random>.tmp`."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@pytest.fixture
def thumbs(tmp_path: Path) -> Path:
    """A folder for thumbnails only, apart from the videos."""
    folder = tmp_path / "thumbs"
    folder.mkdir()
    return folder


def test_the_middle_third_is_shown_not_the_first_or_last(tmp_path: Path, thumbs: Path) -> None:
    dest = thumbs / "shot.jpg"
    write_thumbnail(_thirds(tmp_path / "thirds.mp4"), dest)
    mean = _mean(dest)
    assert _near(mean, GREEN), mean
    assert not _near(mean, RED) and not _near(mean, BLUE)


@pytest.mark.parametrize(("frames", "shown"), [
    (24, 12),  # the middle falls on frame 12 exactly: that frame, not frame 11 before it
    (25, 13),  # the middle is 12.5 frames in: the first frame after it
    (23, 12),  # the middle is 11.5 frames in
    (1, 0),    # a one-frame video shows its only frame
])
def test_the_first_frame_at_or_after_the_middle(tmp_path: Path, thumbs: Path, frames: int,
                                               shown: int) -> None:
    dest = thumbs / "shot.jpg"
    write_thumbnail(_ramp(tmp_path / "ramp.mp4", frames), dest)
    level = _mean(dest)[0]
    assert abs(level - _grey(shown)[0]) <= 4, (level, _grey(shown))  # neighbours are 8 apart


@pytest.mark.parametrize(("size", "thumb"), [
    ((1280, 720), (480, 270)),
    ((960, 540), (480, 270)),
    ((540, 960), (480, 853)),  # portrait: 960 * 480 / 540 = 853.3
    ((480, 270), (480, 270)),  # exactly the width: kept
    ((320, 180), (320, 180)),  # narrower: never scaled up
])
def test_the_size_is_480_wide_at_most_with_the_aspect_kept(
        tmp_path: Path, thumbs: Path, size: tuple[int, int], thumb: tuple[int, int]) -> None:
    video = _thirds(tmp_path / "clip.mp4", frames=6, size=size)
    dest = thumbs / "shot.jpg"
    assert write_thumbnail(video, dest) == size  # the video's own size, not the thumbnail's
    with Image.open(dest) as image:
        assert image.size == thumb
    assert _near(_mean(dest), GREEN)  # scaled, still the middle frame


def test_a_narrower_width_can_be_asked_for(tmp_path: Path, thumbs: Path) -> None:
    dest = thumbs / "shot.jpg"
    assert write_thumbnail(_thirds(tmp_path / "clip.mp4", frames=6), dest, width=160) == (320, 180)
    with Image.open(dest) as image:
        assert image.size == (160, 90)


def test_the_result_is_a_valid_jpeg(tmp_path: Path, thumbs: Path) -> None:
    dest = thumbs / "shot.jpg"
    write_thumbnail(_thirds(tmp_path / "clip.mp4", frames=6), dest)
    assert dest.read_bytes()[:3] == b"\xff\xd8\xff"
    with Image.open(dest) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        image.load()  # the whole picture decodes, not only the header


def test_no_temp_file_is_left_after_a_success(tmp_path: Path, thumbs: Path) -> None:
    write_thumbnail(_thirds(tmp_path / "clip.mp4", frames=6), thumbs / "shot.jpg")
    assert os.listdir(thumbs) == ["shot.jpg"]


def test_the_destination_folder_is_made(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "thumbs" / "shot.jpg"
    write_thumbnail(_thirds(tmp_path / "clip.mp4", frames=6), dest)
    assert os.listdir(dest.parent) == ["shot.jpg"]


def test_an_old_thumbnail_is_replaced(tmp_path: Path, thumbs: Path) -> None:
    dest = thumbs / "shot.jpg"
    write_thumbnail(_clip(tmp_path / "red.mp4", [RED] * 3), dest)
    assert _near(_mean(dest), RED)
    write_thumbnail(_clip(tmp_path / "blue.mp4", [BLUE] * 3, size=(960, 540)), dest)
    assert _near(_mean(dest), BLUE)
    with Image.open(dest) as image:
        assert image.size == (480, 270)
    assert os.listdir(thumbs) == ["shot.jpg"]


def _bad_inputs(folder: Path) -> dict[str, Path]:
    """Files that are no readable video, each of which write_thumbnail refuses."""
    whole = _thirds(folder / "whole.mp4")
    end_indexed = _clip(folder / "end-indexed.mp4", [RED] * 8 + [GREEN] * 8 + [BLUE] * 8,
                        faststart=False)
    first_pos, first_size = _video_packets(whole)[0]
    bad = {
        "random": os.urandom(4096),
        "empty": b"",
        # without faststart the index (moov) is at the end: half the file has none
        "half-of-end-indexed": end_indexed.read_bytes()[: end_indexed.stat().st_size // 2],
        # index at the front, but the file stops inside the first (key) frame
        "cut-in-first-frame": whole.read_bytes()[: first_pos + first_size // 2],
    }
    paths = {}
    for name, data in bad.items():
        path = folder / f"{name}.mp4"
        path.write_bytes(data)
        paths[name] = path
    paths["missing"] = folder / "missing.mp4"
    return paths


@pytest.mark.parametrize("kind", ["random", "empty", "half-of-end-indexed",
                                  "cut-in-first-frame", "missing"])
def test_bad_input_raises_media_error_naming_the_file(tmp_path: Path, thumbs: Path,
                                                      kind: str) -> None:
    video = _bad_inputs(tmp_path)[kind]
    dest = thumbs / "shot.jpg"
    with pytest.raises(MediaError) as raised:
        write_thumbnail(video, dest)
    assert str(video) in str(raised.value)
    assert "no frame could be read" in str(raised.value)
    assert os.listdir(thumbs) == []  # neither a thumbnail nor a temp file


def test_a_failure_leaves_the_old_thumbnail_and_no_temp_file(tmp_path: Path,
                                                             thumbs: Path) -> None:
    dest = thumbs / "shot.jpg"
    write_thumbnail(_clip(tmp_path / "red.mp4", [RED] * 3), dest)
    before = dest.read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(MediaError):
        write_thumbnail(bad, dest)
    assert dest.read_bytes() == before
    assert os.listdir(thumbs) == ["shot.jpg"]


def _cut_before_packet(whole: Path, dest: Path, packet: int) -> Path:
    """`whole` cut at the first byte of its video packet number `packet` (frame `packet`)."""
    offset, _ = _video_packets(whole)[packet]
    dest.write_bytes(whole.read_bytes()[:offset])
    return dest


def test_a_file_with_no_frame_data_raises_media_error(tmp_path: Path, thumbs: Path) -> None:
    """Index whole, not a byte of picture: the decoder yields nothing."""
    video = _cut_before_packet(_ramp(tmp_path / "ramp.mp4", 24), tmp_path / "cut.mp4", 0)
    with pytest.raises(MediaError, match="no frame to show"):
        write_thumbnail(video, thumbs / "shot.jpg")
    assert os.listdir(thumbs) == []


def test_a_file_with_no_frame_data_names_the_file(tmp_path: Path, thumbs: Path) -> None:
    video = _cut_before_packet(_ramp(tmp_path / "ramp.mp4", 24), tmp_path / "cut.mp4", 0)
    with pytest.raises(MediaError) as raised:
        write_thumbnail(video, thumbs / "shot.jpg")
    assert str(video) in str(raised.value)


@pytest.mark.parametrize("cut_at", [1, 6, 12])
def test_a_file_cut_before_the_middle_shows_its_last_frame_without_error(
        tmp_path: Path, thumbs: Path, cut_at: int) -> None:
    """NOT a MediaError: the file is opened unprobed and trusted to be whole (the store has
    proved it), so a file cut short between frames silently gives a thumbnail of the last
    frame it holds ("the last one if it ends early"). The size comes from the header."""
    video = _cut_before_packet(_ramp(tmp_path / "ramp.mp4", 24), tmp_path / "cut.mp4", cut_at)
    dest = thumbs / "shot.jpg"
    assert write_thumbnail(video, dest) == (320, 180)
    assert abs(_mean(dest)[0] - _grey(cut_at - 1)[0]) <= 4
    assert os.listdir(thumbs) == ["shot.jpg"]
