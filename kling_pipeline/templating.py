"""Jinja templates of a storyboard: sandboxed, strict, deterministic, and memoised.

Templates run in Jinja's immutable sandbox with StrictUndefined, so a typo is an error, not an
empty string. Filters and globals that are not deterministic (`random`, `lipsum`) are removed:
a template that rendered differently on every run would change the key and buy the shot again.
Compiling a template costs far more than rendering it, so the text a template renders to is
memoised on disk, keyed by the template and a fingerprint of everything it can see.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kling_pipeline.memo import JsonMemo

RENDER_SCHEME = f"1/jinja-{jinja2.__version__}"


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
MAX_SNIPPET_DEPTH = 50  # snippet using snippet ...; deeper would exhaust Python's stack
_STEP = "_step"  # the filter every loop iteration calls (inserted by _StepCounting)


class Budget:
    """The steps and seconds left to the templates of one storyboard, and to the current one.

    One Budget belongs to a TemplateRenderer (one load of a storyboard). The outermost
    `render_raw` starts a template's allowance; snippets it uses share it.
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


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing operations whose result would be huge.

    Jinja's sandbox stops attribute tricks, not memory: `'x' | center(10**8)`, a `replace`
    of every character by 100,000 more, or `'%0999999999d' % 1` each build gigabytes from a
    line of YAML (one such prompt took 23 GB before it was killed). Every rendered template
    is also cut off past MAX_TEXT characters (see `render_raw`).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _StepCounting
    checked_text = staticmethod(_checked)  # called by `~` (see _StepCounting.visit_Concat)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`snippets.items` is the snippet named items, not the mapping's method."""
        if isinstance(obj, Snippets):
            return obj[attribute]
        return super().getattr(obj, attribute)

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


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False)
    env.filters.pop("random", None)
    env.globals.pop("lipsum", None)
    for name in _GROWING & set(env.filters):
        env.filters[name] = _bounded_filter(name, env.filters[name])
    for name, func in env.filters.items():
        env.filters[name] = _counted_filter(func)
    env.filters[_STEP] = _step_filter
    return env


@lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return environment().from_string(source)


def fingerprint(value: Any) -> str:
    """A stable digest of JSON-like data (YAML dates and the like via str)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except TypeError:  # YAML allows mixed key types ({1: a, b: c}), which cannot be sorted
        text = "typed-keys:" + json.dumps(_typed_keys(value), sort_keys=True,
                                          separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _typed_keys(value: Any) -> Any:
    """`value` with every mapping key turned into text that keeps its type (1 and "1" differ)."""
    if isinstance(value, dict):
        return {f"{type(k).__name__}:{k}": _typed_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_typed_keys(v) for v in value]
    return value


class Snippets(Mapping[str, str]):
    """`{{ snippets.name }}`: each snippet is a template rendered in the caller's context."""

    def __init__(self, sources: Mapping[str, str], renderer: TemplateRenderer) -> None:
        self._sources = sources
        self._renderer = renderer
        self._context: dict[str, Any] = {}
        self._fingerprint = ""
        self._active: list[str] = []
        self._rendered: dict[str, str] = {}

    def bind(self, context: dict[str, Any], context_fingerprint: str) -> None:
        self._context = context
        self._fingerprint = context_fingerprint
        self._rendered = {}

    def __getitem__(self, name: str) -> str:
        """The snippet rendered in the bound context, once per context.

        A snippet sees only the bound context (not the caller's loop variables), so its text
        is the same at every use: without this, 30 snippets each using the next one twice
        rendered 2**30 times.
        """
        known = self._rendered.get(name)
        if known is not None:
            return known
        if name not in self._sources:
            names = ", ".join(self._sources) or "none are defined"
            raise TemplateProblem(f"no snippet named {name!r}" + suggest(name, self._sources)
                                  + f"; snippets: {names}")
        if name in self._active:
            cycle = " -> ".join([*self._active, name])
            raise TemplateProblem(f"snippet {name!r} uses itself ({cycle})")
        if len(self._active) >= MAX_SNIPPET_DEPTH:
            raise TemplateProblem(f"snippets use snippets more than {MAX_SNIPPET_DEPTH} deep "
                                  f"({self._active[0]} -> ... -> {name}); at most "
                                  f"{MAX_SNIPPET_DEPTH} levels are allowed")
        self._active.append(name)
        try:
            text = self._renderer.render_raw(self._sources[name], self._context)
        finally:
            self._active.pop()
        self._rendered[name] = text
        return text

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


