"""Local image files: checked once, then known by (path, size, mtime) like git's index.

A file is read only once it is known to be a regular file of at most the API's 10 MB, and never
past that: a 3 GB file, a device or a FIFO named as an image is refused, not read.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mode
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.storyboard.images import (
    MAX_BYTES,
    ImageProblem,
    check_image_bytes,
    data_uri,
    too_large,
)
from kling_pipeline.storyboard.memo import JsonMemo


@dataclass(frozen=True)
class LocalImage:
    """A checked local image and the digest that stands for it in the key."""

    path: Path
    sha256: str
    mime: str
    width: int
    height: int
    size: int


def read_image_file(path: Path) -> bytes:
    """The bytes of `path`, at most MAX_BYTES of them; ImageProblem for anything larger.

    The open file is checked, not the name (it may have been swapped since a stat), and the
    read stops past MAX_BYTES in case the file grows while it is read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(file.fileno())
        if not stat_mode.S_ISREG(found.st_mode):
            raise ImageProblem("INVALID_IMAGE_FORMAT", "is not a file")
        if found.st_size > MAX_BYTES:
            raise too_large(found.st_size)
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise too_large(len(data))
    return data


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
        data = read_image_file(path)
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
        data = read_image_file(image.path)
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ImageProblem("INVALID_IMAGE_FORMAT",
                               f"{image.path} changed after it was planned; run plan again")
        out[wire] = data_uri(data, image.mime)
    return out
