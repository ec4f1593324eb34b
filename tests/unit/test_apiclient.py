from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from kling_pipeline.run.apiclient import (
    FAILED,
    PENDING,
    PROCESSING,
    QUEUED,
    SUCCEED,
    Ambiguous,
    ApiError,
    EndpointRefused,
    KlingClient,
    NotAccepted,
    ReadUnreachable,
    Refused,
    TaskNotFound,
    Transient,
    Unreachable,
    UrlExpired,
    parse_retry_after,
    parse_task,
)
from kling_pipeline.run.apiclient import AccountProblem as Account

KEY = "sk-live-ZZ9-plural-z-alpha-4242"
BASE = "https://router.example/"
SLUG = "kling-v3.0-pro-t2v"
BODY: dict[str, Any] = {"prompt": "a lighthouse at dusk", "duration": 5}
VIDEO_URL = "https://storage.example/out/t-1.mp4?X-Amz-Expires=3600&X-Amz-Signature=abc"

Handler = Callable[[httpx.Request], httpx.Response]
T = TypeVar("T")


class Recorder:
    """A MockTransport handler that answers with a fixed response (or raises) and keeps requests."""

    def __init__(self, answer: httpx.Response | Exception | Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, httpx.Response):
            return self.answer
        return self.answer(request)


def run(handler: Handler, call: Callable[[KlingClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await call(KlingClient(http, BASE, KEY))

    return asyncio.run(main())


def submit(handler: Handler) -> str:
    return run(handler, lambda client: client.submit(SLUG, BODY))


def result(handler: Handler, task_id: str = "t-1") -> Any:
    return run(handler, lambda client: client.result(task_id))


def error(status: int, reason: str = "", message: str = "",
          headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"code": status, "reason": reason, "message": message or reason.lower(),
            "metadata": {}}
    return httpx.Response(status, json=body, headers=headers)


def html(status: int, title: str) -> httpx.Response:
    page = f"<html><head><title>{status} {title}</title></head><body><h1>{title}</h1></body></html>"
    return httpx.Response(status, text=page, headers={"content-type": "text/html"})


def raised(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    exc = caught.value
    assert KEY not in str(exc) and KEY not in repr(exc)
    assert KEY not in exc.reason
    return exc


def task_body(status: str = "TASK_STATUS_PROCESSING", **task: Any) -> dict[str, Any]:
    videos = task.pop("videos", [])
    return {"task": {"task_id": "t-1", "task_type": SLUG, "status": status, "reason": "",
                     **task},
            "extra": {"seed": "7", "debug_info": {"submit_time_ms": "1"}},
            "images": [], "audios": [], "videos": videos}


# -- submit: a 200 --------------------------------------------------------------------------------

def test_submit_posts_the_body_once_with_the_key_and_returns_the_task_id() -> None:
    recorder = Recorder(httpx.Response(200, json={"task_id": " t-123 "}))
    assert submit(recorder) == "t-123"
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://router.example/v3/async/kling-v3.0-pro-t2v"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == BODY


@pytest.mark.parametrize("answer", [
    httpx.Response(200, json={}),
    httpx.Response(200, json={"task_id": ""}),
    httpx.Response(200, json={"task_id": "   "}),
    httpx.Response(200, json={"task_id": None}),
    httpx.Response(200, json={"data": {"task_id": "t-1"}}),
    httpx.Response(200, json=["t-1"]),
    httpx.Response(200, text="OK"),
    httpx.Response(200, text="<html>gateway</html>", headers={"content-type": "text/html"}),
    httpx.Response(200, content=b"\xff\xfe\x00garbage"),
])
def test_a_200_without_a_task_id_is_ambiguous(answer: httpx.Response) -> None:
    exc = raised(lambda: submit(Recorder(answer)))
    assert type(exc) is Ambiguous
    assert (exc.reason, exc.status, exc.retry_after) == ("NO_TASK_ID", 200, None)


# -- submit: every row of the error table ---------------------------------------------------------

SUBMIT_ROWS: list[tuple[httpx.Response, type[ApiError], str, int]] = [
    (error(400, "INVALID_REQUEST_BODY"), Refused, "INVALID_REQUEST_BODY", 400),
    (error(400, "INVALID_IMAGE_FORMAT"), Refused, "INVALID_IMAGE_FORMAT", 400),
    (error(400, "IMAGE_FILE_EXCEEDS_MAX_SIZE"), Refused, "IMAGE_FILE_EXCEEDS_MAX_SIZE", 400),
    (error(400, "INVALID_IMAGE_SIZE"), Refused, "INVALID_IMAGE_SIZE", 400),
    (error(400, "ILLEGAL_PROMPT"), Refused, "ILLEGAL_PROMPT", 400),
    (error(400, "ILLEGAL_IMAGE_CONTENT"), Refused, "ILLEGAL_IMAGE_CONTENT", 400),
    (error(400, "BILLING_BALANCE_NOT_ENOUGH"), Account, "BILLING_BALANCE_NOT_ENOUGH", 400),
    (error(400, "MISSING_API_KEY"), Account, "MISSING_API_KEY", 400),
    (error(401, "MISSING_API_KEY"), Account, "MISSING_API_KEY", 401),
    (httpx.Response(401), Account, "HTTP_401", 401),
    (error(403, "INVALID_API_KEY"), Account, "INVALID_API_KEY", 403),
    (error(403, "API_NOT_ALLOWED"), EndpointRefused, "API_NOT_ALLOWED", 403),
    (error(403, "FEATURE_NOT_ALLOWED"), Refused, "FEATURE_NOT_ALLOWED", 403),
    (error(404, "API_NOT_FOUND"), Refused, "API_NOT_FOUND", 404),
    (error(429, "RATE_LIMIT_EXCEEDED"), NotAccepted, "RATE_LIMIT_EXCEEDED", 429),
    (error(500, "CREATE_TASK_FAILED"), NotAccepted, "CREATE_TASK_FAILED", 500),
    (error(503, "SERVICE_UNAVAILABLE"), NotAccepted, "SERVICE_UNAVAILABLE", 503),
    (html(503, "Service Unavailable"), NotAccepted, "HTTP_503", 503),
    (error(500, "GET_RESULT_FAILED"), Ambiguous, "GET_RESULT_FAILED", 500),
    (error(500, "INTERNAL_ERROR"), Ambiguous, "INTERNAL_ERROR", 500),
    (httpx.Response(500, text="Internal Server Error"), Ambiguous, "HTTP_500", 500),
    (html(502, "Bad Gateway"), Ambiguous, "HTTP_502", 502),
    (html(504, "Gateway Time-out"), Ambiguous, "HTTP_504", 504),
]


@pytest.mark.parametrize(("answer", "cls", "reason", "status"), SUBMIT_ROWS,
                         ids=[f"{row[3]}-{row[2]}" for row in SUBMIT_ROWS])
def test_submit_errors_follow_the_table(answer: httpx.Response, cls: type[ApiError],
                                        reason: str, status: int) -> None:
    recorder = Recorder(answer)
    exc = raised(lambda: submit(recorder))
    assert type(exc) is cls
    assert (exc.reason, exc.status, exc.retry_after) == (reason, status, None)
    assert reason in str(exc)
    assert len(recorder.requests) == 1


def test_the_message_of_the_error_body_is_kept() -> None:
    exc = raised(lambda: submit(Recorder(error(400, "ILLEGAL_PROMPT", "prompt is not allowed")
                                         )))
    assert str(exc) == "ILLEGAL_PROMPT: prompt is not allowed"


def test_gateway_errors_say_a_task_may_have_been_made() -> None:
    exc = raised(lambda: submit(Recorder(html(502, "Bad Gateway"))))
    assert "HTTP_502: Bad Gateway" in str(exc) and "may have been made" in str(exc)


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(("answer", "cls"), [
    (error(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "7"}), NotAccepted),
    (error(503, "", headers={"Retry-After": "7"}), NotAccepted),
    (error(500, "CREATE_TASK_FAILED", headers={"Retry-After": "7.0"}), NotAccepted),
])
def test_retry_after_in_seconds_is_kept_where_a_retry_is_allowed(answer: httpx.Response,
                                                                  cls: type[ApiError]) -> None:
    exc = raised(lambda: submit(Recorder(answer)))
    assert type(exc) is cls and exc.retry_after == 7.0


def test_retry_after_as_an_http_date() -> None:
    answer = error(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": http_date(120)})
    exc = raised(lambda: submit(Recorder(answer)))
    assert type(exc) is NotAccepted
    assert exc.retry_after is not None and 110 <= exc.retry_after <= 121


@pytest.mark.parametrize("header", [None, "", "soon", "Mon, 99 Foo 2020"])
def test_a_429_without_a_usable_retry_after(header: str | None) -> None:
    headers = {} if header is None else {"Retry-After": header}
    exc = raised(lambda: submit(Recorder(error(429, "RATE_LIMIT_EXCEEDED", headers=headers))))
    assert type(exc) is NotAccepted and exc.status == 429 and exc.retry_after is None


def test_retry_after_on_a_refusal_is_not_an_invitation() -> None:
    exc = raised(lambda: submit(Recorder(error(400, "ILLEGAL_PROMPT",
                                               headers={"Retry-After": "5"}))))
    assert type(exc) is Refused and exc.retry_after is None


# -- submit: other shapes of error bodies ---------------------------------------------------------

@pytest.mark.parametrize(("answer", "cls", "reason", "text"), [
    (httpx.Response(400, json={"error": {"message": "duration must be 5 or 10"}}), Refused,
     "HTTP_400", "HTTP_400: duration must be 5 or 10"),
    (httpx.Response(400, json={"error": {"code": "ILLEGAL_PROMPT", "message": "no"}}), Refused,
     "ILLEGAL_PROMPT", "ILLEGAL_PROMPT: no"),
    (httpx.Response(403, json={"error": {"type": "INVALID_API_KEY"}}), Account,
     "INVALID_API_KEY", "INVALID_API_KEY: Forbidden"),
    (httpx.Response(400, json={"error": "bad field: mode"}), Refused, "HTTP_400",
     "HTTP_400: bad field: mode"),
    (httpx.Response(400, text="bad request, sorry"), Refused, "HTTP_400", "HTTP_400: Bad Request"),
    (httpx.Response(400, json=["not", "a", "mapping"]), Refused, "HTTP_400",
     "HTTP_400: Bad Request"),
    (httpx.Response(400, json={"reason": "ILLEGAL_PROMPT"}), Refused, "ILLEGAL_PROMPT",
     "ILLEGAL_PROMPT: Bad Request"),
    (httpx.Response(404, json={"message": "no such model"}), Refused, "HTTP_404",
     "HTTP_404: no such model"),
    (html(403, "Forbidden"), Refused, "HTTP_403", "HTTP_403: Forbidden"),
])
def test_error_bodies_of_other_shapes(answer: httpx.Response, cls: type[ApiError], reason: str,
                                      text: str) -> None:
    exc = raised(lambda: submit(Recorder(answer)))
    assert type(exc) is cls and exc.reason == reason and str(exc) == text


def test_a_long_error_message_is_cut() -> None:
    exc = raised(lambda: submit(Recorder(error(400, "INVALID_REQUEST_BODY", "x" * 5000))))
    assert len(str(exc)) < 600


# -- submit: transport errors ---------------------------------------------------------------------

def request_for(url: str = BASE) -> httpx.Request:
    return httpx.Request("POST", url)


@pytest.mark.parametrize(("failure", "cls"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), Unreachable),
    (httpx.ConnectTimeout("timed out"), Unreachable),
    (httpx.PoolTimeout("no connection free"), NotAccepted),
    (httpx.ReadTimeout("timed out"), Ambiguous),
    (httpx.ReadError("[Errno 104] Connection reset by peer"), Ambiguous),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), Ambiguous),
    (httpx.WriteError("[Errno 32] Broken pipe"), Ambiguous),
    (httpx.WriteTimeout("timed out"), Ambiguous),
])
def test_submit_transport_errors(failure: httpx.TransportError, cls: type[ApiError]) -> None:
    recorder = Recorder(failure)
    exc = raised(lambda: submit(recorder))
    assert type(exc) is cls
    name = type(failure).__name__
    assert (exc.reason, exc.status, exc.retry_after) == (name, None, None)
    assert name in str(exc)
    assert exc.__cause__ is failure
    assert len(recorder.requests) == 1


