"""`manifest.json`: what the output folder holds, for people and for programs.

It names every file `apply` put in the folder (the page, the final cut, each shot's video and
thumbnail, the frames of other shots that chained shots start or end on), so an editor's script
can find the shots without parsing file names, and `apply` can tell what it made from what a
person dropped there. It holds no time stamp: the same render gives the same bytes, so it can be
diffed or kept in git like the lock file.

A shot that takes a frame of another shot's video records those edges in `inputs`; a shot with
none has no `inputs` key at all, so the manifest of a storyboard without chains is the same
bytes as before the key existed. That is why MANIFEST_VERSION stayed 1: a reader that ignores
keys it does not know (any JSON consumer) reads both, this version reads manifests without the
key, and an older version of this tool, which builds each record from every key it finds, fails
on the new key, takes the manifest as unreadable and remakes the folder's records from the lock
(thumbnails and cut made again once), which is what a version bump would have made it do anyway.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kling_pipeline.fsutil import atomic_write_bytes

# Not bumped for `inputs` (see above): bump only for a change an old reader would misread.
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestInput:
    """A frame of another shot's video that a shot takes as its image: one edge of the graph."""

    field: str                    # the storyboard's field: "image" | "end_image"
    shot: str                     # the id of the shot whose video the frame is taken from
    frame: str | None             # "first" | "last"; None when taken `at` a time
    at: float | None              # seconds into that video; None for first or last
    sha256: str | None            # of the frame's PNG; None until that video is rendered
    file: str | None              # "frames/002-<id>-image.png"; None when not in the folder


@dataclass(frozen=True)
class ManifestShot:
    """One shot of the storyboard, in storyboard order, rendered or not."""

    position: int                 # 1-based place in the storyboard
    id: str
    status: str                   # the lock's status, or "pending" when never submitted
    endpoint: str                 # the model's endpoint slug, e.g. kling-v3.0-pro-t2v
    key: str
    task_id: str | None
    prompt: str | None            # as rendered and sent
    multi_prompt: list[dict[str, Any]] | None
    planned_duration: float       # seconds asked for
    file: str | None = None       # "shots/001-<id>.mp4", relative to the folder
    thumbnail: str | None = None  # "thumbs/001-<id>.jpg"
    duration: float | None = None  # seconds of the video received
    size: int | None = None       # bytes
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    start: float | None = None    # seconds into the final cut; None when not in it
    error: str | None = None      # why it is not rendered, when the lock says
    # frames of other shots it takes (None, and no key in the file, when it takes none)
    inputs: list[ManifestInput] | None = None


@dataclass(frozen=True)
class ManifestFinal:
    """The final cut: every rendered shot in storyboard order, normalised to one shape."""

    file: str                     # "final.mp4"
    duration: float
    width: int
    height: int
    fps: float
    size: int
    has_audio: bool
    stream_copy: bool             # True: the shots' video was copied, not re-encoded
    built_from: str               # digest of its inputs: unchanged means no rebuild
    missing: list[str]            # ids of shots left out because they are not rendered
    sha256: str | None = None     # of final.mp4's bytes (None in manifests before it was kept)


@dataclass(frozen=True)
class Manifest:
    storyboard: str
    key_scheme: int
    simulated: bool               # True: animatics from the local simulator, nothing billed
    page: str                     # "index.html"
    final: ManifestFinal | None
    shots: list[ManifestShot]
    manifest_version: int = MANIFEST_VERSION

    def files(self) -> set[str]:
        """Every file (relative path) the manifest names, itself excluded."""
        named = {self.page}
        if self.final is not None:
            named.add(self.final.file)
        for shot in self.shots:
            named.update(name for name in (shot.file, shot.thumbnail) if name)
            if shot.inputs:
                named.update(edge.file for edge in shot.inputs if edge.file)
        return named


def manifest_json(manifest: Manifest) -> str:
    """The manifest as text: the version first, then the fields in their order.

    Built field by field rather than with `dataclasses.asdict`, which deep-copies every value
    first (a second at 10,000 shots); the text is the same.
    """
    final = manifest.final
    data = {"manifest_version": manifest.manifest_version, "storyboard": manifest.storyboard,
            "key_scheme": manifest.key_scheme, "simulated": manifest.simulated,
            "page": manifest.page, "final": _plain(final, _FINAL) if final else None,
            "shots": [_shot_plain(shot) for shot in manifest.shots]}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _plain(record: ManifestShot | ManifestFinal | ManifestInput,
           names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in names}


def _shot_plain(shot: ManifestShot) -> dict[str, Any]:
    """A shot's fields in their order; `inputs` (the last) only when it has some."""
    data = _plain(shot, _SHOT)
    if shot.inputs is not None:
        data["inputs"] = [_plain(edge, _INPUT) for edge in shot.inputs]
    return data


assert fields(ManifestShot)[-1].name == "inputs", "inputs is written last, when there are any"
_SHOT = tuple(field.name for field in fields(ManifestShot) if field.name != "inputs")
_FINAL = tuple(field.name for field in fields(ManifestFinal))
_INPUT = tuple(field.name for field in fields(ManifestInput))


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write_bytes(path, manifest_json(manifest).encode("utf-8"))


_HEAD_STORYBOARD = re.compile(r'^  "storyboard": "([A-Za-z0-9._-]{1,100})",?$', re.M)


def manifest_storyboard(path: Path) -> str | None:
    """Whose render a manifest holds, from its first lines: the folder check before every
    apply read and built the whole manifest (7 MB at 10,000 shots) for one name. A manifest
    this tool did not write in its own layout is read whole, as before."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    found = _HEAD_STORYBOARD.search(head)
    if found is not None and head.startswith('{\n  "manifest_version": '):
        return found.group(1)
    previous = read_manifest(path)
    return previous.storyboard if previous is not None else None


def read_manifest(path: Path) -> Manifest | None:
    """The manifest a previous run wrote; None when absent, unreadable or of another version.

    It only saves work (thumbnails, the final cut), so a bad one is rebuilt, never an error.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("manifest_version") != MANIFEST_VERSION:
            return None
        final = data.get("final")
        return Manifest(
            storyboard=str(data["storyboard"]), key_scheme=int(data["key_scheme"]),
            simulated=bool(data["simulated"]), page=str(data["page"]),
            final=ManifestFinal(**final) if isinstance(final, dict) else None,
            shots=[_shot_record(shot) for shot in data["shots"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _shot_record(raw: dict[str, Any]) -> ManifestShot:
    """A shot's record as read (TypeError for a key or a shape this version does not know)."""
    edges = raw.get("inputs")
    if edges is None:
        return ManifestShot(**raw)
    if not isinstance(edges, list):
        raise TypeError("inputs is not a list")
    return ManifestShot(**{**raw, "inputs": [ManifestInput(**edge) for edge in edges]})
