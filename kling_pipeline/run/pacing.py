"""Pacing requests: a per-endpoint submission limiter, backoff with jitter, eta-guided polls."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds before try number `attempt + 1`.

    The server's Retry-After when it gave one (plus up to a tenth of a second, so clients told
    the same second do not all come back in it); else exponential growth from `base`, capped,
    with jitter in its upper half.
    """
    draw: float = (rng or random).random()
    if retry_after is not None:
        return retry_after + 0.1 * draw  # the server knows best; it is bounded when parsed
    delay: float = min(cap, base * (2 ** min(max(0, attempt - 1), 1000))) * (0.5 + 0.5 * draw)
    return delay


def next_poll_delay(eta: float | None, overdue: float, floor: float, ceiling: float) -> float:
    """When to ask about a task again.

    With an eta: most of it while it is long, then every `floor` seconds over its last second
    (providers give eta in whole seconds, so a task with eta 1 may be done in 0.1 s); an eta too
    short costs a poll, too long costs waiting. At 0 or without one, `overdue` is the seconds
    since the eta last said more than 0 s: over the first of them the task is due at any moment
    (an eta rounded down says 0 during its last second), so every `floor` seconds; after it,
    half the time overdue, so a task stuck at 99% is asked about a few times a minute, not
    four times a second for an hour.
    """
    if eta is not None and eta > 0:
        return min(ceiling, max(floor, min(eta * 0.8, eta - 1.0)))
    if overdue < 1.0:
        return floor
    return min(ceiling, max(floor, overdue / 2))


class Reachability:
    """Whether a server that refuses every connection should still be tried.

    Connection failures count only while the server gives no answer at all: any HTTP answer
    (even a 429 or a 500) resets them. Never answered in this run: give up after `first`
    seconds (a wrong URL or a server that is down); answered before: after `outage` seconds.
    """

    def __init__(self, first: float, outage: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.outage = outage
        self._clock = clock
        self._ever_answered = False
        self._failing_since: float | None = None

    def answered(self) -> None:
        self._ever_answered = True
        self._failing_since = None

    def failed(self) -> bool:
        """Record a failed connection; True once the server has been out of reach too long."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        return self.waited() >= (self.outage if self._ever_answered else self.first)

    def waited(self) -> float:
        """Seconds since the first connection failure with no answer after it (0 if none)."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since


class SubmitLimiter:
    """At most `per_minute` submissions in any 60 s, per endpoint; a 429 pauses the endpoint."""

    def __init__(self, per_minute: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._paused_until: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def wait_time(self, endpoint: str) -> float:
        """Seconds until a submission to `endpoint` is allowed (0: now)."""
        now = self._clock()
        sent = self._sent.setdefault(endpoint, deque())
        while sent and sent[0] <= now - self.window:
            sent.popleft()
        wait = max(0.0, self._paused_until.get(endpoint, 0.0) - now)
        if len(sent) >= self.per_minute:
            wait = max(wait, sent[0] + self.window - now)
        return wait

    def record(self, endpoint: str) -> None:
        self._sent.setdefault(endpoint, deque()).append(self._clock())

    def forget(self, endpoint: str) -> None:
        """Take back the last slot taken: that submission never reached the server."""
        sent = self._sent.get(endpoint)
        if sent:
            sent.pop()

    def pause(self, endpoint: str, seconds: float) -> None:
        """The provider said slow down: nobody submits to this endpoint for `seconds`."""
        until = self._clock() + seconds
        self._paused_until[endpoint] = max(self._paused_until.get(endpoint, 0.0), until)

    async def acquire(self, endpoint: str, sleep: Callable[[float], Awaitable[bool]]) -> bool:
        """Wait for a slot and take it; False if `sleep` reports the run is stopping.

        `sleep(seconds)` is awaited and returns True when it was cut short by a stop.
        """
        lock = self._locks.setdefault(endpoint, asyncio.Lock())
        async with lock:  # first come, first served
            while (wait := self.wait_time(endpoint)) > 0:
                stopped = await sleep(wait)
                if stopped:
                    return False
            self.record(endpoint)
            return True
