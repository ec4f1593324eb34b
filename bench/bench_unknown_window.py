"""How many shots a kill -9 during a burst leaves `unknown` that the server never received
(issue 9, item 2: goal 0).

    .venv/bin/python bench/bench_unknown_window.py [--trials 50] [--shots 40] [--seed 1]

Each trial writes a storyboard of N new shots, starts `apply --jobs N` as a child process against
the simulator (in its own process) through a TCP relay in this process, waits for the lock file
to appear (the first record of the burst), kills the child with SIGKILL after a random delay
drawn uniformly from the burst's length (measured first, in a calibration run), and reads the
lock file. A shot whose entry says `submitting` or `unknown` although its request never left
the client is one the user is asked about for nothing. "Left the client" is what the relay
read from the client's connections: it reads at once, so a request the kernel took from the
client is in its log even when the client dies before the simulator handles it (a dying
client's connection may be reset, and the simulator never sees what it had not read yet; that
is counted separately, as "sent but not handled"). Every trial then runs apply again (without
--resubmit-unknown) against the simulator and checks that no body was submitted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from bench_simulator import server_process

from kling_pipeline.key import body_digest


def write_board(folder: Path, shots: int, trial: int) -> Path:
    lines = ["version: 1", "name: burst", "provider: {requests_per_minute: 6000}",
             'defaults: {model: kling-v3.0-pro-t2v, duration: 3, aspect_ratio: "16:9"}',
             "shots:"]
    lines += [f'  - {{id: s{i:03d}, prompt: "Trial {trial} burst shot {i}"}}'
              for i in range(shots)]
    path = folder / "burst.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def apply_command(board: Path, url: str, shots: int) -> list[str]:
    return [sys.executable, "-m", "kling_pipeline", "apply", str(board), "--base-url", url,
            "--yes", "--jobs", str(shots), "--no-cache"]


ENV = {**os.environ, "NOVITA_API_KEY": "bench", "NO_COLOR": "1"}


class Relay:
    """A TCP relay on loopback that keeps every byte clients send through it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.seen = bytearray()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       keep: bool) -> None:
            try:
                while data := await source.read(65536):
                    if keep:
                        self.seen += data
                    sink.write(data)
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def sent(self, prompt: str) -> bool:
        """Whether a request body holding this prompt reached the relay."""
        return json.dumps(prompt).encode() in bytes(self.seen)


def wait_for_lock(lock: Path, child: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    while not lock.exists():
        if child.poll() is not None or time.monotonic() - start > 30:
            raise RuntimeError("apply ended or stalled before writing its lock file")
        time.sleep(0.0005)
    return time.monotonic()


def calibrate(url: str, shots: int) -> float:
    """Seconds from the lock file's appearance to the last task id of the burst on disk."""
    with tempfile.TemporaryDirectory() as folder:
        board = write_board(Path(folder), shots, -1)
        lock = board.with_name("burst.lock.json")
        child = subprocess.Popen(apply_command(board, url, shots), env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = wait_for_lock(lock, child)
        while True:
            try:
                entries = json.loads(lock.read_text())["shots"].values()
            except (ValueError, OSError):
                entries = []
            if sum(1 for e in entries if e.get("task_id")) == shots:
                took = time.monotonic() - start
                break
            time.sleep(0.001)
        child.wait()
        return took


def trial(url: str, relay: Relay, shots: int, number: int,
          delay: float) -> tuple[int, int, int, int, int]:
    """(unknown but never sent, unknown and sent, of those sent but not handled by the
    simulator, not recorded, bodies paid twice)."""
    with tempfile.TemporaryDirectory() as folder:
        board = write_board(Path(folder), shots, number)
        lock = board.with_name("burst.lock.json")
        relay.seen.clear()
        child = subprocess.Popen(apply_command(board, relay.url, shots), env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_lock(lock, child)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(0.2)  # let the relay read what the kernel still holds for it
        entries = json.loads(lock.read_text())["shots"] if lock.exists() else {}
        made = httpx.get(f"{url}/_simulator/stats", timeout=60).json()["submissions"]
        ambiguous = [e for e in entries.values() if e["status"] in ("submitting", "unknown")]
        needless = sum(1 for e in ambiguous if not relay.sent(e["request"]["prompt"]))
        unhandled = sum(1 for e in ambiguous if relay.sent(e["request"]["prompt"])
                        and not made.get(body_digest(e["request"])))
        subprocess.run(apply_command(board, url, shots), env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        made = httpx.get(f"{url}/_simulator/stats", timeout=60).json()["submissions"]
        after = json.loads(lock.read_text())["shots"]
        twice = sum(1 for e in after.values() if made.get(body_digest(e["request"]), 0) > 1)
        return (needless, len(ambiguous) - needless, unhandled, shots - len(entries), twice)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--shots", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    rng = random.Random(args.seed)
    with server_process("--queue-delay", "0") as (url, _pid):
        relay = Relay(url)
        burst = statistics.median(calibrate(relay.url, args.shots) for _ in range(3))
        print(f"burst of {args.shots}: {burst * 1000:.0f} ms from the first lock write to the "
              "last task id on disk (median of 3)")
        totals = [0, 0, 0, 0, 0]
        hit = 0
        for number in range(args.trials):
            delay = rng.uniform(0, burst)
            result = trial(url, relay, args.shots, number, delay)
            totals = [a + b for a, b in zip(totals, result, strict=True)]
            hit += result[0] > 0
            print(f"trial {number + 1}: kill at +{delay * 1000:.0f} ms: {result[0]} unknown "
                  f"never sent, {result[1]} unknown and sent ({result[2]} of them not handled "
                  f"by the simulator), {result[3]} not yet recorded, {result[4]} paid twice")
    print(f"over {args.trials} kills: {totals[0]} shots left unknown whose request never left "
          f"the client (goal 0; in {hit} of the kills); {totals[1]} truly unknown (sent; "
          f"{totals[2]} of them never handled by the simulator); {totals[3]} not recorded "
          f"(submitted by the next run without asking); {totals[4]} bodies paid twice")


if __name__ == "__main__":
    main()
