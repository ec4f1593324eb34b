"""build_final_cut joins real clips: copied when it can, re-encoded when it must, always in sync."""

from __future__ import annotations

import array
import os
import re
import struct
from fractions import Fraction
from pathlib import Path

import av
import pytest

from kling_pipeline.output.finalcut import CutShape, FinalCut, build_final_cut
from kling_pipeline.output.media import MediaError, probe_video
from kling_pipeline.simulator.video import ClipSpec, render_clip


def _clip(folder: Path, name: str, seconds: float = 1.0, aspect: str = "16:9",
          sound: bool = False, fps: int = 12) -> Path:
    """A real simulator clip, 320 px on its long side."""
    path = folder / name
    path.write_bytes(render_clip(ClipSpec(segments=((f"shot {name}", seconds),),
                                          aspect_ratio=aspect, sound=sound, fps=fps)))
    return path


def _late_sound_clip(folder: Path, name: str, late: float, rate: int = 48_000) -> Path:
    """A 1 s clip made with PyAV whose sound (a tone) starts `late` seconds after its picture."""
    path = folder / name
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=12, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for index in range(12):
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([90 + index]) * plane.buffer_size)
            frame.pts, frame.time_base = index, Fraction(1, 12)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        position, stop = round(late * rate), rate
        while position < stop:
            count = min(1024, stop - position)
            tone = array.array("f", [0.3 if (position + i) % 100 < 50 else -0.3
                                     for i in range(count)])
            frame = av.AudioFrame(format="fltp", layout="mono", samples=count)
            frame.planes[0].update(tone.tobytes())
            frame.sample_rate, frame.pts, frame.time_base = rate, position, Fraction(1, rate)
            out.mux(audio.encode(frame))
            position += count
        out.mux(audio.encode(None))
    return path


def _video_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def _check_timeline(cut: FinalCut, dest: Path) -> None:
    """The cut's figures are the written file's: starts cumulative, durations summing to it."""
    frame = 1 / float(cut.shape.fps)
    assert cut.starts[0] == 0
    for index in range(1, len(cut.starts)):
        assert cut.starts[index] == pytest.approx(sum(cut.durations[:index]))
    assert cut.duration == pytest.approx(sum(cut.durations))
    info = probe_video(dest, decode=True)
    assert abs(info.duration - sum(cut.durations)) <= frame
    assert (info.width, info.height) == (cut.shape.width, cut.shape.height)
    assert info.fps == pytest.approx(float(cut.shape.fps))
    assert info.has_audio == cut.has_audio


def _top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types, in file order."""
    kinds = []
    with path.open("rb") as handle:
        while header := handle.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:  # a 64-bit size follows
                (size,) = struct.unpack(">Q", handle.read(8))
                size -= 8
            handle.seek(size - 8, os.SEEK_CUR)
            kinds.append(kind.decode("ascii"))
    return kinds


def _index_first(path: Path) -> bool:
    """Whether the index (moov) comes before the data, so a browser can start at once."""
    kinds = _top_level_boxes(path)
    return kinds.index("moov") < kinds.index("mdat")


def _frame_at(path: Path, seconds: float) -> av.VideoFrame:
    """The first decoded frame at or after `seconds`."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= seconds:
                return frame
    raise AssertionError(f"no frame at {seconds} s")


def _loudest(path: Path, start: float, end: float) -> float:
    """The largest sample magnitude of the cut's sound between `start` and `end` seconds."""
    loudest = 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = array.array("f", bytes(frame.planes[0]))[: frame.samples]  # fltp, mono
            first = float(frame.pts * frame.time_base)
            for index, value in enumerate(samples):
                if start <= first + index / frame.sample_rate < end:
                    loudest = max(loudest, abs(value))
    return loudest


def test_clips_of_one_shape_are_copied(tmp_path: Path) -> None:
    clips = [_clip(tmp_path, "a.mp4", 2.0), _clip(tmp_path, "b.mp4", 1.5),
             _clip(tmp_path, "c.mp4", 1.0)]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert cut.stream_copy and not cut.has_audio
    assert cut.shape == CutShape(320, 180, Fraction(12))
    assert cut.durations == [2.0, 1.5, 1.0]
    assert cut.starts == [0.0, 2.0, 3.5]
    assert cut.duration == 4.5
    _check_timeline(cut, dest)
    assert _video_packets(dest) == sum(_video_packets(clip) for clip in clips)
    assert _index_first(dest)


def test_a_clip_of_another_shape_is_pillarboxed(tmp_path: Path) -> None:
    clips = [_clip(tmp_path, "wide1.mp4"), _clip(tmp_path, "tall.mp4", aspect="9:16"),
             _clip(tmp_path, "wide2.mp4")]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert not cut.stream_copy
    assert cut.shape == CutShape(320, 180, Fraction(12))
    _check_timeline(cut, dest)
    assert _index_first(dest)
    image = _frame_at(dest, cut.starts[1] + 0.5).to_image()
    # A 180x320 picture fitted into 320x180 is about 101 px wide, centred.
    for box in ((0, 0, 100, 180), (220, 0, 320, 180)):
        extrema = image.crop(box).getextrema()
        assert all(high <= 24 for _, high in extrema), (box, extrema)  # black margins
    assert any(high > 100 for _, high in image.crop((110, 0, 210, 180)).getextrema())


def test_the_most_common_shape_wins_and_a_tie_goes_to_the_first_clip(tmp_path: Path) -> None:
    tie = build_final_cut([_clip(tmp_path, "tall.mp4", aspect="9:16"),
                           _clip(tmp_path, "wide.mp4")], tmp_path / "tie.mp4")
    assert tie.shape == CutShape(180, 320, Fraction(12))
    _check_timeline(tie, tmp_path / "tie.mp4")
    image = _frame_at(tmp_path / "tie.mp4", tie.starts[1] + 0.5).to_image()
    assert all(high <= 24 for _, high in image.crop((0, 0, 180, 100)).getextrema())  # letterbox


