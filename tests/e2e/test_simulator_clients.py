"""Clients nobody here wrote, against a real simulator over loopback.

Our own client is httpx; other people's use the standard library, curl-like raw HTTP, browsers
and Node. Each test does what such a client does (a base URL ending in "/", lowercase
"bearer", chunked bodies, Expect: 100-continue, Range requests of a media player, a kept-alive
pool) and checks the simulator serves it the way the real routers and S3 would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from support.required import missing
from support.simulator_fixtures import KEY, T2V, SimClient, probe, t2v_body


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, head_only: bool = False) -> Answer:
    """One HTTP/1.1 response from a socket (Content-Length bodies, as the simulator sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if status == 100:
        return Answer(status, headers, rest)  # rest is the start of the next response
    size = 0 if head_only or status in (204, 304) else int(headers.get("content-length", "0"))
    while len(rest) < size:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    assert len(rest) == size, "more bytes than Content-Length said"
    return Answer(status, headers, rest)


def closed(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def conn(server: str) -> Iterator[socket.socket]:
    parts = urlsplit(server)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        yield sock


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def finished_url(sim: SimClient, prompt: str = "a lighthouse at dusk") -> str:
    url: str = sim.wait(sim.submit(body=t2v_body(prompt)))["videos"][0]["video_url"]
    return url


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# --- the standard library's urllib -----------------------------------------------------------

def _urlopen(req: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_urllib_client_with_a_trailing_slash_base_runs_the_whole_lifecycle(sim: SimClient) -> None:
    """base "http://host:port/" + "/v3/async/...": the path starts with "//"; nginx merges the
    slashes, so the routers serve it (the simulator answered 404 NOT_FOUND before)."""
    base = sim.base_url + "/"
    body = json.dumps({"prompt": "urllib", "duration": 3.0, "negative_prompt": None}).encode()
    status, headers, raw = _urlopen(urllib.request.Request(
        base + "/v3/async/" + T2V, data=body, method="POST",
        headers={"Authorization": f"bearer  {KEY}",
                 "Content-Type": "application/json; charset=utf-8"}))
    assert status == 200, raw
    assert headers["content-type"] == "application/json"
    task_id = json.loads(raw)["task_id"]
    deadline = time.monotonic() + 20
    while True:
        status, _, raw = _urlopen(urllib.request.Request(
            f"{base}/v3/async/task-result/?task_id={quote(task_id, safe='')}&_={time.time()}",
            headers={"Authorization": f"Bearer {KEY}"}))
        assert status == 200, raw
        result = json.loads(raw)
        if result["task"]["status"] == "TASK_STATUS_SUCCEED":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    url = result["videos"][0]["video_url"]
    downloads = []
    for _ in range(2):  # the same URL fetched twice (a player, then a save)
        status, headers, data = _urlopen(urllib.request.Request(url))
        assert status == 200
        assert headers["content-type"] == "video/mp4"
        assert int(headers["content-length"]) == len(data)
        downloads.append(data)
    assert downloads[0] == downloads[1]
    assert probe(downloads[0]).duration == pytest.approx(3.0, abs=0.1)


def test_urllib_post_without_a_json_content_type_is_accepted(sim: SimClient) -> None:
    """urllib labels any body application/x-www-form-urlencoded unless told otherwise."""
    status, _, raw = _urlopen(urllib.request.Request(
        f"{sim.base_url}/v3/async/{T2V}", data=json.dumps(t2v_body("form label")).encode(),
        headers={"Authorization": f"Bearer {KEY}"}))
    assert status == 200, raw


def test_urllib_post_with_a_trailing_slash_is_served_not_redirected(sim: SimClient) -> None:
    """A 307 (starlette's slash redirect) is an HTTPError to urllib for a POST."""
    status, _, raw = _urlopen(urllib.request.Request(
        f"{sim.base_url}/v3/async/{T2V}/", data=json.dumps(t2v_body("slash")).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}))
    assert status == 200, raw
    assert sim.stats()["submissions_total"] == 1


# --- raw HTTP: what media players, download managers and other stacks send -------------------

def test_head_gives_the_size_and_is_not_a_download(sim: SimClient,
                                                    conn: socket.socket) -> None:
    url = finished_url(sim)
    whole = urllib.request.urlopen(url, timeout=30).read()
    conn.sendall(request("HEAD", path_of(url)))
    answer = read_answer(conn, head_only=True)
    assert answer.status == 200
    assert answer.headers["content-length"] == str(len(whole))
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"
    conn.sendall(request("GET", path_of(url)))  # same connection: HEAD sent no body bytes
    assert read_answer(conn).body == whole
    assert sim.stats()["downloads"] == 2


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-99", 0, 99),
    ("bytes=100-", 100, None),
    ("bytes=-100", -100, None),
    ("Bytes = 0-0", 0, 0),
])
def test_range_gives_206_with_the_right_content_range(sim: SimClient, conn: socket.socket,
                                                     header: str, first: int,
                                                     last: int | None) -> None:
    url = finished_url(sim)
    whole = urllib.request.urlopen(url, timeout=30).read()
    size = len(whole)
    conn.sendall(request("GET", path_of(url), headers={"Range": header}))
    answer = read_answer(conn)
    expected = whole[first:] if last is None else whole[first:last + 1]
    start = first % size
    assert answer.status == 206
    assert answer.body == expected
    assert answer.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/{size}"
    assert answer.headers["content-length"] == str(len(expected))
    assert answer.headers["content-type"] == "video/mp4"


