"""Presigned, expiring result URLs, the way S3 hands them out.

The signature is an HMAC over the task id and the expiry with a secret made per process, so a
URL cannot be forged or extended, needs no bearer header, and dies with a restart (asking
task-result again gives a fresh one, as with the real service). Refusals are S3-style XML.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
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

    def _sig(self, task_id: str, expires: int) -> str:
        message = f"{task_id}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def url(self, base: str, task_id: str, ttl: int, now: float | None = None) -> str:
        """A URL for the task's video valid `ttl` seconds (ttl 0: without end)."""
        expires = NEVER if ttl == 0 else int((time.time() if now is None else now) + ttl)
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