def test_a_clip_of_another_frame_rate_is_converted(tmp_path: Path) -> None:
    clips = [_clip(tmp_path, "a.mp4", fps=24), _clip(tmp_path, "b.mp4", 2.0, fps=12),
             _clip(tmp_path, "c.mp4", fps=24)]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert not cut.stream_copy
    assert cut.shape == CutShape(320, 180, Fraction(24))
    assert probe_video(dest).fps == 24.0
    assert cut.duration == pytest.approx(4.0, abs=1 / 24)
    assert cut.durations[1] == pytest.approx(2.0, abs=1 / 24)
    _check_timeline(cut, dest)


def test_sound_on_some_clips_only(tmp_path: Path) -> None:
    clips = [_clip(tmp_path, "tone1.mp4", sound=True), _clip(tmp_path, "quiet.mp4"),
             _clip(tmp_path, "tone2.mp4", 1.5, sound=True)]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert cut.stream_copy and cut.has_audio
    _check_timeline(cut, dest)
    assert _index_first(dest)
    with av.open(str(dest)) as container:
        assert len(container.streams.audio) == 1
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert audio.rate == 48_000
        assert video.duration is not None and audio.duration is not None
        video_seconds = float(video.duration * video.time_base)
        audio_seconds = float(audio.duration * audio.time_base)
    assert abs(audio_seconds - video_seconds) <= 1024 / 48_000
    assert audio_seconds == pytest.approx(cut.duration, abs=1024 / 48_000)
    margin = 0.05  # AAC smears a boundary over a few ms
    assert _loudest(dest, cut.starts[1] + margin, cut.starts[2] - margin) < 0.01
    assert _loudest(dest, margin, cut.starts[1] - margin) > 0.1
    assert _loudest(dest, cut.starts[2] + margin, cut.duration - margin) > 0.1


def test_sound_stays_in_sync_when_re_encoding(tmp_path: Path) -> None:
    clips = [_clip(tmp_path, "tall.mp4", sound=True, aspect="9:16", fps=24),
             _clip(tmp_path, "quiet.mp4", 1.5), _clip(tmp_path, "wide.mp4", sound=True)]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert not cut.stream_copy and cut.has_audio
    _check_timeline(cut, dest)
    with av.open(str(dest)) as container:
        audio = container.streams.audio[0]
        assert audio.duration is not None
        assert abs(float(audio.duration * audio.time_base) - cut.duration) <= 1024 / 48_000
    assert _loudest(dest, cut.starts[1] + 0.05, cut.starts[2] - 0.05) < 0.01


def test_sound_that_starts_late_in_its_clip_stays_late_in_the_cut(tmp_path: Path) -> None:
    clips = [_late_sound_clip(tmp_path, "early.mp4", 0.0),
             _late_sound_clip(tmp_path, "late.mp4", 0.5)]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)
    assert cut.stream_copy and cut.starts == [0.0, 1.0]
    _check_timeline(cut, dest)
    assert _loudest(dest, 0.05, 0.95) > 0.1
    assert _loudest(dest, 1.05, 1.45) < 0.01  # the second clip's first half second is silent
    assert _loudest(dest, 1.55, 1.95) > 0.1


def test_sound_of_another_rate_is_resampled(tmp_path: Path) -> None:
    clips = [_late_sound_clip(tmp_path, "cd.mp4", 0.0, rate=44_100),
             _clip(tmp_path, "tone.mp4", sound=True), _clip(tmp_path, "quiet.mp4")]
    dest = tmp_path / "final.mp4"
    cut = build_final_cut(clips, dest)  # 44.1 and 48 kHz once each: the first clip's wins
    _check_timeline(cut, dest)
    with av.open(str(dest)) as container:
        audio = container.streams.audio[0]
        assert audio.rate == 44_100 and audio.duration is not None
        assert abs(float(audio.duration * audio.time_base) - cut.duration) <= 1024 / 44_100
    assert _loudest(dest, 0.05, 0.95) > 0.1
    assert _loudest(dest, cut.starts[1] + 0.05, cut.starts[2] - 0.05) > 0.1
    assert _loudest(dest, cut.starts[2] + 0.05, cut.duration - 0.05) < 0.01


def test_no_sound_anywhere_means_no_audio_track(tmp_path: Path) -> None:
    dest = tmp_path / "final.mp4"
    cut = build_final_cut([_clip(tmp_path, "a.mp4"), _clip(tmp_path, "b.mp4")], dest)
    assert not cut.has_audio
    with av.open(str(dest)) as container:
        assert not container.streams.audio


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_broken_clip_leaves_the_old_cut(tmp_path: Path, damage: str) -> None:
    good = _clip(tmp_path, "good.mp4", sound=True)
    broken = _clip(tmp_path, "broken.mp4", 2.0, sound=True)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3] if damage == "truncated"
                       else bytes(range(256)) * 64)
    dest = tmp_path / "final.mp4"
    dest.write_bytes(b"the previous cut")
    with pytest.raises(MediaError, match=re.escape(f"{broken}: ")):
        build_final_cut([good, broken], dest)
    assert dest.read_bytes() == b"the previous cut"
    assert not (tmp_path / ".final.mp4.tmp").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "broken.mp4", "final.mp4", "good.mp4"]


def test_no_clips_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one clip"):
        build_final_cut([], tmp_path / "final.mp4")
    assert not list(tmp_path.iterdir())
