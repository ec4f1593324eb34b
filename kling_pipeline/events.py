"""What `apply` tells its caller while it runs, and how the caller stops it.

A caller (the command line's live view, a notebook, a web app) passes `on_event` and gets
plain values, in this order: `RunStarted`, then `ShotUpdate`s and `Note`s while the jobs run,
`RunEnded`, then one `FolderStep` per slow step of filling the output folder. The callback
runs on the thread that called `apply`, inside its event loop: it must return quickly.

`CancelToken` is the library's Ctrl-C, safe to call from any thread or a signal handler. The
first `cancel()` stops submitting and winds down (polls and downloads give up at their next
wait; every task id stays in the lock file); a second stops at once. Neither abandons a POST
already sent, whose answer is written before the run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RunStarted:
    """The jobs are about to run: `total` of them (shots to submit, follow, fetch or place)."""

    total: int


@dataclass(frozen=True)
class ShotUpdate:
    """A shot (or a removed entry) changed state: submitting, queued, processing 40%, ..."""

    label: str
    state: str
    percent: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Note:
    """Something about the whole run (it is stopping, a server cannot be reached)."""

    text: str


@dataclass(frozen=True)
class RunEnded:
    """Every job has ended or been left for the next run; the output folder comes next."""


@dataclass(frozen=True)
class FolderStep:
    """A slow step of filling the output folder (making final.mp4 from N shots)."""

    text: str


Event = RunStarted | ShotUpdate | Note | RunEnded | FolderStep


def label_of(shot_ids: Sequence[str]) -> str:
    """How an update names the shots one job or one video is for: `a`, or `a (+2)`."""
    more = len(shot_ids) - 1
    return shot_ids[0] + (f" (+{more})" if more > 0 else "")
OnEvent = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default `on_event`."""


class CancelToken:
    """Stops a running `apply` from outside it: once to wind down, twice to stop at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._listeners: list[Callable[[int], object]] = []

    @property
    def cancelled(self) -> bool:
        return self._count > 0

    def cancel(self) -> None:
        with self._lock:
            self._count += 1
            count, listeners = self._count, list(self._listeners)
        for listener in listeners:
            listener(count)

    def listen(self, listener: Callable[[int], object]) -> Callable[[], None]:
        """Call `listener(count)` on every later cancel (and now, if already cancelled);
        returns the function that stops listening."""
        with self._lock:
            self._listeners.append(listener)
            count = self._count
        if count:
            listener(count)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop
