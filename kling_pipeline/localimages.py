"""Local image files: checked once, then known by (path, size, mtime) like git's index."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kling_pipeline.hashing import IMAGE_DIGEST_PREFIX
from kling_pipeline.images import ImageProblem, check_image_bytes, data_uri
from kling_pipeline.memo import JsonMemo


@dataclass(frozen=True)
class LocalImage:
    """A checked local image and the digest that stands for it in the key."""

    path: Path
    sha256: str
    mime: str
    width: int
    height: int
    size: int


class ImageInspector:
    """Checks local images, re-reading a file only when its size or mtime changed."""

    def __init__(self, memo: JsonMemo) -> None:
        self.memo = memo
        self.reads = 0

    def inspect(self, path: Path) -> LocalImage:
        """Check one file; ImageProblem if the API would refuse it, OSError if unreadable."""
        stat = os.stat(path)
        if not os.path.isfile(path):
            raise ImageProblem("INVALID_IMAGE_FORMAT", "is not a file")
        memo_key = str(path)
        known = self.memo.get(memo_key)
        if (isinstance(known, list) and len(known) == 6
                and known[0] == stat.st_size and known[1] == stat.st_mtime_ns):
            return LocalImage(path, known[2], known[3], known[4], known[5], stat.st_size)
        data = path.read_bytes()
        self.reads += 1
        info = check_image_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self.memo.put(memo_key, [stat.st_size, stat.st_mtime_ns, digest, info.mime,
                                 info.width, info.height])
        return LocalImage(path, digest, info.mime, info.width, info.height, info.size)


def body_to_send(body: Mapping[str, Any], images: Mapping[str, LocalImage]) -> dict[str, Any]:
    """The body as it goes on the wire: each local image's digest replaced by a data URI.

    The file is read again and must still have the digest the key was made from; if it changed
    since the plan, sending it would pay for a request nobody planned (ImageProblem).
    """
    out = dict(body)
    for wire, image in images.items():
        if out.get(wire) != IMAGE_DIGEST_PREFIX + image.sha256:
            raise ImageProblem("INVALID_REQUEST_BODY", f"{wire} does not hold the digest of "
                                                       f"{image.path}")
        data = image.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ImageProblem("INVALID_IMAGE_FORMAT",
                               f"{image.path} changed after it was planned; run plan again")
        out[wire] = data_uri(data, image.mime)
    return out