def test_range_past_the_end_is_416_in_s3_words(sim: SimClient, conn: socket.socket) -> None:
    url = finished_url(sim)
    size = len(urllib.request.urlopen(url, timeout=30).read())
    conn.sendall(request("GET", path_of(url), headers={"Range": f"bytes={size}-"}))
    answer = read_answer(conn)
    assert answer.status == 416
    assert answer.headers["content-range"] == f"bytes */{size}"
    assert b"<Code>InvalidRange</Code>" in answer.body


@pytest.mark.parametrize("header", ["bytes=5-2", "bytes=0-1,5-9", "items=0-9"])
def test_a_range_that_is_not_one_byte_range_is_ignored(sim: SimClient, conn: socket.socket,
                                                      header: str) -> None:
    """RFC 9110 lets a server ignore such a Range; it used to answer 416 to "5-2"."""
    url = finished_url(sim)
    whole = urllib.request.urlopen(url, timeout=30).read()
    conn.sendall(request("GET", path_of(url), headers={"Range": header}))
    answer = read_answer(conn)
    assert (answer.status, answer.body) == (200, whole)


def test_resume_with_if_range_only_while_the_file_is_the_same(sim: SimClient,
                                                             conn: socket.socket) -> None:
    """Download managers resume with Range + If-Range: the ETag (S3's md5) or Last-Modified."""
    url = finished_url(sim)
    conn.sendall(request("GET", path_of(url)))
    first = read_answer(conn)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    for validator in (etag, modified):
        conn.sendall(request("GET", path_of(url),
                             headers={"Range": "bytes=100-", "If-Range": validator}))
        answer = read_answer(conn)
        assert (answer.status, answer.body) == (206, first.body[100:])
    conn.sendall(request("GET", path_of(url),
                         headers={"Range": "bytes=100-", "If-Range": '"stale"'}))
    answer = read_answer(conn)
    assert (answer.status, answer.body) == (200, first.body)


def test_chunked_request_body_is_read(sim: SimClient, conn: socket.socket) -> None:
    body = json.dumps(t2v_body("chunked")).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
    conn.sendall(request("POST", f"/v3/async/{T2V}", chunks + b"0\r\n\r\n",
                         headers={"Authorization": f"Bearer {KEY}",
                                  "Content-Type": "application/json",
                                  "Transfer-Encoding": "chunked"}))
    answer = read_answer(conn)
    assert answer.status == 200, answer.body
    assert sim.result(answer.json()["task_id"])["task"]["task_type"] == "KLING_V3_0_PRO_T2V"


def test_expect_100_continue_then_body(sim: SimClient, conn: socket.socket) -> None:
    body = json.dumps(t2v_body("expect")).encode()
    conn.sendall(request("POST", f"/v3/async/{T2V}", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
        "Content-Length": str(len(body)), "Expect": "100-continue"}))
    assert read_answer(conn).status == 100
    conn.sendall(body)
    answer = read_answer(conn)
    assert answer.status == 200 and "task_id" in answer.json()
    assert "close" not in answer.headers.get("connection", "")


