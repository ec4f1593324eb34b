"""Text from files and from the API, made safe to print and short enough to read.

A lock file is committed to git and an API answer comes from a server: either may hold
characters a terminal obeys instead of showing (ESC starts sequences that retitle the window or
redraw the screen, BEL rings, U+202E shows what follows reversed). The views pass such text
through `printable`, which shows each of them as a visible escape (`\\x1b`, `\\u202e`), and
values that enter a message go through `shown` (or `cut`), because a template can render
megabytes and one error line must stay one line. Everything here is pure and dependency-free,
so any module (models, views, errors) may use it.
"""

from __future__ import annotations

import math
import re
from typing import Any

# C0 controls (newline and tab included: one value must stay on one line), DEL, C1 controls,
# the line and paragraph separators, and every bidirectional formatting character.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
VALUE_LIMIT = 60  # characters of a value quoted in a message (as render.py has always cut)
CELL_LIMIT = 100  # an id or a task id in a view (a storyboard's ids are at most 100 long)
NOTE_LIMIT = 500  # a note, an error or a reason in a view
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS: dict[type, str] = {str: "text", int: "integer", float: "number", list: "a list",
                           dict: "a mapping"}  # as endpoints.type_name says them


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as an escape a person can read.

    Printable text comes back unchanged (and an escaped text is printable, so this may be
    applied twice). `keep_newlines` keeps line breaks, for messages of several lines.
    """
    if text.isprintable():  # everything escaped below is non-printable: the common fast path
        return text
    return (_UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE).sub(_escape, text)


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


_JSON_RAW = re.compile(f"[\x7f-\x9f\u2028\u2029{_BIDI}]")


def json_printable(text: str) -> str:
    """JSON text (json.dumps with ensure_ascii=False) with the characters JSON leaves raw but a
    terminal obeys (DEL, C1 controls, bidi overrides) written as \\u escapes: the same data."""
    return _JSON_RAW.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def clip(text: str, limit: int = CELL_LIMIT) -> str:
    """`text` for one cell or note of a view: cut when a file made it long, then printable."""
    return printable(cut(text, limit))


def cut_middle(text: str, limit: int) -> str:
    """`text`, or its start and its end with how much was left out between them.

    For a whole message: its start names the value, its end usually says what is allowed.
    """
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    tail = limit - head
    return f"{text[:head]}... ({len(text) - head - tail:,} characters cut) ...{text[-tail:]}"


def shown(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A user's value as a message quotes it: repr (which escapes controls), cut to `limit`."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return printable(cut(repr(value), limit))


def yaml_spelling(value: Any) -> str:
    """A scalar as YAML writes it: null, true, 1.5, .nan (Python says None, True, nan)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return shown(value)
    return _KINDS.get(type(value), type(value).__name__)


def described(value: Any) -> str:
    """What a file holds, for "got ...": `text 'abc'`, `number 1.5`, `.nan (not a number)`.

    "got number nan" said neither that YAML's .nan is not a number nor how to write one.
    """
    if isinstance(value, float) and math.isnan(value):
        return ".nan (not a number)"
    if isinstance(value, float) and math.isinf(value):
        return f"{shown(value)} (infinity)"
    if value is None or isinstance(value, bool):
        return yaml_spelling(value)
    if isinstance(value, str | int | float):
        return f"{_KINDS[type(value)]} {shown(value)}"
    return _KINDS.get(type(value), type(value).__name__)


def looks_like_secret(text: str) -> bool:
    """Is `text` (given where a NAME belongs) rather an API key or another token?

    Not a name at all, a key's own prefix (`sk-`, `sk_`), or long and random-looking (digits
    among letters with no `_` between words, or mixed case with digits): such a value is
    refused without being repeated, since repeating it puts the key in logs and CI output.
    """
    if not ENV_NAME.fullmatch(text):
        return True
    if text[:3].lower() in ("sk-", "sk_"):
        return True
    if len(text) < 20:
        return False
    digits = any(c.isdigit() for c in text)
    mixed_case = any(c.islower() for c in text) and any(c.isupper() for c in text)
    return digits and ("_" not in text or mixed_case)
