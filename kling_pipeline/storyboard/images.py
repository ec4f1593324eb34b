"""Image checks shared by the storyboard (local files) and the simulator (data URIs).

The API's limits: .jpg/.jpeg/.png, at most 10 MB, both sides >= 300 px, aspect ratio within
1:2.5..2.5:1. The format is judged by content, never by the file name.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

MAX_BYTES = 10 * 1024 * 1024
MIN_SIDE = 300
MAX_ASPECT = 2.5
ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
# base64 characters of a MAX_BYTES image, with room for padding and stray whitespace
_MAX_BASE64 = (MAX_BYTES + 2) // 3 * 4 + 1024


@dataclass(frozen=True)
class ImageInfo:
    """What a checked image is."""

    mime: str
    width: int
    height: int
    size: int


class ImageProblem(Exception):
    """An image the API would refuse; `reason` is the API's error reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def too_large(size: int) -> ImageProblem:
    """The API's refusal of an image of `size` bytes (more than MAX_BYTES)."""
    return ImageProblem("IMAGE_FILE_EXCEEDS_MAX_SIZE",
                        f"is {size / 2**20:.1f} MB; at most 10 MB ({MAX_BYTES:,} bytes) "
                        "is allowed")


def check_image_bytes(data: bytes) -> ImageInfo:
    """Check image bytes against the API's limits; raise ImageProblem if they break one."""
    if len(data) > MAX_BYTES:
        raise too_large(len(data))
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
                width, height = image.size
                image.load()  # decode it all: a truncated file must not pass
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise ImageProblem("INVALID_IMAGE_SIZE",
                           f"claims {claimed}, too many for a real frame (a decompression "
                           "bomb?)") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageProblem("INVALID_IMAGE_FORMAT",
                           "is not a readable, complete image; allowed: .png, .jpg, .jpeg") \
            from exc
    if fmt not in ALLOWED_FORMATS:
        raise ImageProblem("INVALID_IMAGE_FORMAT",
                           f"is a {fmt or 'unknown'} image; allowed: PNG or JPEG")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageProblem("INVALID_IMAGE_SIZE",
                           f"is {width}x{height} px; both sides must be at least {MIN_SIDE} px")
    ratio = width / height
    if ratio > MAX_ASPECT or ratio < 1 / MAX_ASPECT:
        raise ImageProblem("INVALID_IMAGE_SIZE",
                           f"is {width}x{height} px (aspect {ratio:.2f}); the aspect ratio must "
                           "be between 1:2.5 and 2.5:1")
    return ImageInfo(ALLOWED_FORMATS[fmt], width, height, len(data))


def data_uri(data: bytes, mime: str) -> str:
    """Encode image bytes as the data URI the API accepts."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a `data:image/...;base64,` URI; ImageProblem if it is not one."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ImageProblem("INVALID_IMAGE_FORMAT", "is not a base64 data URI")
    if len(payload) > _MAX_BASE64:  # refused before decoding it, not after
        raise too_large(len(payload) * 3 // 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageProblem("INVALID_IMAGE_FORMAT", "has a data URI that is not valid base64") \
            from exc
