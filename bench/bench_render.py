"""How much CPU the simulator spends per second of video, and the probe per second checked.

The simulator renders a real MP4 for every task, so its cost bounds how fast the test suite and
an animatic preview can go. Run: `.venv/bin/python bench/bench_render.py [--runs 5]`.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

try:
    from kling_pipeline.output.media import probe_video
    from kling_pipeline.simulator.video import ClipSpec, frame_size, render_clip
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kling_pipeline.output.media import probe_video
    from kling_pipeline.simulator.video import ClipSpec, frame_size, render_clip

PROMPT = ("A red fox trots through a snowy birch forest at dawn, breath steaming, "
          "the camera tracking low beside it; soft golden light, shallow depth of field.")


def _image() -> bytes:
    """A 1280x720 PNG with some detail, like a storyboard's first frame."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((1280, 720)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(0, 1280, 80):
        draw.ellipse((i, 200 + i % 240, i + 120, 320 + i % 240), fill=(200, 80 + i % 150, 60))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _median_cpu(work: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median process CPU seconds and wall seconds of `work()` over `runs` runs."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        work()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    """Print one line per case: CPU and wall seconds per second of video, file size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median is shown)")
    args = parser.parse_args()

    import av
    import PIL

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"nproc={os.cpu_count()}, python {platform.python_version()}, "
          f"PyAV {av.__version__}, Pillow {PIL.__version__}")
    print(f"median of {args.runs} runs; CPU = time.process_time (all threads, incl. x264's)")
    print(f"{'clip':<12}{'secs':>5}{'sound':>7}{'size':>10}{'cpu s/s':>10}{'wall s/s':>10}"
          f"{'KB':>7}{'probe cpu s/s':>15}")
    image = _image()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("title card", "image"):
            for seconds in (5.0, 10.0):
                for sound in (False, True):
                    spec = ClipSpec(segments=((PROMPT, seconds),), sound=sound,
                                    image=image if kind == "image" else None,
                                    end_image=image if kind == "image" else None)
                    data = render_clip(spec)  # warm-up, and the file for the probe
                    cpu, wall = _median_cpu(partial(render_clip, spec), args.runs)
                    path = Path(tmp) / "clip.mp4"
                    path.write_bytes(data)
                    probe_cpu, _ = _median_cpu(partial(probe_video, path), args.runs)
                    width, height = frame_size(spec)
                    print(f"{kind:<12}{seconds:>5.0f}{'on' if sound else 'off':>7}"
                          f"{f'{width}x{height}':>10}{cpu / seconds:>10.4f}{wall / seconds:>10.4f}"
                          f"{len(data) / 1024:>7.0f}{probe_cpu / seconds:>15.4f}")


if __name__ == "__main__":
    main()
