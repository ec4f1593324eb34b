"""Join the shots' videos, in storyboard order, into one final cut a browser can play.

Video: when every clip already has the cut's picture (H.264 of the same size, frame rate, pixel
format and identical SPS/PPS, as clips of one model and resolution do), the packets are copied
without decoding, each clip's timestamps moved to start where the previous clip ended: the cut
costs little more than copying its bytes, and not one pixel is lost. Otherwise EVERY clip is
re-encoded (libx264, crf 18) at the most common picture, because packets from different encoders
cannot share one MP4 track: a clip of another size is fitted inside it with black bars (never
stretched), a clip of another frame rate has frames dropped or repeated (ffmpeg's fps filter).

Audio: always decoded and re-encoded (AAC), which is cheap next to video. Each clip's sound is cut
or padded with silence to exactly its clip's length in the cut (boundaries rounded to samples from
the cumulative timeline, so rounding never drifts), and a clip without sound gets silence: the
sound of the last shot stays in sync with its picture however many shots come before it.

The cut is written to a temp file beside `dest` and moved into place, so `dest` is the old cut or
the new one, never half of one. Anything FFmpeg says goes out as a MediaError naming the clip.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from kling_pipeline.media import MediaError

_T = TypeVar("_T")
_PCM_FORMAT = "flt"  # packed 32-bit float: one buffer per clip, easy to cut and pad
_PCM_BYTES = 4


@dataclass(frozen=True)
class CutShape:
    """The normalised picture of the cut."""

    width: int
    height: int
    fps: Fraction


@dataclass(frozen=True)
class FinalCut:
    """What was written: the picture, and where each clip sits in the cut (seconds)."""

    shape: CutShape
    duration: float
    starts: list[float]
    durations: list[float]
    stream_copy: bool
    has_audio: bool


@dataclass(frozen=True)
class _Source:
    """One input clip, as its headers describe it."""

    path: Path
    codec: str
    shape: CutShape
    pix_fmt: str
    extradata: bytes
    audio: tuple[int, str] | None  # (sample rate, channel layout) of its sound, if any


def build_final_cut(clips: Sequence[Path], dest: Path) -> FinalCut:
    """Write the clips, in order, as one MP4 at `dest` (atomically); MediaError on a bad clip."""
    if not clips:
        raise ValueError("a final cut needs at least one clip")
    dest = Path(dest)
    sources = [_inspect(Path(clip)) for clip in clips]
    shape = _most_common([source.shape for source in sources])
    copy = all(_copyable(source, sources[0], shape) for source in sources)
    if not copy:
        shape = CutShape(_even(shape.width), _even(shape.height), shape.fps)
    audio = _most_common([s.audio for s in sources if s.audio]) if any(
        s.audio for s in sources) else None
    tmp = dest.parent / f".{dest.name}.tmp"
    try:
        bounds = _write(sources, tmp, shape, copy, audio)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    starts = [float(bound) for bound in bounds[:-1]]
    durations = [float(end - start) for start, end in itertools.pairwise(bounds)]
    return FinalCut(shape=shape, duration=float(bounds[-1]), starts=starts, durations=durations,
                    stream_copy=copy, has_audio=audio is not None)


@contextlib.contextmanager
def _blame(path: Path) -> Iterator[None]:
    """Turn whatever PyAV raises while handling `path` into a MediaError naming it."""
    try:
        yield
    except MediaError:
        raise
    except Exception as exc:  # PyAV can raise anything on hostile bytes; none may escape raw
        reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        raise MediaError(f"{path}: cannot be joined into the final cut ({reason})") from exc


def _inspect(path: Path) -> _Source:
    """Read a clip's headers: its codec, picture and sound."""
    import av

    with _blame(path), av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        video = container.streams.video[0]
        context = video.codec_context
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate or context.width <= 0 or context.height <= 0:
            raise MediaError(f"{path}: the video stream has no picture size or frame rate")
        sound = container.streams.audio[0] if container.streams.audio else None
        return _Source(path=path, codec=context.name, pix_fmt=context.pix_fmt or "",
                       shape=CutShape(context.width, context.height, Fraction(rate)),
                       extradata=bytes(context.extradata or b""),
                       audio=(sound.rate, sound.layout.name) if sound else None)


def _most_common(values: list[_T]) -> _T:
    """The most frequent value; on a tie, the one seen first."""
    counts = Counter(values)
    return max(values, key=counts.__getitem__)  # max keeps the first of equal keys


