"""The simulator's clips are real MP4s of the requested duration, size, sound and frames."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from kling_pipeline.simulator import video
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.renderer import clip_spec
from kling_pipeline.simulator.video import ClipSpec, frame_size, render_clip
from kling_pipeline.storyboard.endpoints import Endpoint, get_endpoint, validate_body
from kling_pipeline.storyboard.images import check_image_bytes, data_uri

SIMULATOR = SimulatorConfig()  # its default knobs: what `apply --simulate` renders
T2V = "kling-v3.0-pro-t2v"
I2V = "kling-v3.0-pro-i2v"


def _png(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """An image with a solid background and a white square, as file bytes."""
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle((20, 20, 120, 120), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "clip.mp4") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _frames(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image()  # type: ignore[no-untyped-call]
                for frame in container.decode(video=0)]


def _seconds(stream: av.stream.Stream) -> float:
    """A stream's duration from its header."""
    assert stream.duration is not None and stream.time_base is not None
    return float(stream.duration * stream.time_base)


def _mean(image: Image.Image) -> tuple[float, ...]:
    """Average colour of the frame's centre (away from the white square and any caption)."""
    width, height = image.size
    centre = image.crop((width // 2, height // 4, width * 3 // 4, height * 3 // 4))
    return tuple(ImageStat.Stat(centre).mean)


@pytest.mark.parametrize("seconds", [3, 5, 10])
def test_duration_is_exact_to_one_frame(tmp_path: Path, seconds: int) -> None:
    spec = ClipSpec(segments=(("a fox in the snow", float(seconds)),))
    path = _write(tmp_path, render_clip(spec))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = _seconds(stream)
        frames = sum(1 for _ in container.decode(stream))
    assert abs(duration - seconds) <= 1 / spec.fps
    assert frames == seconds * spec.fps


def test_is_h264_yuv420p_with_the_index_first(tmp_path: Path) -> None:
    data = render_clip(ClipSpec(segments=(("anything", 3.0),)))
    assert data.index(b"moov") < data.index(b"mdat"), "faststart: playable while downloading"
    with av.open(str(_write(tmp_path, data))) as container:
        context = container.streams.video[0].codec_context
        assert context.name == "h264"
        assert context.pix_fmt == "yuv420p"


@pytest.mark.parametrize(("ratio", "size"),
                         [("16:9", (320, 180)), ("9:16", (180, 320)), ("1:1", (320, 320))])
def test_size_follows_the_aspect_ratio(tmp_path: Path, ratio: str, size: tuple[int, int]) -> None:
    spec = ClipSpec(segments=(("a lighthouse at night", 3.0),), aspect_ratio=ratio)
    assert frame_size(spec) == size
    frames = _frames(_write(tmp_path, render_clip(spec)))
    assert frames[0].size == size


def test_default_aspect_is_16_9() -> None:
    assert frame_size(ClipSpec(segments=(("x", 5.0),))) == (320, 180)


def test_size_follows_the_image_not_the_ratio(tmp_path: Path) -> None:
    image = _png((600, 400), (200, 40, 40))
    spec = ClipSpec(segments=(("the car drives off", 3.0),), image=image, aspect_ratio="9:16")
    assert frame_size(spec) == (320, 214)  # 600x400 is 3:2; 320 * 2/3 = 213.3 -> even 214
    frames = _frames(_write(tmp_path, render_clip(spec)))
    assert frames[0].size == (320, 214)
    red, green, blue = _mean(frames[0])
    assert red > 150 and green < 90 and blue < 90, "the first frame shows the image"


def test_portrait_image_and_long_side() -> None:
    spec = ClipSpec(segments=(("x", 5.0),), image=_png((400, 600), (0, 0, 0), "JPEG"),
                    long_side=640)
    assert frame_size(spec) == (426, 640)


@pytest.mark.parametrize("sound", [False, True])
def test_audio_present_iff_sound(tmp_path: Path, sound: bool) -> None:
    spec = ClipSpec(segments=(("waves on a beach", 5.0),), sound=sound)
    with av.open(str(_write(tmp_path, render_clip(spec)))) as container:
        assert bool(container.streams.audio) is sound
        if sound:
            audio = container.streams.audio[0]
            assert audio.codec_context.name == "aac"
            assert abs(_seconds(audio) - 5.0) < 0.05


def test_segments_add_up_and_each_gets_its_card(tmp_path: Path) -> None:
    spec = ClipSpec(segments=(("wide shot of a harbour", 2.0), ("close up of a gull", 1.5),
                              ("the gull flies away", 1.5)), aspect_ratio="1:1", sound=True)
    assert spec.duration == 5.0
    path = _write(tmp_path, render_clip(spec))
    with av.open(str(path)) as container:
        for stream in container.streams:
            assert abs(_seconds(stream) - 5.0) <= 1 / spec.fps
    frames = _frames(path)
    assert len(frames) == 60
    # Segments start at frames 0, 24 and 42: each has its own background.
    firsts = [_mean(frames[i]) for i in (0, 24, 42)]
    assert len({tuple(round(c) for c in colour) for colour in firsts}) == 3
    assert _mean(frames[1]) == pytest.approx(firsts[0], abs=4), "same card within a segment"


@pytest.mark.parametrize("aspect_ratio", ["16:9", "1:1", "9:16"])
def test_same_spec_same_bytes(aspect_ratio: str) -> None:
    # Regression: with x264's assembly the bytes varied with whatever lay in memory past the
    # frames (1:1 differed in most of a dozen renders), so a task could be served two files.
    spec = ClipSpec(segments=(("a b c", 2.0),), aspect_ratio=aspect_ratio, sound=True)
    renders = set()
    for size in range(6):
        clutter = [bytearray(b"\xff" * (size * 7919 + n)) for n in range(50)]  # vary the heap
        renders.add(render_clip(spec))
        del clutter
    assert len(renders) == 1


def test_title_card_moves(tmp_path: Path) -> None:
    frames = _frames(_write(tmp_path, render_clip(ClipSpec(segments=(("still life", 3.0),)))))
    assert frames[0].tobytes() != frames[6].tobytes()


def test_end_image_fades_in(tmp_path: Path) -> None:
    spec = ClipSpec(segments=(("it turns blue", 3.0),), image=_png((600, 400), (200, 40, 40)),
                    end_image=_png((600, 400), (30, 40, 220), "JPEG"))
    frames = _frames(_write(tmp_path, render_clip(spec)))
    first, middle, last = _mean(frames[0]), _mean(frames[len(frames) // 2]), _mean(frames[-1])
    assert first[0] > 150 and first[2] < 90
    assert middle[0] > 150, "the end image waits for the last second"
    assert last[2] > 180 and last[0] < 70, "the last frame is the end image"


def test_long_and_empty_prompts_render() -> None:
    for prompt in ("word " * 600, "", "x" * 400):
        assert render_clip(ClipSpec(segments=((prompt, 1.0),), fps=4))[4:8] == b"ftyp"


@pytest.mark.parametrize("spec", [
    ClipSpec(segments=()),
    ClipSpec(segments=(("x", 0.0),)),
    ClipSpec(segments=(("x", 5.0),), fps=0),
    ClipSpec(segments=(("x", 5.0),), aspect_ratio="wide"),
    ClipSpec(segments=(("x", 5.0),), image=b"not an image"),
])
def test_impossible_specs_are_refused(spec: ClipSpec) -> None:
    with pytest.raises(ValueError):
        render_clip(spec)


def _endpoint(slug: str) -> Endpoint:
    endpoint = get_endpoint(slug)
    assert endpoint is not None
    return endpoint


def _served(slug: str, body: dict[str, Any]) -> ClipSpec:
    """The clip the simulator renders, with its default knobs, for this request body."""
    assert validate_body(_endpoint(slug), body) == [], "a body the API takes"
    return clip_spec(_endpoint(slug), body, SIMULATOR.video_fps, SIMULATOR.video_long_side)


def _decoded(data: bytes) -> list[Image.Image]:
    """Every frame of an MP4 held in memory, decoded as a player would."""
    with av.open(io.BytesIO(data), "r") as container:
        return [frame.to_image()  # type: ignore[no-untyped-call]
                for frame in container.decode(video=0)]


def _png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _picture(size: tuple[int, int], background: tuple[int, int, int],
             spots: tuple[int, int, int]) -> Image.Image:
    """A storyboard-like picture: a gradient, a row of spots and a line of text."""
    width, height = size
    picture = Image.blend(Image.linear_gradient("L").resize(size).convert("RGB"),
                          Image.new("RGB", size, background), 0.6)
    draw = ImageDraw.Draw(picture)
    for left in range(0, width, width // 8):
        draw.ellipse((left, height // 3, left + width // 10, height // 3 + width // 10),
                     fill=spots)
    draw.text((width // 10, height // 10), "KEY FRAME", fill=(255, 255, 255))
    return picture


def _difference(one: Image.Image, other: Image.Image) -> float:
    """Mean absolute difference per channel, the worst channel, in 0..255."""
    return max(ImageStat.Stat(ImageChops.difference(one, other)).mean)


@pytest.mark.parametrize(("slug", "body", "size"), [
    (T2V, {"prompt": "a lighthouse", "duration": 3, "aspect_ratio": "16:9"}, (568, 320)),
    (T2V, {"prompt": "a lighthouse", "duration": 3, "aspect_ratio": "9:16"}, (320, 568)),
    (T2V, {"prompt": "a lighthouse", "duration": 3, "aspect_ratio": "1:1"}, (320, 320)),
    (T2V, {"prompt": "a lighthouse", "duration": 3}, (568, 320)),
    # the widest and the tallest images the API takes: 2.5:1 and 1:2.5
    (I2V, {"image": data_uri(_png((750, 300), (200, 40, 40)), "image/png"), "prompt": "p",
           "duration": 3}, (800, 320)),
    (I2V, {"image": data_uri(_png((300, 750), (200, 40, 40)), "image/png"), "prompt": "p",
           "duration": 3}, (320, 800)),
], ids=["16:9", "9:16", "1:1", "no ratio", "image 2.5:1", "image 1:2.5"])
def test_default_frames_can_be_fed_back_as_images(slug: str, body: dict[str, Any],
                                                  size: tuple[int, int]) -> None:
    # 320 px on the short side: both sides >= 300 px and even, the aspect the request's.
    spec = _served(slug, body)
    assert frame_size(spec) == size
    last = _decoded(render_clip(spec))[-1]
    assert last.width % 2 == 0 and last.height % 2 == 0  # yuv420p needs even sides
    data = _png_of(last)
    # the API's rules for an input image (both sides >= 300 px, aspect 1:2.5..2.5:1, 10 MB),
    # checked on the frame the simulator really rendered, not on the size the test expects
    info = check_image_bytes(data)
    assert (info.width, info.height) == size
    # 800x320 RGB is 768,000 bytes raw: no PNG of such a frame comes near the 10 MB limit.
    assert len(data) < 1_000_000


def test_an_image_clip_starts_on_the_image_and_ends_on_the_end_image() -> None:
    # Exact, before encoding: frame 0 is the image fitted to the frame (not the zoom's source
    # resampled, which was about 0.5/255 off) and the last frame the fitted end image.
    first = _picture((1280, 720), (30, 60, 200), (250, 220, 40))
    end = _picture((900, 700), (200, 40, 40), (40, 200, 90))
    spec = ClipSpec(segments=(("turns", 2.0),), image=_png_of(first), end_image=_png_of(end))
    size = frame_size(spec)
    frames = list(video._frames_with_image(spec, size))
    assert len(frames) == spec.frame_count
    assert frames[0].tobytes() == video._cover(first, size).tobytes()
    assert frames[-1].tobytes() == video._cover(end, size).tobytes()
    assert frames[1].tobytes() != frames[0].tobytes(), "and it moves in between"


# A frame of one simulated clip fed to the next as its image. Both bounds are the worst
# channel's mean absolute difference (0..255) between decoded frames and what they should be;
# H.264 at crf 28 in yuv420p is lossy, so never 0.
# - The next clip's first frame against the frame it was given: measured 1.4-1.9 (16:9, 9:16,
#   1:1, image clips): one more encoding of a frame that was already decoded once.
CONTINUITY_BOUND = 4.0
# - Its last frame against the end picture fitted to the frame: measured 3.7-4.3: a fresh, sharp
#   picture (text, hard edges) loses more to the encoder and to 4:2:0 chroma.
END_BOUND = 8.0
# Unrelated pictures differ by 90 and more: far above both.


@pytest.mark.parametrize("first_clip", [
    (T2V, {"prompt": "a lighthouse at dusk, waves below", "duration": 3, "aspect_ratio": "16:9"}),
    (T2V, {"prompt": "a lighthouse at dusk, waves below", "duration": 3, "aspect_ratio": "9:16"}),
    (I2V, {"image": data_uri(_png((1280, 720), (200, 40, 40)), "image/png"), "duration": 3,
           "prompt": "the car drives off"}),
], ids=["title card 16:9", "title card 9:16", "image"])
def test_a_chained_animatic_runs_on_without_a_jump(
        first_clip: tuple[str, dict[str, Any]]) -> None:
    slug, body = first_clip
    a_last = _decoded(render_clip(_served(slug, body)))[-1]
    a_png = _png_of(a_last)
    check_image_bytes(a_png)  # the simulator, as the API, refuses an image it would not take
    end = _picture((900, 700), (30, 60, 200), (250, 220, 40))
    chained = _served(I2V, {"image": data_uri(a_png, "image/png"),
                            "end_image": data_uri(_png_of(end), "image/png"),
                            "prompt": "and on", "duration": 3})
    size = frame_size(chained)
    assert size == a_last.size, "the frame's own shape, not resized"
    b_frames = _decoded(render_clip(chained))
    b_first, b_last = b_frames[0], b_frames[-1]
    fitted_end = video._cover(end, size)
    assert _difference(b_first, a_last) <= CONTINUITY_BOUND
    assert _difference(b_last, fitted_end) <= END_BOUND
    # ...and the comparison can fail: unrelated frames are far apart.
    assert _difference(b_first, fitted_end) > 5 * END_BOUND
    assert _difference(b_last, a_last) > 5 * END_BOUND