# -- submit: the moment of sending ----------------------------------------------------------------

def test_on_send_comes_after_the_headers_and_before_the_body_over_real_http() -> None:
    """A loopback server that has the request's headers and none of its body when `on_send`
    runs, and the body only after it returned: the record is made while no task can exist,
    and nothing runs between it and the body leaving (`on_send` is synchronous)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    headers_in, recorded = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            seen["body before on_send"] = rest
            headers_in.set()
            recorded.wait(5)
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            while len(rest) < length:
                rest += conn.recv(65536)
            seen["body"] = json.loads(rest)
            answer = b'{"task_id": "t-1"}'
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(answer), answer))

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def on_send() -> None:
        seen["headers in at on_send"] = headers_in.wait(5)
        time.sleep(0.05)  # a body that were already on its way would arrive meanwhile
        recorded.set()

    async def main() -> str:
        async with httpx.AsyncClient() as http:
            client = KlingClient(http, f"http://127.0.0.1:{port}", KEY)
            return await client.submit(SLUG, BODY, on_send=on_send)

    try:
        assert asyncio.run(main()) == "t-1"
    finally:
        listener.close()
        server.join(5)
    assert seen == {"headers in at on_send": True, "body before on_send": b"", "body": BODY}


class TracingTransport(httpx.AsyncHTTPTransport):
    """An httpcore transport as far as `submit` can tell, that fails at a chosen moment."""

    def __init__(self, failure: httpx.TransportError, body_started: bool) -> None:
        super().__init__()
        self.failure, self.body_started = failure, body_started

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace = request.extensions["trace"]
        await trace("http11.send_request_headers.started", {"request": request})
        if self.body_started:
            await trace("http11.send_request_body.started", {"request": request})
        raise self.failure


@pytest.mark.parametrize("failure", [
    httpx.ReadError("[Errno 104] Connection reset by peer"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.WriteError("[Errno 32] Broken pipe"),
])
@pytest.mark.parametrize("body_started", [False, True])
def test_a_connection_lost_before_the_body_left_is_not_ambiguous(
        failure: httpx.TransportError, body_started: bool) -> None:
    """Headers alone make no task: a try that failed before the body started may be sent
    again (NotAccepted), one that failed after may have been billed (Ambiguous)."""
    sent: list[bool] = []

    async def main() -> None:
        async with httpx.AsyncClient(transport=TracingTransport(failure, body_started)) as http:
            await KlingClient(http, BASE, KEY).submit(SLUG, BODY,
                                                      on_send=lambda: sent.append(True))

    exc = raised(lambda: asyncio.run(main()))
    assert type(exc) is (Ambiguous if body_started else NotAccepted)
    assert sent == ([True] if body_started else [])
    assert exc.__cause__ is failure



class SilentServer:
    """A loopback server that takes every connection and the request on it, and never answers
    (a provider that is stuck, or drips its answer slower than any timeout notices)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.received = threading.Event()  # some request bytes came in
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                self.received.set()

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


