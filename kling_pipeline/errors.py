"""The project's own errors. The CLI maps them to exit code 1; anything else is a bug (3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class KlingPipelineError(Exception):
    """A known failure a person can act on: printed without a traceback, exit code 1."""


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One located problem: `file:line:col: location: message`."""

    file: str
    line: int | None
    column: int | None
    location: str
    message: str

    def __str__(self) -> str:
        place = self.file
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        return f"{place}: {self.location}: {self.message}" if self.location else \
            f"{place}: {self.message}"


class StoryboardError(KlingPipelineError):
    """Everything wrong with a storyboard, all at once."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics), key=_order)
        count = len(self.diagnostics)
        lines = [str(d) for d in self.diagnostics]
        lines.append(f"{count} error{'s' if count != 1 else ''} in the storyboard")
        super().__init__("\n".join(lines))


def _order(d: Diagnostic) -> tuple[str, int, int, str, str]:
    return (d.file, d.line or 0, d.column or 0, d.location, d.message)


class LockFileError(KlingPipelineError):
    """A lock file that cannot be read as format v1."""
