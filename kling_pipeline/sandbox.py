"""The limits on what a storyboard template may cost: memory, CPU, and nothing unbounded.

Jinja's sandbox stops attribute tricks, not work: a line of YAML could build gigabytes of text
or loop for ever. `BoundedSandbox` refuses operations whose result would be huge and counts
the steps a template takes against a `Budget`; `templating` builds the storyboard's Jinja
environment on it.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateProblem(Exception):
    """A template that cannot be rendered; the message says why in plain words."""


MAX_TEXT = 100_000
_TOO_LONG = f"making text longer than {MAX_TEXT:,} characters is not allowed in templates"
# A width or precision of 7+ digits in a format spec (`'%09999999d'`, `'{:>9999999}'`)
_WIDE = re.compile(r"%[-#0 +]*(?:\d{7,}|\d*\.\d{7,})|\{[^{}]*:[^{}]*\d{7,}")
# Filters and str methods whose result can be far larger than their inputs.
_GROWING = frozenset({"center", "ljust", "rjust", "zfill", "indent", "expandtabs", "format",
                      "format_map", "replace", "join", "wordwrap", "truncate"})


# CPU: a template may take this many steps. An empty loop in a loop (`range(100000)` twice)
# prints nothing, so the output cap never stops it; the step counts do, the same way on every
# machine. A loop iteration is one step; a filter or a call is one more per 10 items or
# characters it is given (the sandbox's `sort` of 100,000 numbers takes ~25 ms, as long as
# ~20,000 empty iterations), so a loop of `range(100000) | list | sort` stops about as fast as
# an empty loop in a loop. The storyboard-wide count stops a template that is slow but under
# the limit, repeated over many shots: 20,000 shots whose prompts put a few 300-character
# snippets through filters take about 2,000,000 steps in all.
# The seconds are backstops only, for work no count sees; they are far from what any real
# storyboard takes (a cold `validate` of 20,000 shots takes about 15 s in all on 2 cores).
MAX_STEPS = 1_000_000
MAX_RUN_STEPS = 10_000_000
MAX_SECONDS = 10.0
MAX_RUN_SECONDS = 120.0
_ITEMS_PER_STEP = 10
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

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > MAX_STEPS:
            raise TemplateProblem(
                f"the template takes more than {MAX_STEPS:,} steps (loop iterations, calls "
                f"and filters); a template may take at most {MAX_STEPS:,}")
        if self.run_steps + self.steps > MAX_RUN_STEPS:
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


def _cost(values: Iterable[Any]) -> int:
    """Steps of a filter or call given `values`: 1, plus 1 per 10 items of the largest."""
    largest = max((len(v) for v in values if isinstance(v, _SIZED)), default=0)
    return 1 + largest // _ITEMS_PER_STEP


@jinja2.pass_context  # a context filter is never run at compile time (constant folding)
def _step_filter(context: Context, value: Any) -> Any:
    """The `_step` filter loops are compiled with; returns `value` unchanged."""
    _step()
    return value


class _StepCounting(CodeGenerator):
    """Compiles every `for` so that each iteration, and each item its `if` tests, is a step.

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
        """`a ~ b` passes no sandbox hook either: its result is checked like `a + b`."""
        self.write("environment.checked_text(")
        super().visit_Concat(node, frame)
        self.write(")")