def test_a_post_without_an_answer_within_the_ceiling_is_ambiguous() -> None:
    """The body left and no answer came within the ceiling: a task may exist (Ambiguous),
    and the attempt ends there instead of outlasting the claim of its key."""
    server = SilentServer()
    sent: list[bool] = []

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            client = KlingClient(http, server.url, KEY, submit_ceiling=0.3)
            await client.submit(SLUG, BODY, on_send=lambda: sent.append(True))

    started = time.monotonic()
    try:
        exc = raised(lambda: asyncio.run(main()))
    finally:
        server.close()
    assert type(exc) is Ambiguous and exc.reason == "SUBMIT_CEILING"
    assert "no answer within 0.3 s" in str(exc)
    assert sent == [True] and server.received.is_set()
    assert time.monotonic() - started < 5


def test_a_post_that_waits_past_the_ceiling_for_a_connection_is_not_accepted() -> None:
    """The only connection is taken (by a POST waiting for its answer): the next POST waits
    for it, and at the ceiling ends without its body ever leaving: NotAccepted, may be sent
    again, and its `on_send` never ran."""
    server = SilentServer()
    first: list[bool] = []
    second: list[bool] = []

    async def main() -> tuple[BaseException | None, BaseException | None]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as http:
            holder = asyncio.create_task(KlingClient(http, server.url, KEY, submit_ceiling=2.0)
                                         .submit(SLUG, BODY, on_send=lambda: first.append(True)))
            while not first:  # the first one has the connection and has sent
                await asyncio.sleep(0.01)
            waiting = KlingClient(http, server.url, KEY, submit_ceiling=0.3)
            late = await asyncio.gather(
                waiting.submit(SLUG, BODY, on_send=lambda: second.append(True)),
                return_exceptions=True)
            held = await asyncio.gather(holder, return_exceptions=True)
            return late[0], held[0]

    try:
        late, held = asyncio.run(main())
    finally:
        server.close()
    assert type(late) is NotAccepted and late.reason == "SUBMIT_CEILING", late
    assert "not sent within 0.3 s" in str(late)
    assert second == []
    assert type(held) is Ambiguous and first == [True]


