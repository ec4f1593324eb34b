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


# Error lines a person is shown; a fan-out with an error in every shot makes thousands.
MAX_SHOWN = 200


class StoryboardError(KlingPipelineError):
    """Everything wrong with a storyboard, all at once.

    `diagnostics` holds every problem (`validate --json` prints them all); the message shows
    the first MAX_SHOWN in file order and says how many more there are.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics), key=_order)
        count = len(self.diagnostics)
        lines = [str(d) for d in self.diagnostics[:MAX_SHOWN]]
        if count > MAX_SHOWN:
            more = count - MAX_SHOWN
            lines.append(f"... and {more:,} more error{'s' if more != 1 else ''} (validate "
                         "--json lists them all)")
        lines.append(f"{count:,} error{'s' if count != 1 else ''} in the storyboard")
        super().__init__("\n".join(lines))


def _order(d: Diagnostic) -> tuple[str, int, int, str, str]:
    return (d.file, d.line or 0, d.column or 0, d.location, d.message)


class LockFileError(KlingPipelineError):
    """A lock file that cannot be read as format v1."""