def _counted_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose every use is a step (`range(100000) | list | sort` a thousand times)."""

    @functools.wraps(func)
    def counted(*args: Any, **kwargs: Any) -> Any:
        _step(_cost((*args, *kwargs.values())))
        return func(*args, **kwargs)

    return counted


_SIZED = (str, list, tuple, dict, range, set, frozenset)
_TOO_BIG = f"numbers of more than {MAX_DIGITS:,} digits are not allowed in templates"


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def _check_growth(name: str, subject: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
    """Refuse, before it runs, a call that would build more than MAX_TEXT characters."""
    values = [*args, *kwargs.values()]
    if any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_TEXT for v in values):
        raise SecurityError(_TOO_LONG)
    if name in ("format", "format_map") and isinstance(subject, str) and _WIDE.search(subject):
        raise SecurityError(_TOO_LONG)
    if not isinstance(subject, str):
        return
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) \
            and isinstance(args[1], str):
        hits = subject.count(args[0])
        if len(subject) + hits * max(len(args[1]) - len(args[0]), 0) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
    lines = subject.count("\n") + 1
    if name == "indent":  # the width may be text put before every line
        width = args[0] if args else kwargs.get("width", 4)
        if len(subject) + lines * _size(width) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)
    if name == "wordwrap":  # the text put between wrapped lines
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring", "")
        if len(subject) * (1 + _size(wrap)) > MAX_TEXT:
            raise SecurityError(_TOO_LONG)


def _checked(value: Any) -> Any:
    if _size(value) > MAX_TEXT:
        raise SecurityError(_TOO_LONG)
    return value


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses to build huge text (`'x' | center(10**8)`)."""

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        # environment/context-passing filters get those first; the subject is the first str
        plain = [a for a in args if not isinstance(a, jinja2.Environment | Context
                                                   | EvalContext)]
        subject = plain[0] if plain else None
        if name == "join" and plain and not isinstance(subject, str):
            items = list(subject) if subject is not None else []
            joiner = plain[1] if len(plain) > 1 else kwargs.get("d", "")
            if sum(len(str(i)) for i in items) + len(str(joiner)) * len(items) > MAX_TEXT:
                raise SecurityError(_TOO_LONG)
            plain[0] = items
            args = (*args[:len(args) - len(plain)], *plain)
        _check_growth(name, subject, tuple(plain[1:]), kwargs)
        return _checked(func(*args, **kwargs))

    return bounded


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing operations whose result would be huge.

    Jinja's sandbox stops attribute tricks, not memory: `'x' | center(10**8)`, a `replace`
    of every character by 100,000 more, or `'%0999999999d' % 1` each build gigabytes from a
    line of YAML (one such prompt took 23 GB before it was killed). Every rendered template
    is also cut off past MAX_TEXT characters (see `templating.TemplateRenderer.render_raw`).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _StepCounting
    checked_text = staticmethod(_checked)  # called by `~` (see _StepCounting.visit_Concat)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponents above 64 are not allowed in templates")
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() * right > _MAX_BITS:  # ((10**64)**64)**64)**64
                raise SecurityError(_TOO_BIG)
            return left**right
        if operator == "+":
            if _size(left) + _size(right) > MAX_TEXT:
                raise SecurityError(_TOO_LONG)
            return left + right
        if operator == "%":
            if isinstance(left, str):
                widths = right if isinstance(right, tuple) else (right,)
                if _WIDE.search(left) or any(isinstance(w, int) and w > MAX_TEXT
                                             for w in widths):
                    raise SecurityError(_TOO_LONG)
            return _checked(left % right)
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(count, int) \
                    and len(seq) * count > MAX_TEXT:
                raise SecurityError(f"repeating text to more than {MAX_TEXT:,} characters is "
                                    "not allowed in templates")
        if isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > _MAX_BITS + 1:
            raise SecurityError(_TOO_BIG)  # squaring a number 30 times
        return left * right

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        """Method calls such as `'x'.ljust(10**8)` are checked like the filters.

        Every call (a macro, `loop(...)`, `caller()`, a method) is a step of the budget, and
        more for large arguments or a large subject (`s.split()` of a long text).
        """
        name = getattr(__obj, "__name__", "")
        subject = getattr(__obj, "__self__", None)
        _step(_cost((subject, *args, *kwargs.values())))
        if name in _GROWING and isinstance(subject, str):
            if name == "join":
                items = [str(i) for i in (args[0] if args else [])]
                if sum(map(len, items)) + len(subject) * len(items) > MAX_TEXT:
                    raise SecurityError(_TOO_LONG)
                args = (items, *args[1:])
            _check_growth(name, subject, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs))


def bound_filters(env: jinja2.Environment) -> None:
    """Wrap `env`'s filters: the growing ones refuse huge results, every use is a step."""
    for name in _GROWING & set(env.filters):
        env.filters[name] = _bounded_filter(name, env.filters[name])
    for name, func in env.filters.items():
        env.filters[name] = _counted_filter(func)
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
