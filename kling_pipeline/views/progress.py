"""What a person sees while `apply` runs, and the summary it ends with.

On a terminal: a live view (rich) with one line per active shot, a total bar and the elapsed
time. Elsewhere (CI, a pipe, a log file): one plain line per state change, nothing that
redraws. Both end with the same summary table.

Labels are shot ids (a removed one comes from the lock file), notes are the API's reasons and
errors: every such text goes through textsafe (escapes for control characters, a cut when long),
and the live view hands it to rich as Text, never as markup, so `[bold]` in an id is shown as
written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from kling_pipeline.output.names import PAGE
from kling_pipeline.results import INTERRUPTED, OUTCOMES, SUCCESSFUL, RunReport, ShotResult
from kling_pipeline.textsafe import NOTE_LIMIT, clip, printable

if TYPE_CHECKING:
    from kling_pipeline.output.folder import FolderResult

FINAL = frozenset(OUTCOMES)
_COLORS = {"done": "green", "failed": "red", "unknown": "magenta", "in flight": "cyan",
           "lost": "red", "not submitted": "yellow", "blocked": "red", "queued": "blue",
           "processing": "cyan", "taking frames": "blue",
           "downloading": "green", "submitting": "yellow", "retrying": "yellow"}


def _clock(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class PlainReporter:
    """One line per state change: `[00:12] keeper-climbs processing 40%`."""

    def __init__(self, echo: Callable[[str], None], total: int) -> None:
        self._echo = echo
        self._start = time.monotonic()
        self._last: dict[str, str] = {}
        self.total = total

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None:
        if state in ("waiting", "up to date") or self._last.get(label) == state:
            return
        self._last[label] = state
        shown = f" {percent}%" if percent is not None and state == "processing" else ""
        self._echo(f"[{_clock(self._start)}] {clip(label)} {clip(state)}{shown}"
                   + (f": {clip(note, NOTE_LIMIT)}" if note else ""))

    def message(self, text: str) -> None:
        self._echo(f"[{_clock(self._start)}] {clip(text, NOTE_LIMIT)}")

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None  # lines are written as they come: nothing to close


class LiveReporter:
    """A rich live view: active shots with state and percent, a total bar, elapsed time."""

    def __init__(self, total: int, file: IO[str] | None = None, color: bool = True,
                 force_terminal: bool | None = None) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=file, no_color=not color, highlight=False,
                               force_terminal=force_terminal)
        self._progress = Progress(TextColumn("[bold]shots"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console)
        self._task = self._progress.add_task("shots", total=total)
        self._active: dict[str, tuple[str, int | None]] = {}
        self._done = 0
        self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                          get_renderable=self._render)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        for label, (state, percent) in list(self._active.items())[-30:]:
            shown = f"{percent}%" if percent is not None else ""
            table.add_row(Text(clip(label)), _state_text(state), Text(shown))
        return Group(table, self._progress)

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None:
        if state in FINAL:
            self._active.pop(label, None)
            self._done += 1
            self._progress.update(self._task, completed=self._done)
            if state not in SUCCESSFUL:
                from rich.text import Text

                line = _state_text(state) + Text(f" {clip(label)}"
                                                 + (f": {clip(note, NOTE_LIMIT)}" if note else ""))
                self.console.print(line, highlight=False)
            return
        self._active[label] = (state, percent)

    def message(self, text: str) -> None:
        self.console.print(clip(text, NOTE_LIMIT), markup=False, highlight=False)

    def __enter__(self) -> LiveReporter:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._active.clear()
        self._live.stop()


def _state_text(state: str) -> Any:
    """A state in its colour, as rich Text: markup only ever comes from us."""
    from rich.text import Text

    return Text(clip(state), style=_COLORS.get(state, "white"))


def _row(result: ShotResult) -> tuple[str, str, str, str]:
    ids = ", ".join(clip(shot_id) for shot_id in result.shot_ids)
    return ids, result.outcome, clip(result.task_id or "-"), clip(result.note, NOTE_LIMIT)


def render_summary(report: RunReport, missing: list[str],
                   order: Sequence[str] = ()) -> str:
    """The table of shots that did not simply finish, in storyboard `order` (the ids, as
    planned), and one line of counts."""
    counts: dict[str, int] = {}
    keyed: list[tuple[str, tuple[str, str, str, str]]] = []
    for result in report.results:
        counts[result.outcome] = counts.get(result.outcome, 0) + len(result.shot_ids)
        if not result.ok or (
                result.note and result.outcome == "done"):
            keyed.append((result.shot_ids[0] if result.shot_ids else "", _row(result)))
    for shot_id in missing:
        counts[INTERRUPTED] = counts.get(INTERRUPTED, 0) + 1
        keyed.append((shot_id, (clip(shot_id), INTERRUPTED, "-",
                                "the run stopped before this shot ended; see `status`")))
    position = {shot_id: i for i, shot_id in enumerate(order)}
    keyed.sort(key=lambda pair: position.get(pair[0], len(position)))  # stable: others last
    rows = [row for _, row in keyed]
    lines = []
    if rows:
        widths = [max(len(r[i]) for r in [*rows, ("shot", "result", "task", "")])
                  for i in range(3)]
        lines.append(f"  {'shot':<{widths[0]}}  {'result':<{widths[1]}}  "
                     f"{'task':<{widths[2]}}  note")
        for row in rows:
            lines.append(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
                         f"{row[2]:<{widths[2]}}  {row[3]}".rstrip())
        lines.append("")
    order = [*OUTCOMES, INTERRUPTED]
    paid = sum(1 for r in report.results if r.submitted)
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    lines.append("Apply: " + (", ".join(parts) or "nothing to do") +
                 f" ({paid} submitted in this run).")
    if report.stop_reason:
        lines.append(f"Submitting stopped: {clip(report.stop_reason, NOTE_LIMIT)}")
    return "\n".join(lines)


_LISTED = 8  # shots named in a one-line list before "and N more"


def render_folder(folder: FolderResult) -> str:
    """Where the results are, what the final cut holds, and what apply left alone (from the
    sync's result alone: a folder with nothing to do reads no manifest)."""
    total = folder.shots
    lines = [f"Output: {printable(str(folder.out_dir))}/",
             f"  {PAGE:<11}  the contact sheet: open it in a browser"]
    final = folder.final
    if final is None:
        lines.append("  final.mp4    not made: no shot is rendered yet")
    else:
        state = "rebuilt" if folder.final_built else "unchanged"
        lines.append(f"  {clip(final.file):<11}  {final.duration:.1f} s, "
                     f"{total - len(final.missing)}"
                     f" of {total} shots, {final.width}x{final.height} at {final.fps:g} fps"
                     f" ({state})")
    absent = [f"{clip(shot_id)} ({clip(status)})" for shot_id, status in folder.absent]
    shown = ", ".join(absent[:_LISTED]) + (f" and {len(absent) - _LISTED} more"
                                           if len(absent) > _LISTED else "")
    lines.append(f"  {'shots/':<11}  {folder.rendered} of {total} videos"
                 + (f"; not here: {shown}" if absent else ""))
    lines.extend(f"warning: {clip(problem, NOTE_LIMIT)}" for problem in folder.problems)
    if folder.strangers:
        lines.append(f"note: {printable(str(folder.out_dir))}/ holds files apply did not make "
                     "(left alone): " + ", ".join(clip(name) for name in folder.strangers))
    return "\n".join(lines)
