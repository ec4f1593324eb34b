"""extract_frame takes the right frame and turns it into the same PNG bytes on every run.

The videos are real files made here with PyAV (lossless H.264 where pixels are compared exactly,
so what the decoder hands over is exactly the planes written) plus the committed golden.mp4
(tests/data/frames/make_golden.py says how it was made). Expected colours come from the plain
per-pixel formula below, written independently of kling_pipeline.frames' lookup tables.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import subprocess
import sys
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.video.reformatter import Interpolation
from PIL import Image, ImageChops, ImageStat
from support.imports import heavy_after
from support.paths import ROOT

from kling_pipeline.frames import Frame, FrameError, FrameRef, encode_png, extract_frame
from kling_pipeline.simulator.video import ClipSpec, render_clip
from kling_pipeline.storyboard.images import MAX_BYTES

GOLDEN = ROOT / "tests" / "data" / "frames" / "golden.mp4"
# sha256 of golden.mp4's PNGs. A change here changes the key of every chained shot of every user
# (docs/key.md, "Changing the scheme"): change them only on purpose, never to make a test pass.
GOLDEN_FIRST = "c3f647418e7d87a9f9c19f30c1eedbd51032e5ae666f67abcd6711b3ef0bf7ee"
GOLDEN_AT_HALF = "64d2d0ad0db6f39a9ced4e099b52a59bc8e7767469b58e7ab0bdbb9488fd9f3b"
GOLDEN_LAST = "15282ae6230826760f40931b977cdf24a1076b4708a9c260132b95210ce3a0ce"

KR_KB = {"bt709": (Fraction("0.2126"), Fraction("0.0722")),
         "bt601": (Fraction("0.299"), Fraction("0.114"))}
AVCOL_SPC_BT709, AVCOL_SPC_SMPTE170M = 1, 6
AVCOL_RANGE_JPEG = 2
# Measured on this machine (PyAV 18.1, FFmpeg 8): the mean absolute difference from swscale's
# default to_image() is 0.7..1.3 (that path rounds ~1 level darker: the signed mean is the same
# number), and from swscale's accurate path 0.07..0.3 with a signed mean within +-0.1.
MAX_MEAN_DIFF_DEFAULT = 1.5
MAX_MEAN_DIFF_ACCURATE = 0.5
MAX_BIAS_ACCURATE = 0.15


Planes = tuple[bytes, bytes, bytes]


def expected_rgb(y: int, u: int, v: int, matrix: str, full: bool) -> tuple[int, int, int]:
    """One pixel by the formula of kling_pipeline.frames._Tables, in exact fractions."""
    kr, kb = KR_KB[matrix]
    kg = 1 - kr - kb
    luma = Fraction(y) if full else Fraction(255 * (y - 16), 219)
    scale = Fraction(1) if full else Fraction(255, 224)
    pb, pr = scale * (u - 128), scale * (v - 128)

    def rnd(value: Fraction) -> int:
        return math.floor(value + Fraction(1, 2))

    def clip(value: int) -> int:
        return min(255, max(0, value))

    return (clip(rnd(luma + 2 * (1 - kr) * pr)),
            clip(rnd(luma) + rnd(-(2 * kb * (1 - kb) * pb + 2 * kr * (1 - kr) * pr) / kg)),
            clip(rnd(luma + 2 * (1 - kb) * pb)))


def chroma_size(pix_fmt: str, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if pix_fmt.startswith(("yuv420", "yuvj420")):
        return (width + 1) // 2, (height + 1) // 2
    if pix_fmt.startswith(("yuv422", "yuvj422")):
        return (width + 1) // 2, height
    return size


def solid(pix_fmt: str, size: tuple[int, int], y: int, u: int, v: int) -> Planes:
    cw, ch = chroma_size(pix_fmt, size)
    return bytes([y]) * size[0] * size[1], bytes([u]) * cw * ch, bytes([v]) * cw * ch


def write_clip(path: Path, frames: Sequence[Planes], size: tuple[int, int],
               pix_fmt: str = "yuv420p", *, colorspace: int | None = None,
               color_range: int | None = None, codec: str = "libx264",
               container: str = "mp4", start: int = 0, fps: int = 12) -> Path:
    """Encode `frames` (tightly packed planes) losslessly: the decoder gives them back as is."""
    options = {"qp": "0", "threads": "1", "x264-params": "asm=0"} if codec == "libx264" else {}
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if color_range is not None:
            stream.codec_context.color_range = color_range
        for index, planes in enumerate(frames):
            frame = av.VideoFrame(size[0], size[1], pix_fmt)
            for plane, data in zip(frame.planes, planes, strict=True):
                row = len(data) // plane.height
                pad = bytes(plane.line_size - row)
                plane.update(b"".join(data[at:at + row] + pad
                                      for at in range(0, len(data), row)))
            frame.pts = start + index
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def picture(frame: Frame) -> Image.Image:
    image = Image.open(io.BytesIO(frame.png))
    image.load()
    return image


def mean_difference(ours: Image.Image, theirs: Image.Image) -> tuple[float, float]:
    """(mean |ours - theirs|, mean (ours - theirs)) over all channels."""
    absolute = ImageStat.Stat(ImageChops.difference(ours, theirs)).mean
    above = ImageStat.Stat(ImageChops.subtract(ours, theirs)).mean
    below = ImageStat.Stat(ImageChops.subtract(theirs, ours)).mean
    return sum(absolute) / 3, sum(a - b for a, b in zip(above, below, strict=True)) / 3


# --- the frame a reference names ------------------------------------------------------------

LADDER = [20 + 18 * index for index in range(12)]  # frame i is grey with luma LADDER[i]
GREY_TO_INDEX = {expected_rgb(y, 128, 128, "bt601", False)[0]: i for i, y in enumerate(LADDER)}


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s at 12 fps (with B-frames), each frame its own grey."""
    size = (32, 16)
    return write_clip(tmp_path_factory.mktemp("ladder") / "ladder.mp4",
                      [solid("yuv420p", size, y, 128, 128) for y in LADDER], size)


