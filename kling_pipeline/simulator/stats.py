"""Counters a test reads to prove what happened, e.g. that nothing was submitted twice."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Plain counters; the event loop is single-threaded, so no lock is needed."""

    submissions: Counter[str] = field(default_factory=Counter)  # body hash -> tasks made
    submissions_by_slug: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # reason -> answers served
    requests: Counter[str] = field(default_factory=Counter)  # route -> requests
    faults: Counter[str] = field(default_factory=Counter)  # fault -> times applied
    downloads: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "submissions": dict(self.submissions),
            "submissions_total": sum(self.submissions.values()),
            "submissions_by_slug": dict(self.submissions_by_slug),
            "errors": dict(self.errors),
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            "downloads": self.downloads,
        }
