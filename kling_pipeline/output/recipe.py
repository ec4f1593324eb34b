"""The recipe of an output folder: everything a sync's result depends on, in one digest.

A sync of 10,000 shots that finds nothing to do still read the 7 MB manifest, made 10,000
records and compared each with last run's, to learn that nothing had changed. What the folder
holds is a function of a few inputs: the storyboard's shots in order (id and key), each shot's
lock entry (status, task id, error, video), whether that video is in the store, the frames
of other shots a chained shot takes (which shot, which frame, the PNG's digest and whether it
is in the store), and the formats of the files made (manifest, page, cut). Their digest is the
recipe. A sync that ends with the folder whole records it beside the files' stamps; the next
sync with the same recipe, every stamped file still as it was left, has nothing to make, check
or write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kling_pipeline.fsutil import size_or_none
from kling_pipeline.key import IMAGE_DIGEST_PREFIX, KEY_SCHEME
from kling_pipeline.output.contactsheet import page_recipe
from kling_pipeline.output.manifest import MANIFEST_VERSION
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output
from kling_pipeline.storyboard.render import ShotRequest

# Bump when what a sync makes from the same inputs changes in a way no other version shows.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """The digest of a sync's inputs, and what they say without opening a file: which shots
    have no video in the folder (id and status, in storyboard order)."""

    digest: str
    absent: tuple[tuple[str, str], ...]


def rendered_output(shot: ShotRequest, entry: LockEntry | None) -> Output | None:
    """The video the lock says is this shot's current render, if there is one."""
    if entry is None or entry.key != shot.key or entry.status != "done":
        return None
    return entry.output


def shot_status(shot: ShotRequest, entry: LockEntry | None) -> str:
    """The status the folder shows: the lock's, `changed` when the request changed since,
    `pending` when the shot was never submitted."""
    if entry is None:
        return "pending"
    return entry.status if entry.key == shot.key else "changed"


def folder_recipe(storyboard: str, simulated: bool, shots: list[ShotRequest], lock: LockFile,
                  store: Store, cut_version: int) -> Recipe:
    """The recipe of the folder these inputs make (one stat per rendered shot: its video in
    the store; one per known frame: its PNG in the store)."""
    rows: list[object] = [RECIPE_VERSION, MANIFEST_VERSION, KEY_SCHEME, cut_version,
                          page_recipe(""), storyboard, simulated]
    absent: list[tuple[str, str]] = []
    for shot in shots:
        entry = lock.shots.get(shot.id)
        output = rendered_output(shot, entry)
        here = output is not None and store.has_object(output)
        status = shot_status(shot, entry)
        current = entry is not None and entry.key == shot.key
        row: tuple[object, ...] = (
            shot.id, shot.key, status, entry.task_id if current and entry is not None else None,
            entry.error if current and entry is not None else None,
            (output.sha256, output.size, output.duration) if output else None, here)
        # The key holds each frame's digest, not which shot and frame it came from (two
        # spellings may give one PNG), nor whether the PNG is still in the store.
        rows.append((*row, _edges(shot)) if shot.frames else row)
        if not here:
            absent.append((shot.id, status))
    material = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    return Recipe(hashlib.sha256(material.encode("utf-8")).hexdigest(), tuple(absent))


def _edges(shot: ShotRequest) -> list[object]:
    """What the folder shows of a chained shot's frames: for each, its field, the shot and
    frame it is taken from, the PNG's digest once known and whether the store has it."""
    edges: list[object] = []
    for frame in shot.frames:
        image = shot.local_images.get(frame.wire)
        if image is None or shot.body.get(frame.wire) != IMAGE_DIGEST_PREFIX + image.sha256:
            edges.append((frame.field, frame.shot, frame.frame, frame.at, None, False))
            continue
        here = size_or_none(image.path) == image.size
        edges.append((frame.field, frame.shot, frame.frame, frame.at, image.sha256, here))
    return edges
