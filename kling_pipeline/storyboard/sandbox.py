"""The limits on what a storyboard template may cost: memory, CPU, and nothing unbounded.

Jinja's sandbox stops attribute tricks, not work: a line of YAML could build gigabytes of text
or loop for ever. `BoundedSandbox` checks an operation before it runs, so that what it builds
stays small, and counts the steps a template takes against a `Budget`; `templating` builds the
storyboard's Jinja environment on it.

Values are measured without building anything (`_measure`): a walk that stops as soon as the
size passes the limit. `['x' * 99999] * 99999` is a list of 99,999 references to one string
(800 KB); printed, it is 10 GB, and the walk knows that after its second item. Printing,
joining, formatting and JSON are refused before they run when their text would pass MAX_TEXT;
sorting, comparing and deduplicating are charged steps for everything they may touch, however
much of it is one object shared many times.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json.encoder
import re
import time
from collections.abc import (
    Callable,
    Collection,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from contextlib import contextmanager
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, operators, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from markupsafe import Markup

from kling_pipeline.storyboard.templating import TemplateProblem

MAX_TEXT = 100_000
_TOO_LONG = f"making text longer than {MAX_TEXT:,} characters is not allowed in templates"
_TOO_MANY = f"making a list longer than {MAX_TEXT:,} items is not allowed in templates"
_TOO_LARGE_INPUT = (f"giving a filter or method text or a list longer than {MAX_TEXT:,} "
                    "characters or items is not allowed in templates")
# Filters and methods that take a number as the size of what they make (`center(10**9)`).
_WIDENING = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch",
                       "slice", "to_bytes"})
# Filters that turn their values into text (`str()` of a list is its every item's repr).
_TEXT_FILTERS = frozenset({"capitalize", "center", "escape", "e", "forceescape", "format",
                           "indent", "lower", "replace", "safe", "string", "striptags", "title",
                           "trim", "truncate", "upper", "urlencode", "urlize", "wordcount",
                           "wordwrap", "xmlattr"})
# Filters that may compare, hash or lower-case everything inside their values.
_DEEP_FILTERS = frozenset({"sort", "unique", "min", "max", "dictsort", "groupby"})
# Filters that do Python work for each item (a key function, a row): a step per item.
_ITEM_BY_ITEM = _DEEP_FILTERS | {"batch", "slice", "sum"}
_DEEP_METHODS = frozenset({"index", "count", "changed"})
_COMPARING_TESTS = frozenset({"==", "!=", "<", "<=", ">", ">=", "eq", "equalto", "ne", "lt",
                              "le", "gt", "ge", "greaterthan", "lessthan", "in"})
_TEXT_TESTS = frozenset({"lower", "upper"})
# pprint lays nested values out under their keys: a 50,000-character key over 20,000 items
# makes a billion characters from 100,000. A prompt never needs Python's repr laid out.
_REMOVED_FILTERS = frozenset({"pprint"})


# CPU: a template may take this many steps. An empty loop in a loop (`range(100000)` twice)
# prints nothing, so the output cap never stops it; the step counts do, the same way on every
# machine. A step is about as long as an empty loop iteration (~0.3 us), and every kind of use
# counts as many steps as it takes time (below). A filter or a call is one more step per 10
# items or characters it is given, and a filter that does Python work for each item (`sort`'s
# key, `batch`'s rows: _ITEM_BY_ITEM) one more per item, so a loop of
# `range(100000) | list | sort` stops about as fast as an empty loop in a loop. Work that may
# reach inside values (comparing, sorting, printing) is counted over everything inside, and
# each item a measuring walk visits is two steps. The storyboard-wide count stops a template
# that is slow but under the limit, repeated over many shots, after 3-5 s of CPU whatever the
# templates do: 20,000 shots whose prompts put a few 300-character snippets through filters
# take about 2,000,000 steps in all.
# The seconds are backstops only, for work no count sees; they are far from what any real
# storyboard takes (a cold `validate` of 20,000 shots takes about 15 s in all on 2 cores).
MAX_STEPS = 1_000_000
MAX_RUN_STEPS = 10_000_000
MAX_SECONDS = 10.0
MAX_RUN_SECONDS = 120.0
_ITEMS_PER_STEP = 10
# Steps of one use: a method or macro call takes 5-7 us, an attribute up to ~1.5 us (the
# sandbox checks each: `loop.index`), `~` ~1 us, a filter or test ~0.7 us; `*`, `+`, an item or
# printing a value ~0.3 us. (A call was one step: 10,000,000 steps of calls took 50 s of CPU,
# of empty loops 3 s.)
_CALL_STEPS = 25
_ATTRIBUTE_STEPS = 5
_CONCAT_STEPS = 3
_FILTER_STEPS = 2
_FIELD_STEPS = 8  # a field of str.format, formatted in Python
_CONVERSION_STEPS = 4  # a `%` conversion, read in Python before it is made
_WALK_STEPS = 2  # an item a measuring walk visits takes about as long as 2 empty iterations
# A template of at most this many steps (`s{{ item }}`, `{{ item.mood }}`) renders even after
# the storyboard's steps are spent, so that later shots keep their names in the errors.
_SMALL_TEMPLATE = 20
# Whole numbers: `*` and `**` may not build one of more than about this many digits.
MAX_DIGITS = 10_000
_MAX_BITS = int(MAX_DIGITS * 3.33) + 1
_STEP = "_step"  # the filter every loop iteration calls (inserted by _StepCounting)


class Budget:
    """The steps and seconds left to the templates of one storyboard, and to the current one.

    One Budget belongs to a TemplateRenderer (one load of a storyboard). The outermost
    `spending` starts a template's allowance; snippets it uses share it.
    """

    def __init__(self) -> None:
        self.run_steps = 0
        self.run_seconds = 0.0
        self.steps = 0
        self.started = 0.0
        self.deadline = 0.0

    def start(self) -> None:
        self.steps = 0
        self.started = time.perf_counter()
        left = MAX_RUN_SECONDS - self.run_seconds
        self.deadline = self.started + min(MAX_SECONDS, left)

    def stop(self) -> None:
        if self.steps:  # only templates that loop or call count against the storyboard's time
            self.run_steps += self.steps
            self.run_seconds += time.perf_counter() - self.started

    def room(self) -> int:
        """Steps the current template may still take before a limit stops it."""
        run_left = max(MAX_RUN_STEPS - self.run_steps, _SMALL_TEMPLATE) - self.steps
        return max(min(MAX_STEPS - self.steps, run_left), 0)

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > MAX_STEPS:
            raise TemplateProblem(
                f"the template takes more than {MAX_STEPS:,} steps (loop iterations, calls "
                f"and filters); a template may take at most {MAX_STEPS:,}")
        if self.run_steps + self.steps > MAX_RUN_STEPS and self.steps > _SMALL_TEMPLATE:
            raise TemplateProblem(
                f"the storyboard's templates take more than {MAX_RUN_STEPS:,} steps (loop "
                f"iterations, calls and filters) together; that is the most allowed")
        if time.perf_counter() > self.deadline:
            if self.run_seconds + MAX_SECONDS > MAX_RUN_SECONDS:
                raise TemplateProblem(
                    f"the storyboard's templates take longer than {MAX_RUN_SECONDS:g} s "
                    "together; that is the most allowed")
            raise TemplateProblem(f"the template takes longer than {MAX_SECONDS:g} s to "
                                  f"render; a template may take at most {MAX_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget",
                                                                       default=None)


def _step(cost: int = 1) -> None:
    """Count steps of the template being rendered (none is counted outside a render)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.step(cost)