# -- task-result ----------------------------------------------------------------------------------

def test_result_asks_with_the_key_and_the_task_id() -> None:
    recorder = Recorder(httpx.Response(200, json=task_body(eta=42, progress_percent=37)))
    state = result(recorder, "t-9 &x")
    [request] = recorder.requests
    assert request.method == "GET"
    assert request.url.path == "/v3/async/task-result"
    assert request.url.params["task_id"] == "t-9 &x"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert (state.status, state.progress, state.eta, state.video_url) == (PROCESSING, 37, 42.0,
                                                                          None)


@pytest.mark.parametrize(("status", "expected"), [
    ("TASK_STATUS_QUEUED", QUEUED), ("TASK_STATUS_PROCESSING", PROCESSING),
    ("TASK_STATUS_SUCCEED", SUCCEED), ("TASK_STATUS_FAILED", FAILED),
])
def test_every_task_status(status: str, expected: str) -> None:
    assert parse_task("t-1", task_body(status)).status == expected


@pytest.mark.parametrize(("eta", "progress", "expected_eta", "expected_progress"), [
    (42, 37, 42.0, 37),
    ("42", "37", 42.0, 37),
    ("12.5", "99.9", 12.5, 99),
    (0, 0, 0.0, 0),
    (None, None, None, None),
    ("", "", None, None),
    ("soon", "half", None, None),
    ([], {}, None, None),
    ("NaN", "NaN", None, None),
    (float("inf"), "Infinity", None, None),
])
def test_loose_numbers_are_normalised(eta: Any, progress: Any, expected_eta: float | None,
                                      expected_progress: int | None) -> None:
    state = parse_task("t-1", task_body(eta=eta, progress_percent=progress))
    assert state.eta == expected_eta and state.progress == expected_progress


