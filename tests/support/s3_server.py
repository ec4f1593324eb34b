"""A real S3 protocol server on loopback (moto's server mode), counting the requests it gets.

moto answers the S3 API over HTTP like AWS does; s3fs talks to it through
`--remote-endpoint-url`, with fake credentials in the environment. Nothing leaves the machine.
Conditional requests (`If-None-Match`, `If-Match`) are served one at a time, so that they are
atomic as on S3, and a test can ask for S3's faults of a conditional PUT (a 409 conflict, a
lost answer).

Off unless a test asks (`S3Server.hold`): an `S3Hold` stops chosen requests at a moment the
test picks (applied to moto but not yet answered, or not yet applied) and tells it they got
there, so that a test can kill -9 a client process between two requests of its own.

Off unless a bench asks (`S3Server.link`): a `Link` sends every answer's body through one
wire of a given speed, as a real remote's network would.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "fake-secret-value-7f3a9c1e",
            "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "team"


@dataclass
class S3Server:
    endpoint: str
    requests: list[str] = field(default_factory=list)  # "METHOD /path?query", in order
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Faults of conditional PUTs, for the next N of them: `conflicts` are answered 409
    # ConditionalRequestConflict without being applied (S3's answer to one that meets another
    # conditional write of the key in flight); `lost_answers` are applied, then answered 500
    # (an answer lost on the way back: the client sends the PUT again).
    conflicts: int = 0
    lost_answers: int = 0
    _conditional: threading.Lock = field(default_factory=threading.Lock)
    holds: list[S3Hold] = field(default_factory=list)  # none unless a test asks (`hold`)
    link: Link | None = None  # answers' bodies go through it when set (a bench's real wire)
    # An S3-compatible server older than conditional writes (an old MinIO): If-None-Match
    # and If-Match are dropped before moto sees them, so a "create" overwrites.
    ignores_conditions: bool = False

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, start: int) -> list[str]:
        with self._lock:
            return self.requests[start:]

    def hold(self, hold: S3Hold) -> S3Hold:
        """Hold (or watch) the requests `hold` matches from now on; returns it."""
        with self._lock:
            self.holds.append(hold)
        return hold

    def unhold(self, *holds: S3Hold) -> None:
        """Release these holds (all, when none is named) and forget them: what they hold goes
        on as each one says (`release` or `drop`)."""
        with self._lock:
            gone = [h for h in self.holds if not holds or h in holds]
            self.holds = [h for h in self.holds if h not in gone]
        for hold in gone:
            hold.release()

    def _holding(self, method: str, path: str, conditional: bool) -> list[S3Hold]:
        with self._lock:
            return [h for h in self.holds if h._wants(method, path, conditional)]

    def _take(self, fault: str) -> bool:
        with self._lock:
            if getattr(self, fault) <= 0:
                return False
            setattr(self, fault, getattr(self, fault) - 1)
            return True


HOLD_TIMEOUT = 60.0  # a held request goes on by itself after this long (no test waits so long)


@dataclass(eq=False)
class S3Hold:
    """Requests to hold: `method`, a path that contains `contains`, conditional (`If-None-Match`
    or `If-Match`) or not as `conditional` says (None: either); the `nth` such request only
    (None: every one).

    `applied=True`: the request is applied to moto first and held before its answer goes out
    (the change is made; the client does not know it yet). `applied=False`: held on arrival,
    before anything is applied. `block=False` only watches: `arrived` is set once the request
    reached that point (for `applied=True`, moto has answered it), and it goes on at once.

    `reached` counts the requests that got to the holding point; `release()` lets them go on;
    `drop()` lets them go on as if their client had died before the request was complete: an
    unapplied one is answered 503 and never applied (an applied one stays applied).
    """

    method: str
    contains: str
    conditional: bool | None = None
    applied: bool = True
    block: bool = True
    nth: int | None = None
    matched: int = 0  # matching requests seen
    reached: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    _go: threading.Event = field(default_factory=threading.Event)
    _dropped: bool = False

    def release(self) -> None:
        self._go.set()

    def drop(self) -> None:
        self._dropped = True
        self._go.set()

    def _wants(self, method: str, path: str, conditional: bool) -> bool:
        """Count a request (under the server's lock); whether this hold takes it."""
        if method != self.method or self.contains not in path or (
                self.conditional is not None and conditional != self.conditional):
            return False
        self.matched += 1
        return self.nth in (None, self.matched)

    def _stop_here(self, lock: threading.Lock) -> bool:
        """The request is at the holding point: say so, wait if blocking; True: drop it."""
        with lock:
            self.reached += 1
        self.arrived.set()
        if self.block:
            self._go.wait(HOLD_TIMEOUT)
        return self._dropped


@dataclass
class Link:
    """One wire of `rate` bytes a second that every answer's body shares, as a real remote's
    link does (loopback has none: a client there is bound by its CPU, not the network). A
    body goes out 64 kB at a time, each piece when the wire is free for it."""

    rate: float
    _free_at: float = 0.0  # time.monotonic() when the wire has sent what it was given
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def carry(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                for start in range(0, len(chunk), 1 << 16):
                    piece = chunk[start:start + (1 << 16)]
                    with self._lock:
                        now = time.monotonic()
                        self._free_at = max(self._free_at, now) + len(piece) / self.rate
                        wait = self._free_at - now
                    if wait > 0:
                        time.sleep(wait)
                    yield piece
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


def _s3_error(start_response: Any, status: str, code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _conditional(app: Any, server: S3Server, environ: dict[str, Any],
                 start_response: Any) -> Iterable[bytes]:
    put = environ["REQUEST_METHOD"] == "PUT"
    if put and server._take("conflicts"):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        return _s3_error(start_response, "409 Conflict", "ConditionalRequestConflict",
                         "A conflicting conditional operation is currently in progress "
                         "against this resource. Please try again.")
    if put and server._take("lost_answers"):
        b"".join(app(environ, lambda *args: None))
        return _s3_error(start_response, "500 Internal Server Error", "InternalError",
                         "We encountered an internal error. Please try again.")
    result: Iterable[bytes] = app(environ, start_response)
    return result


def _serve(app: Any, server: S3Server, environ: dict[str, Any],
           start_response: Any) -> Iterable[bytes]:
    if "HTTP_IF_NONE_MATCH" not in environ and "HTTP_IF_MATCH" not in environ:
        result: Iterable[bytes] = app(environ, start_response)
        return result
    # S3 promises that a conditional write is atomic; moto checks the condition and then
    # writes, in two steps, on a threaded server, so two racing `If-None-Match: *` PUTs
    # could both succeed here. One lock over the conditional requests keeps S3's promise.
    with server._conditional:
        return _conditional(app, server, environ, start_response)


def _held(app: Any, server: S3Server, holds: list[S3Hold], environ: dict[str, Any],
          start_response: Any) -> Iterable[bytes]:
    """Serve a request some holds want: the unapplied holds first (a drop answers 503 and
    applies nothing), then moto, its answer kept back while the applied holds hold."""
    for hold in (h for h in holds if not h.applied):
        if hold._stop_here(server._lock):
            with contextlib.suppress(OSError):  # its client may be gone
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            return _s3_error(start_response, "503 Service Unavailable", "SlowDown",
                             "the client is gone (test hold)")
    later = [h for h in holds if h.applied]
    if not later:
        return _serve(app, server, environ, start_response)
    answer: list[Any] = []

    def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer[:] = [status, headers]
        return lambda data: None

    result = _serve(app, server, environ, keep)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    for hold in later:
        hold._stop_here(server._lock)
    start_response(*answer)
    return [body]


def _counting(app: Any, server: S3Server) -> Callable[..., Iterable[bytes]]:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with server._lock:
            server.requests.append(f"{method} {path}" + (f"?{query}" if query else ""))
        if server.ignores_conditions:
            environ.pop("HTTP_IF_NONE_MATCH", None)
            environ.pop("HTTP_IF_MATCH", None)
        conditional = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
        holds = server._holding(method, path, conditional) if server.holds else []
        if holds:
            body = _held(app, server, holds, environ, start_response)
        else:
            body = _serve(app, server, environ, start_response)
        return body if server.link is None else server.link.carry(body)

    return wrapped


def _reset_moto() -> None:
    """moto keeps its buckets per process, not per server: a second test module's server
    would find the first one's bucket (what moto's own POST /moto-api/reset does)."""
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto on 127.0.0.1 (a free port), with the bucket BUCKET made, and FAKE_ENV set; its
    state is cleared before and after, so each user starts from an empty server."""
    import logging

    from moto.server import ThreadedMotoServer

    _reset_moto()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on stderr
    saved = {name: os.environ.get(name) for name in FAKE_ENV}
    os.environ.update(FAKE_ENV)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    server: S3Server | None = None
    try:
        host, port = moto.get_host_and_port()
        server = S3Server(f"http://{host}:{port}")
        wsgi = moto._server
        assert wsgi is not None
        wsgi.app = _counting(wsgi.app, server)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=server.endpoint, skip_instance_cache=True).mkdir(BUCKET)
        yield server
    finally:
        if server is not None:
            server.unhold()  # no request thread left waiting on a test that has ended
        moto.stop()
        _reset_moto()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
