"""Guards that keep hostile or broken YAML from hanging or crashing the tool.

The composer recurses once per nesting level (100,000 levels of `[` took half a minute and
more overflowed the C stack; libyaml 0.2.6 stops at 1,000 levels itself), and aliases can
expand a few lines into billions of values (a "billion laughs"). A storyboard never needs
either, so both are refused, with the place. Nesting is what the parser sees: brackets and
`- ` runs in comments, quoted text and block scalars nest nothing and are not counted.
"""

from __future__ import annotations

import re
from typing import Protocol

import yaml

MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100
MAX_EXPANDED = 2_000_000
_TOO_DEEP = f"nesting deeper than {MAX_DEPTH} levels; a storyboard never needs that many"

_COMPACT = re.compile(rb"(?:[-?][ \t]+){%d,}" % MAX_DEPTH)
# Compact nesting (`- - - x`) needs `-` or `?` then blanks then `-` or `?`: when no such pair
# is in the file, the regex above (a few ms over a large file) need not run.
_COMPACT_PAIRS = (b"- -", b"- ?", b"? -", b"? ?", b"-\t", b"?\t")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


class Mark(Protocol):
    """A place in the text, as the pure-Python and the C parser both give it (0-based)."""

    line: int
    column: int


class GuardProblem(Exception):
    """Input refused before or after composing; `mark` or `node` tells where, if anywhere."""

    def __init__(self, message: str, node: yaml.Node | None = None,
                 mark: Mark | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.mark = mark


def check_text(text: bytes, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> None:
    """Refuse files too large or nested too deeply to compose safely.

    Cheap first (scans in C): a run of `- ` pairs or of brackets long enough to nest too
    deep. Those runs may as well be in a comment, a quoted prompt or a block scalar, which
    nest nothing: only then are the parser's events counted (`loader`'s, without composing),
    which see the real nesting, and refuse it at the collection that is too deep.
    """
    if len(text) > MAX_BYTES:
        raise GuardProblem(f"the file is {len(text) / 1e6:.0f} MB; a storyboard may be at most "
                           f"{MAX_BYTES // (1024 * 1024)} MB")
    compact = _COMPACT.search(text) if any(p in text for p in _COMPACT_PAIRS) else None
    if compact is None and (text.count(b"[") + text.count(b"{") <= MAX_DEPTH
                            or _flow_depth_at_most(text) <= MAX_DEPTH):
        return
    _check_events(text, loader)


def _check_events(text: bytes, loader: type[yaml.SafeLoader]) -> None:
    """Count the nesting from the parser's events (a loop, no recursion: the composer is what
    recurses). A syntax error is left for the real load to report, at its place."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH + 1:  # the top-level mapping is level 0
                    raise GuardProblem(_TOO_DEEP, mark=event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own limit, 1,000
            raise GuardProblem(_TOO_DEEP, mark=exc.problem_mark) from exc
    except yaml.YAMLError:
        pass  # a syntax error: the real load reports it, located; nesting is not the problem


def _flow_depth_at_most(text: bytes) -> int:
    """An upper bound of the flow-bracket nesting, found in C: templates put thousands of
    `{{` in a storyboard, and a Python walk over them cost more than the rest of the check.

    Each round deletes every innermost pair; what is left after the pairs are gone are
    unmatched brackets, of which only the openers can deepen the nesting.
    """
    brackets = text.translate(_AS_PARENS, _NOT_BRACKETS)
    rounds = 0
    while b"()" in brackets and rounds <= MAX_DEPTH:
        brackets = brackets.replace(b"()", b"")
        rounds += 1
    return rounds + brackets.count(b"(")


def check_depth(root: yaml.Node) -> None:
    """Refuse collections nested deeper than MAX_DEPTH below the top-level mapping.

    check_text sees flow brackets only: block (indented) nesting reaches libyaml's own limit
    of 1,000 levels, deep enough to overflow Python's recursion in json, repr and Jinja.
    For a tree without aliases; check_aliases measures the height of trees with them.
    """
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise GuardProblem(_TOO_DEEP, node=node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value
                         if not isinstance(child, yaml.ScalarNode))
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair
                         if not isinstance(child, yaml.ScalarNode))



def check_aliases(root: yaml.Node) -> None:
    """Refuse alias bombs, recursive aliases and aliases nested too deep; linear in the
    number of distinct nodes."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
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
            # a collection's height: 1 + its tallest child (a scalar's is 0)
            height = 1 + max((heights[id(c)] for c in children), default=0) if isinstance(
                node, yaml.CollectionNode) else 0
            if height > MAX_DEPTH + 1:
                raise GuardProblem(_TOO_DEEP, node=node)
            heights[key] = height
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
