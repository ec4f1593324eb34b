"""Guards that keep hostile or broken YAML from hanging or crashing the tool.

libyaml's composer recurses once per nesting level (100,000 levels of `[` take half a minute
and more overflow the C stack), and aliases can expand a few lines into billions of values
(a "billion laughs"). A storyboard never needs either, so both are refused, with the place.
"""

from __future__ import annotations

import re

import yaml

MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100
MAX_EXPANDED = 2_000_000

_FLOW = re.compile(rb"[\[\]{}]")
_COMPACT = re.compile(rb"(?:[-?][ \t]+){%d,}" % MAX_DEPTH)


class GuardProblem(Exception):
    """Input refused before or after composing; `offset` or `node` tells where."""

    def __init__(self, message: str, offset: int | None = None,
                 node: yaml.Node | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.node = node


def check_text(text: bytes) -> None:
    """Refuse files too large or nested too deeply to compose safely (cheap: a scan in C)."""
    if len(text) > MAX_BYTES:
        raise GuardProblem(f"the file is {len(text) / 1e6:.0f} MB; a storyboard may be at most "
                           f"{MAX_BYTES // (1024 * 1024)} MB")
    compact = _COMPACT.search(text)
    if compact:
        raise GuardProblem(f"nesting deeper than {MAX_DEPTH} levels", compact.start())
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _FLOW.finditer(text):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise GuardProblem(f"nesting deeper than {MAX_DEPTH} levels", match.start())
        elif depth:
            depth -= 1


def check_aliases(root: yaml.Node) -> None:
    """Refuse alias bombs and recursive aliases; linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            active.discard(key)
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > MAX_EXPANDED:
                raise GuardProblem(f"aliases expand this document to more than "
                                   f"{MAX_EXPANDED:,} values (an alias bomb?)", node=node)
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in active:
            raise GuardProblem("an alias refers to a value that contains it (a recursive "
                               "alias); storyboards cannot hold cycles", node=node)
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def path_of(root: yaml.Node, target: yaml.Node) -> list[str | int] | None:
    """The data path of `target` (a key node or value node) in the tree, for messages."""
    stack: list[tuple[yaml.Node, list[str | int]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                if key is target or value is target:
                    return [*path, name]
                stack.append((value, [*path, name]))
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                if value is target:
                    return [*path, index]
                stack.append((value, [*path, index]))
    return None
