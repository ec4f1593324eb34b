"""Benchmark: whole processes (start-up and imports included) against a process that only parses.

What a person waits for is the process, not the function: interpreter start-up, imports, building
the models, then the work. For storyboards of N shots (bench_plan's generator) this times, as child
processes, wall clock, in one run:
  floor     python -c "yaml.load(open(file), Loader=yaml.CSafeLoader)"  (PyYAML's C loader)
  plan      kling-pipeline plan --simulate    (every shot done in the lock, its video in the store)
  validate  kling-pipeline validate --simulate
  status    kling-pipeline status --simulate
  apply     kling-pipeline apply --simulate --yes
            (all done, the output folder made by an earlier apply)
and prints each command's median, its ratio to the floor, and for apply also its ratio to plan.

The fixture is built the way a real project gets there, without rendering N distinct videos:
one small clip rendered by the simulator's own encoder is put into the store
(kling_pipeline.state.cache.Store) and recorded under every shot's key, the simulated lock says
every shot is done with that video, and one real `apply --simulate --yes` fills the output folder
(links, thumbnails, final cut, page), so the timed applies have nothing to do. The memos
(.kling-cache/) are warm after that run, as after any earlier run. Each command runs once
untimed before the timed runs.

Bytecode: an installed package has its .pyc files, but a shell with PYTHONDONTWRITEBYTECODE=1
(as some sandboxes and CI images set) compiles every module from source in every process, which
adds ~0.1 s to each command here. The children get a bytecode cache in a temporary folder
(PYTHONPYCACHEPREFIX, so the working tree stays clean) unless --no-bytecode-cache is given.

The first apply of 10,000 shots makes 10,000 thumbnails and a final cut (minutes):
`--fixtures DIR` keeps the fixtures there and reuses them on the next run (before/after).
Usage:
  python bench/bench_startup.py [--shots 1000 10000] [--runs 5] [--fixtures DIR]
                                [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_plan import make_storyboard

FLOOR = "import yaml,sys; yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader)"
COMMANDS: dict[str, list[str]] = {
    "plan": ["plan", "--simulate"],
    "validate": ["validate", "--simulate"],
    "status": ["status", "--simulate"],
    "apply": ["apply", "--simulate", "--yes"],
}
TARGETS = {  # (ratio to the floor at 1,000 shots, at 10,000 shots) from issue 10
    "plan": (3.0, 2.0), "validate": (3.0, 2.0), "status": (3.0, None), "apply": (None, None),
}
CLIP_SECONDS = 1.0


def small_clip() -> bytes:
    """One second of a title card from the simulator's encoder: a real, playable MP4."""
    from kling_pipeline.simulator.video import ClipSpec, render_clip

    return render_clip(ClipSpec(segments=(("bench", CLIP_SECONDS),), aspect_ratio="16:9",
                                fps=6, long_side=96))


def fill_store_and_lock(board: Path) -> None:
    """Every shot done, with its video in the simulated store, as a finished apply leaves them."""
    from kling_pipeline.state.cache import CachedResult, Store
    from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, write_lock
    from kling_pipeline.storyboard.load import load_storyboard
    from kling_pipeline.target import target_for

    loaded = load_storyboard(board, use_cache=False)
    target = target_for(board, loaded.board, simulate=True)
    clip = small_clip()
    output = Output(hashlib.sha256(clip).hexdigest(), len(clip), CLIP_SECONDS)
    store = Store(target.store_root)
    try:
        temp = store.temp_file()
        temp.write_bytes(clip)
        store.ingest(temp, output.sha256)
        lock = LockFile(loaded.board.name)
        for shot in loaded.shots:
            task = f"task-{shot.id}"
            store.record(shot.key, CachedResult(output, task, shot.endpoint))
            lock.shots[shot.id] = LockEntry(
                key=shot.key, key_scheme=1, endpoint=shot.endpoint, request=shot.body,
                status="done", take=shot.take, task_id=task,
                submitted_at="2026-11-22T00:00:00Z", updated_at="2026-11-22T00:01:00Z",
                finished_at="2026-11-22T00:01:00Z", output=output)
    finally:
        store.close()
    write_lock(target.lock_path, lock)


def child_env(pycache: Path | None) -> dict[str, str]:
    """The children's environment: no colour, and bytecode cached in `pycache` if given."""
    env = {**os.environ, "NO_COLOR": "1"}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


ENV: dict[str, str] = {}


def run(argv: list[str], cwd: Path) -> float:
    """Wall seconds of one child process; its failure stops the bench (a broken fixture)."""
    env = ENV or child_env(None)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n"
                         f"{done.stderr.decode()[-3000:]}")
    return wall


def tool(board: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kling_pipeline", args[0], str(board), *args[1:]]


def prepare(folder: Path, shots: int) -> tuple[Path, float]:
    """The fixture (reused when `folder` holds a finished one); the seconds the first,
    folder-making apply took (0 when reused)."""
    board = folder / "bench.yaml"
    done = folder / "fixture-done"
    if done.is_file():
        return board, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    board = make_storyboard(folder, shots)
    fill_store_and_lock(board)
    first = run(tool(board, *COMMANDS["apply"]), folder)
    done.write_text(f"{first}\n")
    return board, first


def measure(shots: int, runs: int, fixtures: Path | None) -> tuple[dict[str, float], float]:
    """Median seconds per command and the floor (interleaved, so drift hits them alike)."""
    folder = fixtures / str(shots) if fixtures else Path(tempfile.mkdtemp(prefix="kp-startup-"))
    try:
        board, first = prepare(folder, shots)
        floor = [sys.executable, "-c", FLOOR, str(board)]
        for argv in (floor, *(tool(board, *args) for args in COMMANDS.values())):
            run(argv, folder)  # warm-up: bytecode written, memos and folder as a rerun finds them
        samples: dict[str, list[float]] = {"floor": [], **{name: [] for name in COMMANDS}}
        for _ in range(runs):
            samples["floor"].append(run(floor, folder))
            for name, args in COMMANDS.items():
                samples[name].append(run(tool(board, *args), folder))
        return {name: statistics.median(values) for name, values in samples.items()}, first
    finally:
        if fixtures is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(shots: int, medians: dict[str, float], first: float) -> None:
    floor = medians["floor"]
    made = f"first apply, making the folder: {first:.1f} s" if first else "fixture reused"
    print(f"\n{shots} shots ({made})")
    print(f"  {'command':<9} {'median s':>9} {'x floor':>8} {'target':>7}")
    print(f"  {'floor':<9} {floor:>9.3f} {1:>8.2f}")
    for name in COMMANDS:
        limit = TARGETS[name][0 if shots <= 1000 else 1]
        extra = f"  {medians[name] / medians['plan']:.2f}x plan (target <= 1.5x at 10,000)" \
            if name == "apply" else ""
        print(f"  {name:<9} {medians[name]:>9.3f} {medians[name] / floor:>8.2f} "
              f"{f'<= {limit:g}x' if limit else '':>7}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fixtures", type=Path, help="keep (and reuse) the fixtures here")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="let the children compile from source if the shell says so")
    args = parser.parse_args()
    pycache = None if args.no_bytecode_cache else Path(tempfile.mkdtemp(prefix="kp-pycache-"))
    ENV.update(child_env(pycache))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()} ({platform.platform()}), PyYAML {yaml.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start; median of {args.runs} runs; "
          f"bytecode {'cached' if pycache else 'as the shell says'}")
    try:
        for count in args.shots:
            medians, first = measure(count, args.runs, args.fixtures)
            report(count, medians, first)
    finally:
        if pycache is not None:
            shutil.rmtree(pycache, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
