"""The output folder: what a person opens after `apply`.

```
renders/<name>/index.html       the contact sheet: the final cut on top, then every shot
renders/<name>/manifest.json    what is here, per shot: key, task id, digest, start in the cut
renders/<name>/final.mp4        every rendered shot in storyboard order, one shape
renders/<name>/shots/NNN-<id>.mp4
renders/<name>/thumbs/NNN-<id>.jpg
```
The folder shows the storyboard as it is now: a shot whose request changed since its video
was made, or that was removed, has no file here (its video stays in the cache). Work already
done is reused: a thumbnail while its video's digest is the same, the final cut while its
inputs are. `apply` removes what it made and no longer needs, and never a file it did not
make: those are reported and left alone, so `--out` pointed at a busy folder loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kling_pipeline.cache import Store, place
from kling_pipeline.contactsheet import render_contact_sheet
from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.finalcut import build_final_cut
from kling_pipeline.fsutil import atomic_write_bytes, size_or_none
from kling_pipeline.hashing import KEY_SCHEME
from kling_pipeline.jobs import Job
from kling_pipeline.lockfile import LockEntry, LockFile
from kling_pipeline.manifest import (
    Manifest,
    ManifestFinal,
    ManifestShot,
    read_manifest,
    write_manifest,
)
from kling_pipeline.media import MediaError, probe_video
from kling_pipeline.outputs import FINAL, MANIFEST, PAGE, SHOTS, THUMBS, shot_file_name
from kling_pipeline.render import ShotRequest
from kling_pipeline.thumbnails import write_thumbnail

# Bump when the final cut is made differently, so every cut is rebuilt once.
CUT_VERSION = 1
_OURS_IN_SUBFOLDER = re.compile(r"^\d{3,}-.+\.(mp4|jpg)$")


@dataclass(frozen=True)
class FolderResult:
    """What the folder holds after a sync, for the run's summary."""

    out_dir: Path
    manifest: Manifest
    final_built: bool                 # made in this sync (False: kept, or there is none)
    strangers: list[str]              # files apply did not make, left where they are
    problems: list[str] = field(default_factory=list)  # what could not be made, and why

    @property
    def rendered(self) -> int:
        return sum(1 for shot in self.manifest.shots if shot.file)


def check_output_folder(out_dir: Path, storyboard: Path, name: str) -> None:
    """Refuse a folder that apply would share with things it must not touch: the storyboard's
    own folder, someone else's page or video, another storyboard's output."""
    out = out_dir.resolve()
    home = storyboard.resolve().parent
    if out == home or out in home.parents:
        raise KlingPipelineError(
            f"the output folder {out_dir} holds the storyboard itself; apply rewrites "
            f"{PAGE}, {FINAL} and {MANIFEST} there: choose a folder of its own "
            "(the default is renders/<name>/)")
    if not out.is_dir():
        return
    if (out / MANIFEST).exists():
        previous = read_manifest(out / MANIFEST)
        if previous is not None and previous.storyboard != name:
            raise KlingPipelineError(
                f"the output folder {out_dir} holds the render of storyboard "
                f"'{previous.storyboard}'; apply would replace it with '{name}': give each "
                "storyboard its own output folder")
        return
    foreign = [name for name in (PAGE, FINAL) if (out / name).exists()]
    if foreign:
        raise KlingPipelineError(
            f"the output folder {out_dir} already holds {' and '.join(foreign)}, not made by "
            "apply (there is no manifest.json): choose an empty folder or move them away")


