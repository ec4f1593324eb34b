"""What the server does for any HTTP client before a route sees the request.

Clients nobody here wrote reach the simulator in ways our own client never does:
- a base URL ending in `/` joined with `/v3/...` asks for `//v3/...`, and some append a `/`
  to the path; the routers' nginx merges slashes, so the simulator does too (and serves a
  trailing slash instead of redirecting: urllib does not follow a 307 for a POST);
- a browser page sends a CORS preflight (OPTIONS, no Authorization) before its POST, and can
  only read an answer that carries `Access-Control-Allow-Origin`; the API and the video URLs
  allow any origin (the admin routes do not, so a web page cannot read or change the knobs);
- a client sending `Expect: 100-continue` holds its body back until told to go on; when the
  answer comes first (a 401, a 404), it must say `Connection: close`, or a client that keeps
  the connection has its next request read as the withheld body (RFC 9110, 10.1.1).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SLASHES = re.compile(r"/{2,}")
_CORS_PREFIXES = ("/v3/", "/_simulator/files/")
_EXPOSED = b"Retry-After, Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"
PREFLIGHT_MAX_AGE = b"600"


def tidy_path(path: str) -> str:
    """`//v3/async/x/` -> `/v3/async/x`: runs of slashes merged, a trailing one dropped."""
    tidy = _SLASHES.sub("/", path)
    return tidy[:-1] if len(tidy) > 1 and tidy.endswith("/") else tidy


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def serve(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Tidy the path, answer CORS preflights, and mark early answers to Expect as closing."""
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    path = tidy_path(scope["path"])
    if path != scope["path"]:
        scope = {**scope, "path": path, "raw_path": path.encode("utf-8")}
    cors = path.startswith(_CORS_PREFIXES) and _header(scope, b"origin") is not None
    if scope["method"] == "OPTIONS" and path.startswith(_CORS_PREFIXES):
        await _preflight(scope, send)
        return
    expecting = (_header(scope, b"expect") or b"").lower() == b"100-continue"
    if not cors and not expecting:
        await app(scope, receive, send)
        return
    body_done = False

    async def watched_receive() -> Message:
        nonlocal body_done
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body_done = True
        return message

    async def marked_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", ()))
            if cors:
                headers += [(b"access-control-allow-origin", b"*"),
                            (b"access-control-expose-headers", _EXPOSED)]
            if expecting and not body_done:
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    await app(scope, watched_receive, marked_send)


async def _preflight(scope: Scope, send: Send) -> None:
    """204 allowing any origin, GET/HEAD/POST, and whatever headers the page asked for."""
    asked = _header(scope, b"access-control-request-headers") or b"authorization, content-type"
    headers = [(b"allow", b"GET, HEAD, POST, OPTIONS"),
               (b"access-control-allow-origin", b"*"),
               (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
               (b"access-control-allow-headers", asked),
               (b"access-control-max-age", PREFLIGHT_MAX_AGE),
               (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
