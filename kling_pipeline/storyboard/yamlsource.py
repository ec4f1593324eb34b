"""Safe YAML loading that remembers where every value came from.

Values are built by PyYAML's safe constructor (the C parser when available, so loading costs
what plain `yaml.load` costs); the node tree is kept so that positions are looked up only
when there is an error to report. Duplicate keys, which PyYAML silently lets win, are errors,
and so are keys that are one key once read (`1` and `0x1`, `true` and `True`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from kling_pipeline.errors import Diagnostic, StoryboardError
from kling_pipeline.storyboard.yamlguard import (
    GuardProblem,
    check_aliases,
    check_depth,
    check_text,
    path_of,
)

try:
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe loader that records duplicate keys instead of letting the last one win."""

    duplicates: list[tuple[yaml.Node, yaml.Node]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build the mapping; two keys that construct to equal values (`1` and `0x1`, `true`
        and `True`, `1` and `1.0`) are one key of the dict, so a dict shorter than its keys
        is the cheap sign of a duplicate (merges, rare, are always looked at closely)."""
        own = node.value if isinstance(node, yaml.MappingNode) else []
        count = len(own)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        merged = node.value is not own or len(own) != count  # flatten_mapping ran a merge
        if len(result) < count or merged:
            self._find_duplicates(own)
        return result

    def _find_duplicates(self, pairs: list[tuple[yaml.Node, yaml.Node]]) -> None:
        """Pairs of key nodes of equal value (the first, the repeat); keys merged in with
        `<<` are not in `pairs`, so overriding one of them is not a duplicate."""
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in pairs:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)  # built already: a look-up
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: the constructor has refused it already
                continue
            if first is not key_node:
                self.duplicates.append((first, key_node))

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct one value; a scalar the safe constructor chokes on becomes a located error.

        `!!int abc`, `!!bool maybe`, a date such as 2001-13-45 or an integer of more than
        4300 digits make PyYAML raise plain ValueError/KeyError/AttributeError, which carry
        no position and would surface as a crash.
        """
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, LookupError, AttributeError, TypeError, ArithmeticError) as exc:
            raise ConstructorError(
                None, None, _unreadable(node, exc), node.start_mark) from exc


_READABLE = {
    "tag:yaml.org,2002:int": "a whole number (digits, or 0x/0o/0b and digits; at most 4300 "
                             "digits)",
    "tag:yaml.org,2002:float": "a number such as 0.5, 1e3, .inf or .nan",
    "tag:yaml.org,2002:bool": "true or false",
    "tag:yaml.org,2002:timestamp": "a date YYYY-MM-DD (optionally with a time); quote it to "
                                   "keep it as text",
}


def _unreadable(node: yaml.Node, exc: Exception) -> str:
    """Why a value could not be constructed, and what its tag allows."""
    value = node.value if isinstance(node, yaml.ScalarNode) else ""
    shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
    allowed = _READABLE.get(str(node.tag))
    if allowed is not None:
        return f"{shown} cannot be read as {tag}: it must be {allowed}"
    return f"{shown} cannot be read as {tag} ({type(exc).__name__}: {exc})"


def _yaml12_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    """YAML 1.1's implicit types less its surprises: `9:16` and `yes`/`no`/`on` stay text."""
    drop = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    table = {first: [(tag, rx) for tag, rx in rules if tag not in drop]
             for first, rules in _BaseLoader.yaml_implicit_resolvers.items()}
    extra = [
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                                  r"|[-+]?0x[0-9a-fA-F_]+)$", "-+0123456789"),
        ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
                                    r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
                                    r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
                                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
         "-+0123456789."),
    ]
    for tag, pattern, firsts in extra:
        for first in firsts:
            table.setdefault(first, []).append((tag, re.compile(pattern)))
    return table


_Loader.yaml_implicit_resolvers = _yaml12_resolvers()


@dataclass
class YamlSource:
    """A parsed YAML document: its data, and the node tree to locate any path in it."""

    path: Path
    data: Any
    root: yaml.Node | None
    display: str = field(default="")
    digest: str = field(default="")  # sha256 of the file's bytes: the structure memo's key

    def __post_init__(self) -> None:
        if not self.display:
            self.display = str(self.path)

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int] | None:
        """1-based (line, column) of the value at `path`, or of its key when `key` is true.

        A path that runs past what exists (a missing field) gives the deepest node found.
        """
        node = self.root
        if node is None:
            return None
        mark = node.start_mark
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            child: yaml.Node | None = None
            key_node: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if _key_matches(k, part):
                        key_node, child = k, v
            elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
                  and 0 <= part < len(node.value)):
                child = node.value[part]
            if child is None:
                break
            mark = key_node.start_mark if (last and key and key_node is not None) \
                else child.start_mark
            node = child
        return mark.line + 1, mark.column + 1

    def diagnostic(self, path: Sequence[str | int], message: str, *, key: bool = False,
                   location: str | None = None) -> Diagnostic:
        where = self.locate(path, key=key)
        line, column = where if where else (None, None)
        return Diagnostic(self.display, line, column,
                          format_path(path) if location is None else location, message)


