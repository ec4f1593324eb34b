"""How a plan reads: Terraform-style lines for people, a JSON document for machines.

Ids, notes and request values may come from the lock file, which is anyone's commit: the text
view shows them through textsafe (printable, and cut when long), so they cannot drive the
terminal or flood it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.plan.planner import Plan, PlanItem
from kling_pipeline.storyboard.frameinput import PLACEHOLDER_PREFIX, FrameInput
from kling_pipeline.textsafe import NOTE_LIMIT, clip, printable

Style = Callable[[str, str], str]
COLORS = {"+": "green", "~": "yellow", "=": "bright_black", "?": "cyan", "!": "red",
          "-": "red"}
ESTIMATE_NOTE = ("estimate from resellers' published per-second prices; correct them in the "
                 "storyboard's provider.prices")


def _plain_style(text: str, _color: str) -> str:
    return text


def show_value(value: Any, limit: int = 70) -> str:
    """A short, unambiguous rendering of a request value for a diff line."""
    if value is None:
        return "(unset)"
    if isinstance(value, str):
        if value.startswith(IMAGE_DIGEST_PREFIX):
            return f"<image {value[len(IMAGE_DIGEST_PREFIX):][:12]}>"
        if value.startswith(PLACEHOLDER_PREFIX):  # a frame not known: _line names it
            return "<a frame of another shot, which changes>"
        text = value if len(value) <= limit else value[: limit - 1] + "…"
        return '"' + printable(text).replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return f"[{len(value)} parts]"
    text = printable(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def money(value: float) -> str:
    return f"${value:,.2f}"


def summary_line(plan: Plan) -> str:
    unchanged = f"{plan.count('noop', 'reuse')} unchanged"
    from_remote = sum(1 for item in plan.items if item.from_remote)
    if from_remote:
        unchanged += f" ({from_remote} from the remote)"
    parts = [f"{plan.count('create')} to add", f"{plan.count('update')} to change", unchanged,
             f"{plan.count('inflight')} in flight",
             f"{plan.count('remove')} to remove"]
    if plan.count("failed"):
        parts.append(f"{plan.count('failed')} failed")
    if plan.count("unknown"):
        parts.append(f"{plan.count('unknown')} unknown")
    if plan.count("lost"):
        parts.append(f"{plan.count('lost')} lost")
    if plan.count("blocked"):
        parts.append(f"{plan.count('blocked')} blocked")
    return "Plan: " + ", ".join(parts) + "."


def _line(item: PlanItem, width: int, style: Style) -> list[str]:
    symbol = style(item.symbol, COLORS[item.symbol])
    shot_id, note = clip(item.id), clip(item.note, NOTE_LIMIT)
    if item.shot is None:
        return [f"  {symbol} {shot_id:<{width}}  {note}"]
    shot = item.shot
    cost = f"~{money(item.estimate)}" if item.estimate is not None else (
        "price unknown" if item.action in ("create", "update") else "")
    head = f"  {symbol} {shot_id:<{width}}  {shot.endpoint:<20} {shot.duration:>3} s  {cost}"
    lines = [head.rstrip()]
    pending = {frame.placeholder: frame for frame in shot.frames}
    for change in item.changes:
        frame = pending.get(change.new) if isinstance(change.new, str) else None
        new = (f"<{frame.label} of {clip(frame.shot)}, which changes>" if frame is not None
               else show_value(change.new))
        lines.append(f"      {clip(change.field)}: {show_value(change.old)} -> {new}")
    if note:
        lines.append(f"      {style(note, 'bright_black')}")
    return lines


def render_text(plan: Plan, style: Style = _plain_style) -> str:
    width = max((len(clip(item.id)) for item in plan.items), default=0)
    lines = [f"Storyboard {printable(plan.storyboard)}: "
             f"{sum(1 for i in plan.items if i.shot)} shots", ""]
    for item in plan.items:
        lines += _line(item, width, style)
    lines += ["", summary_line(plan)]
    submit = plan.to_submit
    if submit:
        seconds = sum(item.shot.duration for item in submit if item.shot)
        unpriced = sorted({item.shot.endpoint for item in submit
                           if item.shot and item.estimate is None})
        if len(unpriced) and plan.unpriced == len(submit):
            lines.append(f"Estimated cost: unknown for {seconds} s of video: no price is known "
                         f"for {', '.join(unpriced)}; add it to the storyboard's "
                         "provider.prices.")
        else:
            missing = (f"; not counted: {plan.unpriced} shot(s) of {', '.join(unpriced)}, "
                       "whose price is unknown" if unpriced else "")
            lines.append(f"Estimated cost: ~{money(plan.estimated_cost)} for {seconds} s of "
                         f"video ({ESTIMATE_NOTE}{missing}).")
        if plan.cascade:
            lines.append(f"Of these, {len(plan.cascade)} shot(s) take frames of shots rendered "
                         "first (a cascade): counted as if they change; a frame that comes out "
                         "the same leaves its shot up to date, unpaid.")
    else:
        lines.append("Nothing to submit: no money would be spent.")
    lines += [f"warning: {clip(note, 400)}" for note in plan.notes]
    return "\n".join(lines)


def render_json(plan: Plan) -> dict[str, Any]:
    shots: list[dict[str, Any]] = []
    for item in plan.items:
        record: dict[str, Any] = {"id": item.id, "action": item.action, "symbol": item.symbol,
                                  "note": item.note or None}
        if item.shot is not None:
            record.update(endpoint=item.shot.endpoint, key=item.shot.key,
                          duration=item.shot.duration, request=item.shot.body,
                          estimated_cost_usd=item.estimate)
        if item.entry is not None:
            record.update(task_id=item.entry.task_id, status=item.entry.status)
        record["from_remote"] = item.from_remote
        record["changes"] = [{"field": c.field, "old": c.old, "new": c.new}
                             for c in item.changes]
        if item.shot is not None and item.shot.frames:
            record["inputs"] = [_edge(frame, item.shot.body.get(frame.wire))
                                for frame in item.shot.frames]
            record["waits_for"] = list(item.waits_for)
        shots.append(record)
    return {
        "storyboard": plan.storyboard,
        "shots": shots,
        "summary": {"add": plan.count("create"), "change": plan.count("update"),
                    "unchanged": plan.count("noop", "reuse"),
                    "in_flight": plan.count("inflight"), "remove": plan.count("remove"),
                    "failed": plan.count("failed"), "unknown": plan.count("unknown"),
                    "lost": plan.count("lost"), "blocked": plan.count("blocked")},
        "cascade_shots": len(plan.cascade),
        "estimated_cost_usd": plan.estimated_cost,
        "unpriced_shots": plan.unpriced,
        "estimate_note": ESTIMATE_NOTE,
        "has_work": plan.has_work,
        "notes": list(plan.notes),
    }


def _edge(frame: FrameInput, value: Any) -> dict[str, Any]:
    """One edge of the shot graph: which frame of which shot, and its PNG's sha256 once the
    frame is known (None while it waits for that shot)."""
    known = isinstance(value, str) and value.startswith(IMAGE_DIGEST_PREFIX)
    return {"field": frame.field, "shot": frame.shot, "frame": frame.frame, "at": frame.at,
            "sha256": value[len(IMAGE_DIGEST_PREFIX):] if known else None}
