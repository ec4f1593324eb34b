"""Checking that a command refused its input with a located error, and nothing worse."""

from __future__ import annotations

from typing import Protocol


class Finished(Protocol):
    """A finished child process, as subprocess.run returns it (or a test's own record)."""

    returncode: int
    stdout: str
    stderr: str


def refused(done: Finished, place: str, location: str, *fragments: str) -> list[str]:
    """Assert exit 1, no traceback, and a `place: location: ...` line holding each fragment;
    the lines found there."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    found = [x for x in done.stderr.splitlines() if x.startswith(f"{place}: {location}: ")]
    assert found, f"no line at {place}: {location}: in\n{done.stderr}"
    for fragment in fragments:
        assert any(fragment in x for x in found), f"{fragment!r} not in {found}"
    return found


def position(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the `^` in `needle` (or its start) in `text`."""
    plain, offset = needle.replace("^", ""), max(needle.find("^"), 0)
    index = -1
    for _ in range(occurrence):
        index = text.index(plain, index + 1)
    index += offset
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1