def shown(frame: Frame) -> int:
    """Which frame of the ladder `frame` is."""
    red, green, blue = picture(frame).getpixel((5, 5))  # type: ignore[misc]
    assert red == green == blue
    return GREY_TO_INDEX[red]


def test_first_and_last(ladder: Path) -> None:
    first = extract_frame(ladder, FrameRef("first"))
    last = extract_frame(str(ladder), FrameRef("last"))
    assert (shown(first), first.seconds, first.width, first.height, first.reduced) == \
        (0, 0.0, 32, 16, 0)
    assert (shown(last), last.seconds) == (11, 11 / 12)


@pytest.mark.parametrize(("seconds", "index"), [
    (0.0, 0),
    (0.04, 0),              # between frames: the one on screen
    (1 / 12, 1),            # exactly a frame's time (as a float, a hair below it)
    (1 / 12 - 1e-5, 0),     # just before it
    (0.5, 6),
    (0.5 - 1e-4, 5),
    (0.5 + 1e-4, 6),
    (0.999, 11),
    (1.0, 11),              # the end of the video still shows the last frame
    (1.0 + 5e-7, 11),       # within the epsilon
])
def test_at_is_the_frame_on_screen(ladder: Path, seconds: float, index: int) -> None:
    frame = extract_frame(ladder, FrameRef("at", seconds))
    assert shown(frame) == index
    assert frame.seconds == index / 12


