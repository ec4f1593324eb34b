"""What apply last wrote in an output folder, so a rerun with nothing to do can trust it.

A no-op `apply` of 10,000 shots spent seconds proving again that the folder was whole: linking
every video once more, rendering the page and the manifest to the same bytes, and it could not
see a changed byte in `final.mp4` at all (it compared sizes). Instead, every file apply makes
gets a stamp: its size, mtime_ns, inode and device at the time, and what it held (a digest).
A file whose stat still gives the same four numbers is the file apply left there (the check
`make`, git's index and rsync rely on); any other stat (deleted, replaced, edited, touched) and
the file is checked or made again. A file without a stamp is checked as before, then stamped.

The stamps live in the store (`<store>/folders/<digest of the folder's path>.json`), not in the
folder: they describe one machine's files (inodes), and the folder's manifest stays the same
bytes for the same render. Losing them costs one full check, never a wrong folder. The file is
rewritten (atomically) only when a stamp changed.

Beside the stamps lies the folder's recipe (recipe.py) when the last sync left the folder whole:
the digest of its inputs and the final cut's record. Same recipe, every stamp holding: the
folder is exactly what a sync would make, and the sync has nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes

STAMPS_VERSION = 1  # an older reader ignores the "recipe" (and a writer drops it: safe)
Stat = tuple[int, int, int, int]  # size, mtime_ns, inode, device


def stat_of(path: str | os.PathLike[str]) -> Stat | None:
    """The four numbers a stamp compares; None when the file is not there (or not a file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev


class FolderStamps:
    """The stamps of one output folder's files, by path relative to the folder."""

    def __init__(self, out_dir: Path, store_root: Path) -> None:
        self.out_dir = out_dir
        self._dir = os.fspath(out_dir)  # joined 30,000 times by a no-op sync of 10,000 shots
        key = hashlib.sha256(str(out_dir.resolve()).encode("utf-8")).hexdigest()[:32]
        self.path = store_root / "folders" / f"{key}.json"
        self._recipe: dict[str, Any] | None = None
        self._stamps = self._read()
        self._changed = False

    def _read(self) -> dict[str, list[Any]]:
        """The stamps saved by the last sync, as read: [size, mtime_ns, inode, device, what]
        (20,000 of them are read by a no-op apply of 10,000 shots; turning each into tuples of
        ints was two thirds of that). None when absent, unreadable or of another folder or
        version: they only save work, so a bad file is never an error, and a stamp of the
        wrong types never matches a stat."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != STAMPS_VERSION or data.get("folder") != str(
                    self.out_dir.resolve()):
                return {}
            stamps: dict[str, list[Any]] = data["files"]
            if not isinstance(stamps, dict) or not all(
                    type(stamp) is list and len(stamp) == 5 for stamp in stamps.values()):
                return {}
            recipe = data.get("recipe")
            if isinstance(recipe, dict) and isinstance(recipe.get("digest"), str) and (
                    recipe.get("final") is None or isinstance(recipe["final"], dict)):
                self._recipe = recipe
            return stamps
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return {}

    def has(self, name: str) -> bool:
        """Whether `name` has a stamp at all (a folder made before stamps existed has none)."""
        return name in self._stamps

    def recorded(self, name: str) -> str | None:
        """What `name` held when it was stamped, whatever it holds now."""
        stamp = self._stamps.get(name)
        return stamp[4] if stamp is not None and isinstance(stamp[4], str) else None

    def fresh(self, name: str, what: str) -> bool:
        """True when `name` was stamped holding `what` and its stat has not changed since."""
        stamp = self._stamps.get(name)
        return stamp is not None and stamp[4] == what and _holds(stamp, f"{self._dir}/{name}")

    def record(self, name: str, what: str) -> None:
        """Stamp `name` as it is now, holding `what` (a file that is gone loses its stamp)."""
        now = stat_of(f"{self._dir}/{name}")
        stamp = [*now, what] if now is not None else None
        if self._stamps.get(name) == stamp:
            return
        if stamp is None:
            del self._stamps[name]
        else:
            self._stamps[name] = stamp
        self._changed = True

    def names(self) -> set[str]:
        """Every stamped file."""
        return set(self._stamps)

    def all_fresh(self) -> bool:
        """True when every stamped file's stat is the one recorded: the folder is as the last
        sync left it (a stat a file, no reading)."""
        folder = self._dir
        return all(_holds(stamp, f"{folder}/{name}") for name, stamp in self._stamps.items())

    def made_from(self) -> dict[str, Any] | None:
        """The recipe the last whole sync recorded: its `digest`, the final cut's record
        (`final`), and what the folder's own folders looked like (`dirs`, `strangers`)."""
        return self._recipe

    def remember(self, recipe: dict[str, Any] | None) -> None:
        """Record the recipe of the folder as it now is (None: it is not whole)."""
        if recipe != self._recipe:
            self._recipe = recipe
            self._changed = True

    def keep_only(self, names: set[str]) -> None:
        """Forget the stamps of files the folder no longer holds."""
        gone = [name for name in self._stamps if name not in names]
        for name in gone:
            del self._stamps[name]
        self._changed = self._changed or bool(gone)

    def save(self) -> None:
        """Write the stamps when one changed; an unwritable store only costs the next run time."""
        if not self._changed:
            return
        files = dict(sorted(self._stamps.items()))
        data = {"version": STAMPS_VERSION, "folder": str(self.out_dir.resolve()),
                "recipe": self._recipe, "files": files}
        try:
            atomic_write_bytes(self.path, json.dumps(data, separators=(",", ":")).encode())
        except OSError:
            return  # the next sync checks the files the slow way, and tries again
        self._changed = False


def _holds(stamp: list[Any], path: str) -> bool:
    """The file at `path` is a regular file with the stamp's size, mtime_ns, inode, device."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (info.st_size == stamp[0] and info.st_mtime_ns == stamp[1]
            and info.st_ino == stamp[2] and info.st_dev == stamp[3]
            and stat.S_ISREG(info.st_mode))
