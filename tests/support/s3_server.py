"""A real S3 protocol server on loopback (moto's server mode), counting the requests it gets.

moto answers the S3 API over HTTP like AWS does; s3fs talks to it through
`--remote-endpoint-url`, with fake credentials in the environment. Nothing leaves the machine.
Conditional requests (`If-None-Match`, `If-Match`) are served one at a time, so that they are
atomic as on S3, and a test can ask for S3's faults of a conditional PUT (a 409 conflict, a
lost answer).
"""

from __future__ import annotations

import os
import threading
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

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, start: int) -> list[str]:
        with self._lock:
            return self.requests[start:]

    def _take(self, fault: str) -> bool:
        with self._lock:
            if getattr(self, fault) <= 0:
                return False
            setattr(self, fault, getattr(self, fault) - 1)
            return True


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


def _counting(app: Any, server: S3Server) -> Callable[..., Iterable[bytes]]:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        with server._lock:
            server.requests.append(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
                                   + (f"?{query}" if query else ""))
        if "HTTP_IF_NONE_MATCH" not in environ and "HTTP_IF_MATCH" not in environ:
            result: Iterable[bytes] = app(environ, start_response)
            return result
        # S3 promises that a conditional write is atomic; moto checks the condition and then
        # writes, in two steps, on a threaded server, so two racing `If-None-Match: *` PUTs
        # could both succeed here. One lock over the conditional requests keeps S3's promise.
        with server._conditional:
            return _conditional(app, server, environ, start_response)

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
        moto.stop()
        _reset_moto()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
