"""Real, playable MP4s for the simulator: the animatic a person can preview before paying.

Frames are drawn with Pillow (no per-pixel Python) and encoded with PyAV as H.264/yuv420p in an
MP4 with the index at the front (faststart), so the files behave like the provider's downloads:
the client's probe can verify them and any player can show them. Without an image a clip is a title
card of the current segment's prompt with a running timecode; with an image it is that image with
a slow Ken Burns move, and the end image cross-fades in over the last second.

A clip starts on its image and ends on its end image (the first frame is the image fitted to the
frame, the last one the end image fitted to it), and at the simulator's default size
(`long_side` 0: 320 px on the short side) both sides are at least the API's 300 px: so a frame of
one simulated clip can be the image or end image of the next, and a chained animatic runs on
without a jump.
"""

from __future__ import annotations

import array
import hashlib
import io
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from av import AudioFrame
    from PIL import Image, ImageFont

DEFAULT_ASPECT = "16:9"
SAMPLE_RATE = 48_000
TONE_AMPLITUDE = 0.2
AUDIO_BIT_RATE = 48_000
# Frequencies that divide SAMPLE_RATE, so one period tiles exactly; one per segment, so the
# cuts of a multi-prompt animatic can be heard.
TONE_HZ = (400, 480, 500, 600, 750, 800)
ZOOM = 1.12           # Ken Burns: the image ends this much closer than it starts
# long_side 0 (the simulator's default): the short side is this, so every aspect the API takes for
# an image (1:2.5 to 2.5:1) gives frames that are themselves valid input images (both sides at
# least 300 px, images.MIN_SIDE); 320, not the bare 300, leaves room to crop a frame a little.
SHORT_SIDE = 320
MAX_ASPECT = 2.5      # the widest aspect the API takes for an image; auto sizes stop there
END_FADE_SECONDS = 1.0


@dataclass(frozen=True)
class ClipSpec:
    """What to render: the fields of a submission that shape the video."""

    segments: tuple[tuple[str, float], ...]  # (prompt, seconds); their sum is the duration
    aspect_ratio: str | None = None          # "16:9" | "9:16" | "1:1" when there is no image
    image: bytes | None = None               # first frame (PNG/JPEG) for image-to-video
    end_image: bytes | None = None           # end frame, cross-faded in over the last ~1 s
    sound: bool = False                      # add a tone track (AAC)
    fps: int = 12
    # Pixels on the long side; 0: SHORT_SIDE on the short side, as the simulator renders by
    # default. 320 here keeps the clips that tests and benches render directly small and cheap.
    long_side: int = 320

    @property
    def duration(self) -> float:
        """Seconds of video: the sum of the segments."""
        return sum(seconds for _, seconds in self.segments)

    @property
    def frame_count(self) -> int:
        """Frames to render: the duration at `fps`, rounded."""
        return round(self.duration * self.fps)


def frame_size(spec: ClipSpec) -> tuple[int, int]:
    """Width and height, both even (as yuv420p needs).

    The aspect comes from the image when there is one (as the API's i2v does), else from
    `aspect_ratio` (default 16:9). The long side is `spec.long_side`; with `long_side` 0 the
    short side is SHORT_SIDE (16:9: 568x320, 1:1: 320x320, 2.5:1: 800x320), the long side at
    most SHORT_SIDE * MAX_ASPECT (a wider aspect, which no API image has, gets a shorter short
    side rather than an ever longer frame).
    """
    if spec.image is not None:
        width, height = _open_image(spec.image).size
    else:
        width, height = _parse_ratio(spec.aspect_ratio or DEFAULT_ASPECT)
    if spec.long_side == 0:
        long_side = min(_even(SHORT_SIDE * max(width, height) / min(width, height)),
                        _even(SHORT_SIDE * MAX_ASPECT))
    else:
        long_side = _even(spec.long_side)
    if width >= height:
        return long_side, _even(long_side * height / width)
    return _even(long_side * width / height), long_side


