"""The presigned video download: no bearer header, S3-style refusals, optional truncation."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response

from kling_pipeline.simulator.api import render_key
from kling_pipeline.simulator.faults import drop_connection
from kling_pipeline.simulator.renderer import clip_spec
from kling_pipeline.simulator.state import RAW_SEND, Simulator, simulator_of
from kling_pipeline.simulator.tasks import view
from kling_pipeline.simulator.urls import s3_error
from kling_pipeline.storyboard.endpoints import ENDPOINTS

FILES_ROUTE = "GET /_simulator/files"
_RANGE = re.compile(r"^bytes\s*=\s*(\d*)\s*-\s*(\d*)$", re.IGNORECASE)
_S3_MESSAGES = {"AccessDenied": "Request has expired",
                "SignatureDoesNotMatch": "The request signature we calculated does not match "
                                         "the signature you provided.",
                "NoSuchKey": "The specified key does not exist.",
                "InternalError": "We encountered an internal error. Please try again."}


def _xml(code: str, status: int, resource: str) -> Response:
    return Response(s3_error(code, _S3_MESSAGES[code], resource), status_code=status,
                    media_type="application/xml")


async def download(request: Request) -> Response:
    """GET /_simulator/files/{task_id}.mp4?expires=&sig=: the clip, once the URL checks out."""
    sim = simulator_of(request)
    sim.stats.requests[FILES_ROUTE] += 1
    name: str = request.path_params["name"]
    task_id = name.removesuffix(".mp4")
    task = sim.store.get(task_id)
    now = time.time()
    if (task is None or task.no_url
            or view(task, now).status != "TASK_STATUS_SUCCEED"):
        sim.stats.errors["NoSuchKey"] += 1
        return _xml("NoSuchKey", 404, request.url.path)
    problem = sim.signer.check(task_id, request.query_params.get("expires", ""),
                               request.query_params.get("sig", ""), now)
    if problem:
        sim.stats.errors[problem] += 1
        return _xml(problem, 403, request.url.path)
    config = sim.config
    endpoint = ENDPOINTS[task.slug]
    # shield: a client hanging up must not cancel the render others are waiting for
    try:
        data = await asyncio.shield(sim.renderer.clip(render_key(sim, task), lambda: clip_spec(
            endpoint, task.body, config.video_fps, config.video_long_side)))
    except Exception:  # the render failed (logged by the renderer); S3 would say 500
        sim.stats.errors["InternalError"] += 1
        return _xml("InternalError", 500, request.url.path)
    if request.method == "HEAD":  # a player or download manager asking the size first
        return _ranged(request, data, task.finished_at)
    sim.stats.downloads += 1
    if sim.dice.roll(config.truncate_rate):
        return await _truncated(request, sim, data)
    return _ranged(request, data, task.finished_at)


async def _truncated(request: Request, sim: Simulator, data: bytes) -> Response:
    sim.stats.faults["truncated"] += 1
    half = data[: len(data) // 2]
    if sim.config.truncate_mode == "short":
        return Response(half, media_type="video/mp4")
    raw_send = request.scope[RAW_SEND]
    await raw_send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"video/mp4"),
                                (b"content-length", str(len(data)).encode())]})
    await raw_send({"type": "http.response.body", "body": half, "more_body": True})
    await drop_connection(raw_send)
    return Response()


def _ranged(request: Request, data: bytes, made_at: float) -> Response:
    """Whole file, or one `bytes=a-b` range (206), or 416 for a range beyond the end.

    ETag and Last-Modified are S3's (md5, time made), so a download manager resuming with
    If-Range gets its range only while the file is the same; a Range that is not one valid
    byte range (several ranges, last < first) is ignored, as RFC 9110 allows: 200, whole file.
    """
    etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
    modified = formatdate(made_at, usegmt=True)
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": modified}
    match = _RANGE.match(request.headers.get("range", "").strip())
    if_range = request.headers.get("if-range", "").strip()
    if not match or match.groups() == ("", "") or if_range not in ("", etag, modified):
        return Response(data, media_type="video/mp4", headers=headers)
    size = len(data)
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return Response(data, media_type="video/mp4", headers=headers)
    if first:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:
        start, end = max(0, size - int(last)), size - 1
    if start >= size or start > end:
        return Response(s3_error("InvalidRange", "The requested range is not satisfiable",
                                 request.url.path), status_code=416,
                        media_type="application/xml",
                        headers={"Content-Range": f"bytes */{size}", **headers})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start:end + 1], status_code=206, media_type="video/mp4",
                    headers=headers)