def _copyable(source: _Source, first: _Source, shape: CutShape) -> bool:
    """Whether the clip's packets can go into the cut's track as they are."""
    return (source.codec == "h264" and source.shape == shape and source.pix_fmt == first.pix_fmt
            and source.extradata == first.extradata)


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _write(sources: list[_Source], tmp: Path, shape: CutShape, copy: bool,
           audio: tuple[int, str] | None) -> list[Fraction]:
    """Mux the cut into `tmp`; the clip boundaries in seconds (first 0, last the cut's end)."""
    import av

    bounds = [Fraction(0)]
    with _blame(tmp), av.open(str(tmp), "w", format="mp4",
                              options={"movflags": "+faststart"}) as out:
        with _blame(sources[0].path), av.open(str(sources[0].path)) as first:
            video: _Copier | _Encoder = (_Copier(out, first.streams.video[0]) if copy
                                         else _Encoder(out, shape))
        sound = _Sound(out, *audio) if audio else None
        for source in sources:
            with _blame(source.path):
                bounds.append(_add_clip(out, source.path, video, sound))
        out.mux(video.finish())
        if sound is not None:
            out.mux(sound.finish())
    return bounds


def _add_clip(out: Any, path: Path, video: _Copier | _Encoder, sound: _Sound | None) -> Fraction:
    """Add one clip's picture and sound to the cut; returns the cut's end after it, in seconds."""
    import av

    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        audio = src.streams.audio[0] if sound is not None and src.streams.audio else None
        streams = [stream] if audio is None else [stream, audio]
        origin = video.begin(stream)
        pcm = _Pcm(sound, audio, stream) if sound is not None and audio is not None else None
        counts = dict.fromkeys((each.index for each in streams), 0)
        for packet in src.demux(streams):
            if not packet.size:
                continue  # the demuxer's end-of-stream marker
            if packet.is_corrupt:
                raise MediaError(f"{path}: is truncated or damaged (a packet is incomplete)")
            counts[packet.stream_index] += 1
            if pcm is not None and packet.stream_index != stream.index:
                pcm.add(packet)
            else:
                out.mux(video.packet(packet))
        for each in streams:
            if each.frames and counts[each.index] < each.frames:
                raise MediaError(f"{path}: is truncated (only {counts[each.index]} of "
                                 f"{each.frames} {each.type} frames are in the file)")
        out.mux(video.close_clip())
        if sound is not None:
            out.mux(sound.add(*(pcm.flush(origin) if pcm else (b"", origin)), video.reach))
        return video.reach


class _Copier:
    """Video by stream copy: each clip's packets, their timestamps moved to follow the last."""

    def __init__(self, out: Any, template: Any) -> None:
        self.stream = out.add_stream_from_template(template)
        self.reach = Fraction(0)  # seconds: where the cut's picture ends so far
        self.last_dts: Fraction | None = None  # seconds, of the last packet written
        self.offset: int | None = None  # ticks of the current clip's time base
        self.base = Fraction(1)
        self.start = 0

    def begin(self, stream: Any) -> Fraction:
        """Get ready for a clip; returns where its time 0 lands in the cut (seconds)."""
        self.base, self.offset = Fraction(stream.time_base), None
        self.start = stream.start_time or 0
        return self.reach - self.start * self.base

    def packet(self, packet: Any) -> list[Any]:
        """The packet, retimed into the cut."""
        if self.offset is None:
            self.offset = math.ceil(self.reach / self.base) - self.start
            if self.last_dts is not None:  # a deeper decode delay: never let dts go back
                floor = math.floor(self.last_dts / self.base) + 1 - packet.dts
                self.offset = max(self.offset, floor)
        packet.pts += self.offset
        packet.dts += self.offset
        self.last_dts = packet.dts * self.base
        self.reach = max(self.reach, (packet.pts + packet.duration) * self.base)
        packet.stream = self.stream
        return [packet]

    def close_clip(self) -> list[Any]:
        return []

    def finish(self) -> list[Any]:
        return []