def test_expect_answered_early_says_connection_close(sim: SimClient,
                                                     conn: socket.socket) -> None:
    """Refused before the body was sent (no key): the client keeps its body, so the server
    must close; it used to keep the connection and read the next request as that body."""
    conn.sendall(request("POST", f"/v3/async/{T2V}", headers={
        "Content-Type": "application/json", "Content-Length": "40",
        "Expect": "100-continue"}))
    answer = read_answer(conn)
    assert answer.status == 401 and answer.json()["reason"] == "MISSING_API_KEY"
    assert answer.headers["connection"] == "close"
    assert closed(conn)
    assert sim.stats()["submissions_total"] == 0


def test_one_kept_alive_connection_serves_a_whole_session(sim: SimClient,
                                                          conn: socket.socket) -> None:
    auth = {"AUTHORIZATION": f"BEARER {KEY}"}  # header names and the scheme in any case
    task_ids = []
    for i in range(5):
        body = json.dumps(t2v_body(f"pooled {i}")).encode()
        conn.sendall(request("POST", f"/v3/async/{T2V}", body, auth))
        task_ids.append(read_answer(conn).json()["task_id"])
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while len(urls) < len(task_ids):
        for task_id in task_ids:
            conn.sendall(request("GET", f"/v3/async/task-result?task_id={task_id}", headers=auth))
            result = read_answer(conn).json()
            if result["task"]["status"] == "TASK_STATUS_SUCCEED":
                urls[task_id] = result["videos"][0]["video_url"]
        assert time.monotonic() < deadline
    for url in urls.values():
        conn.sendall(request("GET", path_of(url)))
        answer = read_answer(conn)
        assert answer.status == 200 and probe(answer.body).duration > 2.9
    assert sim.stats()["downloads"] == 5


def test_http_1_0_client(sim: SimClient, conn: socket.socket) -> None:
    body = json.dumps(t2v_body("old client")).encode()
    conn.sendall(request("POST", f"/v3/async/{T2V}", body,
                         {"Authorization": f"Bearer {KEY}"}, version="HTTP/1.0"))
    answer = read_answer(conn)
    assert answer.status == 200 and "task_id" in answer.json()
    assert closed(conn)


def test_browser_preflight_and_cors_headers(sim: SimClient, conn: socket.socket) -> None:
    """A web page may call the API and fetch the video; the admin routes stay same-origin."""
    origin = {"Origin": "http://localhost:5173"}
    conn.sendall(request("OPTIONS", f"/v3/async/{T2V}", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}))
    answer = read_answer(conn)
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    body = json.dumps(t2v_body("from a page")).encode()
    conn.sendall(request("POST", f"/v3/async/{T2V}", body,
                         {**origin, "Authorization": f"Bearer {KEY}"}))
    answer = read_answer(conn)
    assert answer.status == 200 and answer.headers["access-control-allow-origin"] == "*"
    conn.sendall(request("GET", "/v3/async/task-result?task_id=nope", headers=origin))
    answer = read_answer(conn)  # errors too, or the page cannot read the reason
    assert answer.status == 401 and answer.headers["access-control-allow-origin"] == "*"
    url = sim.wait(sim.submit())["videos"][0]["video_url"]
    conn.sendall(request("GET", path_of(url), headers={**origin, "Range": "bytes=0-9"}))
    answer = read_answer(conn)
    assert answer.status == 206 and answer.headers["access-control-allow-origin"] == "*"
    assert "Content-Range" in answer.headers["access-control-expose-headers"]
    assert sim.stats()["requests"]["POST /v3/async/{slug}"] == 2  # the preflight is not one
    conn.sendall(request("GET", "/_simulator/stats", headers=origin))
    assert "access-control-allow-origin" not in read_answer(conn).headers
    conn.sendall(request("OPTIONS", "/_simulator/config", headers={
        **origin, "Access-Control-Request-Method": "POST"}))
    answer = read_answer(conn)
    assert answer.status == 405 and "access-control-allow-origin" not in answer.headers


