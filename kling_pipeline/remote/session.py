"""One remote for one apply: opened on first use, given up on at the first failure.

An apply uses its remote at three moments (taking videos before the plan, claiming a key
before a POST, pushing each video it downloads), each of which it can do without: a remote
that cannot be reached must never stop a render already paid for, nor make every shot wait
for the same timeout. So the first failure is said once, as a warning naming the remote
(never a credential), and the rest of the run goes on without it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from kling_pipeline.errors import RemoteError
from kling_pipeline.events import Note, OnEvent

if TYPE_CHECKING:
    from kling_pipeline.remote.store import RemoteStore
    from kling_pipeline.remote.url import RemoteSpec


class RemoteSession:
    """The remote of one run, shared by its threads."""

    def __init__(self, spec: RemoteSpec, on_event: OnEvent) -> None:
        self.spec = spec
        self._on_event = on_event
        self._store: RemoteStore | None = None
        self._lock = threading.Lock()
        self.down = ""  # why the run went on without the remote ("" while it is in use)
        self._said: set[str] = set()

    @property
    def shown(self) -> str:
        from kling_pipeline.remote.url import shown

        return shown(self.spec)

    def open(self) -> RemoteStore:
        """The remote's store (RemoteError when it cannot be opened, or was given up on)."""
        with self._lock:
            if self.down:
                raise RemoteError(self.down)
            if self._store is None:
                from kling_pipeline.remote.store import RemoteStore

                self._store = RemoteStore(self.spec)
            return self._store

    def note(self, note: Note) -> None:
        """Say something about the remote once per run (the same text is said once)."""
        with self._lock:
            if note.text in self._said:
                return
            self._said.add(note.text)
        self._on_event(note)

    def give_up(self, exc: RemoteError, doing: str) -> None:
        """Go on without the remote; the first call says so (`doing`: what is skipped)."""
        with self._lock:
            if self.down:
                return
            self.down = str(exc)
        self._on_event(Note(f"warning: {exc}; {doing}"))