def render_clip(spec: ClipSpec) -> bytes:
    """Render `spec` and return the MP4 file's bytes."""
    _check(spec)
    import av

    size = frame_size(spec)
    frames = _frames_with_image(spec, size) if spec.image is not None else _title_frames(spec, size)
    rate = Fraction(spec.fps)
    with tempfile.TemporaryDirectory(prefix="kling-sim-") as tmp:
        # faststart rewrites the file in a second pass, which needs a real file, not a BytesIO.
        path = os.path.join(tmp, "clip.mp4")
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            # x264's SIMD code reads past the end of the frames PyAV hands it, so with it the
            # same frames could encode to other bytes from run to run; without it (about twice
            # the CPU, still ~0.03 s per video second) a request always makes the same file.
            video = container.add_stream(
                "libx264", rate=spec.fps,
                options={"preset": "veryfast", "crf": "28", "threads": "1",
                         "x264-params": "asm=0"},
            )
            video.width, video.height = size
            video.pix_fmt = "yuv420p"
            audio = tone = None
            if spec.sound:
                audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
                audio.bit_rate = AUDIO_BIT_RATE  # a plain tone: small files, same playability
                tone = _Tone(spec)
            for index, image in enumerate(frames):
                # PyAV's stub leaves from_image untyped; it copies rows honouring the line size.
                frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
                frame = frame.reformat(format="yuv420p")
                frame.pts = index
                frame.time_base = 1 / rate
                container.mux(video.encode(frame))
                if audio is not None and tone is not None:
                    # Interleave: audio up to the end of this frame, so the muxer buffers little.
                    for chunk in tone.until(round((index + 1) * SAMPLE_RATE / spec.fps)):
                        container.mux(audio.encode(chunk))
            container.mux(video.encode(None))
            if audio is not None and tone is not None:
                for chunk in tone.until(round(spec.duration * SAMPLE_RATE)):
                    container.mux(audio.encode(chunk))
                container.mux(audio.encode(None))
        with open(path, "rb") as handle:
            return handle.read()


def _check(spec: ClipSpec) -> None:
    """Refuse specs that cannot make a video, in plain words."""
    if not spec.segments:
        raise ValueError("a clip needs at least one segment")
    if any(seconds <= 0 for _, seconds in spec.segments):
        raise ValueError("every segment must last more than 0 seconds")
    if spec.fps <= 0:
        raise ValueError(f"fps must be positive, not {spec.fps}")
    if spec.long_side != 0 and spec.long_side < 16:
        raise ValueError(f"long_side must be 0 (auto) or at least 16 px, not {spec.long_side}")
    if spec.frame_count < 1:
        raise ValueError(f"{spec.duration} s at {spec.fps} fps is not even one frame")


def _even(value: float) -> int:
    """The nearest even integer, at least 2."""
    return max(2, 2 * round(value / 2))


