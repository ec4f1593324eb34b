"""What the API's answers mean, as values: the task statuses, the errors named for what is safe
to do next, and one task-result answer. No HTTP here (apiclient.py makes the requests), so the
executor, and every run that needs no network (a no-op apply), works with these without
importing an HTTP client.
"""

from __future__ import annotations

from dataclasses import dataclass

# Statuses of the task-result answer, shortened. PENDING stands for any other status
# (the provider's SDK knows TASK_STATUS_UNKNOWN; a new one may come): not an end, keep asking.
QUEUED, PROCESSING, SUCCEED, FAILED = "queued", "processing", "succeed", "failed"
PENDING = "pending"


class ApiError(Exception):
    """An answer (or no answer) that is not what was asked for."""

    def __init__(self, message: str, *, reason: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class NotAccepted(ApiError):
    """No task was made; sending the same submit again cannot pay twice."""


class Unreachable(NotAccepted):
    """No connection to the server could be made: nothing was sent."""


class NotSent(ApiError):
    """The request could not be built or sent from here (e.g. a key no header can carry)."""


class Ambiguous(ApiError):
    """The submit may have made a task whose id we never saw."""


class Refused(ApiError):
    """The provider refused this request; it made no task and the same request would fail."""


class EndpointRefused(Refused):
    """The provider refuses this endpoint for this key (403 API_NOT_ALLOWED)."""


class AccountProblem(ApiError):
    """Missing or wrong key, or no balance left: nothing more can be submitted."""


class TaskNotFound(ApiError):
    """The provider does not know this task id (404 TASK_NOT_FOUND)."""


class Transient(ApiError):
    """A read that failed for now (transport error, 429, 5xx); try again later."""


class ReadUnreachable(Transient):
    """A read that could make no connection to the server."""


class UrlExpired(ApiError):
    """The storage host refused the result URL (403/404): ask task-result for a fresh one."""


@dataclass(frozen=True)
class TaskState:
    """One task-result answer, types normalised (the API sends numbers as strings or ints)."""

    task_id: str
    status: str  # QUEUED, PROCESSING, SUCCEED, FAILED or PENDING (a status we do not know)
    progress: int | None
    eta: float | None
    reason: str
    video_url: str | None
    raw_status: str = ""  # as the provider spelled it, for messages
