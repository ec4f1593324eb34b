"""Benchmark `apply` against the simulator (issue 4's speed targets).

    .venv/bin/python bench/bench_apply.py wall [--shots 200] [--jobs 20] [--latency 6] [--runs 3]
                                               [--eta-rounding up|down] [--renders each|one]
    .venv/bin/python bench/bench_apply.py memory [--shots 1000] [--jobs 20]
    .venv/bin/python bench/bench_apply.py download [--megabytes 200]

`wall`: shots whose generation takes a fixed L seconds (queue_delay 0, time_scale L / duration),
`apply --jobs N` as a child process; prints wall time against the ideal ceil(shots/jobs) x L
measured in the same run, polls per shot (from the simulator's counters) and the client's CPU
per shot (from wait4's rusage of the apply process alone; the simulator is another process).
`memory`: peak RSS of an apply of many shots. `download`: how much a streamed download of a
big file raises the client's peak RSS (a throwaway server in another process serves it).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from bench_simulator import server_process

DURATION = 3  # seconds of video per shot


@contextmanager
def simulator(*options: str) -> Iterator[str]:
    with server_process(*options) as (base_url, _pid):
        yield base_url


def write_board(folder: Path, shots: int, one_render: bool = False) -> Path:
    """N shots; `one_render`: the same prompt in N takes (N keys, N tasks, N downloads, but
    one body, which the simulator renders once), so that the simulator's encoder, which shares
    the two cores, is not what is measured."""
    lines = ["version: 1", "name: bench", "provider: {requests_per_minute: 6000}",
             f"defaults: {{model: kling-v3.0-pro-t2v, duration: {DURATION}, "
             'aspect_ratio: "16:9"}', "shots:"]
    lines += [f'  - {{id: s{i:04d}, prompt: "Benchmark shot", take: {i + 1}}}' if one_render
              else f'  - {{id: s{i:04d}, prompt: "Benchmark shot number {i}"}}'
              for i in range(shots)]
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_apply(board: Path, base_url: str, jobs: int) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, peak RSS KiB, exit code) of one apply child process."""
    command = [sys.executable, "-m", "kling_pipeline", "apply", str(board), "--base-url",
               base_url, "--yes", "--jobs", str(jobs), "--no-cache"]
    env = {**os.environ, "NOVITA_API_KEY": "bench", "NO_COLOR": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        assert child.stderr is not None
        print(child.stderr.read().decode()[-2000:], file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code


def startup_seconds() -> float:
    """Wall time of `kling-pipeline --version`: the interpreter and import cost of any run."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kling_pipeline", "--version"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_wall(args: argparse.Namespace) -> None:
    ideal = math.ceil(args.shots / args.jobs) * args.latency
    results = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as folder, simulator(
                "--time-scale", str(args.latency / DURATION), "--queue-delay", "0",
                "--eta-rounding", args.eta_rounding) as url:
            board = write_board(Path(folder), args.shots, args.renders == "one")
            wall, cpu, _, code = run_apply(board, url, args.jobs)
            stats = httpx.get(f"{url}/_simulator/stats").json()
            polls = stats["requests"].get("GET /v3/async/task-result", 0) / args.shots
            twice = stats["submissions_total"] - args.shots  # every shot is one request
            results.append((wall, cpu, polls))
            print(f"run {run + 1}: {wall:.1f} s wall ({wall / ideal:.3f}x ideal {ideal:g} s), "
                  f"{polls:.2f} polls/shot, {1000 * cpu / args.shots:.1f} ms CPU/shot, "
                  f"exit {code}, submissions beyond one per shot: {twice}")
    walls = [r[0] for r in results]
    start = startup_seconds()
    print(f"median: {statistics.median(walls):.1f} s = "
          f"{statistics.median(walls) / ideal:.3f}x ideal ({ideal:g} s = "
          f"ceil({args.shots}/{args.jobs}) x {args.latency:g} s); target <= 1.10x; "
          f"polls/shot {statistics.median(r[2] for r in results):.2f}; "
          f"CPU/shot {1000 * statistics.median(r[1] for r in results) / args.shots:.1f} ms "
          f"(includes {start:.2f} s of start-up per run)")


def bench_memory(args: argparse.Namespace) -> None:
    peaks = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as folder, simulator(
                "--time-scale", "0.1", "--queue-delay", "0") as url:
            board = write_board(Path(folder), args.shots)
            wall, cpu, peak, code = run_apply(board, url, args.jobs)
            peaks.append(peak)
            print(f"run {run + 1}: {args.shots} shots in {wall:.1f} s, CPU {cpu:.1f} s, "
                  f"peak RSS {peak / 1024:.1f} MiB, exit {code}")
    print(f"median peak RSS: {statistics.median(peaks) / 1024:.1f} MiB for {args.shots} shots "
          "(target < 200 MiB)")


_SERVER = r"""
import sys
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
import uvicorn
from kling_pipeline.simulator.runner import loopback_socket
SIZE = int(sys.argv[1])
CHUNK = b"\0" * (1 << 20)
async def body():
    left = SIZE
    while left > 0:
        yield CHUNK[:min(left, len(CHUNK))]
        left -= len(CHUNK)
async def big(request):
    return StreamingResponse(body(), media_type="video/mp4",
                             headers={"content-length": str(SIZE)})
sock = loopback_socket()
print(f"http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/big.mp4", big)]), log_level="warning")
               ).run(sockets=[sock])