def test_a_nan_progress_from_the_wire_is_not_a_crash() -> None:
    raw = b'{"task": {"status": "TASK_STATUS_PROCESSING", "eta": NaN, "progress_percent": NaN}}'
    state = result(Recorder(httpx.Response(200, content=raw)))
    assert (state.status, state.eta, state.progress) == (PROCESSING, None, None)


def test_missing_fields_take_defaults() -> None:
    state = parse_task("t-arg", {"task": {"status": "TASK_STATUS_QUEUED"}})
    assert state.task_id == "t-arg"
    assert (state.progress, state.eta, state.reason, state.video_url) == (None, None, "", None)


@pytest.mark.parametrize("ttl", ["3600", 3600, "0", 0, None])
def test_succeed_with_a_video_url(ttl: Any) -> None:
    video = {"video_url": VIDEO_URL, "video_url_ttl": ttl, "video_type": "mp4"}
    state = result(Recorder(httpx.Response(200, json=task_body(
        "TASK_STATUS_SUCCEED", progress_percent="100", eta="0", videos=[video]))))
    assert (state.task_id, state.status, state.progress, state.video_url) == (
        "t-1", SUCCEED, 100, VIDEO_URL)


def test_the_first_usable_video_url_wins() -> None:
    videos: list[Any] = ["x", {"video_url": None}, {"video_url": ""},
                         {"video_url": "ftp://old.example/a.mp4"}, {"video_type": "mp4"},
                         {"video_url": VIDEO_URL}, {"video_url": "https://second.example/b"}]
    assert parse_task("t-1", task_body("TASK_STATUS_SUCCEED", videos=videos)).video_url \
        == VIDEO_URL


@pytest.mark.parametrize("videos", [[], None, "https://x.example/a.mp4", [{"video_url": ""}],
                                    [{"video_url": 42}], [{"url": VIDEO_URL}]])
def test_succeed_without_a_video_url_has_none(videos: Any) -> None:
    body = task_body("TASK_STATUS_SUCCEED")
    body["videos"] = videos
    state = result(Recorder(httpx.Response(200, json=body)))
    assert state.status == SUCCEED and state.video_url is None


def test_failed_keeps_its_reason() -> None:
    state = result(Recorder(httpx.Response(200, json=task_body(
        "TASK_STATUS_FAILED", reason="content moderation: ILLEGAL_IMAGE_CONTENT"))))
    assert state.status == FAILED and state.reason == "content moderation: ILLEGAL_IMAGE_CONTENT"


def test_failed_without_a_reason_has_an_empty_one() -> None:
    body = task_body("TASK_STATUS_FAILED")
    body["task"]["reason"] = None
    assert parse_task("t-1", body).reason == ""


@pytest.mark.parametrize(("task", "said"), [
    ({"status": "TASK_STATUS_UNKNOWN"}, "TASK_STATUS_UNKNOWN"),  # in the provider's JS SDK
    ({"status": "TASK_STATUS_RUNNING"}, "TASK_STATUS_RUNNING"), ({}, "no status"),
    ({"status": None}, "no status"), ({"status": ""}, "no status"),
])
def test_a_status_we_do_not_know_is_pending_not_an_error(task: dict[str, Any],
                                                          said: str) -> None:
    """Issue 9, item 13: an unknown status means "ask again", not a failed read."""
    state = parse_task("t-1", {"task": task})
    assert (state.status, state.raw_status) == (PENDING, said)


@pytest.mark.parametrize("body", [
    None, [], "TASK_STATUS_SUCCEED", {}, {"task": None}, {"task": "x"},
    {"status": "TASK_STATUS_SUCCEED"},
])
def test_a_body_that_is_not_a_task_is_transient(body: Any) -> None:
    with pytest.raises(Transient) as caught:
        parse_task("t-1", body)
    assert caught.value.reason == "BAD_RESULT"


