"""The Kling `/v3/async/*` API over one shared httpx.AsyncClient, every answer classified.

Each call is one HTTP request; retrying is the caller's decision, because only the caller knows
whether a retry could pay twice. What an answer means follows api-notes' error table:

- `NotAccepted`: provably no task was made (connection refused, 429, CREATE_TASK_FAILED, 503);
  a submit may be sent again. `Unreachable` is the kind where no connection was made at all.
- `NotSent`: the request could not even be built here (a key no header can carry); nothing left.
- `Ambiguous`: the body may have reached the provider (timeout or reset after sending, a
  gateway error): the shot may be billed and must not be sent again unasked.
- `Refused`: this request is wrong (400 INVALID_REQUEST_BODY, ILLEGAL_PROMPT, ...); no retry.
- `EndpointRefused`: this key may not use this endpoint (403 API_NOT_ALLOWED).
- `AccountProblem`: a missing or wrong key or an empty balance; stop submitting at once.
- `TaskNotFound`: the provider does not know the task id.
- `Transient`: a read (task-result, download) that failed and may be tried again.

One POST attempt, whole (a free connection, sending, the answer), lasts at most
SUBMIT_CEILING: httpx's timeouts are per network operation, so a server dripping its answer a
byte at a time could stretch one attempt without end, past the expiry of the claim that lets
this machine alone pay for the key (remote/claims.py). Past the ceiling, an attempt whose body
had not started is NotAccepted, one whose body had is Ambiguous.

`submit` calls its `on_send` callback at the moment the request's body is about to be written
to the socket (httpcore's trace extension), and the body follows it with no loop turn between,
so the caller can record "sent" exactly: a submit stopped before that moment provably paid
nothing (a server makes no task of headers without their body).

The API key goes in one header of API requests only, never to the storage host of a result
URL, and never into an exception message.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kling_pipeline.run.apierrors import (
    FAILED,
    PENDING,
    PROCESSING,
    QUEUED,
    SUCCEED,
    AccountProblem,
    Ambiguous,
    ApiError,
    EndpointRefused,
    NotAccepted,
    NotSent,
    ReadUnreachable,
    Refused,
    TaskNotFound,
    TaskState,
    Transient,
    Unreachable,
    UrlExpired,
)

_STATUSES = {"TASK_STATUS_QUEUED": QUEUED, "TASK_STATUS_PROCESSING": PROCESSING,
             "TASK_STATUS_SUCCEED": SUCCEED, "TASK_STATUS_FAILED": FAILED}
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_ACCOUNT_REASONS = frozenset({"MISSING_API_KEY", "INVALID_API_KEY",
                              "BILLING_BALANCE_NOT_ENOUGH"})
_CHUNK = 1 << 16
MAX_RETRY_AFTER = 3600.0  # a longer (or infinite) Retry-After is read as an hour


@dataclass(frozen=True)
class Downloaded:
    """A result file written to disk, with what the transfer proved about it."""

    path: Path
    size: int
    sha256: str


class _Bearer(httpx.Auth):
    """The key as an auth flow: it stays out of the client's repr and default headers."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """(reason, message) from `{reason, message}`, `{error: {message}}` or anything else."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    reason = message = ""
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
        error = body.get("error")
        if isinstance(error, dict):
            reason = reason or str(error.get("code") or error.get("type") or "")
            message = message or str(error.get("message") or "")
        elif isinstance(error, str):
            message = message or error
    if not reason:
        reason = f"HTTP_{response.status_code}"
    if not message:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    return reason, message[:500]


def _describe(reason: str, message: str) -> str:
    return f"{reason}: {message}" if message and message != reason else reason


def _classify_submit(response: httpx.Response) -> ApiError:
    status = response.status_code
    reason, message = _error_fields(response)
    text = _describe(reason, message)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        return NotAccepted(text, reason=reason, status=status, retry_after=retry_after)
    if reason in _ACCOUNT_REASONS or status == 401:
        return AccountProblem(text, reason=reason, status=status)
    if status == 403 and reason == "API_NOT_ALLOWED":
        return EndpointRefused(text, reason=reason, status=status)
    if 400 <= status < 500:
        return Refused(text, reason=reason, status=status)
    if status == 503 or (status == 500 and reason == "CREATE_TASK_FAILED"):
        return NotAccepted(text, reason=reason, status=status, retry_after=retry_after)
    return Ambiguous(f"the provider answered {text}; a task may have been made",
                     reason=reason, status=status)


