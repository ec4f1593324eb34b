"""The plan: compare rendered shots with the lock file, offline, and say what a run would do.

A shot is looked up by id, then by key, so renaming or reordering shots costs nothing and a
changed shot shows which request fields changed. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kling_pipeline.key import KEY_SCHEME
from kling_pipeline.plan.pricing import PriceTable
from kling_pipeline.state.cache import CachedResult
from kling_pipeline.state.lockfile import AMBIGUOUS, IN_FLIGHT, LockEntry, LockFile
from kling_pipeline.storyboard.render import ShotRequest

if TYPE_CHECKING:
    from kling_pipeline.plan.inputs import Waiting

Action = Literal["create", "update", "noop", "reuse", "inflight", "failed", "unknown", "lost",
                 "blocked", "remove"]
SYMBOLS: dict[Action, str] = {"create": "+", "update": "~", "noop": "=", "reuse": "=",
                              "inflight": "?", "failed": "!", "unknown": "?", "lost": "!",
                              "blocked": "!", "remove": "-"}
PAID: frozenset[Action] = frozenset({"create", "update"})
# An upstream shot in one of these states gives no frame this run: its dependents wait.
NO_VIDEO: frozenset[Action] = frozenset({"failed", "unknown", "lost", "blocked"})


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
    waits_for: tuple[str, ...] = ()  # upstream shots whose frames decide this shot's key
    from_remote: bool = False  # its video comes (came) from the remote, unpaid

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]


@dataclass(frozen=True)
class Plan:
    storyboard: str
    items: list[PlanItem] = field(default_factory=list)
    notes: tuple[str, ...] = ()  # warnings about the plan (a remote that could not be read)

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
        return any(item.action not in ("noop", "reuse", "failed", "unknown", "lost", "blocked")
                   for item in self.items)

    @property
    def cascade(self) -> list[PlanItem]:
        """The shots to pay for whose keys wait for frames of shots rendered first: their
        estimate assumes they change (the frames decide)."""
        return [item for item in self.to_submit if item.waits_for]


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
              cached: Callable[[str], CachedResult | None] = _no_cache,
              waiting: Mapping[str, Waiting] | None = None) -> Plan:
    """Decide per shot: create, update, up to date, in flight, failed, unknown, lost,
    blocked; removals.

    `cached` looks a request key up in the local store: a request whose video is already
    there (an undone edit, a shot of another storyboard) is reused, not paid again. Two shots
    with one request in the same plan pay once: the second reuses the first. `waiting` names
    the shots whose keys wait for frames of others (plan/inputs.py): each is new or changed,
    rendered after them, or blocked when one of them will have no video.
    """
    by_key = lock.by_key()
    items: list[PlanItem] = []
    seen: set[str] = set()
    paying: dict[str, str] = {}
    waiting = waiting or {}
    for shot in shots:
        seen.add(shot.id)
        entry = lock.shots.get(shot.id)
        if shot.id in waiting:
            item = _after_upstream(shot, entry, waiting[shot.id], prices, shot.id in force)
        else:
            item = decide(shot, entry, by_key, prices, shot.id in force, retry_failed,
                           resubmit_unknown, cached)
        if item.action in PAID:
            first = paying.setdefault(shot.key, shot.id)
            if first != shot.id:
                item = PlanItem(shot.id, "reuse", shot, entry,
                                note=f"same request as {first!r}, rendered once for both",
                                waits_for=item.waits_for)
        items.append(item)
    if waiting:
        items = _block_dependents(items)
    for shot_id in sorted(set(lock.shots) - seen):
        items.append(PlanItem(shot_id, "remove", None, lock.shots[shot_id],
                              note="no longer in the storyboard; nothing is submitted for it"))
    return Plan(storyboard, items)


def _after_upstream(shot: ShotRequest, entry: LockEntry | None, wait: Waiting,
                    prices: PriceTable, forced: bool) -> PlanItem:
    """A shot whose key waits for frames of shots rendered first: new or changed."""
    frames = "; ".join(f"{frame.label} of {frame.shot}" for frame in shot.frames
                       if shot.body.get(frame.wire) == frame.placeholder) or "its frames"
    if wait.blocked:
        return PlanItem(shot.id, "blocked", shot, entry, note=f"blocked: {wait.blocked}",
                        waits_for=wait.upstream)
    note = f"{frames}, rendered first" + ("; forced re-render" if forced else "")
    if entry is None:
        return PlanItem(shot.id, "create", shot, None, estimate=prices.estimate(shot),
                        note=note, waits_for=wait.upstream)
    return PlanItem(shot.id, "update", shot, entry, diff_requests(entry, shot),
                    prices.estimate(shot), note, waits_for=wait.upstream)


def _block_dependents(items: list[PlanItem]) -> list[PlanItem]:
    """A shot waiting for a shot that will have no video this run (failed, unknown, lost,
    or itself blocked) is blocked: not submitted, and said why."""
    by_id = {item.id: item for item in items}
    changed = True
    while changed:  # a chain blocks link by link; the graph is acyclic, so this ends
        changed = False
        for item in list(by_id.values()):
            if item.action == "blocked" or not item.waits_for:
                continue
            stuck = [up for up in item.waits_for if by_id.get(up) is not None
                     and by_id[up].action in NO_VIDEO]
            if stuck:
                up = by_id[stuck[0]]
                by_id[item.id] = PlanItem(item.id, "blocked", item.shot, item.entry,
                                          note=f"blocked: needs a frame of {up.id!r}, which "
                                               f"is {_state_word(up)}",
                                          waits_for=item.waits_for)
                changed = True
    return [by_id[item.id] for item in items]


def _state_word(item: PlanItem) -> str:
    return {"failed": "failed (--retry-failed renders it again)",
            "unknown": "unknown (--resubmit-unknown submits it again)",
            "lost": f"lost (--force {item.id} renders it again)",
            "blocked": "blocked"}.get(item.action, item.action)


def decide(shot: ShotRequest, entry: LockEntry | None,
            by_key: dict[str, tuple[str, LockEntry]], prices: PriceTable, forced: bool,
            retry_failed: bool, resubmit_unknown: bool,
            cached: Callable[[str], CachedResult | None]) -> PlanItem:
    """What to do with one shot whose key is exact (`by_key`: the lock's entries by key)."""
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
        if cached(shot.key) is not None:  # another task's video of this request is here
            why = f" ({entry.error})" if entry.error else ""
            return PlanItem(shot.id, "reuse", shot, entry,
                            note=f"{status} in the lock{why}; a video of the same request "
                                 "is in the cache")
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