class TemplateRenderer:
    """Renders storyboard templates with one memo shared by the whole run."""

    def __init__(self, memo: JsonMemo, global_fingerprint: str) -> None:
        self.memo = memo
        self.global_fingerprint = global_fingerprint
        self.compiled = 0
        self.budget = Budget()

    def render(self, source: str, context: dict[str, Any], context_fingerprint: str) -> str:
        """Render `source`; text without template syntax is returned as it is."""
        if "{" not in source:
            return source
        memo_key = hashlib.sha256(
            f"{self.global_fingerprint}\0{context_fingerprint}\0{source}".encode()).hexdigest()
        known = self.memo.get(memo_key)
        if isinstance(known, str):
            return known
        text = self.render_raw(source, context)
        self.memo.put(memo_key, text)
        return text

    def render_raw(self, source: str, context: dict[str, Any]) -> str:
        """Render `source` within the budget: a snippet shares its caller's steps and time."""
        if _BUDGET.get() is self.budget:
            return self._render_raw(source, context)
        token = _BUDGET.set(self.budget)
        self.budget.start()
        try:
            return self._render_raw(source, context)
        finally:
            self.budget.stop()
            _BUDGET.reset(token)

    def _render_raw(self, source: str, context: dict[str, Any]) -> str:
        try:
            template = _compile(source)
            self.compiled += 1
            parts: list[str] = []
            length = 0
            for part in template.generate(context):  # a loop can print without end
                length += len(part)
                if length > MAX_TEXT:
                    raise SecurityError(f"the template renders more than {MAX_TEXT:,} "
                                        "characters")
                parts.append(part)
            return "".join(parts)
        except TemplateProblem:
            raise
        except jinja2.TemplateSyntaxError as exc:
            where = f" (template line {exc.lineno})" if "\n" in source.strip() else ""
            raise TemplateProblem(f"template syntax error: {exc.message}{where}") from exc
        except jinja2.UndefinedError as exc:
            raise TemplateProblem(_undefined_message(str(exc.message), context)) from exc
        except SecurityError as exc:
            raise TemplateProblem(f"template not allowed by the sandbox: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateProblem(f"template error: {exc}") from exc
        except (MemoryError, RecursionError) as exc:
            raise TemplateProblem("template too large to render (it would use too much "
                                  "memory or recursion)") from exc
        except TypeError as exc:
            if "no loader" in str(exc):
                raise TemplateProblem("include, import and extends are not available: use "
                                      "snippets ({{ snippets.name }}) to share text") from exc
            raise TemplateProblem(f"template error: TypeError: {exc}") from exc
        except Exception as exc:  # a filter fed bad values may raise anything
            # (`'x'|truncate(-5)` fails an assert inside Jinja): the template's fault, not ours
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from exc


def _undefined_message(message: str, context: Mapping[str, Any]) -> str:
    names = sorted(k for k in context if k != "snippets")
    if message.startswith("'") and message.endswith("' is undefined"):
        name = message[1:-len("' is undefined")]
        return (f"undefined variable {name!r}" + suggest(name, names)
                + (f"; defined: {', '.join(names)}" if names else "; no variables are defined"))
    return f"undefined: {message}"


def suggest(name: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one of `options` is close to `name`, else ''."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