@pytest.mark.parametrize("answer", [
    httpx.Response(200, text="<html>captive portal</html>", headers={"content-type": "text/html"}),
    httpx.Response(200, text=""),
    httpx.Response(200, content=b"\xff\xfe\xfa"),
    httpx.Response(200, json={"tasks": []}),
])
def test_result_200_that_is_not_a_task_is_transient(answer: httpx.Response) -> None:
    exc = raised(lambda: result(Recorder(answer)))
    assert type(exc) is Transient and exc.reason == "BAD_RESULT"


RESULT_ROWS: list[tuple[httpx.Response, type[ApiError], str, int, float | None]] = [
    (error(400, "MISSING_API_KEY"), Account, "MISSING_API_KEY", 400, None),
    (error(401, "MISSING_API_KEY"), Account, "MISSING_API_KEY", 401, None),
    (httpx.Response(401), Account, "HTTP_401", 401, None),
    (error(403, "INVALID_API_KEY"), Account, "INVALID_API_KEY", 403, None),
    (error(403, "API_NOT_ALLOWED"), Account, "API_NOT_ALLOWED", 403, None),
    (error(403, "FEATURE_NOT_ALLOWED"), Account, "FEATURE_NOT_ALLOWED", 403, None),
    (html(403, "Forbidden"), Account, "HTTP_403", 403, None),
    (error(400, "BILLING_BALANCE_NOT_ENOUGH"), Account, "BILLING_BALANCE_NOT_ENOUGH", 400, None),
    (error(404, "TASK_NOT_FOUND"), TaskNotFound, "TASK_NOT_FOUND", 404, None),
    (error(404, "API_NOT_FOUND"), TaskNotFound, "API_NOT_FOUND", 404, None),
    (httpx.Response(404, text="Not Found"), TaskNotFound, "HTTP_404", 404, None),
    (error(429, "RATE_LIMIT_EXCEEDED"), Transient, "RATE_LIMIT_EXCEEDED", 429, None),
    (error(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "3"}), Transient,
     "RATE_LIMIT_EXCEEDED", 429, 3.0),
    (error(500, "GET_RESULT_FAILED"), Transient, "GET_RESULT_FAILED", 500, None),
    (httpx.Response(500), Transient, "HTTP_500", 500, None),
    (html(502, "Bad Gateway"), Transient, "HTTP_502", 502, None),
    (error(503, "", headers={"Retry-After": "30"}), Transient, "HTTP_503", 503, 30.0),
    (html(504, "Gateway Time-out"), Transient, "HTTP_504", 504, None),
    (error(400, "INVALID_REQUEST_BODY"), Transient, "INVALID_REQUEST_BODY", 400, None),
]


@pytest.mark.parametrize(("answer", "cls", "reason", "status", "retry_after"), RESULT_ROWS,
                         ids=[f"{row[3]}-{row[2]}-{row[4]}" for row in RESULT_ROWS])
def test_result_errors_follow_the_table(answer: httpx.Response, cls: type[ApiError], reason: str,
                                        status: int, retry_after: float | None) -> None:
    exc = raised(lambda: result(Recorder(answer)))
    assert type(exc) is cls
    assert (exc.reason, exc.status, exc.retry_after) == (reason, status, retry_after)


@pytest.mark.parametrize("failure", [
    httpx.ConnectError("refused"), httpx.ConnectTimeout("t"), httpx.ReadTimeout("t"),
    httpx.ReadError("reset"), httpx.RemoteProtocolError("dropped"), httpx.WriteError("pipe"),
    httpx.PoolTimeout("t"),
])
def test_result_transport_errors_are_transient(failure: httpx.TransportError) -> None:
    exc = raised(lambda: result(Recorder(failure)))
    assert isinstance(exc, Transient) and exc.reason == type(failure).__name__
    assert isinstance(exc, ReadUnreachable) == isinstance(failure, httpx.ConnectError
                                                          | httpx.ConnectTimeout)
    assert exc.__cause__ is failure


# -- the key stays secret -------------------------------------------------------------------------

def test_the_key_is_not_in_the_client_repr() -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(Recorder(
                httpx.Response(200)))) as http:
            client = KlingClient(http, BASE, KEY)
            assert KEY not in repr(client) and KEY not in str(client)
            assert KEY not in repr(vars(client))
            assert KEY not in repr(http) and KEY not in repr(http.headers)

    asyncio.run(main())


