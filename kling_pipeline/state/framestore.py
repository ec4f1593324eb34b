"""Frames taken from videos, kept in the store by the sha256 of their PNG bytes.

A shot that starts on the last frame of another is keyed by that frame's bytes, so the frame
is needed by every `plan`, not only by the run that submits: it is extracted once per video
and frame (decoding a whole video takes a good fraction of a second) and kept here:

    <store>/frames/<aa>/<sha256>.png                  the PNG, named by its digest
    <store>/frames/of/v<N>/<video sha256>/<frame>.json  which PNG that frame of that video is

Extraction is deterministic (frames.py), so losing this folder costs time, never a key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kling_pipeline.fsutil import atomic_write_bytes
from kling_pipeline.storyboard.frameinput import FrameInput
from kling_pipeline.storyboard.images import MAX_BYTES, check_image_bytes
from kling_pipeline.storyboard.localimages import LocalImage

# Bump when frames.py makes other bytes from the same video (a new index, old PNGs kept).
FRAME_FORMAT = 1


@dataclass(frozen=True)
class FrameRecord:
    """One extracted frame in the store."""

    sha256: str
    width: int
    height: int
    size: int
    seconds: float  # when it is shown in its video
    reduced: int    # times it was halved to fit the endpoints' 10 MB

    def image(self, path: Path) -> LocalImage:
        """The frame as a local image of the request (sent as a data URI, keyed by digest)."""
        return LocalImage(path, self.sha256, "image/png", self.width, self.height, self.size)


class FrameStore:
    """The frames folder of one store."""

    def __init__(self, store_root: Path) -> None:
        self.root = store_root / "frames"

    def png_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.png"

    def _index_path(self, video_sha256: str, frame: FrameInput) -> Path:
        token = frame.token.replace(":", "-")  # at:2.5 -> at-2.5 (':' is no file name on Windows)
        return self.root / "of" / f"v{FRAME_FORMAT}" / video_sha256 / f"{token}.json"

    def known(self, video_sha256: str, frame: FrameInput) -> FrameRecord | None:
        """The frame as extracted before, if its PNG is still here whole (by size)."""
        try:
            data = json.loads(self._index_path(video_sha256, frame).read_text("utf-8"))
            record = FrameRecord(str(data["sha256"]), int(data["width"]), int(data["height"]),
                                 int(data["size"]), float(data["seconds"]),
                                 int(data["reduced"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        try:
            if os.stat(self.png_path(record.sha256)).st_size != record.size:
                return None
        except OSError:
            return None
        return record

    def extract(self, video: Path, video_sha256: str, frame: FrameInput) -> FrameRecord:
        """Take the frame from `video`, check it against the endpoints' image rules, keep it.

        FrameError when the video cannot give it; ImageProblem when the frame is not an image
        the API takes (too small, too narrow): the shot that needs it cannot be sent.
        """
        from kling_pipeline.frames import FrameRef, extract_frame

        ref = FrameRef("at", frame.at) if frame.at is not None else FrameRef(
            "first" if frame.frame == "first" else "last")
        taken = extract_frame(video, ref, max_bytes=MAX_BYTES)
        check_image_bytes(taken.png)
        record = FrameRecord(taken.sha256, taken.width, taken.height, len(taken.png),
                             taken.seconds, taken.reduced)
        path = self.png_path(record.sha256)
        if not (path.is_file() and path.stat().st_size == record.size):
            atomic_write_bytes(path, taken.png)
            # read-only, as the store's videos: the output folder's frames/ holds hard links
            # to it, and an edit there must not change what the key stands for
            os.chmod(path, 0o444)
        index = {"sha256": record.sha256, "width": record.width, "height": record.height,
                 "size": record.size, "seconds": record.seconds, "reduced": record.reduced}
        atomic_write_bytes(self._index_path(video_sha256, frame),
                           json.dumps(index, sort_keys=True).encode("utf-8"))
        return record

    def get(self, video: Path, video_sha256: str, frame: FrameInput) -> FrameRecord:
        """The frame, from the store or extracted now."""
        return self.known(video_sha256, frame) or self.extract(video, video_sha256, frame)
