"""Rendering clips off the event loop, once per distinct request.

Encoding a clip takes a fraction of a CPU second, so it runs in a small thread pool and the
result is kept by request hash: a thousand identical tasks render one clip, and every waiting
download awaits the same future. Only finished clips are evicted (least recently used).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from kling_pipeline.simulator.video import ClipSpec, render_clip
from kling_pipeline.storyboard.endpoints import Endpoint, effective_duration
from kling_pipeline.storyboard.images import ImageProblem, decode_data_uri

log = logging.getLogger(__name__)


def clip_spec(endpoint: Endpoint, body: Mapping[str, Any], fps: int,
              long_side: int) -> ClipSpec:
    """What to draw for a (checked) request body, at the config's `video_fps` and
    `video_long_side` (0: 320 px on the short side, see `video.frame_size`)."""
    parts = body.get("multi_prompt")
    if isinstance(parts, list) and parts:
        segments = tuple((str(p.get("prompt", "")), float(p.get("duration", 0))) for p in parts)
    else:
        segments = ((str(body.get("prompt", "")), float(effective_duration(endpoint, body))),)
    sound_spec = endpoint.by_name.get("sound")
    sound = bool(body.get("sound", sound_spec.api_default if sound_spec else False))
    aspect = body.get("aspect_ratio")
    return ClipSpec(segments=segments,
                    aspect_ratio=aspect if isinstance(aspect, str) else None,
                    image=_image(endpoint, body, "image"),
                    end_image=_image(endpoint, body, "end_image"),
                    sound=sound, fps=fps, long_side=long_side)


def _image(endpoint: Endpoint, body: Mapping[str, Any], name: str) -> bytes | None:
    """Bytes of a data-URI image; a URL is not fetched (the clip becomes a title card)."""
    spec = endpoint.by_name.get(name)
    value = body.get(spec.wire) if spec is not None else None
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    try:
        return data_uri_bytes(value)
    except ImageProblem:
        return None


def data_uri_bytes(value: str) -> bytes:
    """Bytes of a data-URI image. Line breaks in the base64 are skipped, as the decoders
    behind real APIs do (Go's, Node's): `base64` and Python's `encodebytes` wrap at 76."""
    head, sep, payload = value.partition(",")
    return decode_data_uri(head + sep + payload.replace("\r", "").replace("\n", ""))


class Renderer:
    """A bounded cache of clip futures in front of a thread pool."""

    def __init__(self, workers: int = 2, cache_size: int = 64) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="simulator-render")
        self._cache: OrderedDict[str, asyncio.Future[bytes]] = OrderedDict()
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self.rendered = 0  # clips actually encoded (for stats: proves the cache works)

    def clip(self, key: str, make_spec: Callable[[], ClipSpec]) -> asyncio.Future[bytes]:
        """The future of the clip for `key`, starting the render if nobody has yet."""
        future = self._cache.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            self._cache.move_to_end(key)
            return future
        loop = asyncio.get_running_loop()
        # the spec is made in the pool too: decoding a 10 MB data URI is not the loop's job
        future = asyncio.ensure_future(loop.run_in_executor(self._pool, self._render, make_spec))
        future.add_done_callback(_quiet)
        self._cache[key] = future
        self._evict()
        return future

    def _render(self, make_spec: Callable[[], ClipSpec]) -> bytes:
        data = render_clip(make_spec())
        with self._lock:
            self.rendered += 1
        return data

    def _evict(self) -> None:
        excess = len(self._cache) - self.cache_size
        for key in [k for k, f in self._cache.items() if f.done()][:max(0, excess)]:
            del self._cache[key]

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _quiet(future: asyncio.Future[bytes]) -> None:
    """Log a failed render once instead of 'exception was never retrieved'."""
    if not future.cancelled() and future.exception() is not None:
        log.error("rendering a clip failed", exc_info=future.exception())