class _Encoder:
    """Video by re-encoding: each clip decoded, fitted to the cut's picture and rate, encoded."""

    def __init__(self, out: Any, shape: CutShape) -> None:
        self.shape = shape
        self.stream = out.add_stream("libx264", rate=shape.fps,
                                     options={"preset": "veryfast", "crf": "18"})
        self.stream.width, self.stream.height = shape.width, shape.height
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0  # written so far; also the next frame's pts (time base 1/fps)
        self.first = 0  # the current clip's first frame
        self.source: Any = None
        self.graph: Any = None

    @property
    def reach(self) -> Fraction:
        return self.frames / self.shape.fps

    def begin(self, stream: Any) -> Fraction:
        """Get ready for a clip; returns where its time 0 lands in the cut (seconds)."""
        stream.codec_context.thread_type = "AUTO"
        self.source, self.graph, self.first = stream, _fit_graph(stream, self.shape), self.frames
        return self.reach - (stream.start_time or 0) * Fraction(stream.time_base)

    def packet(self, packet: Any) -> list[Any]:
        """Decode the packet; the packets its frames encode to, so far."""
        packets: list[Any] = []
        for frame in packet.decode():
            self.graph.push(frame)
            packets += self._drain()
        return packets

    def close_clip(self) -> list[Any]:
        """Flush the clip's decoder and filters."""
        packets: list[Any] = []
        for frame in self.source.codec_context.decode(None):
            self.graph.push(frame)
            packets += self._drain()
        self.graph.push(None)
        return packets + self._drain()

    def _drain(self) -> list[Any]:
        import av
        from av.video.frame import PictureType

        packets: list[Any] = []
        while True:
            try:
                frame = self.graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return packets
            frame.pts, frame.time_base = self.frames, 1 / self.shape.fps
            # The decoder's frame types would bind the encoder; only ask for a key at each shot.
            frame.pict_type = PictureType.I if self.frames == self.first else PictureType.NONE
            self.frames += 1
            packets += self.stream.encode(frame)

    def finish(self) -> list[Any]:
        return list(self.stream.encode(None))


def _fit_graph(stream: Any, shape: CutShape) -> Any:
    """buffer -> fit inside the picture, black bars -> square pixels -> the cut's rate -> sink."""
    import av

    graph = av.filter.Graph()
    size = f"{shape.width}:{shape.height}"
    graph.link_nodes(
        graph.add_buffer(template=stream),
        graph.add("scale", f"{size}:force_original_aspect_ratio=decrease:force_divisible_by=2"),
        graph.add("pad", f"{size}:(ow-iw)/2:(oh-ih)/2:black"),
        graph.add("setsar", "1"),
        graph.add("fps", f"{shape.fps.numerator}/{shape.fps.denominator}"),
        graph.add("format", "yuv420p"),
        graph.add("buffersink"),
    ).configure()
    return graph


class _Sound:
    """The cut's one audio track: each clip's sound laid exactly over its clip's span."""

    def __init__(self, out: Any, rate: int, layout: str) -> None:
        self.stream = out.add_stream("aac", rate=rate, layout=layout)
        self.rate, self.layout = rate, layout
        self.width = self.stream.layout.nb_channels * _PCM_BYTES  # bytes per sample
        self.written = 0  # samples

    def add(self, pcm: bytes, start: Fraction, end: Fraction) -> list[Any]:
        """Encode `pcm` (starting at `start` s in the cut) cut or padded to end at `end` s."""
        import av

        stop = round(end * self.rate)  # from the cumulative time: rounding never accumulates
        count = stop - self.written
        if count <= 0:
            return []
        lead = (round(start * self.rate) - self.written) * self.width
        pcm = bytes(lead) + pcm if lead >= 0 else pcm[-lead:]
        pcm = pcm[: count * self.width].ljust(count * self.width, b"\0")
        frame = av.AudioFrame(format=_PCM_FORMAT, layout=self.layout, samples=count)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts = self.rate, self.written
        frame.time_base = Fraction(1, self.rate)
        self.written = stop
        return list(self.stream.encode(frame))

    def finish(self) -> list[Any]:
        return list(self.stream.encode(None))


class _Pcm:
    """One clip's sound, decoded and resampled to the cut's format: packed float bytes."""

    def __init__(self, sound: _Sound, audio: Any, video: Any) -> None:
        import av

        self.resampler = av.AudioResampler(format=_PCM_FORMAT, layout=sound.layout,
                                           rate=sound.rate)
        self.audio, self.width = audio, sound.width
        self.video_start = (video.start_time or 0) * Fraction(video.time_base)
        self.first: Fraction | None = None  # clip time of the first sample
        self.chunks: list[bytes] = []

    def add(self, packet: Any) -> None:
        self._resample(packet.decode())

    def flush(self, origin: Fraction) -> tuple[bytes, Fraction]:
        """All the clip's sound, and where it starts in the cut given the clip's `origin`."""
        self._resample(self.audio.codec_context.decode(None))
        self._keep(self.resampler.resample(None))
        first = self.video_start if self.first is None else self.first
        return b"".join(self.chunks), origin + first

    def _resample(self, frames: list[Any]) -> None:
        for frame in frames:
            if self.first is None and frame.pts is not None:
                self.first = frame.pts * Fraction(frame.time_base)
            self._keep(self.resampler.resample(frame))

    def _keep(self, frames: list[Any]) -> None:
        for frame in frames:
            self.chunks.append(bytes(frame.planes[0])[: frame.samples * self.width])
