"""A memo of rendered shots, keyed by the raw YAML of their entry and everything around it.

`plan` with nothing to do must cost little more than parsing the YAML. Rendering, checking
and hashing a shot is pure work over its entry, the storyboard's defaults, vars and snippets,
the `--var`s and this code: when none of those changed, the memo hands back the shots. Local
images are the one input outside the YAML, so a memoised shot is used only when each of its
images still has the digest it had (a stat, through the image memo).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from kling_pipeline import __version__
from kling_pipeline.storyboard.frameinput import FrameInput
from kling_pipeline.storyboard.images import ImageProblem
from kling_pipeline.storyboard.localimages import ImageInspector, LocalImage
from kling_pipeline.storyboard.memo import JsonMemo
from kling_pipeline.storyboard.render import ShotRequest
from kling_pipeline.storyboard.templating import fingerprint


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Changes whenever this package's code changes (version, and size+mtime of its modules)."""
    package = Path(__file__).parent
    stats = []
    # the key (key.py) is made while rendering, so its module counts as this package's
    for path in [*sorted(package.glob("*.py")), package.parent / "key.py"]:
        stat = path.stat()
        stats.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return fingerprint([__version__, stats])


def memo_version() -> str:
    """The shot memo file's version: a change of code discards the whole file. Kept in the
    salt only, entries of every older version stayed in the file (10,000 of them, 4 MB to
    decode, ~45 ms of every warm run, after a few upgrades or edits of this package)."""
    return f"2/{code_fingerprint()}"


def _to_memo(shot: ShotRequest) -> dict[str, Any]:
    return {"id": shot.id, "endpoint": shot.endpoint, "body": shot.body, "take": shot.take,
            "key": shot.key, "duration": shot.duration, "sound": shot.sound,
            "images": {wire: [str(i.path), i.sha256, i.mime, i.width, i.height, i.size]
                       for wire, i in shot.local_images.items()},
            "frames": [frame.to_json() for frame in shot.frames]}


class ShotMemo:
    """Rendered shots per storyboard entry, valid while the entry and its world are unchanged."""

    def __init__(self, memo: JsonMemo, inspector: ImageInspector, world: Any) -> None:
        self.memo = memo
        self.inspector = inspector
        self.salt = fingerprint([code_fingerprint(), world])
        self.hits = 0

    def key_for(self, raw_entry: Any) -> str:
        # repr of plain YAML data is exact and several times cheaper than canonical JSON; an
        # entry whose keys were only reordered misses the memo, which costs time, not money.
        return hashlib.sha256((self.salt + repr(raw_entry)).encode()).hexdigest()

    def get(self, memo_key: str, entry: int) -> list[ShotRequest] | None:
        stored = self.memo.get(memo_key)
        if not isinstance(stored, list):
            return None
        shots: list[ShotRequest] = []
        for record in stored:
            images: dict[str, LocalImage] = {}
            for wire, (path, digest, *_rest) in record["images"].items():
                try:
                    image = self.inspector.inspect(Path(path))
                except (OSError, ImageProblem):
                    return None
                if image.sha256 != digest:
                    return None
                images[wire] = image
            shots.append(ShotRequest(
                id=record["id"], entry=entry, endpoint=record["endpoint"], body=record["body"],
                local_images=images, take=record["take"], key=record["key"],
                duration=record["duration"], sound=record["sound"],
                frames=tuple(FrameInput.from_json(f, entry) for f in record.get("frames", ()))))
        self.hits += 1
        return shots

    def put(self, memo_key: str, shots: list[ShotRequest]) -> None:
        self.memo.put(memo_key, [_to_memo(s) for s in shots])
