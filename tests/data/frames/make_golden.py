"""Make golden.mp4, the fixture whose frames' sha256 tests/unit/test_frames.py pins.

Why the fixture exists: a chained shot's request key holds the sha256 of a frame's PNG, so any
change in how kling_pipeline.frames turns a video into PNG bytes (our code, Pillow, PyAV, the
decoder) would silently re-bill every chained shot. The test extracts the first, last and 0.5 s
frames of this committed file and compares their digests with constants.

What it is: 1 s of 128x72 H.264 (yuv420p, limited range, colour space unspecified, so BT.601 by
FFmpeg's rule), 12 frames at 12 fps with B-frames, about 10 KB. Its planes are drawn directly in
YUV with Pillow (no swscale), covering every luma value from 0 to 255 (also those outside the
limited range) and chroma of both signs and of every size, with a block that moves each frame so
the three chosen frames differ.

The committed bytes are the fixture; this script documents how they were made. Run it again
(`.venv/bin/python tests/data/frames/make_golden.py`) only to replace the fixture on purpose, and
then update the digests in the test: another x264 could encode other bytes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageChops

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT, FPS, FRAMES = 128, 72, 12, 12


def planes(index: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Y, U, V of frame `index`: gradients in three directions, a block moving across."""
    luma = Image.linear_gradient("L").rotate(90).resize((WIDTH, HEIGHT))  # 0 at left -> 255
    half = (WIDTH // 2, HEIGHT // 2)
    cb = Image.linear_gradient("L").resize(half)                     # 0 at top -> 255 at bottom
    cr = Image.radial_gradient("L").resize(half)                     # 0 in the middle -> 255
    block = (8 + index * 8, 20, 24 + index * 8, 52)
    luma.paste(255 - 20 * (index % 4), block)
    chroma_block = tuple(value // 2 for value in block)
    cb.paste(40 + 15 * index, chroma_block)
    cr.paste(220 - 15 * index, chroma_block)
    return luma, ImageChops.invert(cb) if index % 2 else cb, cr


def frame(index: int) -> av.VideoFrame:
    """A yuv420p VideoFrame of `planes(index)`, rows padded to the frame's line size."""
    video = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for plane, image in zip(video.planes, planes(index), strict=True):
        data = image.tobytes()
        rows = [data[y * image.width:(y + 1) * image.width] for y in range(image.height)]
        pad = b"\x00" * (plane.line_size - image.width)
        plane.update(b"".join(row + pad for row in rows))
    video.pts = index
    video.time_base = Fraction(1, FPS)
    return video


def main() -> None:
    path = HERE / "golden.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        # As the simulator: one thread and no assembly, so x264 makes the same bytes each run.
        stream = container.add_stream(
            "libx264", rate=FPS,
            options={"preset": "medium", "crf": "24", "threads": "1", "bframes": "3",
                     "x264-params": "asm=0"})
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        for index in range(FRAMES):
            container.mux(stream.encode(frame(index)))
        container.mux(stream.encode(None))
    print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