def test_a_web_page_cannot_reset_or_reconfigure_the_simulator(
        sim: SimClient, conn: socket.socket) -> None:
    """A page's form POST (text/plain, no preflight) to the admin routes changes nothing."""
    task_id = sim.submit()
    page = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    conn.sendall(request("POST", "/_simulator/reset", b"", page))
    answer = read_answer(conn)
    assert answer.status == 403 and json.loads(answer.body)["reason"] == "CROSS_ORIGIN_REFUSED"
    conn.sendall(request("POST", "/_simulator/config", b'{"failure_rate": 1}', page))
    assert read_answer(conn).status == 403
    assert sim.configure()["failure_rate"] == 0
    assert sim.result(task_id)["task"]["task_id"] == task_id, "the task survived"


# --- Node's built-in fetch -------------------------------------------------------------------

NODE_CLIENT = r"""
const [base, key, slug] = process.argv.slice(2);
const auth = {Authorization: `Bearer ${key}`};
const post = await fetch(base + "/v3/async/" + slug, {method: "POST",
  headers: {...auth, "Content-Type": "application/json"},
  body: JSON.stringify({prompt: "from node", duration: 3, cfg_scale: null})});
if (post.status !== 200) throw new Error(`submit ${post.status} ${await post.text()}`);
const {task_id} = await post.json();
let result;
for (let i = 0; ; i++) {
  const r = await fetch(new URL(`v3/async/task-result?task_id=${encodeURIComponent(task_id)}`,
                                base), {headers: auth});
  result = await r.json();
  if (result.task.status === "TASK_STATUS_SUCCEED") break;
  if (i > 400) throw new Error("never finished");
  await new Promise((done) => setTimeout(done, 50));
}
const url = result.videos[0].video_url;
const whole = await fetch(url);
const bytes = new Uint8Array(await whole.arrayBuffer());
const part = await fetch(url, {headers: {Range: "bytes=0-99"}});
const stream = new ReadableStream({start(c) {
  c.enqueue(new TextEncoder().encode('{"prompt": "streamed",'));
  c.enqueue(new TextEncoder().encode(' "duration": 3}')); c.close(); }});
const chunked = await fetch(base + "/v3/async/" + slug, {method: "POST", duplex: "half",
  headers: {...auth, "Content-Type": "application/json"}, body: stream});
console.log(JSON.stringify({
  type: whole.headers.get("content-type"), length: Number(whole.headers.get("content-length")),
  size: bytes.length, partStatus: part.status, partRange: part.headers.get("content-range"),
  partSize: (await part.arrayBuffer()).byteLength, chunked: chunked.status}));
"""


def test_node_fetch_client(sim: SimClient, tmp_path: Path) -> None:
    if shutil.which("node") is None:
        missing("node is not on PATH", "KLING_REQUIRE_NODE")
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT, encoding="utf-8")
    done = subprocess.run(["node", str(script), sim.base_url + "/", KEY, T2V],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["type"] == "video/mp4" and facts["length"] == facts["size"] > 0
    assert facts["partStatus"] == 206 and facts["partSize"] == 100
    assert facts["partRange"] == f"bytes 0-99/{facts['size']}"
    assert facts["chunked"] == 200
    assert sim.stats()["submissions_total"] == 2


# --- the command a person runs ---------------------------------------------------------------

@pytest.mark.slow
def test_the_command_keeps_an_idle_connection_open_like_the_routers(tmp_path: Path) -> None:
    """A pooled client polling every few seconds reuses its connection. Uvicorn's default
    closes idle ones after 5 s, so that client's next request met a closing socket."""
    command = subprocess.Popen(
        [sys.executable, "-m", "kling_pipeline.simulator", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        assert command.stderr is not None
        line = command.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert found, line
        port = int(found.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            ask = request("GET", "/v3/async/task-result?task_id=x",
                          headers={"Authorization": f"Bearer {KEY}"})
            sock.sendall(ask)
            assert read_answer(sock).json()["reason"] == "TASK_NOT_FOUND"
            time.sleep(6)
            sock.sendall(ask)
            assert read_answer(sock).json()["reason"] == "TASK_NOT_FOUND"
    finally:
        command.terminate()
        command.wait(timeout=10)
