"""Presigned, expiring result URLs, the way S3 hands them out.

The signature is an HMAC over the task id and the expiry with a secret made per process (or
kept in the state folder), so a URL cannot be forged or extended and needs no bearer header;
asking task-result again gives a fresh one, as with the real service. Refusals are S3-style XML.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

FILES_PREFIX = "/_simulator/files/"
NEVER = 0  # `expires` value of a URL made in ttl-0 mode


@dataclass(frozen=True)
class Signer:
    """Makes and checks result URLs."""

    secret: bytes

    @classmethod
    def fresh(cls) -> Signer:
        return cls(secrets.token_bytes(32))

    @classmethod
    def kept_in(cls, folder: str | os.PathLike[str] | None) -> Signer:
        """With a state folder, one secret for its lifetime: URLs outlive a restart, as
        real presigned URLs outlive a provider's deploy. Without one, a fresh secret."""
        if folder is None:
            return cls.fresh()
        path = Path(folder) / "url-secret"
        try:
            return cls(bytes.fromhex(path.read_text("ascii").strip()))
        except (OSError, ValueError):
            signer = cls.fresh()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(signer.secret.hex())
            return signer

    def _sig(self, task_id: str, expires: int) -> str:
        message = f"{task_id}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def url(self, base: str, task_id: str, ttl: int, now: float | None = None) -> str:
        """A URL for the task's video valid at least `ttl` seconds (ttl 0: without end).

        The expiry is rounded up: rounding down let a 1-second URL die at once."""
        expires = NEVER if ttl == 0 else math.ceil((time.time() if now is None else now) + ttl)
        query = urlencode({"X-Amz-Expires": ttl, "expires": expires,
                           "sig": self._sig(task_id, expires)})
        return f"{base.rstrip('/')}{FILES_PREFIX}{task_id}.mp4?{query}"

    def check(self, task_id: str, expires: str, sig: str, now: float | None = None) -> str:
        """"" if the URL is good, else an S3 error code (AccessDenied, SignatureDoesNotMatch)."""
        try:
            when = int(expires)
        except ValueError:
            return "AccessDenied"
        if not hmac.compare_digest(self._sig(task_id, when), sig):
            return "SignatureDoesNotMatch"
        if when != NEVER and (time.time() if now is None else now) >= when:
            return "AccessDenied"
        return ""


def s3_error(code: str, message: str, resource: str) -> bytes:
    """An S3-like XML error document."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><Resource>{resource}</Resource>"
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>").encode()
