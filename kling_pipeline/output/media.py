"""Verify video files before trusting them: a download that stopped halfway must not count as done.

An MP4 cut short still opens (its index at the front promises every frame) and decodes without
complaint until the data runs out, so a whole file is proved by decoding every frame and checking
that all the frames the index promises arrived intact. Every failure, whatever PyAV raises, becomes
a MediaError with a message in plain words: bad bytes never give a traceback. open_video and
decode_whole do the opening and the proving for probe_video here and for extract_frame
(kling_pipeline.frames), which must refuse the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

# Demuxers that read a single picture: ffmpeg opens an image as a one-frame "video".
_IMAGE_FORMAT_SUFFIXES = ("_pipe", "image2")


@dataclass(frozen=True)
class VideoInfo:
    """What a video file is, as read from its container and first video stream."""

    duration: float  # seconds
    width: int
    height: int
    fps: float
    has_audio: bool
    codec: str


class MediaError(Exception):
    """A file that is not a whole, playable video; the message says what is wrong."""


def probe_video(path: str | os.PathLike[str], *, decode: bool = True) -> VideoInfo:
    """Read a video's facts; with `decode` (the default) decode every frame to prove it whole.

    `decode=False` reads the headers only: fast, but it cannot tell a truncated file from a whole.
    """
    name = os.fspath(path)
    with open_video(name) as (container, stream):
        return _probe(container, stream, name, decode)


def check_duration(path: str | os.PathLike[str], expected: float | None) -> float:
    """Decode the whole file; its duration, or MediaError if it is not the video asked for
    (a duration off by more than 1 s or 10 %: a shot of 5 s that lasts 10 is another video)."""
    info = probe_video(path, decode=True)
    if expected is not None and abs(info.duration - expected) > max(1.0, 0.1 * expected):
        raise MediaError(f"the video lasts {info.duration:.2f} s; {expected:g} s were asked for")
    return info.duration


@contextmanager
def open_video(path: str | os.PathLike[str]) -> Iterator[tuple[InputContainer, VideoStream]]:
    """The open container of a video file and its first video stream; MediaError if it is none.

    Whatever is raised inside the `with` (the caller's work on the container included) leaves it
    as a MediaError in plain words: a MediaError as it is, any other exception as "not a readable
    video (...)". Use with decode_whole to prove the file whole.
    """
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
    except OSError as exc:
        raise MediaError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise MediaError(f"{name}: the file is empty")
    import av

    try:
        with av.open(name, mode="r") as container:
            yield container, _first_video_stream(container, name)
    except MediaError:
        raise
    except av.FFmpegError as exc:
        raise MediaError(f"{name}: not a readable video ({_plain(exc)})") from exc
    except Exception as exc:  # PyAV can raise anything on hostile bytes; none may escape raw
        raise MediaError(f"{name}: not a readable video ({type(exc).__name__}: {exc})") from exc


def open_unprobed(path: str | os.PathLike[str], *, format: str | None = None) -> InputContainer:
    """Open a video for reading without FFmpeg's probe, for a file already proved whole (in
    the store): its header says all a thumbnail or the final cut needs. The probe opens a
    decoder per stream and decodes frames to learn what the header already says: 6 ms of a
    thumbnail's 11 here, 0.5-10 ms a clip for the cut. Allowing it no decoder stops that; the
    caller's own decoders still open. PyAV's errors pass as they are: the caller names them."""
    import av

    return av.open(os.fspath(path), format=format, container_options={
        "probesize": "32", "analyzeduration": "0", "codec_whitelist": "none"})


def _plain(exc: Exception) -> str:
    """FFmpeg's own words for an error, without the errno and the repeated file name."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else str(exc)


def _first_video_stream(container: InputContainer, name: str) -> VideoStream:
    """The container's first video stream; MediaError for a still image or no video at all."""
    format_name = container.format.name
    if any(part.endswith(_IMAGE_FORMAT_SUFFIXES) for part in format_name.split(",")):
        raise MediaError(f"{name}: is a still image ({format_name}), not a video")
    if not container.streams.video:
        raise MediaError(f"{name}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # the file stops before its codec is described
        raise MediaError(f"{name}: is truncated or damaged (its video stream names no codec "
                         "that can be read)")
    return stream


def _probe(container: InputContainer, stream: VideoStream, name: str,
           decode: bool) -> VideoInfo:
    """The facts of an open container and its video stream, checked."""
    codec_context = stream.codec_context
    width, height = codec_context.width, codec_context.height
    if width <= 0 or height <= 0:
        raise MediaError(f"{name}: the video stream has no picture size")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration = _header_duration(container, stream)
    if decode:
        decoded = sum(1 for _ in decode_whole(container, stream, name, empty_first=True))
        if fps <= 0 and duration and duration > 0:
            fps = decoded / duration
        if duration is None and fps > 0:
            duration = decoded / fps
    if duration is None and fps > 0 and stream.frames > 0:
        duration = stream.frames / fps
    if duration is None or duration <= 0:
        raise MediaError(f"{name}: the video's duration is unknown")
    return VideoInfo(duration=duration, width=width, height=height, fps=fps,
                     has_audio=bool(container.streams.audio),
                     codec=codec_context.name or "unknown")


def _header_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """Seconds from the stream's header, else from the container's; None when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        import av

        return float(Fraction(container.duration, av.time_base))
    return None


def decode_whole(container: InputContainer, stream: VideoStream, name: str, *,
                 empty_first: bool = False) -> Iterator[VideoFrame]:
    """Every frame of `stream`, decoded in order; at the end, MediaError unless the file is whole.

    Each packet of the file is read: a packet cut short, fewer packets in any stream than its
    index promises, no video frame at all, or video packets that decode to no frame (beyond those
    an edit list drops) make a MediaError. Other streams (the audio) are read but not decoded: a
    download cut short usually ends in them, and their packet count and the demuxer's
    "incomplete" flag are proof enough. A file with no decoded frame that also misses packets
    says "no video frame could be decoded" with `empty_first` (probe_video), else that it is
    truncated (extract_frame). Only a generator run to its end has proved the file whole.
    """
    import av

    decoded = 0
    discarded = 0  # frames an edit list drops on purpose: read, never output
    packets: dict[int, int] = {}  # stream index -> packets with data
    try:
        for packet in container.demux():
            if packet.is_corrupt:
                raise MediaError(f"{name}: is truncated or damaged (a packet's data is incomplete)")
            index = packet.stream.index
            if packet.size:
                packets[index] = packets.get(index, 0) + 1
            if index != stream.index:
                continue
            discarded += packet.is_discard
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):  # always, from a video stream
                    decoded += 1
                    yield frame
    except av.FFmpegError as exc:
        raise MediaError(f"{name}: is damaged ({_plain(exc)})") from exc
    if empty_first and decoded == 0:
        raise MediaError(f"{name}: no video frame could be decoded")
    for each in container.streams:
        present = packets.get(each.index, 0)
        if each.frames and present < each.frames:
            raise MediaError(f"{name}: is truncated (only {present} of {each.frames} "
                             f"{each.type} frames are in the file)")
    if decoded == 0:
        raise MediaError(f"{name}: no video frame could be decoded")
    if decoded + discarded < packets.get(stream.index, 0):
        raise MediaError(f"{name}: is damaged (only {decoded} of "
                         f"{packets.get(stream.index, 0)} video frames could be decoded)")