@pytest.mark.parametrize("seconds", [1.01, 5.0])
def test_at_past_the_end_names_both_numbers(ladder: Path, seconds: float) -> None:
    with pytest.raises(FrameError) as caught:
        extract_frame(ladder, FrameRef("at", seconds))
    assert str(caught.value) == (f"{ladder}: has no frame at {seconds:g} s: the video lasts 1 s")


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_a_video_whose_first_frame_comes_late(tmp_path: Path, container: str) -> None:
    """Frames from 0.5 s to 0.75 s (ending at 0.833 s): before the first, the first is shown."""
    size = (32, 16)
    path = write_clip(tmp_path / "late.video", [solid("yuv420p", size, y, 128, 128)
                                                for y in LADDER[:4]],
                      size, container=container, start=6)
    assert extract_frame(path, FrameRef("first")).seconds == pytest.approx(0.5, abs=1e-3)
    early = extract_frame(path, FrameRef("at", 0.2))
    assert (shown(early), early.seconds) == (0, pytest.approx(0.5, abs=1e-3))
    assert shown(extract_frame(path, FrameRef("at", 0.6))) == 1
    assert shown(extract_frame(path, FrameRef("at", 0.8))) == 3
    with pytest.raises(FrameError, match=r"frame at 0\.9 s: the video lasts 0\.833"):
        extract_frame(path, FrameRef("at", 0.9))


