"""Benchmark the final cut (the issue's target: with stream copy, joining 50 shots of 5 s each
takes at most 2x the time of copying their bytes).

    .venv/bin/python bench/bench_finalcut.py [--shots 50] [--seconds 5] [--size WxH] [--runs 5]
    .venv/bin/python bench/bench_finalcut.py --audio   # clips with an AAC track (audio re-encoded)
    .venv/bin/python bench/bench_finalcut.py --mixed --runs 1   # one clip of another size

Inputs are made once in a temp folder: a few distinct clips (testsrc2 with moving noise, so they
cost bits like footage: libx264 ultrafast at ~9 Mbit/s, 24 fps, like a 1080p Kling download),
copied round-robin to make the shots; one encoder setting, so stream copy applies. Then, in one run
and from the page cache (every input is read once first), each repetition times (a) shutil.copyfile
of every shot to a fresh folder and (b) build_final_cut of the same shots, each after an untimed
os.sync() so that neither pays for writing back the other's output. No network.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

try:
    from kling_pipeline.output.finalcut import FinalCut, build_final_cut
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kling_pipeline.output.finalcut import FinalCut, build_final_cut

FPS = 24
BIT_RATE = 9_000_000
DISTINCT = 4


def _pull_all(graph: av.filter.Graph) -> list[av.VideoFrame | av.AudioFrame]:
    frames = []
    while True:
        try:
            frames.append(graph.pull())
        except (av.BlockingIOError, av.EOFError):
            return frames


def _source(description: str) -> av.filter.Graph:
    """A filter graph made of a lavfi source chain ending in a sink."""
    graph = av.filter.Graph()
    *chain, sink = description.split(" | ")
    nodes = [graph.add(*part.split(" ", 1)) for part in chain]
    nodes.append(graph.add(sink))
    graph.link_nodes(*nodes).configure()
    return graph


def make_clip(path: Path, size: tuple[int, int], seconds: float, seed: int, audio: bool) -> None:
    """An H.264 clip (and an AAC tone when `audio`) that costs bits like real footage."""
    width, height = size
    video = _source(f"testsrc2 size={width}x{height}:rate={FPS}:duration={seconds} | "
                    f"hue h={seed * 70} | noise alls=12:allf=t+u:all_seed={seed + 1} | "
                    "format yuv420p | buffersink")
    tone = _pull_all(_source(f"sine frequency={330 + 110 * seed}:sample_rate=48000:"
                             f"duration={seconds} | aformat channel_layouts=stereo | abuffersink"
                             )) if audio else []
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = BIT_RATE
        sound = out.add_stream("aac", rate=48_000, layout="stereo") if audio else None
        for index, frame in enumerate(_pull_all(video)):
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame))
            while sound is not None and tone and tone[0].time < (index + 1) / FPS:
                out.mux(sound.encode(tone.pop(0)))  # interleaved, as a real clip is
        out.mux(stream.encode(None))
        if sound is not None:
            for frame in [*tone, None]:
                out.mux(sound.encode(frame))


def make_inputs(folder: Path, args: argparse.Namespace) -> list[Path]:
    """The shots: DISTINCT clips copied round-robin; with --mixed, the middle one is portrait."""
    size = tuple(int(part) for part in args.size.split("x"))
    assert len(size) == 2
    distinct = []
    for seed in range(min(DISTINCT, args.shots)):
        path = folder / f"distinct{seed}.mp4"
        make_clip(path, (size[0], size[1]), args.seconds, seed, args.audio)
        distinct.append(path)
    shots = folder / "shots"
    shots.mkdir()
    inputs = []
    for index in range(args.shots):
        path = shots / f"shot{index:03d}.mp4"
        if args.mixed and index == args.shots // 2:
            make_clip(path, (size[1], size[0]), args.seconds, 9, args.audio)
        else:
            shutil.copyfile(distinct[index % len(distinct)], path)
        inputs.append(path)
    return inputs


def copy_bytes(inputs: list[Path], folder: Path) -> float:
    """Seconds to copy every shot's bytes into `folder` (new)."""
    folder.mkdir()
    start = time.perf_counter()
    for path in inputs:
        shutil.copyfile(path, folder / path.name)
    return time.perf_counter() - start


def final_cut(inputs: list[Path], dest: Path) -> tuple[float, FinalCut]:
    start = time.perf_counter()
    cut = build_final_cut(inputs, dest)
    return time.perf_counter() - start, cut


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({model}), Python "
            f"{platform.python_version()}, PyAV {av.__version__} (FFmpeg "
            f"{av.ffmpeg_version_info})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="1920x1080", help="WxH of the shots")
    parser.add_argument("--runs", type=int, default=5)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--audio", action="store_true", help="shots with an AAC track")
    variant.add_argument("--mixed", action="store_true", help="one shot of another size")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-finalcut-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        inputs = make_inputs(folder, args)
        total = sum(path.stat().st_size for path in inputs)
        print(f"inputs: {args.shots} shots of {args.seconds:g} s at {args.size}, {FPS} fps, "
              f"{total / 2**20:.1f} MiB ({total * 8 / args.shots / args.seconds / 1e6:.1f} "
              f"Mbit/s), made in {time.perf_counter() - start:.1f} s")
        for path in inputs:  # warm-up: both sides read from the page cache
            path.read_bytes()
        copies, cuts = [], []
        for run in range(args.runs):
            os.sync()  # neither side pays for writing back the other's dirty pages
            copies.append(copy_bytes(inputs, folder / f"copy{run}"))
            os.sync()
            seconds, cut = final_cut(inputs, folder / "final.mp4")
            cuts.append(seconds)
            size = (folder / "final.mp4").stat().st_size
            print(f"run {run + 1}: copy {copies[-1]:.3f} s, final cut {seconds:.3f} s "
                  f"({seconds / copies[-1]:.2f}x; stream copy {cut.stream_copy}, "
                  f"{cut.duration:.1f} s of video, {size / 2**20:.1f} MiB)")
            shutil.rmtree(folder / f"copy{run}")
            (folder / "final.mp4").unlink()
        copy_median, cut_median = statistics.median(copies), statistics.median(cuts)
        print(f"median of {args.runs}: copy {copy_median:.3f} s ({total / copy_median / 2**20:.0f}"
              f" MiB/s), final cut {cut_median:.3f} s")
        if args.mixed:
            print(f"re-encode: {cut.duration / cut_median:.2f} s of cut per second of wall time "
                  f"({cut.shape.width}x{cut.shape.height} at {cut.shape.fps} fps)")
        elif args.audio:
            print(f"ratio {cut_median / copy_median:.2f}x (information: video copied, "
                  "audio re-encoded)")
        else:
            ratio = cut_median / copy_median
            print(f"ratio {ratio:.2f}x: {'meets' if ratio <= 2 else 'MISSES'} the target <= 2x")


if __name__ == "__main__":
    main()
