"""Join the shots' videos, in storyboard order, into one final cut a browser can play.

Video: when every clip already has the cut's picture (H.264 of the same size and frame rate with
identical SPS/PPS, which fix the profile and pixel format: clips of one model and resolution),
the packets are copied without decoding, each clip's timestamps moved to start where the previous
clip ended: the cut costs about twice copying its bytes, and not one pixel is lost. Otherwise
EVERY clip is re-encoded (libx264, crf 18) to the most common picture, because packets of
different encoders cannot share one MP4 track: a clip of another size is fitted inside it with
black bars (never stretched), one of another frame rate has frames dropped or repeated.

Audio is always decoded and re-encoded (AAC, the most common sample rate, mono or stereo): cheap
next to re-encoding video, though not next to a copy (~20 ms of CPU per second of stereo). That
is the price of exact sync: each clip's sound is cut or padded with silence to exactly its clip's
span, bounds rounded to samples from the cumulative timeline so rounding never drifts, and a clip
without sound gets silence; the last shot's sound is in sync however many shots come before it.

The index (moov) is written before the data, so a browser starts playing at once. The cut goes to
a temp file beside `dest`, moved into place: `dest` is the old cut or the new one, never half of
one (not fsynced: a cut can be made again from the shots). Whatever FFmpeg says goes out as a
MediaError naming the clip.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from kling_pipeline.output.media import MediaError, open_unprobed

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
    extradata: bytes  # the SPS/PPS: the same bytes mean the same profile, pixel format, ...
    frames: int  # video packets, 0 when the header does not say
    audio: tuple[int, int] | None  # (sample rate, channels) of its sound, if any


def build_final_cut(clips: Sequence[Path], dest: Path) -> FinalCut:
    """Write the clips, in order, as one MP4 at `dest` (atomically); MediaError on a bad clip."""
    if not clips:
        raise ValueError("a final cut needs at least one clip")
    dest = Path(dest)
    sources = [_inspect(Path(clip)) for clip in clips]
    shape = _most_common([source.shape for source in sources])
    copy = all(source.codec == "h264" and source.shape == shape and source.extradata
               and source.extradata == sources[0].extradata for source in sources)
    if not copy:
        shape = CutShape(_even(shape.width), _even(shape.height), shape.fps)
    sounds = [source.audio for source in sources if source.audio]
    audio = _most_common(sounds) if sounds else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    try:
        bounds = _write(sources, tmp, shape, copy, audio)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return FinalCut(shape=shape, duration=float(bounds[-1]),
                    starts=[float(bound) for bound in bounds[:-1]],
                    durations=[float(end - start) for start, end in itertools.pairwise(bounds)],
                    stream_copy=copy, has_audio=audio is not None)


@contextlib.contextmanager
def _blame(path: Path, fault: str = "cannot be joined into the final cut") -> Iterator[None]:
    """Turn whatever PyAV raises while handling `path` into a MediaError naming it."""
    try:
        yield
    except MediaError:
        raise
    except Exception as exc:  # PyAV can raise anything on hostile bytes; none may escape raw
        reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        raise MediaError(f"{path}: {fault} ({reason})") from exc


def _open(path: Path) -> Any:
    """Open an MP4 clip for reading, without FFmpeg's probe (media.open_unprobed)."""
    return open_unprobed(path, format="mp4")


def _inspect(path: Path) -> _Source:
    """Read a clip's headers: its codec, picture and sound."""
    with _blame(path), _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        video = container.streams.video[0]
        context = video.codec_context
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate or context.width <= 0 or context.height <= 0:
            raise MediaError(f"{path}: the video stream has no picture size or frame rate")
        sound = container.streams.audio[0] if container.streams.audio else None
        return _Source(path=path, codec=context.name, frames=video.frames,
                       shape=CutShape(context.width, context.height, Fraction(rate)),
                       extradata=bytes(context.extradata or b""),
                       audio=(sound.rate, sound.channels) if sound else None)


