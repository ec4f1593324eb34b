"""The shot graph: which shots take frames of which, checked before any money is spent.

A shot may take a frame of any other shot, earlier or later in the list. What cannot be
rendered is an error of the storyboard, located where the reference is written: a shot that
does not exist, a shot's own frame, a cycle (every shot on it, each at its place), a time past
the end of the other shot's video. `upstream_first` orders the shots so that each comes after
every shot it takes a frame of.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kling_pipeline.storyboard.templating import suggest
from kling_pipeline.textsafe import shown

if TYPE_CHECKING:
    from kling_pipeline.storyboard.frameinput import FrameInput
    from kling_pipeline.storyboard.render import ShotRequest


@dataclass(frozen=True)
class GraphProblem:
    """A reference that cannot be rendered: where it is written, why, and whose it is."""

    path: tuple[str | int, ...]
    message: str
    shot: str


def graph_problems(shots: list[ShotRequest], named: Collection[str] = ()) -> list[GraphProblem]:
    """Every reference that cannot be rendered. `named` are ids of shots that exist but did
    not render (their own errors are reported): a reference to one is not 'unknown'."""
    by_id = {shot.id: shot for shot in shots}
    problems: list[GraphProblem] = []
    for shot in shots:
        for frame in shot.frames:
            problems += _reference_problems(shot, frame, by_id, named)
    problems += _cycle_problems(shots, by_id)
    return problems


def _reference_problems(shot: ShotRequest, frame: FrameInput, by_id: dict[str, ShotRequest],
                        named: Collection[str]) -> list[GraphProblem]:
    where = (*frame.path, "shot")
    if frame.shot == shot.id:
        return [GraphProblem(where, f"{frame.field} names this shot itself: a shot cannot "
                                    "start or end on a frame of its own video", shot.id)]
    upstream = by_id.get(frame.shot)
    if upstream is None:
        if frame.shot in named:
            return []  # it exists, with errors of its own
        return [GraphProblem(where, f"no shot named {shown(frame.shot)}"
                                    + suggest(frame.shot, [*by_id, *named]), shot.id)]
    if frame.at is not None and frame.at > upstream.duration:
        return [GraphProblem((*frame.path, "at"),
                             f"{frame.at:g} s is past the end of {upstream.id!r}, whose video "
                             f"lasts {upstream.duration} s", shot.id)]
    return []


def _cycle_problems(shots: list[ShotRequest], by_id: dict[str, ShotRequest]
                    ) -> list[GraphProblem]:
    """One problem per reference that lies on a cycle, naming the whole cycle."""
    problems: list[GraphProblem] = []
    for component in _cycles(shots, by_id):
        members = set(component)
        loop = " -> ".join([*component, component[0]])
        for shot_id in component:
            for frame in by_id[shot_id].frames:
                if frame.shot in members and frame.shot != shot_id:
                    problems.append(GraphProblem(
                        (*frame.path, "shot"),
                        f"takes a frame of {frame.shot!r}, which needs this shot's video "
                        f"first: a cycle ({loop}); no shot on it can be rendered", shot_id))
    return problems


def _cycles(shots: list[ShotRequest], by_id: dict[str, ShotRequest]) -> list[list[str]]:
    """The strongly connected components with more than one shot (Tarjan, iterative), each
    in the order of one cycle through them, starting at its first shot in the storyboard."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in (shot.id for shot in shots):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = _upstream_ids(by_id[node], by_id)
            if edge < len(targets):
                work.append((node, edge + 1))
                target = targets[edge]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(_as_cycle(component, by_id, shots))
    return found


def _as_cycle(component: list[str], by_id: dict[str, ShotRequest],
              shots: list[ShotRequest]) -> list[str]:
    """The component's shots along one cycle from its first shot in the storyboard (every
    shot of a component is on some cycle; the others follow in storyboard order)."""
    members = set(component)
    order = [shot.id for shot in shots if shot.id in members]
    start = order[0]
    path, seen = [start], {start}
    while True:
        nexts = [t for t in _upstream_ids(by_id[path[-1]], by_id) if t in members]
        step = next((t for t in nexts if t not in seen), None)
        if step is None:
            break
        path.append(step)
        seen.add(step)
    return path + [member for member in order if member not in seen]


def _upstream_ids(shot: ShotRequest, by_id: dict[str, ShotRequest]) -> list[str]:
    """The shots this one takes frames of (known, not itself), each once, in field order."""
    out: list[str] = []
    for frame in shot.frames:
        if frame.shot in by_id and frame.shot != shot.id and frame.shot not in out:
            out.append(frame.shot)
    return out


def upstream_first(shots: Iterable[ShotRequest]) -> list[ShotRequest]:
    """The shots so that each comes after the shots it takes frames of; otherwise in
    storyboard order. The graph must be acyclic (the storyboard was checked)."""
    listed = list(shots)
    by_id = {shot.id: shot for shot in listed}
    placed: set[str] = set()
    entered: set[str] = set()  # a cycle (unchecked input) ends, in storyboard order
    ordered: list[ShotRequest] = []
    for root in listed:
        work = [(root, False)]
        while work:
            shot, expanded = work.pop()
            if shot.id in placed:
                continue
            if expanded:
                placed.add(shot.id)
                ordered.append(shot)
                continue
            if shot.id in entered:
                continue
            entered.add(shot.id)
            work.append((shot, True))
            for upstream in reversed(_upstream_ids(shot, by_id)):
                if upstream not in placed:
                    work.append((by_id[upstream], False))
    return ordered
