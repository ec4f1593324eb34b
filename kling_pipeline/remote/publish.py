"""Push each video an apply downloads, as soon as it is safe in the local store.

The upload runs in the background (a small thread pool), so a run's polls and downloads never
wait for the remote; the run waits for the last uploads at its end. The object goes first,
then the request key's index entry (which a teammate's apply reads), so an entry never names
an object that is not there. A failure is a warning and ends the pushing for this run (the
videos are in the local store: `push` sends them later); it never changes a shot's outcome.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from kling_pipeline.errors import RemoteError
from kling_pipeline.remote.session import RemoteSession
from kling_pipeline.remote.store import IndexEntry, RemoteStore
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import Output

Pushed = Literal["pushed", "there", "failed"]  # how one upload ended


@dataclass(frozen=True)
class Published:
    """What the run pushed: videos (with their index entries), and those left for `push`
    (the remote failed, or the run stopped first). A video the remote had is neither."""

    pushed: int
    left: int


class Publisher:
    """Uploads the run's new videos and their index entries, `jobs` at a time."""

    def __init__(self, session: RemoteSession, store: Store, jobs: int = 2) -> None:
        self.session = session
        self.store = store
        self._pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="push")
        self._futures: list[Future[Pushed]] = []
        self._failed = 0

    def publish(self, key: str, output: Output, task_id: str | None, endpoint: str, *,
                maybe_there: bool = False) -> None:
        """Queue the upload of a stored video and its entry; returns at once. `maybe_there`:
        another machine made the task (this run followed its claim) and has likely pushed
        the video already: it is looked for first (two small requests, not an upload)."""
        if self.session.down:
            self._failed += 1  # said once by the session; push sends it later
            return
        entry = IndexEntry(output.sha256, output.size, output.duration, task_id, endpoint)
        self._futures.append(self._pool.submit(self._push, key, output, entry, maybe_there))

    def _push(self, key: str, output: Output, entry: IndexEntry, maybe_there: bool) -> Pushed:
        if self.session.down:
            return "failed"
        try:
            remote = self.session.open()
            if maybe_there and _there(remote, key, entry):
                return "there"
            remote.put_object(self.store.object_path(output.sha256), output.sha256)
            remote.put_index(key, entry)
        except RemoteError as exc:
            self.session.give_up(exc, "the videos of this run stay in the local store "
                                      "(push sends them later)")
            return "failed"
        return "pushed"

    def close(self, *, wait: bool = True) -> Published:
        """Wait for the uploads under way (`wait=False`: drop those not started)."""
        self._pool.shutdown(wait=True, cancel_futures=not wait)
        ends = [future.result() if not future.cancelled() and future.exception() is None
                else "failed" for future in self._futures]
        return Published(ends.count("pushed"), self._failed + ends.count("failed"))


def _there(remote: RemoteStore, key: str, entry: IndexEntry) -> bool:
    """The key's entry already names this video, and the object is there whole (two small
    requests rather than an upload of the video again)."""
    body = remote.read_index([key]).get(key)
    found = IndexEntry.parse(body) if body is not None else None
    if found is None or found.sha256 != entry.sha256:
        return False
    return remote.object_size(entry.sha256) == entry.size