def _classify_read(response: httpx.Response) -> ApiError:
    status = response.status_code
    reason, message = _error_fields(response)
    text = _describe(reason, message)
    if reason in _ACCOUNT_REASONS or status in (401, 403):
        return AccountProblem(text, reason=reason, status=status)
    if status == 404:
        return TaskNotFound(text, reason=reason, status=status)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return Transient(text, reason=reason, status=status, retry_after=retry_after)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_task(task_id: str, body: Any) -> TaskState:
    """A task-result body as a TaskState; Transient if it is not one (a proxy's page, say)."""
    task = body.get("task") if isinstance(body, dict) else None
    if not isinstance(task, dict):
        raise Transient("task-result answered without a task", reason="BAD_RESULT")
    raw = task.get("status")
    raw_status = raw if isinstance(raw, str) else ""
    url = None
    videos = body.get("videos")
    if isinstance(videos, list):
        for video in videos:
            if isinstance(video, dict) and isinstance(video.get("video_url"), str) \
                    and video["video_url"].startswith(("http://", "https://")):
                url = video["video_url"]
                break
    progress = _number(task.get("progress_percent"))
    return TaskState(str(task.get("task_id") or task_id), _STATUSES.get(raw_status, PENDING),
                     None if progress is None else int(progress), _number(task.get("eta")),
                     str(task.get("reason") or ""), url, raw_status[:60] or "no status")


def _nothing() -> None:
    return None


class _SendHook:
    """Calls `on_send` once, when httpcore is about to write the request's body.

    Synchronously: the trace runs in the task that sends, and from here to the socket's
    `send` of the body nothing awaits (h11 frames the bytes, anyio writes them at once), so
    no other job runs between the caller's record and the bytes leaving. The headers have
    gone by then; they alone make no task.
    """

    def __init__(self, on_send: Callable[[], None]) -> None:
        self._on_send = on_send
        self.fired = False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self._on_send()

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("send_request_body.started"):
            self.fire()


def _traces(http: httpx.AsyncClient) -> bool:
    """Whether requests go through httpcore, whose trace tells the moment of sending."""
    transport = http._transport  # the client's own; mounts are not used here
    return isinstance(transport, httpx.AsyncHTTPTransport)


def _cause(exc: Exception) -> str:
    """`ConnectError: connection refused`, not `[Errno 111] Connection refused`."""
    text = str(exc).strip()
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
    text = text[:100].rstrip(".").lower()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Seconds one POST attempt may last in all; well below the claims' DEFAULT_EXPIRY (600 s).
SUBMIT_CEILING = 300.0


