"""Claim updates this checkout owes the remote, kept until a run can make them.

A claim left `claimed` after its holder learnt the task id (or that its POST was ambiguous)
makes every other machine wait out the expiry, then take the key over and pay again. The
update is made as soon as it is known (claiming.Claimer); when the remote cannot be reached
then, or a run was killed first and its rerun cannot reach the remote, nothing in the remote
says so, and the lock soon stops saying it too (the shot ends `done`). So the update is kept
here, in the store, and the next run of this checkout that reaches the remote makes it before
anything else (claiming.reconcile). One small file per holder; an unreadable one counts as
empty (the lock's shots still in flight say what they can).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from kling_pipeline.fsutil import atomic_write_bytes

OwedState = Literal["submitted", "unknown", "released"]
_STATES = ("submitted", "unknown", "released")


@dataclass(frozen=True)
class Owed:
    """What one claim of this checkout should say: its task id, `unknown`, or `released`."""

    state: OwedState
    task_id: str | None = None
    note: str = ""


class OwedClaims:
    """The updates one holder owes, by request key, in `<store>/claims-owed/`."""

    def __init__(self, store_root: Path, holder: str) -> None:
        name = hashlib.sha256(holder.encode("utf-8")).hexdigest()[:16]
        self.path = store_root / "claims-owed" / f"{name}.json"

    def load(self) -> dict[str, Owed]:
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
            return {str(key): _owed(value) for key, value in found["claims"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return {}  # damaged: what the lock still says is asked again

    def add(self, updates: Mapping[str, Owed]) -> None:
        if updates:
            self.keep({**self.load(), **updates})

    def settle(self, keys: Iterable[str]) -> None:
        """These keys' claims are as they should be (or no longer this checkout's)."""
        owed, settled = self.load(), set(keys)
        left = {key: value for key, value in owed.items() if key not in settled}
        if len(left) != len(owed):
            self.keep(left)

    def keep(self, owed: Mapping[str, Owed]) -> None:
        """What is owed from now on, all of it (none: the file goes)."""
        if not owed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        text = json.dumps({"claims": {key: asdict(value) for key, value in sorted(owed.items())}},
                          indent=1, sort_keys=True)
        atomic_write_bytes(self.path, text.encode("utf-8"))


def _owed(value: object) -> Owed:
    if not isinstance(value, dict) or value.get("state") not in _STATES:
        raise ValueError("not an owed claim update")
    task_id, note = value.get("task_id"), value.get("note", "")
    if not isinstance(task_id, str | None) or not isinstance(note, str):
        raise ValueError("not an owed claim update")
    return Owed(value["state"], task_id, note)