def _most_common(values: list[_T]) -> _T:
    """The most frequent value; on a tie, the one seen first."""
    counts = Counter(values)
    return max(values, key=counts.__getitem__)  # max keeps the first of equal keys


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _index_up_front(sources: list[_Source], copy: bool, audio: tuple[int, int] | None,
                    ) -> dict[str, str]:
    """Muxer options that put the index (moov) before the data, so a browser plays at once.

    faststart writes the index last, then moves all the data down to make room for it: a second
    pass over the whole file. With stream copy the packet count is known, so reserve room in
    front instead, bounded by the index's worst case (under 64 bytes a packet, plus headers),
    and write once; the unused rest of the room is a `free` box.
    """
    if not copy or not all(source.frames for source in sources):
        return {"movflags": "+faststart"}
    packets = sum(source.frames for source in sources)
    if audio is not None:  # 1024 samples a packet; the cut is at most the clips' frames long
        seconds = sum(Fraction(source.frames) / source.shape.fps + 1 for source in sources)
        packets += math.ceil(seconds * audio[0] / 1024) + 2
    return {"moov_size": str(64 * packets + len(sources[0].extradata) + 16_384)}


def _write(sources: list[_Source], tmp: Path, shape: CutShape, copy: bool,
           audio: tuple[int, int] | None) -> list[Fraction]:
    """Mux the cut into `tmp`; the clip boundaries in seconds (first 0, last the cut's end)."""
    import av

    bounds = [Fraction(0)]
    with _blame(tmp, "cannot be written"), av.open(str(tmp), "w", format="mp4",
                              options=_index_up_front(sources, copy, audio)) as out:
        with _blame(sources[0].path), _open(sources[0].path) as first:
            video: _Copier | _Encoder = (_Copier(out, first.streams.video[0]) if copy
                                         else _Encoder(out, shape))
        sound = _Sound(out, *audio) if audio else None
        with contextlib.closing(_read_ahead(sources, audio is not None)) as clips:
            for source, clip in clips:
                with _blame(source.path):
                    bounds.append(_add_clip(out, source.path, clip, video, sound))
        out.mux(video.finish())
        if sound is not None:
            out.mux(sound.finish())
    return bounds


@dataclass(frozen=True)
class _Clip:
    """One clip, open, with all its packets read (compressed: a few MB)."""

    container: Any
    video: Any  # its video stream
    audio: Any  # its audio stream, or None when it has none or the cut needs none
    packets: list[Any]  # video and audio, in file order


def _read_ahead(sources: list[_Source], sound: bool,
                ) -> Generator[tuple[_Source, _Clip], None, None]:
    """Each clip read, the next one in a worker thread meanwhile. FFmpeg reads and writes
    without the GIL, so reading overlaps writing: a stream-copied cut takes ~1/3 less time."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="finalcut-read") as pool:
        ahead = pool.submit(_read, sources[0].path, sound)
        try:
            for index, source in enumerate(sources):
                with _blame(source.path):
                    clip = ahead.result()
                if index + 1 < len(sources):
                    ahead = pool.submit(_read, sources[index + 1].path, sound)
                with clip.container:
                    yield source, clip
        finally:  # stopped early: close the clip read ahead, if it was
            with contextlib.suppress(Exception):
                ahead.result().container.close()


def _read(path: Path, sound: bool) -> _Clip:
    """Open a clip and read its packets; MediaError unless all its header promises arrive."""
    container = _open(path)
    try:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if sound and container.streams.audio else None
        streams = [video] if audio is None else [video, audio]
        counts = dict.fromkeys((stream.index for stream in streams), 0)
        packets = []
        for packet in container.demux(streams):
            if not packet.size:
                continue  # the demuxer's end-of-stream marker
            if packet.is_corrupt:
                raise MediaError(f"{path}: is truncated or damaged (a packet is incomplete)")
            counts[packet.stream_index] += 1
            packets.append(packet)
        for stream in streams:
            if counts[stream.index] < max(1, stream.frames):
                raise MediaError(f"{path}: is truncated (only {counts[stream.index]} of "
                                 f"{stream.frames or 'its'} {stream.type} frames are in the file)")
    except BaseException:
        container.close()
        raise
    return _Clip(container, video, audio, packets)


def _add_clip(out: Any, path: Path, clip: _Clip, video: _Copier | _Encoder,
              sound: _Sound | None) -> Fraction:
    """Add one clip's picture and sound to the cut; returns the cut's end after it, in seconds."""
    before, index = video.reach, clip.video.index
    origin, packets = video.add(clip.video, [p for p in clip.packets if p.stream_index == index])
    out.mux(packets)
    if video.reach <= before:
        raise MediaError(f"{path}: no video frame could be decoded")
    if sound is not None:
        heard = [packet for packet in clip.packets if packet.stream_index != index]
        pcm, first = _decode_sound(clip.audio, heard, sound) if heard else (b"", Fraction(0))
        out.mux(sound.add(pcm, origin + first, video.reach))
    return video.reach


def _decode_sound(stream: Any, packets: list[Any], sound: _Sound) -> tuple[bytes, Fraction]:
    """A clip's sound in the cut's format (packed float), and its first sample's clip time."""
    import av

    resampler = av.AudioResampler(format=_PCM_FORMAT, layout=sound.layout, rate=sound.rate)
    chunks: list[bytes] = []
    first: Fraction | None = None
    for packet in [*packets, None]:  # None: flush the decoder, then the resampler
        frames = stream.codec_context.decode(packet)
        for frame in frames if packet is not None else [*frames, None]:
            if first is None and frame is not None and frame.pts is not None:
                first = frame.pts * Fraction(frame.time_base)
            chunks += (bytes(piece.planes[0])[: piece.samples * sound.width]
                       for piece in resampler.resample(frame))
    return b"".join(chunks), first or Fraction(0)