@pytest.mark.parametrize("answer", [
    error(401, "INVALID_API_KEY", f"the key {KEY} is not valid"),
    error(403, "INVALID_API_KEY", f"Bearer {KEY} rejected"),
    error(400, "ILLEGAL_PROMPT", f"request by {KEY} refused"),
    error(500, f"FAILED_FOR_{KEY}", "internal"),
    httpx.Response(429, json={"error": {"message": f"slow down, {KEY}"}}),
    httpx.Response(502, text=f"upstream rejected key {KEY}"),
])
def test_a_key_echoed_by_the_provider_is_not_repeated(answer: httpx.Response) -> None:
    raised(lambda: submit(Recorder(answer)))
    raised(lambda: result(Recorder(answer)))


def test_an_echoed_key_is_replaced_and_the_rest_kept() -> None:
    exc = raised(lambda: submit(Recorder(error(401, "INVALID_API_KEY",
                                               f"the key {KEY} is not valid"))))
    assert str(exc) == "INVALID_API_KEY: the key <api key> is not valid"


# -- download -------------------------------------------------------------------------------------

def download(handler: Handler, dest: Path, should_stop: Callable[[], bool] | None = None) -> Any:
    def call(client: KlingClient) -> Awaitable[Any]:
        if should_stop is None:
            return client.download(VIDEO_URL, dest)
        return client.download(VIDEO_URL, dest, should_stop)

    return run(handler, call)


def test_download_streams_to_a_file_without_the_key(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    recorder = Recorder(httpx.Response(200, content=data, headers={"content-type": "video/mp4"}))
    dest = tmp_path / "out.part"
    got = download(recorder, dest)
    assert (got.path, got.size, got.sha256) == (dest, len(data), hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    [request] = recorder.requests
    assert str(request.url) == VIDEO_URL
    assert "authorization" not in request.headers
    assert KEY not in str(request.headers) and KEY not in str(request.url)


CHUNK = 1 << 16


async def chunks(parts: list[bytes], then: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part
    if then is not None:
        raise then


def test_download_of_many_chunks(tmp_path: Path) -> None:
    parts = [bytes([n]) * 70_000 for n in range(5)]
    data = b"".join(parts)
    answer = httpx.Response(200, content=chunks(parts),
                            headers={"content-length": str(len(data))})
    got = download(Recorder(answer), tmp_path / "v.part")
    assert got.size == len(data) and got.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "v.part").read_bytes() == data


def test_download_of_an_empty_body(tmp_path: Path) -> None:
    got = download(Recorder(httpx.Response(200, content=b"")), tmp_path / "e.part")
    assert got.size == 0 and got.sha256 == hashlib.sha256(b"").hexdigest()


def test_content_length_of_an_encoded_body_is_not_compared(tmp_path: Path) -> None:
    data = b"frame " * 10_000
    packed = gzip.compress(data)
    answer = httpx.Response(200, content=packed, headers={"content-encoding": "gzip",
                                                          "content-length": str(len(packed))})
    got = download(Recorder(answer), tmp_path / "g.part")
    assert got.size == len(data) and got.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_refused_url_has_expired(tmp_path: Path, status: int) -> None:
    dest = tmp_path / "x.part"
    exc = raised(lambda: download(Recorder(httpx.Response(status, text="AccessDenied")), dest))
    assert type(exc) is UrlExpired and exc.status == status
    assert not dest.exists()


@pytest.mark.parametrize("status", [500, 502, 503, 429, 302, 206])
def test_other_statuses_are_transient(tmp_path: Path, status: int) -> None:
    dest = tmp_path / "x.part"
    exc = raised(lambda: download(Recorder(httpx.Response(status, text="nope")), dest))
    assert type(exc) is Transient and exc.status == status
    assert not dest.exists()


def test_a_body_shorter_than_its_content_length_is_truncated(tmp_path: Path) -> None:
    answer = httpx.Response(200, content=b"x" * 10, headers={"content-length": "1000"})
    exc = raised(lambda: download(Recorder(answer), tmp_path / "t.part"))
    assert type(exc) is Transient and exc.reason == "TRUNCATED"
    assert "10 of 1000" in str(exc)


def test_a_body_longer_than_its_content_length_is_not_trusted(tmp_path: Path) -> None:
    answer = httpx.Response(200, content=chunks([b"x" * 10, b"y" * 10]),
                            headers={"content-length": "10"})
    exc = raised(lambda: download(Recorder(answer), tmp_path / "t.part"))
    assert type(exc) is Transient and exc.reason == "TRUNCATED"


@pytest.mark.parametrize("failure", [httpx.ReadError("reset"), httpx.ReadTimeout("t"),
                                     httpx.RemoteProtocolError("peer closed connection")])
def test_a_connection_lost_mid_body_is_transient(tmp_path: Path,
                                                 failure: httpx.TransportError) -> None:
    answer = httpx.Response(200, content=chunks([b"a" * CHUNK, b"b" * CHUNK], then=failure),
                            headers={"content-length": str(5 * CHUNK)})
    exc = raised(lambda: download(Recorder(answer), tmp_path / "t.part"))
    assert type(exc) is Transient and exc.reason == type(failure).__name__
    assert f"after {2 * CHUNK} bytes" in str(exc)


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ConnectTimeout("t")])
def test_a_storage_host_out_of_reach_is_transient(tmp_path: Path,
                                                  failure: httpx.TransportError) -> None:
    exc = raised(lambda: download(Recorder(failure), tmp_path / "t.part"))
    assert type(exc) is Transient and exc.reason == type(failure).__name__


