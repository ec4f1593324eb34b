"""The request key: the contract that money depends on (see docs/key.md).

key = sha256 of canonical JSON (sorted keys, no spaces, UTF-8) of the key scheme version, the
endpoint slug and the request body as sent, with each local image replaced by the sha256 of
its bytes, plus the take when it is not 1. Shot ids, order, base URL and output names are not
in it, so renaming, reordering or switching routers never buys a shot again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

KEY_SCHEME = 1
IMAGE_DIGEST_PREFIX = "sha256:"


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def request_key(endpoint: str, key_body: Mapping[str, Any], take: int = 1) -> str:
    """The content key of one request (hex sha256)."""
    material: dict[str, Any] = {"scheme": KEY_SCHEME, "endpoint": endpoint, "body": key_body}
    if take != 1:
        material["take"] = take
    return hashlib.sha256(canonical_json(material)).hexdigest()


def body_digest(body: Mapping[str, Any]) -> str:
    """sha256 of a body as sent (the simulator's stats count submissions by it)."""
    return hashlib.sha256(canonical_json(body)).hexdigest()