def test_frame_refs() -> None:
    assert FrameRef("first").label() == "first frame"
    assert FrameRef("last").label() == "last frame"
    assert FrameRef("at", 2.5).label() == "frame at 2.5 s"
    assert FrameRef("at", 2).label() == "frame at 2 s"
    assert FrameRef("at", 0.0).label() == "frame at 0 s"
    for bad in [-1.0, math.inf, math.nan, None, True, "1"]:
        with pytest.raises(ValueError, match="seconds >= 0"):
            FrameRef("at", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no time"):
        FrameRef("last", 1.0)
    with pytest.raises(ValueError, match="'first', 'last' or 'at'"):
        FrameRef("middle")  # type: ignore[arg-type]


# --- files that are not whole videos --------------------------------------------------------

@pytest.mark.parametrize("kind", ["first", "last"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_video_is_refused(tmp_path: Path, kind: str, keep: float) -> None:
    """Whichever frame is asked for: the whole stream is decoded, so a cut file is found."""
    data = GOLDEN.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(FrameError, match=rf"^{path}: is truncated"):
        extract_frame(path, FrameRef(kind))  # type: ignore[arg-type]


def test_empty_missing_and_not_a_video(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(FrameError, match=rf"^{empty}: the file is empty$"):
        extract_frame(empty, FrameRef("first"))
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FrameError, match=rf"^{missing}: cannot be read"):
        extract_frame(missing, FrameRef("first"))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    with pytest.raises(FrameError, match=rf"^{text}: not a readable video") as caught:
        extract_frame(text, FrameRef("last"))
    assert "Traceback" not in str(caught.value)
    still = tmp_path / "still.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(still)
    with pytest.raises(FrameError, match="is a still image"):
        extract_frame(still, FrameRef("first"))


# --- the same bytes every time --------------------------------------------------------------

def test_golden_frames() -> None:
    """A change to these digests would re-bill every chained shot: see GOLDEN_FIRST."""
    first = extract_frame(GOLDEN, FrameRef("first"))
    half = extract_frame(GOLDEN, FrameRef("at", 0.5))
    last = extract_frame(GOLDEN, FrameRef("last"))
    assert [first.sha256, half.sha256, last.sha256] == [GOLDEN_FIRST, GOLDEN_AT_HALF, GOLDEN_LAST]
    assert [(f.width, f.height, f.seconds, f.reduced) for f in (first, half, last)] == [
        (128, 72, 0.0, 0), (128, 72, 0.5, 0), (128, 72, 11 / 12, 0)]
    assert first.sha256 == hashlib.sha256(first.png).hexdigest()


def test_same_bytes_in_process_and_in_another_process() -> None:
    once = extract_frame(GOLDEN, FrameRef("at", 0.25))
    again = extract_frame(GOLDEN, FrameRef("at", 0.25))
    assert once == again
    code = ("import sys; from kling_pipeline.frames import FrameRef, extract_frame; "
            "print(extract_frame(sys.argv[1], FrameRef('at', 0.25)).sha256)")
    out = subprocess.run([sys.executable, "-c", code, str(GOLDEN)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == once.sha256


def test_importing_the_module_loads_neither_pyav_nor_pillow() -> None:
    assert heavy_after("import kling_pipeline.frames") == []


# --- the colours ----------------------------------------------------------------------------

@pytest.mark.parametrize(("pix_fmt", "size", "colorspace", "color_range", "codec", "matrix",
                          "full"), [
    ("yuv420p", (48, 32), None, None, "libx264", "bt601", False),  # unspecified, < 720 lines
    ("yuv420p", (48, 32), AVCOL_SPC_BT709, None, "libx264", "bt709", False),
    ("yuv420p", (48, 32), AVCOL_SPC_SMPTE170M, AVCOL_RANGE_JPEG, "libx264", "bt601", True),
    ("yuvj420p", (48, 32), AVCOL_SPC_BT709, None, "libx264", "bt709", True),
    ("yuv422p", (48, 32), AVCOL_SPC_BT709, None, "libx264", "bt709", False),
    ("yuv444p", (33, 17), AVCOL_SPC_SMPTE170M, None, "libx264", "bt601", False),
    ("yuv420p", (33, 17), None, None, "ffv1", "bt601", False),     # odd size: chroma cut
])
def test_every_pixel_is_the_formula(tmp_path: Path, pix_fmt: str, size: tuple[int, int],
                                    colorspace: int | None, color_range: int | None,
                                    codec: str, matrix: str, full: bool) -> None:
    """Random planes, losslessly encoded: the PNG Pillow decodes is the formula, pixel for pixel
    (so also: the PNG holds exactly the RGB we converted)."""
    rng = random.Random(f"{pix_fmt}{size}{colorspace}{color_range}")
    cw, ch = chroma_size(pix_fmt, size)
    width, height = size
    planes = (rng.randbytes(width * height), rng.randbytes(cw * ch), rng.randbytes(cw * ch))
    path = write_clip(tmp_path / "noise.mkv", [planes], size, pix_fmt, colorspace=colorspace,
                      color_range=color_range, codec=codec,
                      container="mp4" if codec == "libx264" else "matroska")
    image = picture(extract_frame(path, FrameRef("first")))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", size)
    step_x, step_y = (2 if cw < width else 1), (2 if ch < height else 1)
    wrong = []
    for y in range(height):
        for x in range(width):
            chroma = (y // step_y) * cw + x // step_x
            want = expected_rgb(planes[0][y * width + x], planes[1][chroma], planes[2][chroma],
                                matrix, full)
            if image.getpixel((x, y)) != want:
                wrong.append((x, y, image.getpixel((x, y)), want))
    assert wrong == []


@pytest.mark.parametrize(("height", "matrix"), [(720, "bt709"), (718, "bt601")])
def test_unspecified_matrix_follows_the_height(tmp_path: Path, height: int, matrix: str) -> None:
    size = (1280, height)
    yuv = (120, 60, 200)
    path = write_clip(tmp_path / "tall.mp4", [solid("yuv420p", size, *yuv)], size)
    pixel = picture(extract_frame(path, FrameRef("first"))).getpixel((640, 360))
    assert pixel == expected_rgb(*yuv, matrix, False)
    assert expected_rgb(*yuv, "bt709", False) != expected_rgb(*yuv, "bt601", False)


ACCURATE = int(Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT)


@pytest.mark.parametrize(("pix_fmt", "codec", "container"), [
    ("yuv420p10le", "libx264", "mp4"),
    ("yuv444p10le", "ffv1", "matroska"),
    ("gray", "ffv1", "matroska"),  # swscale takes grey as full range whatever the tags say
])
def test_other_formats_go_through_swscale(tmp_path: Path, pix_fmt: str, codec: str,
                                          container: str) -> None:
    """The fallback (not guaranteed bit-exact): as swscale's own RGB of the frame, nearly, and
    (for colour) as the formula for the same 8-bit values."""
    size = (48, 32)
    cw, ch = chroma_size(pix_fmt, size)
    yuv = (150, 90, 170)
    if pix_fmt == "gray":
        planes: tuple[bytes, ...] = (random.Random(pix_fmt).randbytes(size[0] * size[1]),)
    else:  # 10 bits: each 8-bit value times 4, little-endian
        planes = tuple((value * 4).to_bytes(2, "little") * count for value, count in
                       zip(yuv, (size[0] * size[1], cw * ch, cw * ch), strict=True))
    path = write_clip(tmp_path / "deep.video", [planes], size, pix_fmt,  # type: ignore[list-item]
                      codec=codec, container=container)
    with av.open(str(path)) as opened:
        decoded = next(opened.decode(video=0))
    assert decoded.format.name == pix_fmt
    ours = picture(extract_frame(path, FrameRef("first")))
    theirs = decoded.to_image(interpolation=ACCURATE)
    difference = ImageStat.Stat(ImageChops.difference(ours, theirs))
    assert max(high for _, high in difference.extrema) <= 2
    if pix_fmt != "gray":
        want = expected_rgb(*yuv, "bt601", False)
        pixel = ours.getpixel((10, 10))
        assert max(abs(a - b) for a, b in zip(pixel, want, strict=True)) <= 2  # type: ignore


def test_rgb_video_goes_through_swscale(tmp_path: Path) -> None:
    """An RGB codec (PNG in MOV): converted to full-range YUV and back, close to the source."""
    source = noise_rgb((48, 32))
    path = tmp_path / "rgb.mov"
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream("png", rate=12)
        stream.width, stream.height = source.size
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_image(source)  # type: ignore[no-untyped-call]
        frame.pts = 0
        frame.time_base = Fraction(1, 12)
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    image = picture(extract_frame(path, FrameRef("first")))
    difference = ImageChops.difference(image, source)
    assert max(high for _, high in ImageStat.Stat(difference).extrema) <= 3
    assert mean_difference(image, source)[0] < 1.0


@pytest.fixture(scope="module")
def photo_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real simulator clip of a photo (Ken Burns move): natural colours and edges."""
    image = (ROOT / "examples" / "music-video" / "assets" / "sunrise.jpg").read_bytes()
    path = tmp_path_factory.mktemp("photo") / "photo.mp4"
    path.write_bytes(render_clip(ClipSpec(segments=(("sunrise", 1.0),), image=image)))
    return path


@pytest.mark.parametrize("which", ["photo", "golden"])
def test_colours_match_swscale(photo_clip: Path, which: str) -> None:
    """Our integer conversion against FFmpeg's swscale (to_image) on the same decoded frames:
    the colours are right, not only repeatable.

    swscale's default path repeats chroma samples as we do, but rounds about one level darker;
    its accurate path has no bias but interpolates chroma, which on golden.mp4's steep synthetic
    chroma ramps differs from repeating by ~2 levels on average, so it is compared on the photo.
    """
    path = photo_clip if which == "photo" else GOLDEN
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    for kind, frame in (("first", decoded[0]), ("last", decoded[-1])):
        ours = picture(extract_frame(path, FrameRef(kind)))  # type: ignore[arg-type]
        # Both are unspecified and under 720 lines: BT.601, limited range.
        default = frame.to_image(src_colorspace="ITU601")
        assert mean_difference(ours, default)[0] <= MAX_MEAN_DIFF_DEFAULT
        if which == "photo":
            mean, bias = mean_difference(
                ours, frame.to_image(src_colorspace="ITU601", interpolation=ACCURATE))
            assert mean <= MAX_MEAN_DIFF_ACCURATE
            assert abs(bias) <= MAX_BIAS_ACCURATE


# --- the PNG --------------------------------------------------------------------------------

def noise_rgb(size: tuple[int, int]) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise(size, sigma) for sigma in (30, 80, 130)])


@pytest.mark.parametrize("image", [
    Image.new("RGB", (1, 1), (255, 0, 7)),
    noise_rgb((7, 3)),
    Image.merge("RGB", [Image.radial_gradient("L"), Image.linear_gradient("L"),
                        Image.effect_noise((256, 256), 100)]).resize((300, 200)),
    noise_rgb((30_000, 3)),   # a row longer than a stored block
    noise_rgb((500, 400)),    # many blocks
], ids=["1x1", "7x3", "gradients", "long-rows", "500x400"])
def test_png_round_trips(image: Image.Image) -> None:
    data = encode_png(image)
    decoded = Image.open(io.BytesIO(data))
    assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGB", image.size)
    assert decoded.tobytes() == image.tobytes()
    # Stored, not compressed: the IDAT is the rows, each after a filter byte 0.
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    width = image.width * 3
    raw = image.tobytes()
    assert zlib.decompress(idat) == b"".join(b"\x00" + raw[at:at + width]
                                             for at in range(0, len(raw), width))
    assert len(data) == 8 + 25 + 12 + 2 + len(zlib.decompress(idat)) + 4 + 12 + \
        5 * math.ceil(len(zlib.decompress(idat)) / 65535)


def test_png_bytes_are_pinned() -> None:
    """The writer itself, apart from any video: a 2x2 image has these bytes everywhere."""
    image = Image.new("RGB", (2, 2), (10, 20, 30))
    image.putpixel((1, 1), (200, 100, 0))
    assert hashlib.sha256(encode_png(image)).hexdigest() == \
        "b7a2f9a38502cb628efff9d8d77288bd0535433d60135d62ddfe8779c2754e8f"


def test_png_takes_rgb_only() -> None:
    for mode in ("L", "RGBA", "P"):
        with pytest.raises(ValueError, match="RGB"):
            encode_png(Image.new(mode, (2, 2)))
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(Image.new("RGB", (0, 3)))


def test_max_bytes_halves_until_it_fits() -> None:
    full = extract_frame(GOLDEN, FrameRef("last"))
    assert len(full.png) == 27788
    assert extract_frame(GOLDEN, FrameRef("last"), max_bytes=27788) == full
    once = extract_frame(GOLDEN, FrameRef("last"), max_bytes=27787)
    assert (once.width, once.height, once.reduced, once.seconds) == (64, 36, 1, full.seconds)
    assert picture(once).tobytes() == picture(full).reduce(2).tobytes()
    small = extract_frame(GOLDEN, FrameRef("last"), max_bytes=1000)
    assert (small.width, small.height, small.reduced) == (16, 9, 3)
    assert len(small.png) <= 1000
    assert picture(small).tobytes() == picture(full).reduce(2).reduce(2).reduce(2).tobytes()
    with pytest.raises(ValueError, match="max_bytes must be at least"):
        extract_frame(GOLDEN, FrameRef("last"), max_bytes=20)


def test_a_1080p_frame_fits_the_api_and_4k_is_halved(tmp_path: Path) -> None:
    hd = write_clip(tmp_path / "hd.mp4", [solid("yuv420p", (1920, 1080), 80, 100, 150)],
                    (1920, 1080))
    frame = extract_frame(hd, FrameRef("last"), max_bytes=MAX_BYTES)
    assert (frame.width, frame.height, frame.reduced) == (1920, 1080, 0)
    assert len(frame.png) == 6_222_418 < MAX_BYTES
    uhd = write_clip(tmp_path / "uhd.mp4", [solid("yuv420p", (3840, 2160), 80, 100, 150)],
                     (3840, 2160))
    frame = extract_frame(uhd, FrameRef("last"), max_bytes=MAX_BYTES)
    assert (frame.width, frame.height, frame.reduced) == (1920, 1080, 1)
