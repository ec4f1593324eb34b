"""JSON read strictly, and problems in it reported at their line and column.

Python's json takes NaN and Infinity (JSON has neither), reads 1e400 as infinity, and raises
a bare ValueError, without a place, for an integer of more than 4,300 digits. `loads` leaves
a `BadNumber` in place of each such value instead, for the check of its field to report.

`json.loads` keeps no positions either, and a hook that recorded them would slow every read
of a lock file (a hot path of `plan`). A broken file is rare, so `report_lines` walks its text
a second time, along the paths that have problems only, skipping every other value in C.
"""

from __future__ import annotations

import json
import math
import re
import sys
from _json import scanstring  # the C scanner json.decoder uses
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

JsonPath = tuple[str | int, ...]

_BLANK = re.compile(r"[ \t\n\r]*")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Skipped values are never used: `len` keeps a 5,000-digit number from being converted.
_SKIP = json.JSONDecoder(parse_int=len, parse_float=len, parse_constant=len)
_MAX_PATH = 8  # a bad number nested deeper is reported at its 8th level


class BadNumber:
    """A number JSON does not have (NaN, Infinity) or Python cannot hold (1e400, 5,000
    digits), left in place of the value so that the check of its field reports it."""

    __slots__ = ("text", "why")

    def __init__(self, text: str, why: str) -> None:
        self.text = text if len(text) <= 24 else f"{text[:10]}...{text[-10:]}"
        self.why = why


@dataclass(frozen=True)
class Problem:
    """What is wrong at `path`; `at_key` points at the key naming it (an unknown field)."""

    path: JsonPath
    message: str
    at_key: bool = False


def loads(text: str) -> tuple[Any, bool]:
    """The JSON value, and whether any BadNumber stands in it.

    Raises json.JSONDecodeError (with its place) and RecursionError as json.loads does.
    """
    bad: list[BadNumber] = []

    def constant(name: str) -> BadNumber:
        bad.append(BadNumber(name, "JSON has no NaN or Infinity"))
        return bad[-1]

    def number(digits: str) -> float | BadNumber:
        value = float(digits)
        if value in (math.inf, -math.inf):
            bad.append(BadNumber(digits, "too large for a number"))
            return bad[-1]
        return value

    def whole(digits: str) -> int | BadNumber:
        try:
            return int(digits)
        except ValueError:
            bad.append(BadNumber(digits, f"{len(digits.lstrip('-')):,} digits; at most "
                                         f"{sys.get_int_max_str_digits():,}"))
            return bad[-1]

    try:
        data = json.loads(text, parse_float=number, parse_constant=constant)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer longer than Python converts: again, with care
        data = json.loads(text, parse_float=number, parse_constant=constant, parse_int=whole)
    return data, bool(bad)


def bad_numbers(value: Any, path: JsonPath) -> list[Problem]:
    """The BadNumbers in a free-form value (a request), at their paths."""
    found = []
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, BadNumber):
            found.append(Problem(where[:_MAX_PATH], f"must be a number JSON can hold, got "
                                                    f"{shown(node)}"))
        elif isinstance(node, dict):
            stack.extend((v, (*where, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*where, i)) for i, v in enumerate(node))
    return found


def shown(value: Any) -> str:
    """A value as a message shows it: text quoted, a bad number with why, the rest as JSON."""
    if isinstance(value, BadNumber):
        return f"{value.text} ({value.why})"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    try:
        text = json.dumps(value, default=shown)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def format_path(path: JsonPath) -> str:
    """`shots.a.output.size`; a key that is not a plain name is quoted: `shots["a b"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def report_lines(display: str, text: str, problems: Sequence[Problem]) -> list[str]:
    """`file:line:col: path: message` for each problem, in file order."""
    places = json_places(text, [p.path for p in problems],
                         at_key={p.path for p in problems if p.at_key})
    rows = sorted((*places[p.path], format_path(p.path), p.message) for p in problems)
    return [f"{display}:{line}:{column}: " + (f"{where}: " if where else "") + message
            for line, column, where, message in rows]


_Trie = dict[str | int, "_Trie"]
_Found = dict[JsonPath, tuple[int | None, int]]


def json_places(text: str, paths: Iterable[JsonPath],
                at_key: Collection[JsonPath] = ()) -> dict[JsonPath, tuple[int, int]]:
    """1-based (line, column) of the value at each path, or of the key naming it for the
    paths in `at_key` (an unknown field is pointed at by its name).

    A path that runs past what exists (a missing field) gives the deepest node found. The
    text must be JSON that `json.loads` read (of a repeated key the last one counts, as there).
    """
    wanted = list(paths)
    trie: _Trie = {}
    for path in wanted:
        node = trie
        for part in path:
            node = node.setdefault(part, {})
    found: _Found = {}
    _walk(text, _blank(text, 0), (), None, trie, found)
    places: dict[JsonPath, tuple[int, int]] = {}
    for path in wanted:
        key_offset, value_offset = found.get(path, (None, _deepest(found, path)))
        offset = key_offset if key_offset is not None and path in at_key else value_offset
        places[path] = _line_col(text, offset)
    return places


def _deepest(found: _Found, path: JsonPath) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in found:
            return found[path[:end]][1]
    return 0


def _walk(text: str, offset: int, path: JsonPath, key_offset: int | None,
          trie: _Trie, found: _Found) -> None:
    """Record where `path` is, then follow the wanted children only."""
    found[path] = (key_offset, offset)
    if not trie:
        return
    opener = text[offset:offset + 1]
    children = _members(text, offset) if opener == "{" else (
        _elements(text, offset) if opener == "[" else {})
    for part, (child_key, child_value) in children.items():
        if part in trie:
            _walk(text, child_value, (*path, part), child_key, trie[part], found)


def _members(text: str, offset: int) -> dict[str | int, tuple[int | None, int]]:
    """Offsets of each member's key and value in the object at `offset` (the last of a
    repeated key wins, as in json.loads)."""
    members: dict[str | int, tuple[int | None, int]] = {}
    position = _blank(text, offset + 1)
    if text.startswith("}", position):
        return members
    while text.startswith('"', position):
        key, after = scanstring(text, position + 1)
        value = _blank(text, _blank(text, after) + 1)  # past the colon
        members[key] = (position, value)
        position = _blank(text, _SKIP.raw_decode(text, value)[1])
        if not text.startswith(",", position):
            break
        position = _blank(text, position + 1)
    return members


def _elements(text: str, offset: int) -> dict[str | int, tuple[int | None, int]]:
    elements: dict[str | int, tuple[int | None, int]] = {}
    position = _blank(text, offset + 1)
    index = 0
    while position < len(text) and not text.startswith("]", position):
        elements[index] = (None, position)
        position = _blank(text, _SKIP.raw_decode(text, position)[1])
        if not text.startswith(",", position):
            break
        position = _blank(text, position + 1)
        index += 1
    return elements


def _blank(text: str, offset: int) -> int:
    return _BLANK.match(text, offset).end()  # type: ignore[union-attr]


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1
