"""A still of each shot for the contact sheet, taken from the video itself.

The frame comes from the middle of the shot: generated clips often open on a fade or a
frame still settling, and the middle shows what the shot is about.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.output.media import MediaError, open_unprobed

THUMB_WIDTH = 480  # px; sharp at the page's card width on a high-density screen
_JPEG_QUALITY = 85


def write_thumbnail(video: Path, dest: Path, *, width: int = THUMB_WIDTH) -> tuple[int, int]:
    """Save a JPEG of the frame at the middle of `video` to `dest` (atomically); the video's
    width and height. One open of the file, without FFmpeg's probe, and FFmpeg's scaler
    straight to the thumbnail's size (a probed open, then a full-size picture resized by
    Pillow, took 5x as long: 200 of them were most of a pull's time). Not fsynced: a
    thumbnail is made again from its video, and the folder's stamp of its size tells one a
    power cut left empty."""
    try:
        with open_unprobed(video) as container:
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            frame = _middle_frame(container, stream)
            if frame.width > width:
                height = max(2, round(frame.height * width / frame.width))
                frame = frame.reformat(width=width, height=height, format="rgb24",
                                       interpolation="AREA")
            image = frame.to_image()
    except MediaError as exc:
        raise MediaError(f"{video}: {exc}") from exc
    except Exception as exc:  # PyAV raises many kinds on bad bytes; none may escape raw
        raise MediaError(f"{video}: no frame could be read for a thumbnail ({exc})") from exc
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    atomic_write_bytes(dest, buffer.getvalue(), durable=False)
    return size


def _middle_frame(container: Any, stream: Any) -> Any:
    """The first frame at or after the middle of the stream (the last one if it ends early)."""
    duration = stream.duration or 0
    middle = (stream.start_time or 0) + duration // 2
    if duration:
        container.seek(middle, stream=stream, backward=True, any_frame=False)
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.pts is None or frame.pts >= middle:
            break
    if last is None:
        raise MediaError("the video has no frame to show")
    return last
