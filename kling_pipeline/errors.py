"""The project's own errors. The CLI maps them to exit code 1; anything else is a bug (3).

Their text often quotes a file (a lock file's shot ids, a storyboard's values) or the API, so
what `str()` gives is made printable (textsafe): a committed lock file must not be able to send
escape sequences to the terminal of whoever runs the tool on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kling_pipeline.textsafe import cut_middle, printable

# Characters of one diagnostic's message and location: a template can render megabytes, and a
# value echoed whole made 15 MB of errors. The middle goes; the start and end stay.
MAX_MESSAGE = 500
MAX_LOCATION = 200


class KlingPipelineError(Exception):
    """A known failure a person can act on: printed without a traceback, exit code 1."""

    def __str__(self) -> str:
        return printable(super().__str__(), keep_newlines=True)


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One located problem: `file:line:col: location: message`."""

    file: str
    line: int | None
    column: int | None
    location: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", cut_middle(self.location, MAX_LOCATION))
        object.__setattr__(self, "message", cut_middle(self.message, MAX_MESSAGE))

    def __str__(self) -> str:
        place = printable(self.file)
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        message = printable(self.message)
        return f"{place}: {printable(self.location)}: {message}" if self.location else \
            f"{place}: {message}"


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