class KlingClient:
    """Submit, ask for results, download; one request per call, classified."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str, *,
                 submit_ceiling: float = SUBMIT_CEILING) -> None:
        self._http = http
        self._submit_ceiling = submit_ceiling
        self._base = base_url.rstrip("/")
        self._auth = _Bearer(api_key)

    def _hide_key(self, error: ApiError) -> ApiError:
        key = self._auth._key
        if len(key) >= 8 and key in str(error):  # shorter: would garble words, hides nothing
            error.args = (str(error).replace(key, "<api key>"),)
            error.reason = error.reason.replace(key, "<api key>")
        return error

    async def submit(self, slug: str, body: dict[str, Any],
                     on_send: Callable[[], None] = _nothing) -> str:
        """POST once; the task id, or the classified reason there is none.

        `on_send` is called (once) just before the body leaves: what it writes is on disk
        before the provider can have the request. A transport that does not trace (a test's
        MockTransport) gets it called before the request is handed over.
        """
        url = f"{self._base}/v3/async/{slug}"
        sending = _SendHook(on_send)
        traced = _traces(self._http)
        try:
            request = self._http.build_request("POST", url, json=body,
                                               extensions={"trace": sending.trace})
            if not traced:
                sending.fire()
            async with asyncio.timeout(self._submit_ceiling):
                response = await self._http.send(request, auth=self._auth)
        except TimeoutError as exc:  # the whole attempt's ceiling (httpx's own are not these)
            if sending.fired:
                raise Ambiguous(f"no answer within {self._submit_ceiling:g} s",
                                reason="SUBMIT_CEILING") from exc
            raise NotAccepted(f"not sent within {self._submit_ceiling:g} s (no connection "
                              "was free)", reason="SUBMIT_CEILING") from exc
        except _CONNECT_ERRORS as exc:
            raise Unreachable(f"could not connect to {self._base} ({_cause(exc)})",
                              reason=type(exc).__name__) from exc
        except httpx.PoolTimeout as exc:
            raise NotAccepted(f"could not connect ({type(exc).__name__})",
                              reason=type(exc).__name__) from exc
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, UnicodeError) as exc:
            if sending.fired and not isinstance(exc, httpx.LocalProtocolError):
                raise Ambiguous(f"the request failed while being sent ({type(exc).__name__})",
                                reason=type(exc).__name__) from exc
            raise NotSent(f"the request could not be sent from here ({type(exc).__name__}: "
                          "an API key or URL that an HTTP request cannot carry?)",
                          reason=type(exc).__name__) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            if traced and not sending.fired:  # the body never left: no task can be made
                raise NotAccepted(f"the connection failed before the request was sent "
                                  f"({type(exc).__name__})", reason=type(exc).__name__) from exc
            raise Ambiguous(f"the connection failed after the request was sent "
                            f"({type(exc).__name__})", reason=type(exc).__name__) from exc
        if response.status_code != 200:
            raise self._hide_key(_classify_submit(response))
        try:
            task_id = response.json().get("task_id")
        except (ValueError, UnicodeDecodeError, AttributeError):
            task_id = None
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)  # loose types, as elsewhere in this API
        if not isinstance(task_id, str) or not task_id.strip():
            raise Ambiguous("the provider answered 200 without a task id; a task may have "
                            "been made", reason="NO_TASK_ID", status=200)
        return task_id.strip()

    async def result(self, task_id: str) -> TaskState:
        """GET task-result once."""
        url = f"{self._base}/v3/async/task-result"
        try:
            response = await self._http.get(url, params={"task_id": task_id}, auth=self._auth)
        except _CONNECT_ERRORS as exc:
            raise ReadUnreachable(f"could not connect to {self._base} ({_cause(exc)})",
                                  reason=type(exc).__name__) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Transient(f"task-result failed ({type(exc).__name__})",
                            reason=type(exc).__name__) from exc
        if response.status_code != 200:
            raise self._hide_key(_classify_read(response))
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise Transient("task-result answered with something that is not JSON",
                            reason="BAD_RESULT") from exc
        return parse_task(task_id, body)

    async def download(self, url: str, dest: Path,
                       should_stop: Callable[[], bool] = lambda: False) -> Downloaded:
        """Stream a result URL into `dest` (no API key sent), hashing as it goes.

        UrlExpired for 403/404 from storage, Transient for anything that may work next time
        (including fewer bytes than Content-Length promised).
        """
        digest = hashlib.sha256()
        size = 0
        try:
            # Storage often answers through a redirect (a CDN); the key is never sent there.
            async with self._http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code in (403, 404, 410):
                    raise UrlExpired(f"the result URL was refused (HTTP {response.status_code})",
                                     status=response.status_code)
                if response.status_code != 200:
                    raise Transient(f"the download answered HTTP {response.status_code}",
                                    status=response.status_code)
                # Content-Length counts encoded bytes; only compare it when nothing is encoded.
                expected = None if response.headers.get("content-encoding") else \
                    response.headers.get("content-length")
                with dest.open("wb") as handle:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        if should_stop():
                            raise Transient("download stopped", reason="STOPPED")
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                if expected is not None and expected.isdigit() and int(expected) != size:
                    raise Transient(f"the download was cut short ({size} of {expected} bytes)",
                                    reason="TRUNCATED")
        except (httpx.TransportError, httpx.DecodingError, httpx.TooManyRedirects) as exc:
            raise Transient(f"the download failed after {size} bytes ({type(exc).__name__})",
                            reason=type(exc).__name__) from exc
        return Downloaded(dest, size, digest.hexdigest())

