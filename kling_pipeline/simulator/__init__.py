"""The local simulator of the Kling video API: same protocol, real MP4s, no network."""

from __future__ import annotations
