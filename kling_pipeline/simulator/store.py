"""The task table: an in-memory dict, optionally mirrored to one JSON file per task.

Tasks never change after creation (their state comes from the clock), so persisting is one
atomic write per submission and loading is reading every file back. Without a state folder no
handler touches the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.simulator.tasks import Task

log = logging.getLogger(__name__)


class TaskStore:
    """Tasks by id; `add` persists before the id is handed out."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self._tasks: dict[str, Task] = {}
        self._bodies: dict[str, dict[str, Any]] = {}
        self._folder = Path(state_dir) / "tasks" if state_dir is not None else None
        if self._folder is not None:
            self._folder.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        assert self._folder is not None
        for path in sorted(self._folder.glob("*.json")):
            try:
                task = Task.from_json(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable task file %s: %s", path, exc)
                continue
            self._tasks[task.task_id] = task

    def intern(self, digest: str, body: dict[str, Any]) -> dict[str, Any]:
        """One shared copy of each distinct body: 1,000 identical data URIs cost one."""
        return self._bodies.setdefault(digest, body)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    async def add(self, task: Task) -> None:
        """Remember a task; with a state folder, write it (off the event loop) first."""
        if self._folder is not None:
            await asyncio.to_thread(atomic_write_bytes, self._folder / f"{task.task_id}.json",
                                    json.dumps(task.to_json()).encode("utf-8"))
        self._tasks[task.task_id] = task

    def clear(self) -> None:
        """Forget every task, on disk too."""
        self._tasks.clear()
        self._bodies.clear()
        if self._folder is not None:
            for path in self._folder.glob("*.json"):
                path.unlink(missing_ok=True)
