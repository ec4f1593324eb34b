"""Benchmark `pull` from a real S3 protocol server against a bare s3fs `get` (issue 12).

The issue's targets: a pull of 200 videos of 2 MB from the moto server takes at most 1.3x a
bare s3fs `get` of the same objects at the same concurrency, measured in one run; a no-op pull
of 1,000 shots makes at most 5 requests to the remote.

The server is moto's S3 server in this process, on 127.0.0.1 only, with fake credentials
(tests/support/s3_server.py, which also counts the requests it gets). Nothing leaves the
machine.

Fixture: a project of N shots (bench_apply's storyboard: 3 s, 16:9), each done in the lock file
with a video of its own in the store: N distinct H.264 clips (1280x720, 24 fps, testsrc2 with
moving noise as bench_finalcut makes them, bit rate set for about `--megabytes` MB each), so
that whatever pull does after the download (thumbnails, the final cut by stream copy, the page)
works on real videos of that size. One `kling-pipeline push` puts them on the server.

Then, as child processes, wall clock, in one run, in rotating order, each after an untimed
os.sync() (no child pays for writing back another's files), median of `--runs`:
  floor     python -c: s3fs.S3FileSystem(...).get(the N object paths, N local files,
            batch_size=J): the same objects, J at a time, into an empty folder (no listing)
  pull      kling-pipeline pull -j J, into a fresh clone (the storyboard and the lock file
            only): start-up, imports, run lock, one listing, N downloads each hashed and moved
            into the store, then the output folder (links, N thumbnails, final.mp4, page)
  transfer  python -c in a fresh clone too, calling the very function `pull` calls for the
            transfer (kling_pipeline.remote.transfer.pull): the pull without the run lock,
            the folder check and the output folder
Each runs once untimed first. The headline ratio is pull / floor: what a person waits for.
The children get a bytecode cache in the work folder (PYTHONPYCACHEPREFIX), as an installed
package has, unless --no-bytecode-cache (see bench_startup.py).

With `--link MB_PER_S`, the floor and the pull run again (in alternating order, median of
`--runs`) with every answer's body sent through one shared wire of that speed: a real
remote's case, where the downloads wait on the network rather than on these two cores.

No-op: a project of M shots (default 1,000), each with a small clip of its own (M distinct
objects), pushed once; then `push` (every video already there) and `pull` twice (every video
in the store; the first makes the output folder, the second finds it made), each a child
process whose requests to the server are counted.

Usage:
  .venv/bin/python bench/bench_pull.py [--videos 200] [--megabytes 2] [--jobs 8] [--runs 5]
                                       [--noop-shots 1000] [--skip transfer|noop] [--keep DIR]
                                       [--link MB_PER_S] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
from bench_apply import DURATION, write_board
from bench_finalcut import _pull_all, _source
from bench_startup import ENV, child_env, run

if TYPE_CHECKING:
    from support.s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent
FPS = 24
SIZE = (1280, 720)
TARGET_RATIO = 1.3
TARGET_NOOP_REQUESTS = 5

FLOOR = r"""
import json, os, sys
import s3fs
endpoint, listing, dest, jobs = sys.argv[1:5]
remote = json.loads(open(listing).read())
local = [os.path.join(dest, path.rsplit("/", 1)[1]) for path in remote]
fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
fs.get(remote, local, batch_size=int(jobs))
assert sorted(os.listdir(dest)) == sorted(path.rsplit("/", 1)[1] for path in local)
"""

TRANSFER = r"""
import sys
from kling_pipeline import Project
from kling_pipeline.events import ignore
from kling_pipeline.remote.store import RemoteStore
from kling_pipeline.remote.transfer import pull
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import read_lock
board, url, endpoint, jobs, expected = sys.argv[1:6]
project = Project.open(board)
spec = project.remote(url, endpoint)
target = project.target
lock = read_lock(target.lock_path, project.name)
store = Store(target.store_root)
try:
    report = pull(lambda: RemoteStore(spec), store, lock, jobs=int(jobs), on_event=ignore)
finally:
    store.close()
