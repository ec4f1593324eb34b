"""What the remote has, shown in a plan: `=` "from remote" where it gave (or, for `plan`,
holds) the video of a request, and a task to follow where its copy was refused.

The planner itself knows only the lock and the local store; apply fills the store from the
remote first (remote/fill.py), so most of this is a note. A refused copy whose entry agrees
with the request leaves its task id: the shot is fetched from the provider by it (free)
instead of being paid for again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from kling_pipeline.plan.jobs import entry_for
from kling_pipeline.plan.planner import PAID, Plan, PlanItem

# A plan item the remote's video can stand for: one that would pay, or has no video to give.
_WANTING = frozenset({*PAID, "failed", "unknown", "lost"})


def after_fill(plan: Plan, taken: Collection[str], fallback: Mapping[str, str],
               refused: Mapping[str, str], force: Collection[str]) -> Plan:
    """The plan apply follows after taking videos from the remote: `taken` request keys came
    from it, `fallback` maps a key whose copy was refused to the task id to follow, and
    `refused` says why a key's copy was not used (in the note of a shot still to pay)."""
    items: list[PlanItem] = []
    for item in plan.items:
        shot = item.shot
        if shot is None or item.id in force:
            items.append(item)
        elif shot.key in taken and item.action in ("noop", "reuse"):
            items.append(replace(item, note="from remote", from_remote=True))
        elif shot.key in fallback and item.action in PAID:
            task_id = fallback[shot.key]
            items.append(PlanItem(item.id, "inflight", shot,
                                  entry_for(shot, "rendered", task_id=task_id),
                                  note=f"{refused.get(shot.key, 'the remote copy was refused')}"
                                       f"; fetched from the provider by task {task_id}, free",
                                  waits_for=item.waits_for))
        elif shot.key in refused and item.action in PAID:
            items.append(replace(item, note="; ".join(filter(None, (
                item.note, f"the remote's copy was refused: {refused[shot.key]}")))))
        else:
            items.append(item)
    return replace(plan, items=items)


def after_peek(plan: Plan, in_index: Collection[str], force: Collection[str],
               warning: str) -> Plan:
    """The plan `plan` shows with a remote: a shot whose key the remote's index holds is
    `=`, unpaid (apply checks the video before it takes it)."""
    items = [replace(item, action="reuse", estimate=None, changes=(), from_remote=True,
                     note="in the remote: apply takes it from there, once verified")
             if item.shot is not None and item.shot.key in in_index
             and item.action in _WANTING and item.id not in force else item
             for item in plan.items]
    return replace(plan, items=items, notes=(*plan.notes, warning) if warning else plan.notes)