class _Copier:
    """Video by stream copy: each clip's packets, their timestamps moved to follow the last."""

    def __init__(self, out: Any, template: Any) -> None:
        self.stream = out.add_stream_from_template(template)
        self.reach = Fraction(0)  # seconds: where the cut's picture ends so far
        self.last_dts: Fraction | None = None  # seconds, of the last packet written

    def add(self, stream: Any, packets: list[Any]) -> tuple[Fraction, list[Any]]:
        """Where the clip's time 0 lands in the cut (s), and its packets retimed to match."""
        base = Fraction(stream.time_base)  # below, all in integer ticks of it: runs per packet
        offset = math.ceil(self.reach / base) - (stream.start_time or 0)
        if self.last_dts is not None:  # a deeper decode delay than the last clip's: no going back
            offset = max(offset, math.floor(self.last_dts / base) + 1 - packets[0].dts)
        end = 0
        for packet in packets:
            packet.pts += offset
            packet.dts += offset
            end = max(end, packet.pts + packet.duration)
            packet.stream = self.stream
        self.reach, self.last_dts = end * base, packets[-1].dts * base
        return offset * base, packets

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

    @property
    def reach(self) -> Fraction:
        return self.frames / self.shape.fps

    def add(self, stream: Any, packets: list[Any]) -> tuple[Fraction, list[Any]]:
        """Where the clip's time 0 lands in the cut (s), and the packets it encodes to."""
        origin = self.reach - (stream.start_time or 0) * Fraction(stream.time_base)
        stream.codec_context.thread_type = "AUTO"
        graph, first, encoded = None, self.frames, []
        for packet in [*packets, None]:  # None: flush the decoder
            for frame in stream.codec_context.decode(packet):
                if graph is None:  # made from the first frame, which knows its pixel format
                    graph = _fit_graph(frame, stream.time_base, self.shape)
                graph.push(frame)
                encoded += self._drain(graph, first)
        if graph is not None:
            graph.push(None)
            encoded += self._drain(graph, first)
        return origin, encoded

    def _drain(self, graph: Any, first: int) -> list[Any]:
        """Encode the frames the filters have ready; `first`: the clip's first frame."""
        import av
        from av.video.frame import PictureType

        packets: list[Any] = []
        while True:
            try:
                frame = graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return packets
            frame.pts, frame.time_base = self.frames, 1 / self.shape.fps
            # The decoder's frame types would bind the encoder; only ask for a key at each shot.
            frame.pict_type = PictureType.I if self.frames == first else PictureType.NONE
            self.frames += 1
            packets += self.stream.encode(frame)

    def finish(self) -> list[Any]:
        return list(self.stream.encode(None))


def _fit_graph(frame: Any, time_base: Fraction, shape: CutShape) -> Any:
    """buffer -> fit inside the picture, black bars -> square pixels -> the cut's rate -> sink."""
    import av

    graph = av.filter.Graph()
    size = f"{shape.width}:{shape.height}"
    graph.link_nodes(
        graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                         time_base=time_base),
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

    def __init__(self, out: Any, rate: int, channels: int) -> None:
        self.rate, self.layout = rate, "mono" if channels == 1 else "stereo"
        self.stream = out.add_stream("aac", rate=rate, layout=self.layout)
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
