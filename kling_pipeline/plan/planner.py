"""The plan: compare rendered shots with the lock file, offline, and say what a run would do.

A shot is looked up by id, then by key, so renaming or reordering shots costs nothing and a
changed shot shows which request fields changed. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from kling_pipeline.key import KEY_SCHEME
from kling_pipeline.plan.pricing import PriceTable
from kling_pipeline.state.cache import CachedResult
from kling_pipeline.state.lockfile import AMBIGUOUS, IN_FLIGHT, LockEntry, LockFile
from kling_pipeline.storyboard.render import ShotRequest

Action = Literal["create", "update", "noop", "reuse", "inflight", "failed", "unknown", "lost",
                 "remove"]
SYMBOLS: dict[Action, str] = {"create": "+", "update": "~", "noop": "=", "reuse": "=",
                              "inflight": "?", "failed": "!", "unknown": "?", "lost": "!",
                              "remove": "-"}
PAID: frozenset[Action] = frozenset({"create", "update"})


@dataclass(frozen=True)
class FieldChange:
    """One request field that differs from what the lock recorded."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class PlanItem:
    """What a run would do with one shot (or one lock entry no longer in the storyboard)."""

    id: str
    action: Action
    shot: ShotRequest | None
    entry: LockEntry | None
    changes: tuple[FieldChange, ...] = ()
    estimate: float | None = None
    note: str = ""

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]


@dataclass(frozen=True)
class Plan:
    storyboard: str
    items: list[PlanItem] = field(default_factory=list)

    def count(self, *actions: Action) -> int:
        return sum(1 for item in self.items if item.action in actions)

    @property
    def to_submit(self) -> list[PlanItem]:
        return [item for item in self.items if item.action in PAID]

    @property
    def estimated_cost(self) -> float:
        return round(sum(item.estimate or 0.0 for item in self.to_submit), 4)

    @property
    def unpriced(self) -> int:
        return sum(1 for item in self.to_submit if item.estimate is None)

    @property
    def has_work(self) -> bool:
        """True when a run would submit, poll, or drop something."""
        return any(item.action not in ("noop", "reuse", "failed", "unknown", "lost")
                   for item in self.items)


def diff_requests(old: LockEntry, new: ShotRequest) -> tuple[FieldChange, ...]:
    changes: list[FieldChange] = []
    if old.endpoint != new.endpoint:
        changes.append(FieldChange("model", old.endpoint, new.endpoint))
    for name in sorted(set(old.request) | set(new.body)):
        before, after = old.request.get(name), new.body.get(name)
        if before != after:
            changes.append(FieldChange(name, before, after))
    if old.take != new.take:
        changes.append(FieldChange("take", old.take, new.take))
    if old.key_scheme != KEY_SCHEME and not changes:
        changes.append(FieldChange("key_scheme", old.key_scheme, KEY_SCHEME))
    return tuple(changes)


def _no_cache(_key: str) -> CachedResult | None:
    return None


def make_plan(storyboard: str, shots: Iterable[ShotRequest], lock: LockFile, prices: PriceTable,
              *, force: Collection[str] = (), retry_failed: bool = False,
              resubmit_unknown: bool = False,
              cached: Callable[[str], CachedResult | None] = _no_cache) -> Plan:
    """Decide per shot: create, update, up to date, in flight, failed, unknown, lost; removals.

    `cached` looks a request key up in the local store: a request whose video is already
    there (an undone edit, a shot of another storyboard) is reused, not paid again. Two shots
    with one request in the same plan pay once: the second reuses the first.
    """
    by_key = lock.by_key()
    items: list[PlanItem] = []
    seen: set[str] = set()
    paying: dict[str, str] = {}
    for shot in shots:
        seen.add(shot.id)
        entry = lock.shots.get(shot.id)
        item = _decide(shot, entry, by_key, prices, shot.id in force, retry_failed,
                       resubmit_unknown, cached)
        if item.action in PAID:
            first = paying.setdefault(shot.key, shot.id)
            if first != shot.id:
                item = PlanItem(shot.id, "reuse", shot, entry,
                                note=f"same request as {first!r}, rendered once for both")
        items.append(item)
    for shot_id in sorted(set(lock.shots) - seen):
        items.append(PlanItem(shot_id, "remove", None, lock.shots[shot_id],
                              note="no longer in the storyboard; nothing is submitted for it"))
    return Plan(storyboard, items)


def _decide(shot: ShotRequest, entry: LockEntry | None,
            by_key: dict[str, tuple[str, LockEntry]], prices: PriceTable, forced: bool,
            retry_failed: bool, resubmit_unknown: bool,
            cached: Callable[[str], CachedResult | None]) -> PlanItem:
    cost = prices.estimate(shot)
    if forced:
        action: Action = "update" if entry is not None else "create"
        return PlanItem(shot.id, action, shot, entry, estimate=cost, note="forced re-render")
    if entry is not None and entry.key == shot.key:
        status = entry.status
        if status == "done":
            return PlanItem(shot.id, "noop", shot, entry)
        if status in IN_FLIGHT:
            return PlanItem(shot.id, "inflight", shot, entry,
                            note=f"task {entry.task_id} {status}: the next run picks it up")
        if status == "failed":
            if retry_failed:
                return PlanItem(shot.id, "update", shot, entry, estimate=cost,
                                note=f"retry after failure: {entry.error or 'no reason'}")
            return PlanItem(shot.id, "failed", shot, entry,
                            note=f"failed: {entry.error or 'no reason given'} "
                                 "(--retry-failed renders it again)")
        if status in AMBIGUOUS:
            if resubmit_unknown:
                return PlanItem(shot.id, "update", shot, entry, estimate=cost,
                                note="resubmitting an unknown submission")
            return PlanItem(shot.id, "unknown", shot, entry,
                            note="submission not confirmed; it may have been billed "
                                 "(--resubmit-unknown submits it again)")
        return PlanItem(shot.id, "lost", shot, entry,
                        note=f"task {entry.task_id} can no longer be fetched "
                             f"(--force {shot.id} renders it again, paid)")
    twin = by_key.get(shot.key)
    if twin is not None and twin[1].status == "done":
        return PlanItem(shot.id, "reuse", shot, twin[1], note=f"same request as {twin[0]!r}")
    if twin is not None and twin[1].status in IN_FLIGHT:
        return PlanItem(shot.id, "inflight", shot, twin[1],
                        note=f"same request as {twin[0]!r}, whose task is {twin[1].status}")
    if cached(shot.key) is not None:
        return PlanItem(shot.id, "reuse", shot, entry, note="same request as a video in the "
                                                             "local cache")
    if entry is not None:
        return PlanItem(shot.id, "update", shot, entry, diff_requests(entry, shot), cost)
    return PlanItem(shot.id, "create", shot, None, estimate=cost)
