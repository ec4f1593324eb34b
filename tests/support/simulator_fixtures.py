"""Helpers for the simulator tests: a small client over real loopback HTTP, images, probing.

Plain functions and classes (not fixtures) so each test module declares its own server with
the config it needs; importing fixtures across modules confuses linters.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from kling_pipeline.storyboard.images import data_uri

KEY = "test-key"
T2V = "kling-v3.0-pro-t2v"
I2V = "kling-v3.0-pro-i2v"
SEED_SLUGS = ("kling-v3.0-pro-i2v", "kling-v3.0-std-i2v", "kling-v3.0-pro-t2v", "kling-v1.6-i2v")


def png_bytes(width: int = 480, height: int = 320, fmt: str = "PNG") -> bytes:
    """A real image of the given size, in the given Pillow format."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_uri(width: int = 480, height: int = 320) -> str:
    return data_uri(png_bytes(width, height), "image/png")


def t2v_body(prompt: str = "a lighthouse at dusk", duration: int = 3,
             **more: Any) -> dict[str, Any]:
    return {"prompt": prompt, "duration": duration, **more}


@dataclass(frozen=True)
class ClipFacts:
    duration: float
    width: int
    height: int
    has_audio: bool
    codec: str
    pix_fmt: str


def probe(data: bytes) -> ClipFacts:
    """Decode an MP4 completely with PyAV and report what it is."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        last = 0.0
        for frame in container.decode(stream):
            last = float(frame.pts * stream.time_base) if frame.pts is not None else last
        fps = float(stream.average_rate or 12)
        has_audio = bool(container.streams.audio)
        return ClipFacts(duration=last + 1 / fps, width=stream.width, height=stream.height,
                         has_audio=has_audio, codec=stream.codec_context.name,
                         pix_fmt=stream.codec_context.pix_fmt or "")


class SimClient:
    """httpx against one running simulator; on exit resets it and restores its knobs."""

    def __init__(self, base_url: str, key: str = KEY) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=30)
        self._knobs: dict[str, Any] = {}

    def __enter__(self) -> SimClient:
        self._knobs = self.http.get("/_simulator/config").json()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as admin:
            admin.post("/_simulator/config",
                       json={k: v for k, v in self._knobs.items() if k != "state_dir"})
            admin.post("/_simulator/reset")
        self.http.close()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        answer = self.http.post("/_simulator/config", json=knobs)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get("/_simulator/stats").json()
        return result

    def post(self, slug: str, body: Any) -> httpx.Response:
        return self.http.post(f"/v3/async/{slug}", json=body)

    def submit(self, slug: str = T2V, body: Any = None) -> str:
        answer = self.post(slug, t2v_body() if body is None else body)
        assert answer.status_code == 200, answer.text
        task_id: str = answer.json()["task_id"]
        return task_id

    def result(self, task_id: str) -> dict[str, Any]:
        answer = self.http.get("/v3/async/task-result", params={"task_id": task_id})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def wait(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll until the task ends; the whole answer."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.result(task_id)
            if answer["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
                return answer
            assert time.monotonic() < deadline, f"task {task_id} did not finish: {answer}"
            time.sleep(0.02)


def error_of(answer: httpx.Response) -> tuple[int, str]:
    """(status, reason) of an API error answer, checking the body's shape on the way."""
    body = answer.json()
    assert set(body) == {"code", "reason", "message", "metadata"}, body
    assert body["code"] == answer.status_code
    assert isinstance(body["message"], str) and body["message"]
    return answer.status_code, body["reason"]
