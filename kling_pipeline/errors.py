"""The project's own errors, and the exit codes the command line gives for them.

    KlingPipelineError        a known failure a person can act on (exit 1, no traceback)
    ├── StoryboardError       everything wrong with a storyboard, each problem located
    │                         (`.diagnostics`: file, line, column, location, message)
    ├── LockFileError         a lock file that cannot be read, located
    ├── UsageError            arguments that do not fit together or name nothing (exit 2;
    │                         `.option` names the option, for the command line)
    ├── NoApiKey              the key's environment variable is not set
    ├── Declined              `apply`'s `on_plan` said no: nothing was written or submitted
    ├── RunLockBusy           another apply holds the storyboard (kling_pipeline.state.lockstore)
    ├── RemoteError           a remote that cannot be named, reached or read (push, pull)
    └── (others)              an output folder that is not ours, a cache gc cannot read, ...

Anything else that escapes is a bug (exit 3). A run's own result (failed shots, an interrupted
run) is not an exception: `ApplyReport.exit_code` says what the command line exits with.

Their text often quotes a file (a lock file's shot ids, a storyboard's values) or the API, so
what `str()` gives is made printable (textsafe): a committed lock file must not be able to send
escape sequences to the terminal of whoever runs the tool on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kling_pipeline.textsafe import cut_middle, printable

EXIT_OK = 0
EXIT_ERROR = 1  # a known error: an invalid storyboard, failed shots, an API refusal
EXIT_USAGE = 2  # wrong arguments (and `plan --detailed-exitcode` with work to do)
EXIT_BUG = 3  # anything unexpected: a traceback with --debug
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

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


class UsageError(KlingPipelineError):
    """Arguments that do not fit together, or a selection that names no shot."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option  # "--force", "--only", ...: where the command line points


class NoApiKey(KlingPipelineError):
    """The environment variable the storyboard names for the key is empty or not set."""


class Declined(KlingPipelineError):
    """The plan was not confirmed: nothing was written or submitted."""


class RemoteError(KlingPipelineError):
    """A remote that cannot be named, reached or read (its credentials never in the text).
    `detail`: what failed, without the remote's name (for a list of videos that failed)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = printable(detail) if detail is not None else None
