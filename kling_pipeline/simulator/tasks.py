"""Tasks whose state is a pure function of the clock.

A task is fixed when it is submitted: when it was made, how long it queues and generates, and
how it ends. Its status at any moment is derived from those numbers, so waiting tasks cost no
CPU (no background loop) and a task record never changes after creation, which makes it
trivial to persist and to reload after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kling_pipeline.key import body_digest

Status = Literal["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED",
                 "TASK_STATUS_FAILED"]
STATUSES: tuple[Status, ...] = ("TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING",
                                "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
# Not a state of a task: an answer the provider's SDKs model (novita-sdk's V3TaskStatus), sent
# only when the `unknown_polls`/`unknown_rate` knobs ask for it.
UNKNOWN = "TASK_STATUS_UNKNOWN"

MODERATION_REASON = ("The generated content was blocked by content moderation "
                     "(simulated: the prompt contains the failure marker).")
RANDOM_FAILURE_REASON = "Video generation failed: internal model error (simulated)."


def body_hash(body: Any) -> str:
    """sha256 of the body's canonical JSON: the same form the client's keys are made from."""
    return body_digest(body)


@dataclass(frozen=True)
class Task:
    """One accepted submission, fixed at creation (times are Unix seconds)."""

    task_id: str
    slug: str
    body: dict[str, Any]
    body_hash: str
    video_seconds: int
    submitted_at: float
    queue_seconds: float
    generate_seconds: float
    failure: str  # "" unless the task will end FAILED
    no_url: bool  # SUCCEED without a video URL
    seed: int

    @property
    def started_at(self) -> float:
        return self.submitted_at + self.queue_seconds

    @property
    def finished_at(self) -> float:
        return self.started_at + self.generate_seconds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(**data)


@dataclass(frozen=True)
class View:
    """A task as seen at one moment."""

    status: Status
    progress: int
    eta: int


def view(task: Task, now: float, round_eta: Callable[[float], int] = math.ceil) -> View:
    """Status, progress and eta at `now`: progress only rises and eta only falls."""
    if now >= task.finished_at:
        status: Status = "TASK_STATUS_FAILED" if task.failure else "TASK_STATUS_SUCCEED"
        return View(status, 100 if not task.failure else _progress(task, now), 0)
    eta = round_eta(task.finished_at - now)
    if now < task.started_at:
        return View("TASK_STATUS_QUEUED", 0, eta)
    return View("TASK_STATUS_PROCESSING", _progress(task, now), eta)


def _progress(task: Task, now: float) -> int:
    if task.generate_seconds <= 0:
        return 99
    done = (min(now, task.finished_at) - task.started_at) / task.generate_seconds
    return max(0, min(99, int(done * 100)))


def task_type(slug: str) -> str:
    """`kling-v3.0-pro-i2v` -> `KLING_V3_0_PRO_I2V` (the real value is undocumented)."""
    return "".join(c.upper() if c.isalnum() else "_" for c in slug)


def result_body(task: Task, now: float, videos: list[dict[str, Any]],
                int_fields: bool, eta_down: bool = False) -> dict[str, Any]:
    """The task-result answer, shaped as api-notes shows it."""
    seen = view(task, now, math.floor if eta_down else math.ceil)

    def loose(value: int) -> int | str:
        return value if int_fields else str(value)

    def ms(at: float) -> int | str:
        return loose(int(at * 1000) if now >= at else 0)

    return {
        "task": {"task_id": task.task_id, "task_type": task_type(task.slug),
                 "status": seen.status,
                 "reason": task.failure if seen.status == "TASK_STATUS_FAILED" else "",
                 "eta": seen.eta, "progress_percent": seen.progress},
        "extra": _extra(task, loose, ms),
        "images": [], "audios": [],
        "videos": videos if seen.status == "TASK_STATUS_SUCCEED" else [],
    }


def _extra(task: Task, loose: Callable[[int], int | str],
           ms: Callable[[float], int | str]) -> dict[str, Any]:
    """`extra` as the provider's Python SDK (novita-client) models it: seed,
    enable_nsfw_detection (a boolean; this simulator never detects) and debug_info, whose
    request_info is text (empty here: what the service puts there is not documented)."""
    return {"seed": loose(task.seed), "enable_nsfw_detection": False,
            "debug_info": {"submit_time_ms": ms(task.submitted_at),
                           "execute_time_ms": ms(task.started_at),
                           "complete_time_ms": ms(task.finished_at),
                           "request_info": ""}}


def unknown_body(task: Task, int_fields: bool) -> dict[str, Any]:
    """A task-result answer whose status is TASK_STATUS_UNKNOWN: the service cannot say now.

    No eta, no progress, no video; the task itself goes on, and a later poll sees it.
    """
    def zero(_: float) -> int | str:
        return 0 if int_fields else "0"

    return {
        "task": {"task_id": task.task_id, "task_type": task_type(task.slug), "status": UNKNOWN,
                 "reason": "", "eta": 0, "progress_percent": 0},
        "extra": _extra(task, lambda value: value if int_fields else str(value), zero),
        "images": [], "audios": [], "videos": [],
    }
