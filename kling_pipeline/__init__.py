"""kling-pipeline: a make-style pipeline for the Kling video-generation API."""

from __future__ import annotations

__version__ = "0.1.0"