class OutputFolder:
    """Fills one output folder from the store, following the lock file."""

    def __init__(self, out_dir: Path, shots: list[ShotRequest], store: Store, *,
                 storyboard: str, simulated: bool) -> None:
        self.out_dir = out_dir
        self.shots = shots
        self.store = store
        self.storyboard = storyboard
        self.simulated = simulated
        total = len(shots)
        self.names = {s.id: shot_file_name(i, s.id, total) for i, s in enumerate(shots, 1)}

    def place_job(self, job: Job, sha256: str) -> None:
        """Link a finished video into `shots/` at once, before the run ends."""
        for shot_id in job.shot_ids:
            name = self.names.get(shot_id)
            if name is not None:
                place(self.store.object_path(sha256), self.out_dir / SHOTS / name)

    def sync(self, lock: LockFile, *, build_final: bool = True,
             notify: Callable[[str], None] | None = None) -> FolderResult:
        """Bring the whole folder in line with the lock; `build_final=False` (an interrupted
        run) keeps a final cut that is still current and removes one that is not. `notify`
        hears of the slow step (the final cut) before it starts."""
        previous = read_manifest(self.out_dir / MANIFEST)
        known = {s.file: s for s in previous.shots if s.file} if previous else {}
        problems: list[str] = []
        shots = [self._shot(position, shot, lock.shots.get(shot.id), known, problems)
                 for position, shot in enumerate(self.shots, 1)]
        final, shots, built = self._final(shots, previous, build_final, problems, notify)
        manifest = Manifest(storyboard=self.storyboard, key_scheme=KEY_SCHEME,
                            simulated=self.simulated, page=PAGE, final=final, shots=shots)
        atomic_write_bytes(self.out_dir / PAGE, render_contact_sheet(manifest).encode("utf-8"))
        write_manifest(self.out_dir / MANIFEST, manifest)
        strangers = self._tidy(manifest.files())
        return FolderResult(self.out_dir, manifest, built, strangers, problems)

    def _shot(self, position: int, shot: ShotRequest, entry: LockEntry | None,
              known: dict[str, ManifestShot], problems: list[str]) -> ManifestShot:
        """One shot's record, its video linked and its thumbnail made when it is rendered."""
        prompt = shot.body.get("prompt")
        multi = shot.body.get("multi_prompt")
        record = ManifestShot(
            position=position, id=shot.id, status=_status(shot, entry), endpoint=shot.endpoint,
            key=shot.key, task_id=entry.task_id if entry and entry.key == shot.key else None,
            prompt=prompt if isinstance(prompt, str) else None,
            multi_prompt=multi if isinstance(multi, list) else None,
            planned_duration=float(shot.duration),
            error=entry.error if entry and entry.key == shot.key else None)
        if entry is None or entry.key != shot.key or entry.status != "done" or not entry.output:
            return record
        output = entry.output
        if not self.store.has_object(output):
            return replace(record, error="the video is not in the local cache: run apply "
                                         "again to fetch it by its task id")
        name = self.names[shot.id]
        video = self.out_dir / SHOTS / name
        place(self.store.object_path(output.sha256), video)
        record = replace(record, file=f"{SHOTS}/{name}", duration=output.duration,
                         size=output.size, sha256=output.sha256)
        thumb = f"{THUMBS}/{Path(name).stem}.jpg"
        old = known.get(record.file or "")
        if (old is not None and old.sha256 == output.sha256 and old.thumbnail == thumb
                and old.width and old.height and (self.out_dir / thumb).is_file()):
            return replace(record, thumbnail=thumb, width=old.width, height=old.height)
        try:
            info = probe_video(video, decode=False)
            write_thumbnail(video, self.out_dir / thumb)
        except MediaError as exc:
            problems.append(f"{shot.id}: no thumbnail: {exc}")
            return record
        return replace(record, thumbnail=thumb, width=info.width, height=info.height)

    def _final(self, shots: list[ManifestShot], previous: Manifest | None, build: bool,
               problems: list[str], notify: Callable[[str], None] | None,
               ) -> tuple[ManifestFinal | None, list[ManifestShot], bool]:
        """The final cut of every rendered shot: kept when its inputs are the same, else
        rebuilt (or, when not allowed to build, removed rather than left stale)."""
        dest = self.out_dir / FINAL
        inputs = [shot for shot in shots if shot.file and shot.sha256]
        missing = [shot.id for shot in shots if not shot.file]
        built_from = _digest(shot.sha256 or "" for shot in inputs)
        old = previous.final if previous else None
        if (old is not None and previous is not None and old.built_from == built_from
                and size_or_none(dest) == old.size):
            starts = [s.start for s in previous.shots if s.start is not None]
            if len(starts) == len(inputs):
                return replace(old, missing=missing), _with_starts(shots, inputs, starts), False
        if not inputs or not build:
            dest.unlink(missing_ok=True)
            return None, shots, False
        if notify is not None:
            notify(f"making {FINAL} from {len(inputs)} shot(s)")
        try:
            cut = build_final_cut([self.out_dir / shot.file for shot in inputs if shot.file],
                                  dest)
        except (MediaError, OSError) as exc:
            dest.unlink(missing_ok=True)
            problems.append(f"{FINAL} could not be made: {exc}")
            return None, shots, False
        final = ManifestFinal(
            file=FINAL, duration=round(cut.duration, 3), width=cut.shape.width,
            height=cut.shape.height, fps=round(float(cut.shape.fps), 3), size=dest.stat().st_size,
            has_audio=cut.has_audio, stream_copy=cut.stream_copy, built_from=built_from,
            missing=missing)
        return final, _with_starts(shots, inputs, cut.starts), True

    def _tidy(self, wanted: set[str]) -> list[str]:
        """Remove what apply made and no longer needs; list what it did not make."""
        strangers: list[str] = []
        for sub in (SHOTS, THUMBS):
            folder = self.out_dir / sub
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                relative = f"{sub}/{path.name}"
                if relative in wanted:
                    continue
                if path.is_file() and (_OURS_IN_SUBFOLDER.match(path.name) or _temp(path.name)):
                    path.unlink(missing_ok=True)
                else:
                    strangers.append(relative)
        for path in sorted(self.out_dir.iterdir()) if self.out_dir.is_dir() else []:
            if path.name in wanted or path.name in (MANIFEST, SHOTS, THUMBS):
                continue
            if path.is_file() and (path.name in (FINAL, PAGE) or _temp(path.name)):
                path.unlink(missing_ok=True)
            else:
                strangers.append(path.name)
        return strangers


def _status(shot: ShotRequest, entry: LockEntry | None) -> str:
    if entry is None:
        return "pending"
    return entry.status if entry.key == shot.key else "changed"


def _with_starts(shots: list[ManifestShot], inputs: list[ManifestShot],
                 starts: list[float]) -> list[ManifestShot]:
    start_of = {shot.position: round(start, 3) for shot, start in zip(inputs, starts,
                                                                       strict=True)}
    return [replace(shot, start=start_of.get(shot.position)) for shot in shots]


def _digest(digests: Iterable[str]) -> str:
    material = json.dumps({"cut": CUT_VERSION, "videos": list(digests)}, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def _temp(name: str) -> bool:
    """A temp file of an atomic write that a killed run left behind."""
    return name.startswith(".") and name.endswith(".tmp")
