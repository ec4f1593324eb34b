"""Benchmark the simulator: 1,000 tasks submitted and polled at high concurrency.

The server runs in its own process (`python -m kling_pipeline.simulator --quiet`), so the
figures are the server's, not this client's event loop; both share the machine's cores.
Prints requests per second, p50/p99 latency, the server's peak memory (VmHWM) as the median of
3 runs, and CPU seconds per second of rendered video at the simulator's default frame size and
rate (median of 5 renders).

    .venv/bin/python bench/bench_simulator.py [--tasks 1000] [--concurrency 200] [--runs 3]
        [--render-runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import httpx

SLUG = "kling-v3.0-pro-t2v"
DISTINCT_BODIES = 10  # 1,000 tasks over 10 distinct requests: 10 renders, as a cache would


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    peak_kib: int
    errors: int
    peak_rps: float
    peak_p50_ms: float
    peak_p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@contextmanager
def server_process(*options: str) -> Iterator[tuple[str, int]]:
    """Start the simulator with these options in a child process; yield (base URL, pid).
    (bench_apply.py uses it too.)"""
    command = [sys.executable, "-m", "kling_pipeline.simulator", "--port", "0", "--quiet",
               *options]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if match is None:
            raise RuntimeError(f"the simulator did not start: {line}")
        # Keep reading what it says: a pipe nobody drains fills up (64 KiB) and then every
        # log line blocks the simulator's event loop for good.
        threading.Thread(target=_drain, args=(child.stderr,), daemon=True).start()
        yield match.group(0), child.pid
    finally:
        child.terminate()
        child.wait(timeout=10)


def _drain(stream: IO[str]) -> None:
    """Pass on what the simulator says, one line per traceback (its last line)."""
    last = ""
    for line in stream:
        if not line.startswith((" ", "Traceback")) and last.startswith(" "):
            print(f"simulator: {line.rstrip()}", file=sys.stderr)
        last = line


def peak_memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx's async pool costs several CPU milliseconds per request at high concurrency, which
    on two cores measures the client, not the server; this costs a few tens of microseconds.
    """

    def __init__(self, base_url: str, connections: int) -> None:
        match = re.match(r"http://([^:/]+):(\d+)", base_url)
        assert match is not None
        self.host, self.port = match.group(1), int(match.group(2))
        self.size = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()
        self.opened = 0

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self.idle.get()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes,
                                                                                 float]:
        """(status, body, seconds from writing the request to reading the answer)."""
        reader, writer = await self._connection()
        started = time.perf_counter()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Authorization: Bearer bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        seconds = time.perf_counter() - started
        self.idle.put_nowait((reader, writer))
        return int(status_line.split()[1]), payload, seconds

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


async def one_task(client: LeanClient, index: int, latencies: list[float],
                   errors: list[int], poll: float, task_ids: list[str]) -> None:
    body = json.dumps({"prompt": f"benchmark shot {index % DISTINCT_BODIES}",
                       "duration": 5}).encode()
    status, payload, seconds = await client.request("POST", f"/v3/async/{SLUG}", body)
    latencies.append(seconds)
    if status != 200:
        errors.append(status)
        return
    task_id = json.loads(payload)["task_id"]
    task_ids.append(task_id)
    while True:
        await asyncio.sleep(poll * random.uniform(0.5, 1.5))  # clients poll with jitter
        status, payload, seconds = await client.request(
            "GET", f"/v3/async/task-result?task_id={task_id}")
        latencies.append(seconds)
        if status != 200:
            errors.append(status)
            continue
        if json.loads(payload)["task"]["status"] in ("TASK_STATUS_SUCCEED",
                                                     "TASK_STATUS_FAILED"):
            return


async def saturate(client: LeanClient, task_ids: list[str], seconds: float,
                   latencies: list[float]) -> int:
    """Every connection polls back to back for `seconds`: the server's ceiling."""
    deadline = time.perf_counter() + seconds
    count = 0

    async def worker(offset: int) -> None:
        nonlocal count
        index = offset
        while time.perf_counter() < deadline:
            task_id = task_ids[index % len(task_ids)]
            _, _, took = await client.request("GET", f"/v3/async/task-result?task_id={task_id}")
            latencies.append(took)
            count += 1
            index += 7

    await asyncio.gather(*(worker(i) for i in range(client.size)))
    return count


@dataclass(frozen=True)
class Measured:
    latencies: list[float]
    errors: list[int]
    seconds: float
    peak_requests: int
    peak_latencies: list[float]


