"""Jinja templates of a storyboard: sandboxed, strict, deterministic, and memoised.

Templates run in Jinja's immutable sandbox with StrictUndefined, so a typo is an error, not an
empty string. Filters and globals that are not deterministic (`random`, `lipsum`) are removed:
a template that rendered differently on every run would change the key and buy the shot again.
Compiling a template costs far more than rendering it, so the text a template renders to is
memoised on disk, keyed by the template and a fingerprint of everything it can see.

Jinja is imported only when a template must really be rendered: a warm run, whose every text
comes from the memos, never imports it (~15-20 ms of every `plan`). The memos still name the
Jinja version (`render_scheme`), read from Jinja's own source file instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_pipeline.storyboard.memo import JsonMemo

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from kling_pipeline.storyboard.sandbox import Budget

__all__ = ["Snippets", "TemplateProblem", "TemplateRenderer", "environment", "fingerprint",
           "jinja_version", "render_scheme", "suggest"]

MAX_SNIPPET_DEPTH = 50  # snippet using snippet ...; deeper would exhaust Python's stack
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"'\n]+)["']\s*$""", re.MULTILINE)


class TemplateProblem(Exception):
    """A template that cannot be rendered; the message says why in plain words.

    Defined here, not in `sandbox`, so that catching it does not import Jinja.
    """


def jinja_version(init_file: Path | None = None) -> str:
    """Jinja's `__version__`, read from the text of the `jinja2/__init__.py` an import would
    load (or `init_file`, the seam for tests), without importing Jinja (~15-20 ms).

    The version is a literal in that file; when it cannot be read there (an unusual install),
    Jinja is imported and asked, so the answer is always the one `jinja2.__version__` gives.
    """
    if init_file is None:
        spec = find_spec("jinja2")
        init_file = Path(spec.origin) if spec is not None and spec.origin else None
    found = None
    if init_file is not None:
        try:
            found = _VERSION_LINE.findall(init_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            found = None
    if found and len(found) == 1:
        return str(found[0])
    import jinja2

    return jinja2.__version__


@lru_cache(maxsize=1)
def render_scheme() -> str:
    """What a rendered text depends on besides the template and its context: this scheme and
    Jinja's version. It names the template memo's version and enters every shot's world, so
    another Jinja discards both memos."""
    return scheme_for(jinja_version())


def scheme_for(version: str) -> str:
    return f"1/jinja-{version}"


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The storyboard's sandbox, built (and Jinja imported) the first time a template must
    really be rendered: a run whose every text comes from the memos never imports Jinja."""
    import jinja2

    from kling_pipeline.storyboard.sandbox import BoundedSandbox, bound_filters

    class _StoryboardSandbox(BoundedSandbox):
        """The bounded sandbox, with `snippets.<name>` always meaning the snippet."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            """`snippets.items` is the snippet named items, not the mapping's method."""
            if isinstance(obj, Snippets):
                return obj[attribute]
            return super().getattr(obj, attribute)

    env = _StoryboardSandbox(undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=False)
    env.filters.pop("random", None)
    env.globals.pop("lipsum", None)
    bound_filters(env)
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

    def __contains__(self, name: object) -> bool:
        """`'x' in snippets` asks whether it is defined (Mapping's would render it, and raise)."""
        return isinstance(name, str) and name in self._sources

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
        self._budget: Budget | None = None

    @property
    def budget(self) -> Budget:
        """The steps and seconds left to this run's templates (made at the first render)."""
        if self._budget is None:
            from kling_pipeline.storyboard.sandbox import Budget

            self._budget = Budget()
        return self._budget

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
        from kling_pipeline.storyboard.sandbox import spending

        with spending(self.budget):
            return self._render_raw(source, context)

    def _render_raw(self, source: str, context: dict[str, Any]) -> str:
        import jinja2
        from jinja2.exceptions import SecurityError

        from kling_pipeline.storyboard.sandbox import MAX_TEXT

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
