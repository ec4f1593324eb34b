"""Fault machinery: seeded dice, a sliding-window rate limiter, and dropping a connection.

Dropping: an ASGI app has no handle on the socket. Uvicorn's h11 protocol hands the app its
`RequestResponseCycle.send` bound method, whose object holds the asyncio transport (the app
keeps that raw `send` in the scope before any middleware wraps it). Closing that transport
before a response byte is written makes the client see "Server disconnected without sending a
response"; closing it after part of a body makes an incomplete read. Without that handle
(another server), the fallback starts a response and raises, which uvicorn answers by closing
the connection mid-response.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from typing import Any

from starlette.types import Send


class Dice:
    """Seeded random decisions; a rate of 0 or 1 never consumes a draw (keeps runs stable)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def roll(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng.random() < rate

    def choice(self, options: tuple[int, ...]) -> int:
        return options[0] if len(options) == 1 else self._rng.choice(options)

    def seed_value(self) -> int:
        return self._rng.randrange(1, 2**31)


class RateLimiter:
    """At most `limit` requests per `window` seconds for each key (an endpoint)."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def check(self, key: str, limit: int, window: float) -> float | None:
        """Record a request; None if allowed, else seconds until a slot frees."""
        if limit <= 0:
            return None
        now = time.monotonic()
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= limit:
            return max(0.0, times[0] + window - now)
        times.append(now)
        return None

    def clear(self) -> None:
        self._seen.clear()


def retry_after_value(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class DroppedConnection(Exception):
    """Raised where the server offers no way to close the socket quietly."""


async def drop_connection(raw_send: Send) -> None:
    """Close the client's connection now; what was already written is still flushed.

    Afterwards the server ignores whatever the app sends, so a handler may return normally.
    """
    transport = _transport_of(raw_send)
    if transport is not None:
        transport.close()
        # Let connection_lost run so the server marks the cycle disconnected and stays quiet.
        for _ in range(3):
            await asyncio.sleep(0)
        return
    await raw_send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"64")]})
    raise DroppedConnection("simulated dropped connection")


def _transport_of(send: Send) -> Any:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport
    return None