def _parse_ratio(ratio: str) -> tuple[int, int]:
    """'16:9' -> (16, 9)."""
    try:
        width, height = (int(part) for part in ratio.split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio {ratio!r} is not of the form W:H, e.g. 16:9") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"aspect ratio {ratio!r} must have positive sides")
    return width, height


def _open_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB, upright as a viewer shows it (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            upright = ImageOps.exif_transpose(image)
            return upright.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError("the image is not a readable PNG or JPEG") from exc


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale and centre-crop `image` so it fills `size` exactly (as a video fills its frame)."""
    from PIL import ImageOps

    return ImageOps.fit(image, size, method=3)  # 3 = BICUBIC; a literal keeps PIL lazy


def _segment_at(spec: ClipSpec, seconds: float) -> int:
    """Index of the segment playing at `seconds`."""
    start = 0.0
    for index, (_, length) in enumerate(spec.segments):
        start += length
        if seconds < start - 1e-9:
            return index
    return len(spec.segments) - 1


def _frames_with_image(spec: ClipSpec, size: tuple[int, int]) -> Iterator[Image.Image]:
    """The first image with a slow zoom and drift, the end image cross-faded in at the end.

    The first frame is the image fitted to `size` (`_cover`), the last one, when there is an
    end image, that image fitted to `size` and nothing else: a clip made from another clip's
    frame starts where that one stopped.
    """
    from PIL import Image

    width, height = size
    first = _open_image(spec.image or b"")
    # Fit once at the zoomed-out size; every later frame is a (sub-pixel) crop of it, resized
    # down. Frame 0 is fitted from the image itself: the same crop resampled twice (bicubic up
    # to ZOOM, bilinear down) differs from it by about 0.5 of 255 on average.
    start = _cover(first, size)
    source = _cover(first, (round(width * ZOOM), round(height * ZOOM)))
    src_w, src_h = source.size
    end = _cover(_open_image(spec.end_image), size) if spec.end_image is not None else None
    count = spec.frame_count
    fade_frames = min(round(END_FADE_SECONDS * spec.fps), max(1, count // 2))
    for index in range(count):
        progress = index / (count - 1) if count > 1 else 1.0
        eased = 0.5 - 0.5 * math.cos(math.pi * progress)
        box_w = src_w - (src_w - width) * eased
        box_h = src_h - (src_h - height) * eased
        # Drift the window a little right and up as it zooms in.
        left = (src_w - box_w) * (0.5 + 0.3 * eased)
        top = (src_h - box_h) * (0.5 - 0.3 * eased)
        if index == 0:
            frame = start.copy()  # the caption below draws on it
        else:
            frame = source.resize(size, Image.Resampling.BILINEAR,
                                  box=(left, top, left + box_w, top + box_h))
        if end is not None:
            into_fade = index - (count - fade_frames)
            if into_fade == fade_frames - 1:  # the last frame: the end image, not a blend of it
                frame = end.copy()
            elif into_fade >= 0:
                frame = Image.blend(frame, end, (into_fade + 1) / fade_frames)
        if len(spec.segments) > 1:
            _caption(frame, spec.segments[_segment_at(spec, index / spec.fps)][0])
        yield frame


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (scalable since Pillow 10.1; fixed bitmap before)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow or no FreeType
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float,
          max_lines: int) -> list[str]:
    """Greedy word wrap by measured width; the last line ends in '…' when text is left over."""
    words = text.split()
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " …"
    # A single word wider than the frame: cut it rather than draw past the edge.
    return [_clip_to(line, font, width) for line in lines]


def _clip_to(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """Shorten `text` until it fits `width`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _caption(frame: Image.Image, text: str) -> None:
    """A one-line subtitle strip, so a multi-prompt image animatic shows which shot is playing."""
    from PIL import ImageDraw

    width, height = frame.size
    font = _font(max(8, round(min(width, height) / 16)))
    line = _clip_to(" ".join(text.split()), font, width * 0.92)
    draw = ImageDraw.Draw(frame, "RGBA")
    strip = round(min(width, height) / 9)
    draw.rectangle((0, height - strip, width, height), fill=(0, 0, 0, 140))
    draw.text((width / 2, height - strip / 2), line, font=font, fill=(255, 255, 255), anchor="mm")


def _palette(prompt: str, index: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two dark background colours chosen from the prompt, so each segment looks different."""
    digest = hashlib.sha256(f"{index}:{prompt}".encode()).digest()
    top = (30 + digest[0] % 60, 30 + digest[1] % 60, 50 + digest[2] % 70)
    bottom = (top[0] // 3, top[1] // 3, top[2] // 3)
    return top, bottom


def _title_card(spec: ClipSpec, size: tuple[int, int], index: int) -> Image.Image:
    """The still part of a segment's card: gradient background and the wrapped prompt."""
    from PIL import Image, ImageDraw, ImageOps

    width, height = size
    prompt = " ".join(spec.segments[index][0].split()) or "(no prompt)"
    top, bottom = _palette(prompt, index)
    card = ImageOps.colorize(Image.linear_gradient("L").resize(size), top, bottom)
    draw = ImageDraw.Draw(card)
    short = min(width, height)
    font = _font(max(9, round(short / 11)))
    line_height = font.getbbox("Ag")[3] * 1.25
    text_area = height * 0.62
    lines = _wrap(prompt, font, width * 0.86, max(1, int(text_area // line_height)))
    y = height * 0.42 - line_height * len(lines) / 2
    for line in lines:
        draw.text((width / 2, y + line_height / 2), line, font=font, fill=(240, 240, 240),
                  anchor="mm")
        y += line_height
    if len(spec.segments) > 1:
        small = _font(max(8, round(short / 18)))
        draw.text((width - short * 0.05, short * 0.05), f"{index + 1}/{len(spec.segments)}",
                  font=small, fill=(200, 200, 200), anchor="ra")
    return card


def _timecode(seconds: float) -> str:
    """'00:03.25': minutes, seconds and hundredths."""
    hundredths = round(seconds * 100)
    minutes, rest = divmod(hundredths, 6000)
    return f"{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def _title_frames(spec: ClipSpec, size: tuple[int, int]) -> Iterator[Image.Image]:
    """Title cards with a running timecode, a progress bar and a dot that swings across."""
    from PIL import ImageDraw

    width, height = size
    short = min(width, height)
    small = _font(max(8, round(short / 14)))
    cards: dict[int, Image.Image] = {}
    count = spec.frame_count
    bar_h = max(2, round(short / 60))
    radius = max(2, round(short / 40))
    for index in range(count):
        seconds = index / spec.fps
        segment = _segment_at(spec, seconds)
        if segment not in cards:
            cards[segment] = _title_card(spec, size, segment)
        frame = cards[segment].copy()
        draw = ImageDraw.Draw(frame)
        draw.text((short * 0.05, height - short * 0.06 - bar_h), _timecode(seconds), font=small,
                  fill=(255, 255, 255), anchor="ld")
        done = (index + 1) / count
        draw.rectangle((0, height - bar_h, round(width * done), height), fill=(255, 200, 60))
        swing = 0.5 + 0.4 * math.sin(2 * math.pi * seconds / 4)
        cx, cy = width * swing, height * 0.80
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 200, 60))
        yield frame


class _Tone:
    """A sine tone in AAC-sized frames, its pitch changing with the segment."""

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        self.position = 0  # samples already emitted
        self.bounds: list[int] = []
        start = 0.0
        for _, seconds in spec.segments:
            start += seconds
            self.bounds.append(round(start * SAMPLE_RATE))
        self.tiles: dict[int, array.array[float]] = {}

    def _tile(self, hertz: int) -> array.array[float]:
        """A few periods of the tone, long enough to slice any 1024-sample chunk from."""
        if hertz not in self.tiles:
            period = SAMPLE_RATE // hertz
            one = [TONE_AMPLITUDE * math.sin(2 * math.pi * i / period) for i in range(period)]
            self.tiles[hertz] = array.array("f", one * (2 + 1024 // period))
        return self.tiles[hertz]

    def until(self, end: int) -> Iterator[AudioFrame]:
        """AudioFrames from the current position up to sample `end` (exclusive)."""
        import av

        while self.position < end:
            segment = next((i for i, b in enumerate(self.bounds) if self.position < b),
                           len(self.bounds) - 1)
            hertz = TONE_HZ[segment % len(TONE_HZ)]
            stop = min(end, self.position + 1024, self.bounds[segment])
            if stop <= self.position:  # rounding left a sliver past the last bound
                stop = min(end, self.position + 1024)
            count = stop - self.position
            tile = self._tile(hertz)
            phase = self.position % (SAMPLE_RATE // hertz)
            frame = av.AudioFrame(format="fltp", layout="mono", samples=count)
            frame.planes[0].update(tile[phase:phase + count].tobytes())
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self.position
            frame.time_base = Fraction(1, SAMPLE_RATE)
            self.position = stop
            yield frame