async def load(base_url: str, args: argparse.Namespace) -> Measured:
    latencies: list[float] = []
    errors: list[int] = []
    task_ids: list[str] = []
    client = LeanClient(base_url, args.concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(one_task(client, i, latencies, errors, args.poll, task_ids)
                           for i in range(args.tasks)))
    seconds = time.perf_counter() - started
    peak_latencies: list[float] = []
    peak = await saturate(client, task_ids, args.saturate, peak_latencies)
    await client.close()
    return Measured(latencies, errors, seconds, peak, peak_latencies)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def one_run(args: argparse.Namespace) -> Run:
    with server_process("--time-scale", str(args.time_scale),
                        "--queue-delay", "0.5") as (base_url, pid):
        measured = asyncio.run(load(base_url, args))
        stats = httpx.get(f"{base_url}/_simulator/stats").json()
        if not measured.errors and stats["submissions_total"] != args.tasks:
            raise RuntimeError(f"the server counted {stats['submissions_total']} submissions")
        peak = peak_memory_kib(pid)
    lat = measured.latencies
    return Run(requests=len(lat), seconds=measured.seconds, p50_ms=percentile(lat, 0.5),
               p99_ms=percentile(lat, 0.99), peak_kib=peak, errors=len(measured.errors),
               peak_rps=measured.peak_requests / args.saturate,
               peak_p50_ms=percentile(measured.peak_latencies, 0.5),
               peak_p99_ms=percentile(measured.peak_latencies, 0.99))


def render_cost(runs: int) -> list[tuple[str, str, float]]:
    """(clip, frame size, median CPU seconds per second of video over `runs` renders after a
    warm-up) at the simulator's default picture knobs, in this process."""
    import io

    from PIL import Image, ImageDraw

    from kling_pipeline.simulator.config import SimulatorConfig
    from kling_pipeline.simulator.video import ClipSpec, frame_size, render_clip

    config = SimulatorConfig()
    image = Image.linear_gradient("L").resize((1280, 720)).convert("RGB")
    draw = ImageDraw.Draw(image)  # some detail, like a storyboard's first frame
    for i in range(0, 1280, 80):
        draw.ellipse((i, 200 + i % 240, i + 120, 320 + i % 240), fill=(200, 80 + i % 150, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    fps, side = config.video_fps, config.video_long_side
    cases = [("title card 16:9, 10 s", ClipSpec((("a lighthouse at dusk", 10.0),), "16:9",
                                                fps=fps, long_side=side)),
             ("title card + sound, 10 s", ClipSpec((("a lighthouse at dusk", 10.0),), "16:9",
                                                   sound=True, fps=fps, long_side=side)),
             ("image (Ken Burns) + end frame, 10 s",
              ClipSpec((("keeper", 10.0),), image=buffer.getvalue(), end_image=buffer.getvalue(),
                       fps=fps, long_side=side))]
    results = []
    for name, spec in cases:
        render_clip(spec)  # warm-up: imports, fonts, the encoder's first allocation
        cpu = []
        for _ in range(runs):
            started = time.process_time()
            render_clip(spec)
            cpu.append(time.process_time() - started)
        width, height = frame_size(spec)
        results.append((name, f"{width}x{height} at {spec.fps} fps",
                        statistics.median(cpu) / spec.duration))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200, help="open connections")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--render-runs", type=int, default=5,
                        help="renders per clip for the CPU cost (median is shown)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--saturate", type=float, default=3.0,
                        help="seconds of back-to-back polling on every connection")
    parser.add_argument("--time-scale", type=float, default=0.6,
                        help="server generation seconds per video second (5 s clip: 3 s)")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {platform.python_implementation()} "
          f"{platform.python_version()}, nproc={os.cpu_count()}, "
          f"processor={platform.processor() or platform.machine()}")
    print(f"workload: {args.tasks} tasks of 5 s ({DISTINCT_BODIES} distinct bodies), "
          f"{args.concurrency} connections, poll every {args.poll:g} s, "
          f"generation {5 * args.time_scale:g} s + 0.5 s queue")
    runs = []
    for number in range(1, args.runs + 1):
        run = one_run(args)
        runs.append(run)
        print(f"run {number}: lifecycle {run.requests} requests in {run.seconds:.2f} s "
              f"({run.rps:.0f} req/s offered), p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms; "
              f"saturated {run.peak_rps:.0f} req/s, p50 {run.peak_p50_ms:.1f} ms, "
              f"p99 {run.peak_p99_ms:.1f} ms; server peak RSS {run.peak_kib / 1024:.1f} MiB; "
              f"errors {run.errors}")

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"median of {len(runs)}: lifecycle {median([r.rps for r in runs]):.0f} req/s offered, "
          f"p50 {median([r.p50_ms for r in runs]):.1f} ms, "
          f"p99 {median([r.p99_ms for r in runs]):.1f} ms; "
          f"saturated {median([r.peak_rps for r in runs]):.0f} req/s, "
          f"p50 {median([r.peak_p50_ms for r in runs]):.1f} ms, "
          f"p99 {median([r.peak_p99_ms for r in runs]):.1f} ms; "
          f"server peak RSS {median([r.peak_kib for r in runs]) / 1024:.1f} MiB")
    for name, size, cost in render_cost(args.render_runs):
        print(f"render: {name}, {size}: {cost:.3f} CPU s per second of video "
              f"(median of {args.render_runs})")


if __name__ == "__main__":
    main()
