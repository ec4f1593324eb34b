"""Benchmark: `plan` with nothing to do versus merely parsing the storyboard with PyYAML's C loader.

Generates a storyboard of N shots (templated prompts, snippets, vars, a few local images and a
foreach entry) and a lock file in which every shot is done, then times in one process:
  parse  yaml.load(text, CSafeLoader)
  plan   load_storyboard + read_lock + make_plan + render_text (what `plan` does), warm memos
  cold   the same with no memos (first run after a clone, or after editing every shot)
and prints medians of several runs and the ratio plan/parse. Usage:
  python bench/bench_plan.py [--shots 1000 10000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from kling_pipeline.plan.planner import make_plan
from kling_pipeline.plan.pricing import PriceTable
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, read_lock, write_lock
from kling_pipeline.storyboard.load import load_storyboard, lock_path_for
from kling_pipeline.storyboard.templating import _compile
from kling_pipeline.views.plan import render_text

PLACES = ["a neon market", "a foggy pier", "a desert road", "a snowy forest", "a rooftop garden"]


def make_storyboard(folder: Path, shots: int) -> Path:
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (640, 360), (40 * i, 80, 120)).save(folder / f"frame{i}.png")
    lines = [
        "version: 1", "name: bench",
        "vars: {subject: a courier on a bicycle, grade: teal and amber}",
        "snippets:", '  look: "cinematic, {{ grade }} grade, 35mm"',
        "defaults:", "  model: kling-v3.0-pro-t2v", "  duration: 5",
        '  negative_prompt: "blurry, watermark"', "shots:",
    ]
    for i in range(shots - 4):
        place = PLACES[i % len(PLACES)]
        if i % 10 == 0:
            lines += [f"  - id: shot-{i:05d}", "    model: kling-v3.0-pro-i2v",
                      f"    image: frame{i % 5}.png",
                      f'    prompt: "Shot {i}: {{{{ subject | capitalize }}}} rides through '
                      f'{place}, {{{{ snippets.look }}}}"']
        else:
            lines += [f"  - id: shot-{i:05d}",
                      f'    prompt: "Shot {i}: {{{{ subject }}}} rides through {place}, '
                      f'{{{{ snippets.look }}}}"',
                      f"    duration: {3 + i % 12}"]
    lines += ['  - id: "wave-{{ item }}"', "    foreach: [1, 2, 3, 4]",
              '    prompt: "Wave {{ item }} breaks, {{ snippets.look }}"']
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_lock(path: Path) -> None:
    loaded = load_storyboard(path, use_cache=False)
    lock = LockFile(loaded.board.name)
    for shot in loaded.shots:
        lock.shots[shot.id] = LockEntry(
            key=shot.key, key_scheme=1, endpoint=shot.endpoint, request=shot.body,
            status="done", take=shot.take, task_id=f"task-{shot.id}",
            submitted_at="2026-11-22T00:00:00Z", updated_at="2026-11-22T00:01:00Z",
            finished_at="2026-11-22T00:01:00Z",
            output=Output("0" * 64, 1234567, float(shot.duration)))
    write_lock(lock_path_for(path), lock)


def plan_once(path: Path, use_cache: bool) -> int:
    if not use_cache:
        _compile.cache_clear()  # a new process: nothing compiled yet
    loaded = load_storyboard(path, use_cache=use_cache)
    lock = read_lock(lock_path_for(path), loaded.board.name)
    prices = PriceTable(loaded.board.provider.prices)
    plan = make_plan(loaded.board.name, loaded.shots, lock, prices)
    render_text(plan)
    assert not plan.has_work and plan.count("noop") == len(loaded.shots), "plan is not a no-op"
    return len(loaded.shots)


def timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(count: int, runs: int) -> tuple[float, float, float]:
    """Median seconds of (parse, warm plan, cold plan) for a storyboard of `count` shots."""
    folder = Path(tempfile.mkdtemp(prefix="kp-bench-"))
    try:
        path = make_storyboard(folder, count)
        make_lock(path)
        text = path.read_bytes()
        parse = timed(lambda: yaml.load(text, Loader=yaml.CSafeLoader), runs)
        cold = timed(lambda: plan_once(path, use_cache=False), max(3, runs // 2))
        plan_once(path, use_cache=True)  # warm the memos, as any earlier run would have
        warm = timed(lambda: plan_once(path, use_cache=True), runs)
        return parse, warm, cold
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shots", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()}, PyYAML {yaml.__version__} "
          f"(C loader: {hasattr(yaml, 'CSafeLoader')})")
    print(f"{'shots':>7} {'parse ms':>9} {'plan ms':>9} {'ratio':>6} {'cold ms':>9} "
          f"{'cold ratio':>10}")
    for count in args.shots:
        parse, warm, cold = measure(count, args.runs)
        print(f"{count:>7} {parse * 1e3:>9.1f} {warm * 1e3:>9.1f} {warm / parse:>6.2f} "
              f"{cold * 1e3:>9.1f} {cold / parse:>10.2f}")


if __name__ == "__main__":
    main()