# Type tuples for isinstance in the hot paths (a `str | bytes` union is built at every call).
_SIZED = (str, bytes, list, tuple, dict, range, set, frozenset)
_SEQUENCES = (str, bytes, list, tuple)
_BYTES = (bytes, bytearray)
_TEXT = (str, bytes)
_REAL = (int, float)


def _cost(values: Iterable[Any], per_step: int = _ITEMS_PER_STEP) -> int:
    """Steps for what a filter or call is given: 1 per 10 (`per_step`) characters or items of
    the largest.

    A value of more than MAX_TEXT characters or items is refused: what a filter or method
    makes of a value is then at most a few times MAX_TEXT (escape 6x, urlencode 12x), where a
    10 MB var split into words made 5,000,000 strings.
    """
    largest = 0
    for value in values:
        if isinstance(value, _SIZED) and len(value) > largest:
            largest = len(value)
    if largest > MAX_TEXT:
        raise SecurityError(_TOO_LARGE_INPUT)
    return largest // per_step


# --- measuring values without building them ---------------------------------------------------

_CONTAINERS = (dict, list, tuple, set, frozenset, KeysView, ValuesView, ItemsView, Namespace)
_NUMBERS = frozenset({int, float, bool, type(None)})
_SUMMED_FROM = 16  # a collection this long is first tried as text or numbers only, in C


class _Ruler:
    """How `_measure` sizes a value. This one weighs it for work that may touch all of it
    (sorting, comparing): an item of a collection is 1, a character of text 1, a number 0."""

    item = 1  # each item of a collection: a separator, when printed
    indent = 0  # more for each item per level of nesting (JSON with indent)

    def text(self, value: str, room: int, top: bool) -> int:
        return len(value)

    def texts(self, values: Collection[str], room: int) -> int:
        return sum(map(len, values))

    def number(self, value: Any) -> int:
        return 0

    def numbers(self, values: Collection[Any], kinds: set[type]) -> int:
        return 0

    def other(self, value: Any) -> int:
        return len(value) if isinstance(value, _BYTES) else 0

    def frame(self, value: Any) -> int:
        return 0


