"""A frame of another shot's video, named as a shot's image: one edge of the shot graph.

`image: {shot: opening, frame: last}` is rendered (its shot id is a template, so a foreach
item can name the shot before it) into a FrameInput. Until the other shot's video exists, the
request body holds a placeholder for it; once the frame is extracted, the frame's PNG digest
stands in the body and the key, exactly as a local image's digest does (plan/inputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDER_PREFIX = "frame-of:"
PENDING = "pending-"  # starts the key of a shot whose frames are not all known (never a lock's)


@dataclass(frozen=True)
class FrameInput:
    """Shot `shot`'s first or last frame, or the frame on screen `at` seconds, as the image
    field `field` (sent as `wire`); `path` is where the storyboard says so (for errors)."""

    field: str
    wire: str
    shot: str
    frame: str | None  # "first" | "last", or None with `at`
    at: float | None
    path: tuple[str | int, ...]

    @property
    def token(self) -> str:
        """'first', 'last' or 'at:2.5': which frame, as text (in paths and placeholders)."""
        return self.frame if self.frame is not None else f"at:{self.at:g}"

    @property
    def label(self) -> str:
        """'last frame', 'frame at 2.5 s': which frame, in words."""
        return f"{self.frame} frame" if self.frame is not None else f"frame at {self.at:g} s"

    @property
    def placeholder(self) -> str:
        """What the body holds until the frame is known."""
        return f"{PLACEHOLDER_PREFIX}{self.shot}:{self.token}"

    def to_json(self) -> list[object]:
        return [self.field, self.wire, self.shot, self.frame, self.at, list(self.path)]

    @classmethod
    def from_json(cls, data: list[object], entry: int) -> FrameInput:
        """A memo's record, its path moved to shot entry `entry` (the entry may have moved)."""
        field, wire, shot, frame, at, path = data
        where = tuple(path) if isinstance(path, list) else ()
        if where[:1] == ("shots",) and len(where) >= 2:
            where = ("shots", entry, *where[2:])
        return cls(str(field), str(wire), str(shot), None if frame is None else str(frame),
                   None if at is None else float(at), where)  # type: ignore[arg-type]