assert report.ok and len(report.downloaded) == int(expected), report
"""


def make_clip(path: Path, size: tuple[int, int], seconds: float, fps: int, seed: int,
              bit_rate: int) -> None:
    """A real H.264 MP4 that costs bits like footage (bench_finalcut's source), one of its
    own per seed."""
    width, height = size
    video = _source(f"testsrc2 size={width}x{height}:rate={fps}:duration={seconds} | "
                    f"hue h={seed * 37 % 360} | noise alls=12:allf=t+u:all_seed={seed + 1} | "
                    "format yuv420p | buffersink")
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bit_rate
        for index, frame in enumerate(_pull_all(video)):
            frame.pts, frame.time_base = index, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def fill_store_and_lock(board: Path, clip: Callable[[Path, int], None]) -> list[int]:
    """Every shot done, each with a video of its own (`clip(path, n)` makes the n-th) in the
    store, as a finished apply leaves them; the videos' sizes."""
    from kling_pipeline import Project
    from kling_pipeline.key import KEY_SCHEME
    from kling_pipeline.state.cache import CachedResult, Store
    from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, write_lock

    project = Project.open(board)
    shots, target = project.validate().shots, project.target
    store = Store(target.store_root)
    sizes = []
    lock = LockFile(project.name)
    try:
        for number, shot in enumerate(shots):
            temp = store.temp_file()
            clip(temp, number)
            data = temp.read_bytes()
            output = Output(hashlib.sha256(data).hexdigest(), len(data), float(shot.duration))
            store.ingest(temp, output.sha256)
            sizes.append(len(data))
            task = f"task-{shot.id}"
            store.record(shot.key, CachedResult(output, task, shot.endpoint))
            lock.shots[shot.id] = LockEntry(
                key=shot.key, key_scheme=KEY_SCHEME, endpoint=shot.endpoint, request=shot.body,
                status="done", take=shot.take, task_id=task,
                submitted_at="2026-11-22T00:00:00Z", updated_at="2026-11-22T00:01:00Z",
                finished_at="2026-11-22T00:01:00Z", output=output)
    finally:
        store.close()
    write_lock(target.lock_path, lock)
    return sizes


def object_paths(board: Path, url: str) -> list[str]:
    """The remote paths of the videos the lock file references (docs/remote.md's layout)."""
    from kling_pipeline import Project
    from kling_pipeline.state.lockfile import read_lock

    project = Project.open(board)
    lock = read_lock(project.target.lock_path, project.name)
    shas = sorted({e.output.sha256 for e in lock.shots.values() if e.output is not None})
    return [f"{url.removeprefix('s3://')}/objects/{sha[:2]}/{sha}.mp4" for sha in shas]


def clone(board: Path, folder: Path) -> Path:
    """A fresh clone: the storyboard and the lock file only (what git holds)."""
    folder.mkdir(parents=True)
    for name in (board.name, board.with_suffix(".lock.json").name):
        shutil.copyfile(board.with_name(name), folder / name)
    return folder / board.name


def tool(command: str, board: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kling_pipeline", command, str(board), *args]


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto on 127.0.0.1 with fake credentials, counting requests (the tests' own server)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.s3_server import running_s3_server

    with running_s3_server() as server:
        yield server


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_transfer(s3: S3Server, work: Path, args: argparse.Namespace) -> None:
    from support.s3_server import BUCKET

    a = work / "a"
    a.mkdir()
    board = write_board(a, args.videos)
    bit_rate = int(args.megabytes * 1_000_000 * 8 / DURATION)
    start = time.perf_counter()
    sizes = fill_store_and_lock(board, lambda path, n: make_clip(
        path, SIZE, DURATION, FPS, n, bit_rate))
    print(f"\nfixture: {len(sizes)} distinct videos of {DURATION} s, {SIZE[0]}x{SIZE[1]} at "
          f"{FPS} fps, {statistics.mean(sizes) / 1e6:.2f} MB on average "
          f"({min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f}), {sum(sizes) / 1e6:.0f} MB in all; "
          f"encoded in {time.perf_counter() - start:.0f} s")
    url = f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:8]}"
    remote = ["--remote", url, "--remote-endpoint-url", s3.endpoint, "-j", str(args.jobs)]
    first = s3.count()
    wall = run(tool("push", board, *remote), a)
    print(f"push of {len(sizes)} videos: {wall:.1f} s, {len(s3.since(first))} requests")
    listing = work / "objects.json"
    listing.write_text(json.dumps(object_paths(board, url)))

    scratch = work / "runs"

    def fresh(name: str) -> Path:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        os.sync()  # untimed: no child pays for writing back another's files
        return scratch / name

    def floor() -> list[str]:
        dest = fresh("floor")
        dest.mkdir()
        return [sys.executable, "-c", FLOOR, s3.endpoint, str(listing), str(dest),
                str(args.jobs)]

    def pull() -> list[str]:
        return tool("pull", clone(board, fresh("clone")), *remote)

    def transfer() -> list[str]:
        return [sys.executable, "-c", TRANSFER, str(clone(board, fresh("clone"))), url,
                s3.endpoint, str(args.jobs), str(len(sizes))]

    children = {"floor": floor, "pull": pull, "transfer": transfer}
    samples: dict[str, list[float]] = {name: [] for name in children}
    requests: dict[str, set[int]] = {name: set() for name in children}
    for argv in children.values():  # warm-up: bytecode written, the server's first GETs
        run(argv(), work)
    for number in range(args.runs):
        names = list(children)
        names = names[number % 3:] + names[:number % 3]
        for name in names:
            argv = children[name]()
            first = s3.count()
            samples[name].append(run(argv, work))
            requests[name].add(len(s3.since(first)))
        print(f"run {number + 1}: " + ", ".join(
            f"{name} {samples[name][-1]:.2f} s" for name in children))
    report_transfer(medians(samples), samples, requests, len(sizes), args)
    if args.link:
        bench_link(s3, work, {"floor": floor, "pull": pull}, args)
    shutil.rmtree(scratch, ignore_errors=True)


def bench_link(s3: S3Server, work: Path, children: dict[str, Callable[[], list[str]]],
               args: argparse.Namespace) -> None:
    """The floor and the pull again, every answer's body through one wire of `--link` MB/s
    (tests/support/s3_server.Link): a real remote's case, where the downloads wait on the
    network and the pull's other work can go on meanwhile."""
    from support.s3_server import Link

    s3.link = Link(args.link * 1e6)
    try:
        samples: dict[str, list[float]] = {name: [] for name in children}
        for number in range(args.runs):
            names = list(children)
            names = names[number % 2:] + names[:number % 2]
            for name in names:
                samples[name].append(run(children[name](), work))
            print(f"link run {number + 1}: " + ", ".join(
                f"{name} {samples[name][-1]:.2f} s" for name in children))
    finally:
        s3.link = None
    median = medians(samples)
    print(f"\nover a {args.link:g} MB/s link, median of {args.runs} runs (range)")
    for name in samples:
        print(f"  {name:<9} {median[name]:>9.2f} {median[name] / median['floor']:>8.2f}  "
              f"{min(samples[name]):.2f}-{max(samples[name]):.2f}")
    print(f"pull / floor over the link = {median['pull'] / median['floor']:.2f}")


def report_transfer(median: dict[str, float], samples: dict[str, list[float]],
                    requests: dict[str, set[int]], videos: int,
                    args: argparse.Namespace) -> None:
    floor = median["floor"]
    print(f"\n{videos} videos of about {args.megabytes:g} MB, -j {args.jobs}, median of "
          f"{args.runs} runs (range)")
    print(f"  {'child':<9} {'median s':>9} {'x floor':>8}  {'range s':<13} requests")
    for name in samples:
        low, high = min(samples[name]), max(samples[name])
        print(f"  {name:<9} {median[name]:>9.2f} {median[name] / floor:>8.2f}  "
              f"{low:.2f}-{high:.2f}{'':<3} {'/'.join(map(str, sorted(requests[name])))}")
    ratio = median["pull"] / floor
    print(f"pull / floor = {ratio:.2f} (target <= {TARGET_RATIO}x: "
          f"{'met' if ratio <= TARGET_RATIO else 'missed'}); transfer part / floor = "
          f"{median['transfer'] / floor:.2f}; pull beyond its transfer part "
          f"(run lock, folder check, output folder): {median['pull'] - median['transfer']:.2f} s")


def bench_noop(s3: S3Server, work: Path, args: argparse.Namespace) -> None:
    from support.s3_server import BUCKET

    folder = work / "noop"
    folder.mkdir()
    board = write_board(folder, args.noop_shots)
    start = time.perf_counter()
    sizes = fill_store_and_lock(board, lambda path, n: make_clip(
        path, (128, 72), 1, 6, n, 50_000))
    print(f"\nno-op fixture: {len(sizes)} shots, each with a small clip of its own "
          f"({statistics.mean(sizes) / 1e3:.1f} kB on average), made in "
          f"{time.perf_counter() - start:.0f} s")
    url = f"s3://{BUCKET}/noop-{uuid.uuid4().hex[:8]}"
    remote = ["--remote", url, "--remote-endpoint-url", s3.endpoint, "-j", str(args.jobs)]
    first = s3.count()
    wall = run(tool("push", board, *remote), folder)
    print(f"first push: {wall:.1f} s, {len(s3.since(first))} requests")
    steps = [("push, every video already there", "push"),
             ("pull, every video in the store (makes the output folder)", "pull"),
             ("pull again (the output folder made)", "pull")]
    print(f"\nno-op at {len(sizes)} shots: requests to the remote "
          f"(target for pull <= {TARGET_NOOP_REQUESTS})")
    for label, command in steps:
        first = s3.count()
        wall = run(tool(command, board, *remote), folder)
        got = s3.since(first)
        kinds = sorted({request.split("?")[0] + ("?list" if "list-type" in request else "")
                        for request in got})
        print(f"  {label:<58} {len(got):>3} requests in {wall:.2f} s"
              + (f"  ({', '.join(kinds)})" if got else ""))


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("s3fs", "moto", "botocore"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--megabytes", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=8, help="pull -j and the floor's batch_size")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--noop-shots", type=int, default=1000)
    parser.add_argument("--skip", choices=("transfer", "noop"), help="leave one part out")
    parser.add_argument("--link", type=float, metavar="MB_PER_S",
                        help="then the floor and the pull again over a wire of this speed")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="let the children compile from source if the shell says so")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kp-pull-"))
    work.mkdir(parents=True, exist_ok=args.keep is None)
    pycache = None if args.no_bytecode_cache else work / "pycache"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()} ({platform.platform()}), {versions()}, "
          f"load average {os.getloadavg()[0]:.2f} at start; "
          f"bytecode {'cached' if pycache else 'as the shell says'}")
    try:
        with s3_server() as s3:
            print(f"moto's S3 server at {s3.endpoint} (in this process)")
            ENV.update(child_env(pycache))  # after the server set the fake credentials
            if args.skip != "transfer":
                bench_transfer(s3, work, args)
            if args.skip != "noop":
                bench_noop(s3, work, args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