def _key_matches(node: yaml.Node, part: str | int) -> bool:
    """Is `node` the key named `part`? pydantic names a `null:` key 'None', `true:` 'True'."""
    if not isinstance(node, yaml.ScalarNode):
        return False
    if node.value == str(part):
        return True
    tag = str(node.tag)
    if part == "None":
        return tag.endswith(":null")
    return tag.endswith(":bool") and node.value.lower() == str(part).lower()


def format_path(path: Sequence[str | int]) -> str:
    """`shots[2].multi_prompt[0].prompt` from ('shots', 2, 'multi_prompt', 0, 'prompt')."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_col(text: bytes, offset: int) -> tuple[int, int]:
    line_start = text.rfind(b"\n", 0, offset) + 1
    column = len(text[line_start:offset].decode("utf-8", errors="replace")) + 1
    return text.count(b"\n", 0, offset) + 1, column


def _char(character: object) -> str:
    code = character if isinstance(character, int) else ord(str(character)[:1] or "\0")
    return f"U+{code:04X}"


def _decode(text: bytes, shown: str) -> str:
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_col(text, exc.start)
        raise StoryboardError([Diagnostic(
            shown, line, column, "", f"not UTF-8 text (byte 0x{text[exc.start]:02x}); save the "
                                     "storyboard as UTF-8")]) from exc


def load_yaml(path: Path, display: str | None = None) -> YamlSource:
    """Read and parse one YAML file safely; StoryboardError with the place if it is not YAML."""
    shown = display or str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise StoryboardError([Diagnostic(shown, None, None, "",
                                          f"cannot read the file: {exc.strerror}")]) from exc
    try:
        check_text(text, _BaseLoader)
    except GuardProblem as exc:
        line, column = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (None, None)
        raise StoryboardError([Diagnostic(shown, line, column, "", exc.message)]) from exc
    loader = _Loader(_decode(text, shown))
    loader.duplicates = []
    try:
        root = loader.get_single_node()
        if root is not None and b"*" in text:
            check_aliases(root)
        elif root is not None:
            check_depth(root)
        data = loader.construct_document(root) if root is not None else None
    except GuardProblem as exc:
        mark = exc.node.start_mark if exc.node is not None else None
        where = path_of(root, exc.node) if root is not None and exc.node is not None else None
        raise StoryboardError([Diagnostic(shown, mark.line + 1 if mark else None,
                                          mark.column + 1 if mark else None,
                                          format_path((where or [])[:4])
                                          + ("..." if len(where or []) > 4 else ""),
                                          exc.message)]) from exc
    except yaml.MarkedYAMLError as exc:
        raise StoryboardError([_syntax_error(shown, exc)]) from exc
    except ReaderError as exc:
        # libyaml counts bytes of the UTF-8 text it was given (after any byte order mark)
        bom = 3 if text.startswith(b"\xef\xbb\xbf") else 0
        line, column = _line_col(text, exc.position + bom) if isinstance(exc.position, int) \
            else (None, None)
        raise StoryboardError([Diagnostic(
            shown, line, column, "", f"character {_char(exc.character)} is not allowed in YAML "
                                     f"({exc.reason}); remove it or write it as an escape "
                                     "in a double-quoted string")]) from exc
    except yaml.YAMLError as exc:
        raise StoryboardError([Diagnostic(shown, None, None, "",
                                          f"YAML error: {exc}")]) from exc
    finally:
        loader.dispose()
    if loader.duplicates:
        assert root is not None
        raise StoryboardError(_duplicate(shown, root, first, again)
                              for first, again in loader.duplicates)
    return YamlSource(path, data, root, shown, hashlib.sha256(text).hexdigest())


_FLOW = {"while parsing a flow sequence": "'['", "while parsing a flow mapping": "'{'"}


def _syntax_error(shown: str, exc: yaml.MarkedYAMLError) -> Diagnostic:
    """A syntax error where a person must look. An unclosed quote, or a bracket the parser
    gave up on at a later line (often the end of the file), is shown where it opened, with
    the place the parser gave up."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "not valid YAML"
    context = f" ({exc.context})" if exc.context else ""
    message = f"YAML syntax error: {problem}{context}"
    opened, gave_up = exc.context_mark, exc.problem_mark
    if opened is not None and "quoted scalar" in (exc.context or ""):
        mark = opened  # where the unclosed quote opened, not the end of file
    elif opened is not None and gave_up is not None and exc.context in _FLOW \
            and gave_up.line > opened.line:
        mark = opened
        message = (f"YAML syntax error: this {_FLOW[exc.context]} is not closed: at line "
                   f"{gave_up.line + 1}, column {gave_up.column + 1} the parser {problem}"
                   f"{context}")
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Diagnostic(shown, line, column, "", message)


def _duplicate(shown: str, root: yaml.Node, first: yaml.Node, again: yaml.Node) -> Diagnostic:
    """The repeated key, at its place, naming the place of the first one."""
    mark = again.start_mark
    was = f"line {first.start_mark.line + 1}, column {first.start_mark.column + 1}"
    same = "" if first.value == again.value else \
        f" ({_spelled(again)} is read as the same key as {_spelled(first)})"
    return Diagnostic(shown, mark.line + 1, mark.column + 1,
                      format_path(path_of(root, again) or [str(again.value)]),
                      f"duplicate key: this mapping has it already at {was}{same}; YAML would "
                      "silently keep the last one")


def _spelled(node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else "..."
    return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