def test_should_stop_ends_the_download(tmp_path: Path) -> None:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    answer = httpx.Response(200, content=chunks([b"a" * CHUNK, b"b" * CHUNK, b"c" * CHUNK]))
    dest = tmp_path / "s.part"
    exc = raised(lambda: download(Recorder(answer), dest, should_stop))
    assert type(exc) is Transient and exc.reason == "STOPPED"
    assert len(asked) == 2 and dest.read_bytes() == b"a" * CHUNK


def test_should_stop_before_the_first_chunk(tmp_path: Path) -> None:
    answer = httpx.Response(200, content=b"abc")
    exc = raised(lambda: download(Recorder(answer), tmp_path / "s.part", lambda: True))
    assert type(exc) is Transient and exc.reason == "STOPPED"


# -- parse_retry_after ----------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("   ", None), ("soon", None),
    ("Mon, 32 Foo 2023 99:00:00 GMT", None),
    ("0", 0.0), ("7", 7.0), (" 7 ", 7.0), ("2.5", 2.5), ("-3", 0.0),
    (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
    (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),
    (email.utils.formatdate(NOW + 3600, localtime=True), 3600.0),
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# -- found in review ------------------------------------------------------------------------------

def test_a_download_follows_a_redirect_to_the_cdn_without_the_key(tmp_path: Path) -> None:
    data = b"video bytes" * 100

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            return httpx.Response(302, headers={"location": "https://cdn.example/t-1.mp4"})
        return httpx.Response(200, content=data)

    recorder = Recorder(answer)
    got = download(recorder, tmp_path / "out.part")
    assert got.size == len(data)
    assert [r.url.host for r in recorder.requests] == ["storage.example", "cdn.example"]
    assert all("authorization" not in r.headers for r in recorder.requests)


def test_a_task_id_sent_as_a_number_is_kept() -> None:
    assert submit(Recorder(httpx.Response(200, json={"task_id": 123456}))) == "123456"


def test_a_garbled_compressed_answer_to_a_submit_is_ambiguous() -> None:
    answer = httpx.Response(200, stream=httpx.ByteStream(b"not gzip at all"),
                            headers={"content-encoding": "gzip"})
    assert type(raised(lambda: submit(Recorder(answer)))) is Ambiguous


def test_a_garbled_compressed_task_result_is_transient() -> None:
    answer = httpx.Response(200, stream=httpx.ByteStream(b"not gzip at all"),
                            headers={"content-encoding": "gzip"})
    assert type(raised(lambda: result(Recorder(answer)))) is Transient


@pytest.mark.parametrize(("header", "seconds"), [("inf", 3600.0), ("99999", 3600.0),
                                                 ("nan", None), ("120", 120.0)])
def test_retry_after_is_bounded_to_an_hour(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_a_short_key_is_not_hunted_inside_words() -> None:
    answer = error(403, "INVALID_API_KEY", "The API key is not valid")

    async def call(client: KlingClient) -> str:
        return await client.submit(SLUG, BODY)

    async def main() -> ApiError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(Recorder(answer))) as http:
            try:
                await call(KlingClient(http, BASE, "k"))
            except ApiError as exc:
                return exc
        raise AssertionError("no error")

    assert "The API key is not valid" in str(asyncio.run(main()))


def test_the_ceiling_leaves_the_claims_expiry_a_margin() -> None:
    """A claim without a task id may be taken over after its expiry: one POST attempt must
    end well before it (the rest is for the moments around the POST and for clocks)."""
    from kling_pipeline.remote.claims import DEFAULT_EXPIRY
    from kling_pipeline.run.apiclient import SUBMIT_CEILING

    assert SUBMIT_CEILING * 2 <= DEFAULT_EXPIRY