"""

_CLIENT = r"""
import asyncio, resource, sys, tempfile
from pathlib import Path
import httpx
from kling_pipeline.run.apiclient import KlingClient
async def main():
    async with httpx.AsyncClient(timeout=60) as http:
        client = KlingClient(http, sys.argv[1], "bench")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with tempfile.TemporaryDirectory() as folder:
            got = await client.download(sys.argv[1] + "/big.mp4", Path(folder) / "big.part")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after, got.size)
asyncio.run(main())
"""


def bench_download(args: argparse.Namespace) -> None:
    size = args.megabytes * 1024 * 1024
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(size)], stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stderr is not None
        url = server.stderr.readline().strip()
        rises = []
        for run in range(args.runs):
            out = subprocess.run([sys.executable, "-c", _CLIENT, url], check=True,
                                 capture_output=True, text=True).stdout.split()
            before, after, got = (int(x) for x in out)
            assert got == size, (got, size)
            rises.append(after - before)
            print(f"run {run + 1}: peak RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB "
                  f"(+{(after - before) / 1024:.1f} MiB) for {args.megabytes} MiB")
        print(f"median rise: {statistics.median(rises) / 1024:.1f} MiB for a "
              f"{args.megabytes} MiB download (target < 20 MiB)")
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    wall = sub.add_parser("wall")
    wall.add_argument("--shots", type=int, default=200)
    wall.add_argument("--jobs", type=int, default=20)
    wall.add_argument("--latency", type=float, default=6.0, help="generation seconds per shot")
    wall.add_argument("--runs", type=int, default=3)
    wall.add_argument("--eta-rounding", choices=("up", "down"), default="up",
                      help="down: the server says eta 0 during a task's last second")
    wall.add_argument("--renders", choices=("each", "one"), default="each",
                      help="one: shots differ by take only, so the simulator encodes one clip")
    memory = sub.add_parser("memory")
    memory.add_argument("--shots", type=int, default=1000)
    memory.add_argument("--jobs", type=int, default=20)
    memory.add_argument("--runs", type=int, default=1)
    download = sub.add_parser("download")
    download.add_argument("--megabytes", type=int, default=200)
    download.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    {"wall": bench_wall, "memory": bench_memory, "download": bench_download}[args.what](args)


if __name__ == "__main__":
    main()
