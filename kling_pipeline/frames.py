"""A frame of a video as a PNG whose bytes are the same on every run and every machine.

A shot can take a frame of another shot's video as its input image (`image: {shot: opening,
frame: last}`). That frame is an input like a local file: the sha256 of its PNG bytes enters the
dependent shot's request key, and the key decides whether the user pays again. So the same video
bytes must give the same PNG bytes everywhere, or no chained shot could ever be up to date. Three
steps are made exact on purpose:

- Decoding: one thread, every frame in order, by the same code that proves a download whole
  (kling_pipeline.output.media). H.264 (like FFmpeg's other decoders) is bit-exact by its
  standard; the frame is chosen by its presentation time.
- Colour: FFmpeg's swscale (PyAV's `to_image()`) has SIMD paths that differ between CPUs, so the
  YUV -> RGB conversion is ours, in integers: every output value is a lookup in a table computed
  in Python with exact fractions (see `_Tables`), applied with Pillow's `Image.point`, and
  combined with `ImageChops` additions that provably never clip before the end.
- PNG: zlib and zlib-ng compress the same bytes differently, so the PNG is written here with
  stored (uncompressed) deflate blocks: deterministic by construction, ~6.2 MB for 1920x1080.

PyAV and Pillow are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, NamedTuple

from kling_pipeline.output.media import MediaError, decode_whole, open_video

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.plane import VideoPlane
    from av.video.stream import VideoStream
    from PIL import Image

# `at: t` takes the last frame shown at or before t; this much later still counts as "at t", so
# that t written in decimal (0.1, or 1/12 s as 0.08333333333333333) finds the frame it means.
AT_EPSILON = Fraction(1, 1_000_000)  # seconds

# Kr, Kb of each YCbCr matrix (Kg = 1 - Kr - Kb), as the standards give them.
_KR_KB = {
    "bt709": (Fraction("0.2126"), Fraction("0.0722")),
    "bt601": (Fraction("0.299"), Fraction("0.114")),
    "fcc": (Fraction("0.30"), Fraction("0.11")),
    "smpte240m": (Fraction("0.212"), Fraction("0.087")),
    "bt2020": (Fraction("0.2627"), Fraction("0.0593")),
}
# FFmpeg's AVColorSpace numbers -> matrix; any other value is treated as unspecified.
_COLORSPACES = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020",
                10: "bt2020"}
# ... and the names PyAV's reformat gives swscale for them (the fallback path)
_SWS_COLORSPACES = {"bt709": "ITU709", "bt601": "ITU601", "fcc": "FCC",
                    "smpte240m": "SMPTE240M", "bt2020": "BT2020"}
_AVCOL_RANGE_JPEG = 2  # full range
# 8-bit planar YUV converted here exactly: chroma subsampling (x, y) and whether it is full range
_NATIVE = {
    "yuv420p": (2, 2, False), "yuvj420p": (2, 2, True),
    "yuv422p": (2, 1, False), "yuvj422p": (2, 1, True),
    "yuv444p": (1, 1, False), "yuvj444p": (1, 1, True),
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_BLOCK = 65535  # the most bytes one stored deflate block holds


@dataclass(frozen=True)
class FrameRef:
    """Which frame of a video: its first, its last, or the one on screen at `seconds`."""

    kind: Literal["first", "last", "at"]
    seconds: float | None = None  # only for "at"

    def __post_init__(self) -> None:
        if self.kind not in ("first", "last", "at"):
            raise ValueError(f"a frame is 'first', 'last' or 'at', not {self.kind!r}")
        if self.kind != "at":
            if self.seconds is not None:
                raise ValueError(f"the {self.kind} frame takes no time")
            return
        if (isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float)
                or not math.isfinite(self.seconds) or self.seconds < 0):
            raise ValueError(f"a frame's time must be a number of seconds >= 0, "
                             f"not {self.seconds!r}")

    def label(self) -> str:
        """'first frame', 'last frame', 'frame at 2.5 s'."""
        if self.kind != "at":
            return f"{self.kind} frame"
        text = repr(float(self.seconds or 0.0))
        return f"frame at {text.removesuffix('.0')} s"


@dataclass(frozen=True)
class Frame:
    """One frame as PNG bytes, and where it came from."""

    png: bytes = field(repr=False)
    width: int
    height: int
    seconds: float  # presentation time of the chosen frame
    reduced: int    # how many times it was halved to fit max_bytes (0 normally)

    @property
    def sha256(self) -> str:
        """Hex digest of the PNG bytes: what a request key holds for this image."""
        return hashlib.sha256(self.png).hexdigest()


class FrameError(Exception):
    """A frame that cannot be taken from a file; the message names the file and says why.

    Not a MediaError, on purpose: a MediaError says a download is bad (it is fetched again), a
    FrameError blocks the shot that wanted the frame, and no `except MediaError` may take one for
    the other. extract_frame turns the MediaError of the opening and decoding it shares with
    probe_video into a FrameError with the same message.
    """


def extract_frame(video: str | os.PathLike[str], ref: FrameRef, *,
                  max_bytes: int | None = None) -> Frame:
    """The frame `ref` of `video` as deterministic PNG bytes.

    The whole video stream is decoded (one thread), so a truncated or damaged file is refused
    whichever frame is asked for; only the chosen frame is kept. Frames are taken in
    presentation order: `first` is the first frame shown, `last` the last, and `at` the last frame
    whose time is at most t + AT_EPSILON (the first frame if t comes before it); a t past the
    video's duration is an error. With `max_bytes`, a PNG that would be larger is halved (Pillow's
    `reduce(2)`, an integer box filter) until it fits, and `Frame.reduced` counts the halvings.

    Bit-exact on every machine for 8-bit yuv420p, yuv422p and yuv444p (and their full-range
    yuvj forms), which is what H.264 and the API's videos use; other pixel formats are first
    converted to yuv444p by swscale (`VideoFrame.reformat`), and only that path is not
    guaranteed to give the same bytes on every CPU. Raises FrameError, never a PyAV error.
    """
    name = os.fspath(video)
    if max_bytes is not None and max_bytes < _png_size(1, 1):
        raise ValueError(f"max_bytes must be at least {_png_size(1, 1)}, not {max_bytes}")
    try:
        with open_video(name) as (container, stream):  # any failure inside: a MediaError
            chosen, seconds = _choose(container, stream, ref, name)
            image = _to_rgb(chosen)
    except MediaError as exc:
        raise FrameError(str(exc)) from exc
    reduced = 0
    while max_bytes is not None and _png_size(*image.size) > max_bytes:
        image = image.reduce(2)
        reduced += 1
    return Frame(png=encode_png(image), width=image.width, height=image.height,
                 seconds=float(seconds), reduced=reduced)


def encode_png(image: Image.Image) -> bytes:
    """An RGB image as PNG bytes that depend on nothing but its pixels.

    8-bit RGB, no filter (each row's filter byte is 0), and a zlib stream of stored deflate
    blocks: no compressor is involved, so no zlib version can change the bytes.
    """
    if image.mode != "RGB":
        raise ValueError(f"encode_png takes an RGB image, not {image.mode}")
    width, height = image.size
    if not width or not height:
        raise ValueError(f"a PNG needs at least one pixel, not {width}x{height}")
    pixels = memoryview(image.tobytes())
    stride = width * 3
    rows = b"\x00" + b"\x00".join(pixels[start:start + stride]  # filter byte 0 before each row
                                  for start in range(0, len(pixels), stride))
    view = memoryview(rows)
    blocks: list[bytes | memoryview] = []
    for start in range(0, len(rows), _STORED_BLOCK):
        block = view[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(rows)
        blocks += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    stream = b"".join((b"\x78\x01", *blocks, struct.pack(">I", zlib.adler32(rows))))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", stream),
                     _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC of type and data."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_size(width: int, height: int) -> int:
    """The exact length of encode_png's output for an image of this size."""
    raw = height * (width * 3 + 1)
    blocks = -(-raw // _STORED_BLOCK)
    return len(_PNG_SIGNATURE) + (12 + 13) + (12 + 2 + raw + 5 * blocks + 4) + 12


# --- choosing the frame ---------------------------------------------------------------------


def _choose(container: InputContainer, stream: VideoStream, ref: FrameRef,
            name: str) -> tuple[VideoFrame, Fraction]:
    """Decode the video stream to its end, proving the file whole; the frame `ref` names and its
    time. MediaError (made a FrameError by extract_frame) when there is none."""
    stream.codec_context.thread_count = 1
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    wanted = None if ref.seconds is None else Fraction(ref.seconds)
    chosen: tuple[VideoFrame, Fraction] | None = None
    end = _header_end(container, stream)
    for index, frame in enumerate(decode_whole(container, stream, name)):
        seconds = _frame_time(frame, index, rate)
        if chosen is None or ref.kind == "last" or (
                wanted is not None and seconds <= wanted + AT_EPSILON):
            chosen = (frame, seconds)  # the only decoded frame kept
        end = max(end, _frame_end(frame, seconds, rate))
    if chosen is None:  # decode_whole refuses a file with no frame: for the type checker
        raise MediaError(f"{name}: no video frame could be decoded")
    if wanted is not None and wanted > end + AT_EPSILON:
        raise MediaError(f"{name}: has no {ref.label()}: the video lasts {float(end):g} s")
    return chosen


def _frame_end(frame: VideoFrame, seconds: Fraction, rate: Fraction | None) -> Fraction:
    """When `frame` (shown at `seconds`) leaves the screen: its duration, else one frame at
    `rate`."""
    if frame.duration and frame.time_base:
        return seconds + Fraction(frame.duration) * frame.time_base
    return seconds + (1 / Fraction(rate) if rate else Fraction(0))


def _header_end(container: InputContainer, stream: VideoStream) -> Fraction:
    """The end of the video stream by its header (start + duration), else the container's
    duration; 0 when neither says."""
    if stream.duration and stream.time_base:
        return Fraction(stream.start_time or 0) * stream.time_base + \
            Fraction(stream.duration) * stream.time_base
    if container.duration:
        import av

        return Fraction(container.duration, av.time_base)
    return Fraction(0)


def _frame_time(frame: VideoFrame, index: int, rate: Fraction | None) -> Fraction:
    """A frame's presentation time in seconds; from its index and the rate if it has no pts."""
    if frame.pts is not None and frame.time_base:
        return Fraction(frame.pts) * frame.time_base
    return Fraction(index) / rate if rate else Fraction(index)


# --- YUV -> RGB, exactly ----------------------------------------------------------------------


class _Tables(NamedTuple):
    """Lookup tables of one matrix and range; a 2-D table is indexed by hi * 256 + lo.

    With Y, U, V the 8-bit samples, y = 255 (Y - 16) / 219 (limited range) or Y (full range),
    u = s (U - 128), v = s (V - 128) with s = 255 / 224 (limited) or 1 (full), and exact
    fractions throughout (round = half up, clip = to 0..255):

        R = clip(round(y + 2 (1 - Kr) v))
        B = clip(round(y + 2 (1 - Kb) u))
        G = clip(round(y) + g),   g = round(-(2 Kb (1 - Kb) u + 2 Kr (1 - Kr) v) / Kg)

    G needs all three samples and a table has two inputs, so g (which spans about -154..154)
    travels as its two same-signed halves g+ = max(g, 0) and g- = max(-g, 0), and
    G = clip(round(y) - g-) + (clip(round(y) + g+) - clip(round(y))): one of the two terms is
    clip(round(y)) unchanged, so neither ImageChops operation ever clips.
    """

    red: list[int]         # (Y, V) -> R
    blue: list[int]        # (Y, U) -> B
    green_plus: list[int]  # (U, V) -> g+
    green_minus: list[int]  # (U, V) -> g-
    luma_plus: list[int]   # (Y, g+) -> clip(round(y) + g+)
    luma_minus: list[int]  # (Y, g-) -> clip(round(y) - g-)
    luma: list[int]        # Y -> clip(round(y)), 256 entries


@functools.lru_cache(maxsize=4)
def _tables(matrix: str, full_range: bool) -> _Tables:
    """The tables of `matrix` in full or limited range (about 0.1 s to build, then cached)."""
    kr, kb = _KR_KB[matrix]
    kg = 1 - kr - kb
    if full_range:
        luma = [Fraction(y) for y in range(256)]
        scale = Fraction(1)
    else:
        luma = [Fraction(255 * (y - 16), 219) for y in range(256)]
        scale = Fraction(255, 224)
    offsets = [scale * (c - 128) for c in range(256)]
    red = [2 * (1 - kr) * c for c in offsets]
    blue = [2 * (1 - kb) * c for c in offsets]
    green_u = [-2 * kb * (1 - kb) / kg * c for c in offsets]
    green_v = [-2 * kr * (1 - kr) / kg * c for c in offsets]
    green = _table(green_u, green_v)
    if max(map(abs, green)) > 255:
        raise AssertionError(f"{matrix}: green's chroma term does not fit in a byte")
    rounded = [_round(y) for y in luma]
    return _Tables(
        red=_clipped(_table(luma, red)), blue=_clipped(_table(luma, blue)),
        green_plus=[max(g, 0) for g in green], green_minus=[max(-g, 0) for g in green],
        luma_plus=_clipped([y + n for y in rounded for n in range(256)]),
        luma_minus=_clipped([y - n for y in rounded for n in range(256)]),
        luma=_clipped(rounded))


def _round(value: Fraction) -> int:
    """Round half up, exactly."""
    return math.floor(value + Fraction(1, 2))


def _clipped(values: list[int]) -> list[int]:
    """Each value clipped to 0..255."""
    return [min(255, max(0, value)) for value in values]


def _table(hi: list[Fraction], lo: list[Fraction]) -> list[int]:
    """round(hi[a] + lo[b]) at a * 256 + b.

    Computed on integer numerators over a common denominator: exact, and much faster than
    adding 65536 Fractions.
    """
    den = math.lcm(*(v.denominator for v in hi), *(v.denominator for v in lo))
    his = [2 * v.numerator * (den // v.denominator) + den for v in hi]  # 2 * den * (v + 1/2)
    los = [2 * v.numerator * (den // v.denominator) for v in lo]
    twice = 2 * den
    return [(a + b) // twice for a in his for b in los]


def _matrix(frame: VideoFrame) -> str:
    """The frame's YCbCr matrix; unspecified is BT.709 from 720 lines up, else BT.601 (as
    FFmpeg and players guess)."""
    return _COLORSPACES.get(frame.colorspace) or ("bt709" if frame.height >= 720 else "bt601")


def _to_rgb(frame: VideoFrame) -> Image.Image:
    """The frame as an RGB image, converted with _Tables (see extract_frame for the formats)."""
    from PIL import Image, ImageChops

    matrix = _matrix(frame)
    native = _NATIVE.get(frame.format.name)
    if native is None:
        full = frame.color_range == _AVCOL_RANGE_JPEG or frame.format.is_rgb
        frame = _reformat_444(frame, matrix, full)
        step_x = step_y = 1
    else:
        step_x, step_y, full = native
        full = full or frame.color_range == _AVCOL_RANGE_JPEG
    tables = _tables(matrix, full)
    luma, cb, cr = (_plane_image(frame.planes[i]) for i in range(3))
    size = luma.size
    # g's halves at the chroma's own resolution (a quarter of the pixels in 4:2:0), then every
    # chroma plane doubled by repeating pixels (an exact resize) and cut to the luma's size.
    chroma = _index(cb, cr)
    planes = [cb, cr, chroma.point(tables.green_plus, "L"), chroma.point(tables.green_minus, "L")]
    if (step_x, step_y) != (1, 1):
        planes = [_upsample(plane, step_x, step_y, size) for plane in planes]
    cb, cr, green_plus, green_minus = planes
    red = _index(luma, cr).point(tables.red, "L")
    blue = _index(luma, cb).point(tables.blue, "L")
    green = ImageChops.add(
        _index(luma, green_minus).point(tables.luma_minus, "L"),
        ImageChops.subtract(_index(luma, green_plus).point(tables.luma_plus, "L"),
                            luma.point(tables.luma)))
    return Image.merge("RGB", (red, green, blue))


def _reformat_444(frame: VideoFrame, matrix: str, full: bool) -> VideoFrame:
    """Any other pixel format as 8-bit yuv444p by swscale, in the matrix and range _to_rgb
    will undo (not guaranteed bit-exact across CPUs, though asked for BITEXACT)."""
    from av.video.reformatter import Interpolation

    colorspace = _SWS_COLORSPACES[matrix]
    color_range = "JPEG" if full else "MPEG"
    flags = Interpolation.POINT | Interpolation.BITEXACT | Interpolation.ACCURATE_RND
    converted: VideoFrame = frame.reformat(
        format="yuv444p", src_colorspace=colorspace, dst_colorspace=colorspace,
        src_color_range=None if frame.format.is_rgb else color_range,
        dst_color_range=color_range, interpolation=int(flags), threads=1)
    return converted


def _plane_image(plane: VideoPlane) -> Image.Image:
    """One 8-bit plane as an "L" image, its rows' padding (line_size) skipped."""
    from PIL import Image

    stride = plane.line_size
    return Image.frombytes("L", (plane.width, plane.height), bytes(plane), "raw", "L",
                           abs(stride), -1 if stride < 0 else 1)


def _index(hi: Image.Image, lo: Image.Image) -> Image.Image:
    """An "I" image of hi * 256 + lo, to look a pair of bytes up in a 65536-entry table."""
    from PIL import Image

    pairs = Image.merge("LA", (lo, hi)).tobytes()  # per pixel: lo, hi = little-endian 16 bits
    return Image.frombytes("I", hi.size, pairs, "raw", "I;16")


def _upsample(plane: Image.Image, step_x: int, step_y: int,
              size: tuple[int, int]) -> Image.Image:
    """A subsampled chroma plane at full size: each sample repeated, then cut to `size`."""
    from PIL import Image

    doubled = plane.resize((plane.width * step_x, plane.height * step_y),
                           Image.Resampling.NEAREST)
    return doubled.crop((0, 0, *size)) if doubled.size != size else doubled