class _Printed(_Ruler):
    """The length of `str(value)`: for a collection, the repr of each item in it."""

    item = 2

    def text(self, value: str, room: int, top: bool) -> int:
        return len(value) if top or len(value) > room else len(repr(value))

    def texts(self, values: Collection[str], room: int) -> int:
        least = sum(map(len, values))
        return least if least > room else sum(map(len, map(repr, values)))

    def number(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value.bit_length() * 30103 // 100_000 + 2  # digits, and a sign
        return 24  # a float's repr, True, False, None

    def numbers(self, values: Collection[Any], kinds: set[type]) -> int:
        if kinds <= {int, bool}:
            return sum(map(int.bit_length, values)) * 30103 // 100_000 + 5 * len(values)
        return 24 * len(values)

    def other(self, value: Any) -> int:
        if isinstance(value, _BYTES):
            return 4 * len(value) + 14
        return 200  # dates, macros, loops, ranges, generators: a short repr

    def frame(self, value: Any) -> int:
        kind = type(value)
        if kind in (list, tuple, dict, set):
            return 3
        return 16 + len(kind.__name__) + sum(len(f) + 1 for f in getattr(kind, "_fields", ()))


class _Json(_Printed):
    """The length of `value | tojson(indent)`: JSON, with `<>&'` escaped for HTML."""

    def __init__(self, indent: Any) -> None:
        self.item = 2 if indent is None else 3  # ", " or ",\n"; ": " after a key
        if isinstance(indent, str):
            self.indent = len(indent)
        elif isinstance(indent, int):
            self.indent = max(indent, 0)

    def text(self, value: str, room: int, top: bool) -> int:
        if len(value) > room:
            return len(value)
        return len(_json_text(value)) + 5 * sum(map(value.count, "<>&'"))

    def texts(self, values: Collection[str], room: int) -> int:
        least = sum(map(len, values))
        if least > room:
            return least
        html = sum(sum(map(str.count, values, itertools.repeat(c))) for c in "<>&'")
        return sum(map(len, map(_json_text, values))) + 5 * html


_json_text: Callable[[str], str] = json.encoder.encode_basestring_ascii
_WEIGHT = _Ruler()
_PRINTED = _Printed()


def _leaf(value: Any, ruler: _Ruler, room: int, top: bool) -> int | None:
    """The size of `value` when there is nothing in it to walk; None for a collection."""
    if isinstance(value, str):
        return ruler.text(value, room, top)
    if value is None or isinstance(value, _REAL):
        return ruler.number(value)
    if isinstance(value, _CONTAINERS):
        return None
    return ruler.other(value)


def _parts(value: Any) -> tuple[Collection[Any], ...]:
    """What is inside a collection: a mapping's keys and values, or the items."""
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    if isinstance(value, dict):
        return value.keys(), value.values()
    return (value,)


def _flat(values: Collection[Any], ruler: _Ruler, room: int) -> int | None:
    """The size of what is in a collection of only text or only numbers, summed in C; None
    for any other collection (it is walked)."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return ruler.texts(values, room)
    if kinds <= {int, bool, float, type(None)} and (int not in kinds or kinds <= {int, bool}):
        return ruler.numbers(values, kinds)
    return None


def _enter(value: Any, depth: int, ruler: _Ruler, room: int
           ) -> tuple[int, int, Iterator[Any] | None]:
    """Start on a collection at `depth`: the size known so far, the steps that took, and what
    is left to walk (None when text or numbers only were summed at once)."""
    size = ruler.frame(value)
    if type(value) in (list, tuple) and len(value) < _SUMMED_FROM:
        return size, 1, iter(value)
    parts = _parts(value)
    flats = [_flat(p, ruler, room - size) for p in parts]
    if None in flats:
        return size, 1, itertools.chain.from_iterable(parts)
    count = sum(map(len, parts))
    per_item = ruler.item + ruler.indent * depth
    return size + sum(f for f in flats if f is not None) + count * per_item, \
        2 + count // 5, None  # summing in C is ~5 times as fast as walking, plus its setup


def _measure(value: Any, ruler: _Ruler, room: int, most_steps: int | None = None
             ) -> tuple[int, int]:
    """An upper bound of `value`'s size under `ruler`, and the steps the walk took.

    The walk stops as soon as the size passes `room` (or the steps `most_steps`), so it costs
    little however the value shares: `[s] * 99999` is over the limit at its second `s`.
    """
    size = _leaf(value, ruler, room, top=True)
    if size is not None:
        return size, 0
    total, walked, inside = _enter(value, 1, ruler, room)
    stack = [] if inside is None else [(inside, 1)]
    limit = room if most_steps is None else most_steps
    while stack and total <= room and walked <= limit:
        items, depth = stack[-1]
        per_item = ruler.item + ruler.indent * depth
        for item in items:  # until a collection is found in it, or a limit is passed
            walked += 1
            total += per_item
            kind = type(item)
            if kind is str:
                total += ruler.text(item, room - total, False)
            elif kind in _NUMBERS:
                total += ruler.number(item)
            else:
                size = _leaf(item, ruler, room - total, top=False)
                if size is None:
                    added, steps, inside = _enter(item, depth + 1, ruler, room - total)
                    total += added
                    walked += steps
                    if inside is not None:
                        stack.append((inside, depth + 1))
                        break
                else:
                    total += size
            if total > room or walked > limit:
                break
        else:
            stack.pop()
    return total, walked


def _weigh(values: Iterable[Any]) -> None:
    """Charge the steps of work that may touch everything inside `values` (sorting, comparing,
    deduplicating, lower-casing for a case-blind sort), however much of it is shared."""
    budget = _BUDGET.get()
    if budget is None:
        return
    for value in values:
        if isinstance(value, _TEXT) or type(value) is range:
            cost = len(value) // _ITEMS_PER_STEP
        elif value is None or isinstance(value, _REAL):
            continue
        else:
            size, walked = _charged_measure(value, _WEIGHT,
                                            (budget.room() + 1) * _ITEMS_PER_STEP)
            cost = size // _ITEMS_PER_STEP - walked
        if cost > 0:
            budget.step(cost)


def _charged_measure(value: Any, ruler: _Ruler, room: int) -> tuple[int, int]:
    """`_measure` within the steps left to the template, and the steps charged for the walk.

    The walk is charged before anything is done with the value; one cut short by the budget
    charges past it, so the template stops there (2,000 shots each printing a var of a million
    aliased values would otherwise each walk it before failing).
    """
    budget = _BUDGET.get()
    left = MAX_STEPS if budget is None else budget.room()
    size, walked = _measure(value, ruler, room, left // _WALK_STEPS + 1)
    if budget is not None and walked:
        budget.step(walked * _WALK_STEPS)
    return size, walked * _WALK_STEPS


def _text_length(value: Any, ruler: _Ruler = _PRINTED) -> int:
    """How long `str(value)` (or JSON, by `ruler`) would be, measured only up to just past
    MAX_TEXT; the walk is counted as steps."""
    if ruler is _PRINTED:
        if isinstance(value, str):
            return len(value)
        if value is None or isinstance(value, _REAL):
            return ruler.number(value)
    return _charged_measure(value, ruler, MAX_TEXT)[0]


def _require_text(values: Iterable[Any]) -> None:
    """Refuse, before any is converted, values whose text would pass MAX_TEXT together."""
    total = 0
    for value in values:
        total += _text_length(value)
        if total > MAX_TEXT:
            raise SecurityError(_TOO_LONG)


# --- what a template prints -------------------------------------------------------------------

def _printable(value: Any) -> Any:
    """`{{ value }}` (the environment's finalize): refused before `str(value)` is built if it
    would pass MAX_TEXT characters; making it is counted like a filter's work."""
    _step()
    if type(value) is str or value is None or isinstance(value, _REAL):
        return value
    size = _text_length(value)
    if size > MAX_TEXT:
        raise SecurityError(_TOO_LONG)
    _step(size // _ITEMS_PER_STEP)
    return value


def _concat_text(parts: tuple[Any, ...]) -> str:
    """`a ~ b ~ c`: the parts' text is measured before any part is converted or joined."""
    total = 0
    for part in parts:
        total += len(part) if type(part) is str else _text_length(part)
        if total > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
    _step(_CONCAT_STEPS + total // _ITEMS_PER_STEP)
    return "".join(map(str, parts))


def _joined(parts: Iterable[str]) -> str:
    """`environment.concat`, joining the output of a macro, a `{% set %}` block or a
    `{% filter %}` block: held to MAX_TEXT characters like the template's own output (a loop
    printing one 99,999-character string 99,999 times would join 10 GB)."""
    if isinstance(parts, list):
        if sum(map(len, parts)) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        return "".join(parts)
    kept: list[str] = []
    length = 0
    for part in parts:  # a block's output, streamed
        length += len(part)
        if length > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        kept.append(part)
    return "".join(kept)


def _weighed(value: Any) -> Any:
    """An operand of `==`, `<`, ...: charged for what comparing it may touch (two lists sharing
    one structure 2**40 times over compared for ever)."""
    if type(value) is str:
        if len(value) >= _ITEMS_PER_STEP:
            _step(len(value) // _ITEMS_PER_STEP)
    elif not (value is None or isinstance(value, _REAL)):
        _weigh((value,))
    return value


def _contained(value: Any) -> Any:
    """The right side of `in`: a mapping or a set is looked up by hash, not walked."""
    if isinstance(value, dict | set | frozenset):
        _step()
        return value
    return _weighed(value)


# --- text that grows with what it is given ----------------------------------------------------

def _too_long(value: Any) -> str:
    return _TOO_LONG if isinstance(value, _TEXT) else _TOO_MANY


def _checked(value: Any) -> Any:
    if isinstance(value, _SEQUENCES) and len(value) > MAX_TEXT:
        raise SecurityError(_too_long(value))
    return value


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str,
              default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _replaced_length(subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    old, new = _argument(args, kwargs, 0, "old", ""), _argument(args, kwargs, 1, "new", "")
    if isinstance(subject, str):
        old, new = str(old), str(new)  # the filter converts them (their size is checked)
    kind = str if isinstance(subject, str) else bytes
    if not (isinstance(old, kind) and isinstance(new, kind)):
        return len(subject)  # a TypeError
    return len(subject) + int(subject.count(old)) * max(len(new) - len(old), 0)


def _indented_length(subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    width = _argument(args, kwargs, 0, "width", 4)
    each = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    return len(subject) + (int(subject.count("\n")) + 1) * each


def _wrapped_length(subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    wrap = _argument(args, kwargs, 2, "wrapstring", "\n")  # after width, break_long_words
    return len(subject) * (1 + len(str(wrap)))


def _expanded_length(subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    size = _argument(args, kwargs, 0, "tabsize", 8)
    tab = "\t" if isinstance(subject, str) else b"\t"
    return len(subject) + int(subject.count(tab)) * (size if isinstance(size, int) else 0)


def _translated_length(subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    table = _argument(args, kwargs, 0, "table")
    found = table.values() if isinstance(table, dict) else table \
        if isinstance(table, list | tuple) else ()
    longest = max((len(v) for v in found if isinstance(v, str | bytes)), default=1)
    return len(subject) * max(longest, 1)


# Filters and methods whose result may be far longer than their text: its length, bounded.
_LENGTH_AFTER: dict[str, Callable[[Any, tuple[Any, ...], Mapping[str, Any]], int]] = {
    "replace": _replaced_length, "indent": _indented_length, "wordwrap": _wrapped_length,
    "expandtabs": _expanded_length, "translate": _translated_length,
}


def _check_growth(name: str, subject: Any, args: tuple[Any, ...],
                  kwargs: Mapping[str, Any]) -> None:
    """Refuse, before it runs, a call that would build more than MAX_TEXT characters."""
    if name in _WIDENING and any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_TEXT
                                 for v in (*args, *kwargs.values())):
        raise SecurityError(_TOO_LONG)
    grown = _LENGTH_AFTER.get(name)
    if grown is not None and isinstance(subject, str | bytes) \
            and grown(subject, args, kwargs) > MAX_TEXT:
        raise SecurityError(_TOO_LONG)


def _joined_items(joiner: Any, items: Iterable[Any]) -> list[Any]:
    """`joiner.join(items)` or `items | join(joiner)`, measured before any item is converted."""
    listed = list(items)
    length = _text_length(joiner) * len(listed)
    if set(map(type, listed)) <= {str, bytes}:
        length += sum(map(len, listed))
    else:
        for item in listed:
            _step(2)  # measured in Python
            length += _text_length(item)
            if length > MAX_TEXT:
                break
    if length > MAX_TEXT:
        raise SecurityError(_TOO_LONG)
    return listed


# --- `%` and str.format ------------------------------------------------------------------------

_STAR = -1  # a `*` width or precision, taken from the values
_DIGITS = re.compile(r"\d+")


def _spec_number(text: str, at: int) -> tuple[int, int]:
    """The width or precision at `at` (too many digits is MAX_TEXT + 1), and where it ends."""
    if text.startswith("*", at):
        return _STAR, at + 1
    end = at
    while end < len(text) and text[end] in "0123456789":
        end += 1
    digits = text[at:end]
    return (MAX_TEXT + 1 if len(digits) > 6 else int(digits or 0)), end


def _percent_specs(text: str) -> Iterator[tuple[str | None, int, int, str]]:
    """(key, width, precision, conversion) of each `%` conversion in `text`, read as Python
    reads them (a key may hold parentheses: `%(a(b)c)99999999s`)."""
    end = len(text)
    at = text.find("%")
    while 0 <= at < end - 1:
        at += 1
        key = None
        if text[at] == "(":
            depth, start = 1, at + 1
            at += 1
            while at < end and depth:
                depth += {"(": 1, ")": -1}.get(text[at], 0)
                at += 1
            key = text[start:at - 1]
        while at < end and text[at] in "-#0 +":
            at += 1
        width, at = _spec_number(text, at)
        precision = 0
        if text.startswith(".", at):
            precision, at = _spec_number(text, at + 1)
        while at < end and text[at] in "hlL":
            at += 1
        yield key, width, precision, text[at:at + 1]
        at = text.find("%", at + 1)


def _percent_length(fmt: str | bytes, values: Any) -> int:
    """An upper bound of `len(fmt % values)`, found without formatting anything."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    _step(_CONVERSION_STEPS * text.count("%"))
    positional = iter(values if isinstance(values, tuple) else (values,))
    total = len(text)
    for key, width, precision, conversion in _percent_specs(text):
        if width == _STAR:
            width = _star(next(positional, 0))
        if precision == _STAR:
            precision = _star(next(positional, 0))
        total += width + precision
        if conversion != "%":
            try:  # as `%` does: `%(key)s` looks in anything with items, a namespace too
                value = values[key] if key is not None else next(positional, None)
            except Exception:
                break
            total += _converted_length(value, conversion)
        if total > MAX_TEXT:
            break
    return total


def _star(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _converted_length(value: Any, conversion: str) -> int:
    """At most how long `%<conversion>` makes `value`, before width and precision."""
    if isinstance(value, float):
        return 330  # `%f` of 1e308 has 309 digits
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 3  # octal has the most digits
    size = _text_length(value)
    return size * 10 + 2 if conversion in ("r", "a") else size  # repr may escape each char


class _BoundedFields:
    """str.format in the sandbox, refusing a field before it is formatted when it could pass
    MAX_TEXT: a width or precision (`{:>99999999}`, `{:{}}` given '999999999'), a value that
    prints long, or fields that together do."""

    length = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion and _text_length(value) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        _step(_FIELD_STEPS)
        for digits in _DIGITS.findall(format_spec):
            if len(digits) > 6 or int(digits) > MAX_TEXT:
                raise SecurityError(_TOO_LONG)
        if _text_length(value) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        text = super().format_field(value, format_spec)  # type: ignore[misc]
        self.length += len(text)
        if self.length > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        return text


class _BoundedFormatter(_BoundedFields, SandboxedFormatter):
    """`str.format` in the sandbox, with every field measured before it is formatted."""


class _BoundedEscapeFormatter(_BoundedFields, SandboxedEscapeFormatter):
    """The same for Markup strings (Jinja's escaping formatter)."""


# --- steps of filters, tests and loops ----------------------------------------------------------

@jinja2.pass_context  # a context filter is never run at compile time (constant folding)
def _step_filter(context: Context, value: Any) -> Any:
    """The `_step` filter loops are compiled with; returns `value` unchanged."""
    _step()
    return value


@jinja2.pass_environment
def _sum(environment: jinja2.Environment, iterable: Iterable[Any],
         attribute: str | int | None = None, start: Any = 0) -> Any:
    """Jinja's `sum`, but lists and tuples are joined in one pass: adding them one at a time
    copies the total so far at every item (`[[1] * 1000] * 99999 | sum(start=[])` never
    finished)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    if not isinstance(start, list | tuple):
        return sum(iterable, start)
    kind = list if isinstance(start, list) else tuple
    parts, length = [start], len(start)
    for item in iterable:
        _step()  # the iterable may be a generator, its size unknown to the filter's count
        if not isinstance(item, kind):
            raise TypeError(f'can only concatenate {kind.__name__} (not '
                            f'"{type(item).__name__}") to {kind.__name__}')
        length += len(item)
        if length > MAX_TEXT:
            raise SecurityError(_TOO_MANY)
        parts.append(item)
    return kind(itertools.chain.from_iterable(parts))


_CHECKED_BEFORE = frozenset({"join", "tojson", "format", "replace"})


def _before_filter(name: str, plain: list[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """Checks a filter needs before it runs; the arguments to run it with."""
    subject = plain[0] if plain else None
    if name == "replace" and plain and not isinstance(subject, str):
        subject = plain[0] = str(subject)  # as the filter would; its length is checked
    if name == "join" and plain:
        plain[0] = _joined_items(_argument(tuple(plain), kwargs, 1, "d", ""), subject or ())
    elif name == "tojson":
        indent = _argument(tuple(plain), kwargs, 1, "indent")
        if _text_length(subject, _Json(indent)) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
    elif name == "format" and isinstance(subject, str):
        values = dict(kwargs) or tuple(plain[1:])
        if _percent_length(subject, values) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
    _check_growth(name, subject, tuple(plain[1:]), kwargs)
    return plain


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose every use is a step, that refuses before it runs to build huge results
    (`'x' | center(10**8)`, `[['x' * 99999] * 99999] | join`), and whose result is checked."""
    lead = 0 if getattr(func, "jinja_pass_arg", None) is None else 1  # context, environment
    deep, text = name in _DEEP_FILTERS, name in _TEXT_FILTERS
    per_step = 1 if name in _ITEM_BY_ITEM else _ITEMS_PER_STEP
    special = name in _CHECKED_BEFORE or name in _WIDENING or name in _LENGTH_AFTER

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        values = (*args[lead:], *kwargs.values()) if kwargs else args[lead:]
        _step(_FILTER_STEPS + _cost(values, per_step))
        if deep:
            _weigh(values)
        if text:
            _require_text(values)
        if special:
            args = (*args[:lead], *_before_filter(name, list(args[lead:]), kwargs))
        return _checked(func(*args, **kwargs))

    return guarded


def _guarded_test(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A test whose every use is a step; comparing tests are charged for what they compare,
    `lower` and `upper` for the text they make of their value."""

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        values = (*args, *kwargs.values())
        if name in _COMPARING_TESTS:
            _step(_FILTER_STEPS)
            _weigh(values)
        else:
            _step(_FILTER_STEPS + _cost(values))
        if name in _TEXT_TESTS:
            _require_text(values[:1])
        return func(*args, **kwargs)

    return guarded


class _StepCounting(CodeGenerator):
    """Compiles every `for` so that each iteration, and each item its `if` tests, is a step;
    and routes `~`, comparisons and dict keys, which pass no sandbox hook, through the
    environment.

    A loop whose body calls nothing (`{% for j in range(100000) %}{% endfor %}`) passes no
    sandbox hook, so the count has to be in the loop itself: the body starts with `_step`.
    """

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            tick = nodes.Filter(nodes.Const(None), _STEP, [], [], None, None,
                                lineno=loop.lineno)
            loop.body = [nodes.ExprStmt(tick, lineno=loop.lineno), *loop.body]
            if loop.test is not None:
                loop.test = nodes.Filter(loop.test, _STEP, [], [], None, None,
                                         lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """`a ~ b`: the parts are measured before they are converted and joined."""
        self.write("environment.joined_text((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        """`{key: value}`: a key is hashed, all of it (a tuple sharing one tuple 2**40 times
        over took for ever), so it is charged like an operand of `==`."""
        self.write("{")
        for index, item in enumerate(node.items):
            self.write(", " if index else "")
            self.write("environment.weighed(")
            self.visit(item.key, frame)
            self.write("): ")
            self.visit(item.value, frame)
        self.write("}")

    @optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        """`a == b`, `a in b`: each side is charged for what comparing it may touch."""
        self.write("(environment.weighed(")
        self.visit(node.expr, frame)
        self.write(")")
        for operand in node.ops:
            hook = "contained" if operand.op in ("in", "notin") else "weighed"
            self.write(f" {operators[operand.op]} environment.{hook}(")
            self.visit(operand.expr, frame)
            self.write(")")
        self.write(")")


_TOO_BIG = f"numbers of more than {MAX_DIGITS:,} digits are not allowed in templates"


def _size(value: Any) -> int:
    return len(value) if isinstance(value, _SEQUENCES) else 0


def _power(left: Any, right: Any) -> Any:
    if isinstance(right, _REAL) and abs(right) > 64:
        raise SecurityError("exponents above 64 are not allowed in templates")
    if isinstance(left, int) and isinstance(right, int) \
            and left.bit_length() * right > _MAX_BITS:  # ((10**64)**64)**64)**64
        raise SecurityError(_TOO_BIG)
    return left**right


def _plus(left: Any, right: Any) -> Any:
    size = _size(left) + _size(right)
    if size > MAX_TEXT:
        raise SecurityError(_too_long(left))
    if size >= _ITEMS_PER_STEP:
        _step(size // _ITEMS_PER_STEP)
    return left + right


def _percent(left: Any, right: Any) -> Any:
    if isinstance(left, _TEXT):
        length = _percent_length(left, right)
        if length > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
        _step(length // _ITEMS_PER_STEP)
    return _checked(left % right)


def _times(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, _SEQUENCES) and isinstance(count, int):
            if len(seq) * count > MAX_TEXT:
                raise SecurityError(f"repeating text or a list to more than {MAX_TEXT:,} "
                                    "characters or items is not allowed in templates")
            _step(len(seq) * max(count, 0) // _ITEMS_PER_STEP)
    if isinstance(left, int) and isinstance(right, int) \
            and left.bit_length() + right.bit_length() > _MAX_BITS + 1:
        raise SecurityError(_TOO_BIG)  # squaring a number 30 times
    return left * right


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing operations whose result would be huge.

    Jinja's sandbox stops attribute tricks, not memory: `'x' | center(10**8)`, a `replace`
    of every character by 100,000 more, or `'%0999999999d' % 1` each build gigabytes from a
    line of YAML (one such prompt took 23 GB before it was killed). Every rendered template
    is also cut off past MAX_TEXT characters (see `templating.TemplateRenderer.render_raw`),
    and so is the output of every macro, `{% set %}` block and `{% filter %}` block.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _StepCounting
    concat = staticmethod(_joined)
    joined_text = staticmethod(_concat_text)  # `~` (see _StepCounting.visit_Concat)
    weighed = staticmethod(_weighed)  # comparisons (see _StepCounting.visit_Compare)
    contained = staticmethod(_contained)

    def __init__(self, **options: Any) -> None:
        options.setdefault("finalize", _printable)
        super().__init__(**options)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """`*`, `**`, `+` and `%`: refused before they run when the result would be huge, and
        counted (a step, and one more per 10 characters or items they make)."""
        _step()
        if operator == "**":
            return _power(left, right)
        if operator == "+":
            return _plus(left, right)
        if operator == "%":
            return _percent(left, right)
        return _times(left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`a.b` is counted: the sandbox's checks make it cost as much as 5 empty iterations."""
        _step(_ATTRIBUTE_STEPS)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """A slice copies what it takes (`big[:]` in a loop is counted like a filter); a tuple
        as a key is hashed, all of it (counted like an operand of `==`)."""
        if isinstance(argument, slice) and isinstance(obj, _SEQUENCES):
            _step(1 + len(range(*argument.indices(len(obj)))) // _ITEMS_PER_STEP)
        else:
            _step()
            if isinstance(argument, tuple):
                _weigh((argument,))
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        """Method calls such as `'x'.ljust(10**8)` are checked like the filters.

        Every call (a macro, `loop(...)`, `caller()`, a method) is _CALL_STEPS steps of the
        budget, and more for large arguments or a large subject (`s.split()` of a long text).
        """
        name = getattr(__obj, "__name__", "")
        subject = getattr(__obj, "__self__", None)
        values = (subject, *args, *kwargs.values()) if kwargs else (subject, *args)
        cost = _cost(values)
        if name in _DEEP_METHODS:
            _step(_CALL_STEPS)
            _weigh(values)
        else:
            _step(_CALL_STEPS + cost)
            for value in args:
                if type(value) is tuple:  # `d.get(t)` hashes all of t
                    _weigh((value,))
        if name == "join" and isinstance(subject, _TEXT) and args:
            args = (_joined_items(subject, args[0]), *args[1:])
        if name in _WIDENING or name in _LENGTH_AFTER:
            _check_growth(name, subject, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs))

    def format_string(self, s: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                      format_func: Callable[..., Any] | None = None) -> str:
        """`s.format(...)` and `s.format_map(...)` through `_BoundedFormatter`."""
        _cost((s,))
        formatter: SandboxedFormatter = _BoundedEscapeFormatter(self, escape=s.escape) \
            if isinstance(s, Markup) else _BoundedFormatter(self)
        if format_func is not None and format_func.__name__ == "format_map":
            if len(args) != 1 or kwargs:
                raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
            kwargs, args = args[0], ()
        return type(s)(formatter.vformat(s, args, kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`'{:>99999}'.format` as the sandbox hands it out (Jinja 3.1.5+): bounded."""
        if getattr(value, "__name__", "") not in ("format", "format_map") \
                or not isinstance(getattr(value, "__self__", None), str):
            return None
        text: str = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            return self.format_string(text, args, kwargs, value)

        return functools.update_wrapper(bounded, value)


def bound_filters(env: jinja2.Environment) -> None:
    """Wrap `env`'s filters and tests: each use is a step, growing ones refuse huge results,
    comparing ones are charged for what they compare; filters no bound fits are removed."""
    for name in _REMOVED_FILTERS:
        env.filters.pop(name, None)
    env.filters["sum"] = _sum
    for name, func in list(env.filters.items()):
        env.filters[name] = _guarded_filter(name, func)
    for name, test in list(env.tests.items()):
        env.tests[name] = _guarded_test(name, cast(Callable[..., Any], test))
    env.filters[_STEP] = _step_filter


@contextmanager
def spending(budget: Budget) -> Iterator[None]:
    """Count the steps of the template rendered inside against `budget`; a template rendered
    inside another (a snippet) shares the outer one's allowance."""
    if _BUDGET.get() is budget:
        yield
        return
    token = _BUDGET.set(budget)
    budget.start()
    try:
        yield
    finally:
        budget.stop()
        _BUDGET.reset(token)
