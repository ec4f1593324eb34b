"""The output folder: what a person opens after `apply`.

```
renders/<name>/index.html       the contact sheet: the final cut on top, then every shot
renders/<name>/manifest.json    what is here, per shot: key, task id, digest, start in the cut
renders/<name>/final.mp4        every rendered shot in storyboard order, one shape
renders/<name>/shots/NNN-<id>.mp4
renders/<name>/thumbs/NNN-<id>.jpg
renders/<name>/frames/NNN-<id>-<field>.png   the frame of another shot a chained shot takes
```
The folder shows the storyboard as it is now: a shot whose request changed since its video
was made, or that was removed, has no file here (its video stays in the cache). Work already
done is reused: a thumbnail while its video's digest is the same, the final cut while its
inputs are. `apply` removes what it made and no longer needs, and never a file it did not
make: those are reported and left alone, so `--out` pointed at a busy folder loses nothing.

The manifest is what marks a folder as apply's, so it is written (atomically) before the first
`final.mp4` or `index.html` of a folder: a kill at any moment of a sync leaves a folder the next
`apply` recognises as its own.

A rerun with nothing to do must cost little (a no-op apply of 10,000 shots spent 4 s here) and
still leave the folder whole: every file apply makes is stamped (stamps.py), a file whose stamp
still holds is trusted, any other is checked or made again, and a file whose bytes would not
change is not written at all (no new time stamp for a player, a sync tool or a backup to see).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.fsutil import atomic_write_bytes, sha256_file, size_or_none
from kling_pipeline.key import IMAGE_DIGEST_PREFIX, KEY_SCHEME
from kling_pipeline.output.contactsheet import page_recipe, render_contact_sheet
from kling_pipeline.output.finalcut import build_final_cut
from kling_pipeline.output.manifest import (
    Manifest,
    ManifestFinal,
    ManifestInput,
    ManifestShot,
    manifest_json,
    manifest_storyboard,
    read_manifest,
)
from kling_pipeline.output.media import MediaError
from kling_pipeline.output.names import (
    FINAL,
    FRAMES,
    MANIFEST,
    PAGE,
    SHOTS,
    THUMBS,
    frame_file_name,
    shot_file_name,
)
from kling_pipeline.output.recipe import Recipe, folder_recipe, rendered_output, shot_status
from kling_pipeline.output.stamps import FolderStamps
from kling_pipeline.output.thumbnails import write_thumbnail
from kling_pipeline.plan.jobs import Job
from kling_pipeline.state.cache import Store, place
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output
from kling_pipeline.storyboard.render import ShotRequest

# Bump when the final cut is made differently, so every cut is rebuilt once.
CUT_VERSION = 1
_OURS_IN_SUBFOLDER = re.compile(r"^\d{3,}-.+\.(mp4|jpg)$")
_OURS_IN_FRAMES = re.compile(r"^\d{3,}-.+\.png$")


@dataclass(frozen=True)
class FolderResult:
    """What the folder holds after a sync, for the run's summary."""

    out_dir: Path
    final: ManifestFinal | None       # the final cut's record; None when there is none
    shots: int                        # shots in the storyboard
    absent: tuple[tuple[str, str], ...]  # (id, status) of the shots with no video here
    final_built: bool                 # made in this sync (False: kept, or there is none)
    strangers: list[str]              # files apply did not make, left where they are
    problems: list[str] = field(default_factory=list)  # what could not be made, and why
    made: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def rendered(self) -> int:
        return self.shots - len(self.absent)

    @property
    def manifest(self) -> Manifest:
        """The folder's manifest: the one this sync made, or (a sync that found nothing to
        do reads no manifest) the file, read on first use."""
        if self.made is None:
            found = read_manifest(self.out_dir / MANIFEST)
            if found is None:
                raise KlingPipelineError(f"{self.out_dir / MANIFEST} cannot be read")
            object.__setattr__(self, "made", found)
        assert self.made is not None
        return self.made


def check_output_folder(out_dir: Path, storyboard: Path, name: str,
                        cache: Path | None = None) -> None:
    """Refuse a folder that apply would share with things it must not touch: the storyboard's
    own folder, a git repository's `.git`, the cache (`cache`), someone else's page or video,
    another storyboard's output."""
    out = out_dir.resolve()
    home = storyboard.resolve().parent
    if out == home or out in home.parents:
        raise KlingPipelineError(
            f"the output folder {out_dir} holds the storyboard itself; apply rewrites "
            f"{PAGE}, {FINAL} and {MANIFEST} there: choose a folder of its own "
            "(the default is renders/<name>/)")
    if ".git" in out.parts:
        raise KlingPipelineError(
            f"the output folder {out_dir} is inside a git repository's .git folder: choose a "
            "folder of its own (the default is renders/<name>/)")
    if cache is not None and (out == cache.resolve() or cache.resolve() in out.parents):
        raise KlingPipelineError(
            f"the output folder {out_dir} is inside the cache {cache}, which gc cleans: "
            "choose a folder of its own (the default is renders/<name>/)")
    if not out.is_dir():
        return
    if (out / MANIFEST).exists():
        owner = manifest_storyboard(out / MANIFEST)
        if owner is not None and owner != name:
            raise KlingPipelineError(
                f"the output folder {out_dir} holds the render of storyboard "
                f"'{owner}'; apply would replace it with '{name}': give each "
                "storyboard its own output folder")
        return
    foreign = [name for name in (PAGE, FINAL) if (out / name).exists()]
    if foreign and not _left_by_apply(out):
        raise KlingPipelineError(
            f"the output folder {out_dir} already holds {' and '.join(foreign)}, not made by "
            "apply (there is no manifest.json): choose an empty folder or move them away")


def _left_by_apply(out: Path) -> bool:
    """A folder an older apply was killed in while making it (it wrote the manifest last):
    its page says it was generated by us, or its `shots/` holds our numbered videos."""
    try:
        with (out / PAGE).open("rb") as page:
            if b'<meta name="generator" content="kling-pipeline">' in page.read(4096):
                return True
    except OSError:
        pass  # no page (or none readable): the videos may still say whose folder it is
    shots = out / SHOTS
    return shots.is_dir() and any(
        path.is_file() and _OURS_IN_SUBFOLDER.match(path.name) for path in shots.iterdir())


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
        # Thumbnails started in worker threads (as the run places videos, or at the start of
        # a sync), by video file name: (its sha256, future of the video's (w, h)).
        self._early: dict[str, tuple[str, Future[tuple[int, int]]]] = {}
        self._thumbnailer: ThreadPoolExecutor | None = None
        # Thumbnails this sync keeps as they are, by video file name: the old record.
        self._kept: dict[str, ManifestShot] = {}
        self._placing = threading.Lock()  # `place` is called from a pull's threads too
        self.stamps = FolderStamps(out_dir, store.root)

    def worth_writing(self, lock: LockFile) -> bool:
        """Whether a sync has anything to show: the folder exists already (it is kept in line
        with the lock), or some shot has a video. A run that rendered nothing (a refusal, a
        server out of reach) makes no folder of pending shots."""
        if self.out_dir.is_dir():
            return True
        entries = (lock.shots.get(shot.id) for shot in self.shots)
        return any(entry is not None and entry.status == "done" and entry.output is not None
                   for entry in entries)

    def place_job(self, job: Job, sha256: str) -> None:
        """Link a finished video into `shots/` at once, before the run ends, and start the
        thumbnail of a new download in a worker thread (200 of them made at the end made a
        run 1.5 s longer)."""
        # from the store (kind "place"): its thumbnail is likely there already
        self.place(job.shot_ids, sha256, thumbnail=job.kind != "place")

    def place(self, shot_ids: Iterable[str], sha256: str, *, thumbnail: bool = True) -> None:
        """Link a video now in the store into `shots/` for these shots, and start its
        thumbnail in a worker thread (a pull places each video as it arrives)."""
        with self._placing:
            for shot_id in shot_ids:
                name = self.names.get(shot_id)
                if name is None:
                    continue
                self._place_video(name, sha256)
                if not thumbnail:
                    continue
                self._start_thumbnail(name, sha256, self.out_dir / SHOTS / name)

    def _start_thumbnail(self, name: str, sha256: str, video: Path) -> None:
        """Make the thumbnail of `video` (the video `name` shows) in a worker thread."""
        if self._thumbnailer is None:
            self._thumbnailer = ThreadPoolExecutor(
                min(2, os.cpu_count() or 1), thread_name_prefix="thumbnails")
        thumb = self.out_dir / _thumb_of(name)
        self._early[name] = (sha256, self._thumbnailer.submit(_thumbnail, video, thumb))

    def _start_thumbnails(self, lock: LockFile, known: dict[str, ManifestShot]) -> None:
        """Start, in the worker threads, each thumbnail this sync must make that the run did
        not start already (a pull whose videos were all in the store, a folder deleted by
        hand): 200 made one after another in `_shot` were most of such a sync. Which ones
        are kept is decided here, once, for `_video` (a stat each of 10,000 shots)."""
        for shot in self.shots:
            output = rendered_output(shot, lock.shots.get(shot.id))
            name = self.names[shot.id]
            if output is None or not self.store.has_object(output):
                continue
            kept = self._kept_thumbnail(name, output.sha256, known)
            if kept is not None:
                self._kept[name] = kept
            elif name not in self._early:
                self._start_thumbnail(name, output.sha256,
                                      self.store.object_path(output.sha256))

    def sync(self, lock: LockFile, *, build_final: bool = True,
             notify: Callable[[str], None] | None = None,
             checkpoint: Callable[[str], None] = lambda step: None,
             as_run: list[ShotRequest] | None = None) -> FolderResult:
        """Bring the whole folder in line with the lock; `build_final=False` (an interrupted
        run) keeps a final cut that is still current and removes one that is not. `notify`
        hears of the slow step (the final cut) before it starts; `checkpoint` hears of every
        file about to be written (a test kills the process there). `as_run`: the shots as the
        run left them (a shot that took a frame of another has its exact key only then)."""
        if as_run is not None:
            self.shots = as_run
        recipe = folder_recipe(self.storyboard, self.simulated, self.shots, lock, self.store,
                               CUT_VERSION)
        unchanged = self._unchanged(recipe)
        if unchanged is not None:
            return unchanged
        previous = read_manifest(self.out_dir / MANIFEST)
        known = {s.file: s for s in previous.shots if s.file} if previous else {}
        recorded = self.stamps.recorded(MANIFEST)
        # Its records may be reused as they are only if the file is the one this tool wrote.
        ours = recorded is not None and self.stamps.fresh(MANIFEST, recorded)
        reusable = known if ours else {}
        problems: list[str] = []
        checkpoint(SHOTS)
        try:
            self._start_thumbnails(lock, known)
            shots = [self._shot(position, shot, lock.shots.get(shot.id), known, reusable,
                                problems) for position, shot in enumerate(self.shots, 1)]
        finally:
            if self._thumbnailer is not None:
                self._thumbnailer.shutdown(wait=True, cancel_futures=True)
                self._thumbnailer = None
            self._kept.clear()
        if previous is None:  # claim the folder before its first page or cut
            checkpoint(f"{MANIFEST} (claim)")
            self._write_manifest(self._manifest(None, shots))
        checkpoint(FINAL)
        final, shots, built = self._final(shots, previous, build_final, problems, notify)
        manifest = self._manifest(final, shots)
        self._page_and_manifest(manifest, previous, checkpoint)
        checkpoint("tidy")
        strangers = self._tidy(manifest.files())
        self.stamps.keep_only(manifest.files() | {MANIFEST})
        whole = build_final and not problems
        self.stamps.remember({"digest": recipe.digest,
                              "final": None if final is None else asdict(final),
                              "dirs": self._dir_stamps(), "strangers": strangers}
                             if whole else None)
        self.stamps.save()
        return FolderResult(self.out_dir, final, len(shots), recipe.absent, built, strangers,
                            problems, manifest)

    def _unchanged(self, recipe: Recipe) -> FolderResult | None:
        """The folder as the last whole sync left it, when it was made from this very recipe
        and every file it stamped is still as it was; None when anything differs."""
        made = self.stamps.made_from()
        if made is None or made["digest"] != recipe.digest or not self.stamps.all_fresh():
            return None
        try:
            final = None if made["final"] is None else ManifestFinal(**made["final"])
        except TypeError:
            return None  # a record of another shape: make the folder the long way
        strangers = made.get("strangers")
        if made.get("dirs") != self._dir_stamps() or not isinstance(strangers, list):
            # an entry came or went in one of the folders: sweep and look again
            strangers = self._tidy(self.stamps.names())
            self.stamps.remember({**made, "dirs": self._dir_stamps(), "strangers": strangers})
            self.stamps.save()
        return FolderResult(self.out_dir, final, len(self.shots), recipe.absent, False,
                            [str(name) for name in strangers])

    def _dir_stamps(self) -> dict[str, list[int] | None]:
        """mtime_ns and inode of the folder and of its subfolders: a name added, removed or
        renamed in one changes its mtime, so while these hold, no stranger came and no temp
        file was left (a file system with coarse times may miss an entry made in the same
        tick as the last sync: the next change shows it)."""
        found: dict[str, list[int] | None] = {}
        for sub in ("", SHOTS, THUMBS, FRAMES):
            try:
                info = os.stat(self.out_dir / sub if sub else self.out_dir)
            except OSError:
                found[sub] = None
                continue
            found[sub] = [info.st_mtime_ns, info.st_ino]
        return found

    def _page_and_manifest(self, manifest: Manifest, previous: Manifest | None,
                           checkpoint: Callable[[str], None]) -> None:
        """Write the page, then the manifest, each only when its bytes would change.

        A manifest equal to the one read, in a file whose stamp holds, is the very text this
        sync would write; a page stamped with the recipe of that text is the very page. Only
        otherwise are they made (and then compared with the bytes on disk before writing).
        """
        recorded = self.stamps.recorded(MANIFEST)
        if (previous is not None and recorded is not None and manifest == previous
                and self.stamps.fresh(MANIFEST, recorded)):
            text, digest = None, recorded
        else:
            text = manifest_json(manifest).encode("utf-8")
            digest = hashlib.sha256(text).hexdigest()
        recipe = page_recipe(digest)
        if not self.stamps.fresh(PAGE, recipe):
            page = render_contact_sheet(manifest).encode("utf-8")
            if not _holds(self.out_dir / PAGE, page):
                checkpoint(PAGE)
                atomic_write_bytes(self.out_dir / PAGE, page)
            self.stamps.record(PAGE, recipe)
        if text is not None:
            if not _holds(self.out_dir / MANIFEST, text):
                checkpoint(MANIFEST)
                atomic_write_bytes(self.out_dir / MANIFEST, text)
            self.stamps.record(MANIFEST, digest)

    def _write_manifest(self, manifest: Manifest) -> None:
        text = manifest_json(manifest).encode("utf-8")
        atomic_write_bytes(self.out_dir / MANIFEST, text)
        self.stamps.record(MANIFEST, hashlib.sha256(text).hexdigest())

    def _place_video(self, name: str, sha256: str) -> None:
        """Link (or copy) a store object to `shots/<name>`, unless its stamp says it is there."""
        relative = f"{SHOTS}/{name}"
        if not self.stamps.fresh(relative, sha256):
            place(self.store.object_path(sha256), self.out_dir / relative)
            self.stamps.record(relative, sha256)

    def _manifest(self, final: ManifestFinal | None, shots: list[ManifestShot]) -> Manifest:
        return Manifest(storyboard=self.storyboard, key_scheme=KEY_SCHEME,
                        simulated=self.simulated, page=PAGE, final=final, shots=shots)

    def _shot(self, position: int, shot: ShotRequest, entry: LockEntry | None,
              known: dict[str, ManifestShot], reusable: dict[str, ManifestShot],
              problems: list[str]) -> ManifestShot:
        """One shot's record, its video linked and its thumbnail made when it is rendered;
        last run's record itself (from `reusable`) when nothing about the shot changed.

        The record is made once, with all its fields (`dataclasses.replace`, two or three
        times a shot, was a tenth of a no-op sync)."""
        prompt = shot.body.get("prompt")
        multi = shot.body.get("multi_prompt")
        current = entry is not None and entry.key == shot.key
        output = rendered_output(shot, entry)
        video = self._video(shot, output, problems) if output is not None else {}
        status = shot_status(shot, entry)
        task_id = entry.task_id if entry is not None and current else None
        # a video the lock names but the store lost says so in its own words
        error = video.pop("error", None) or (entry.error if entry is not None and current
                                             else None)
        inputs = self._inputs(shot, problems) if shot.frames else None
        old = reusable.get(video["file"]) if "file" in video else None
        if (old is not None and old.position == position and old.id == shot.id
                and old.key == shot.key and old.status == status and old.task_id == task_id
                and old.error == error and old.inputs == inputs
                and all(getattr(old, name) == value for name, value in video.items())):
            return old  # the same key means the same prompt, endpoint and duration
        return ManifestShot(
            position=position, id=shot.id, status=status, endpoint=shot.endpoint,
            key=shot.key, task_id=task_id,
            prompt=prompt if isinstance(prompt, str) else None,
            multi_prompt=multi if isinstance(multi, list) else None,
            planned_duration=float(shot.duration), error=error, inputs=inputs, **video)

    def _inputs(self, shot: ShotRequest, problems: list[str]) -> list[ManifestInput]:
        """The frames of other shots that `shot` takes, each linked into `frames/` once it
        is known (its upstream video is rendered and the request holds the frame's digest),
        whether or not `shot` itself is rendered yet: it is what it starts or ends on."""
        edges: list[ManifestInput] = []
        for frame in shot.frames:
            value = shot.body.get(frame.wire)
            sha256 = (value[len(IMAGE_DIGEST_PREFIX):] if isinstance(value, str)
                      and value.startswith(IMAGE_DIGEST_PREFIX) else None)
            image = shot.local_images.get(frame.wire)
            file = None
            if sha256 is not None and image is not None and image.sha256 == sha256:
                name = f"{FRAMES}/{frame_file_name(self.names[shot.id], frame.field)}"
                file = self._place_frame(name, image.path, sha256, shot.id, problems)
            edges.append(ManifestInput(field=frame.field, shot=frame.shot, frame=frame.frame,
                                       at=frame.at, sha256=sha256, file=file))
        return edges

    def _place_frame(self, relative: str, source: Path, sha256: str, shot_id: str,
                     problems: list[str]) -> str | None:
        """Link (or copy) a frame's PNG from the store to `relative`, unless its stamp says
        it is there; `relative`, or None (and a problem) when it cannot be put there."""
        if self.stamps.fresh(relative, sha256):
            return relative
        try:
            place(source, self.out_dir / relative)
        except OSError as exc:
            problems.append(f"{shot_id}: {relative} could not be made: {exc}")
            return None
        self.stamps.record(relative, sha256)
        return relative

    def _video(self, shot: ShotRequest, output: Output, problems: list[str]) -> dict[str, Any]:
        """The fields of a done shot's video, linked into `shots/` with its thumbnail."""
        if not self.store.has_object(output):
            return {"error": "the video is not in the local cache: run apply again to fetch "
                             "it by its task id"}
        name = self.names[shot.id]
        self._place_video(name, output.sha256)
        fields: dict[str, Any] = {"file": f"{SHOTS}/{name}", "duration": output.duration,
                                  "size": output.size, "sha256": output.sha256}
        thumb = _thumb_of(name)
        old = self._kept.get(name)
        if old is not None:
            # its start in the cut, as last time: checked (and set anew) by _with_starts
            return {**fields, "thumbnail": thumb, "width": old.width, "height": old.height,
                    "start": old.start}
        early = self._early.pop(name, None)
        try:
            if early is not None and early[0] == output.sha256 and not early[1].cancelled():
                width, height = early[1].result()  # made during the run
            else:
                width, height = _thumbnail(self.out_dir / SHOTS / name, self.out_dir / thumb)
        except MediaError as exc:
            problems.append(f"{shot.id}: no thumbnail: {exc}")
            return fields
        self.stamps.record(thumb, output.sha256)
        return {**fields, "thumbnail": thumb, "width": width, "height": height}

    def _kept_thumbnail(self, name: str, sha256: str,
                        known: dict[str, ManifestShot]) -> ManifestShot | None:
        """Last sync's record of video `name` when its thumbnail is of this very video and
        still there as it was made; else None (it is made again)."""
        old = known.get(f"{SHOTS}/{name}")
        thumb = _thumb_of(name)
        if (old is not None and old.sha256 == sha256 and old.thumbnail == thumb
                and old.width and old.height and self._thumb_intact(thumb, sha256)):
            return old
        return None

    def _thumb_intact(self, thumb: str, sha256: str) -> bool:
        """The thumbnail of this video is there: its stamp holds, or (made before stamps were
        kept) the file exists; it is stamped then."""
        if self.stamps.fresh(thumb, sha256):
            return True
        if self.stamps.has(thumb) or not (self.out_dir / thumb).is_file():
            return False  # changed, replaced or deleted since it was made: make it again
        self.stamps.record(thumb, sha256)
        return True

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
        kept = (self._cut_intact(old) if old is not None and old.built_from == built_from
                else None)
        if previous is not None and old is not None and kept is not None:
            starts = [s.start for s in previous.shots if s.start is not None]
            if len(starts) == len(inputs):
                self.stamps.record(FINAL, kept)
                return (replace(old, missing=missing, sha256=kept),
                        _with_starts(shots, inputs, starts), False)
        if not inputs or not build:
            dest.unlink(missing_ok=True)
            return None, _with_starts(shots, [], []), False  # no cut: no starts
        if notify is not None:
            notify(f"making {FINAL} from {len(inputs)} shot(s)")
        try:
            cut = build_final_cut([self.out_dir / shot.file for shot in inputs if shot.file],
                                  dest)
        except (MediaError, OSError) as exc:
            dest.unlink(missing_ok=True)
            problems.append(f"{FINAL} could not be made: {exc}")
            return None, _with_starts(shots, [], []), False  # no cut: no starts
        digest = sha256_file(dest)
        self.stamps.record(FINAL, digest)
        final = ManifestFinal(
            file=FINAL, duration=round(cut.duration, 3), width=cut.shape.width,
            height=cut.shape.height, fps=round(float(cut.shape.fps), 3), size=dest.stat().st_size,
            has_audio=cut.has_audio, stream_copy=cut.stream_copy, built_from=built_from,
            missing=missing, sha256=digest)
        return final, _with_starts(shots, inputs, cut.starts), True

    def _cut_intact(self, old: ManifestFinal) -> str | None:
        """The sha256 of `final.mp4` when it is the cut the manifest describes, else None.

        Its stamp holding is enough; otherwise (touched, edited, replaced, or no stamp) its
        bytes are hashed and compared with the manifest's digest. A manifest written before
        the digest was kept has only the size to go by, as then.
        """
        dest = self.out_dir / FINAL
        if old.sha256 is not None and self.stamps.fresh(FINAL, old.sha256):
            return old.sha256
        if size_or_none(dest) != old.size:
            return None
        try:
            digest = sha256_file(dest)
        except OSError:
            return None
        return digest if old.sha256 in (None, digest) else None

    def _tidy(self, wanted: set[str]) -> list[str]:
        """Remove what apply made and no longer needs; list what it did not make.

        Names come from os.scandir and are matched as text: 20,000 Path objects and a stat
        each cost a no-op apply of 10,000 shots half a second.
        """
        strangers: list[str] = []
        for sub, ours in ((SHOTS, _OURS_IN_SUBFOLDER), (THUMBS, _OURS_IN_SUBFOLDER),
                          (FRAMES, _OURS_IN_FRAMES)):
            found = _entries(self.out_dir / sub)
            kept = len(found)
            for entry in found:
                relative = f"{sub}/{entry.name}"
                if relative in wanted:
                    continue
                if _is_file(entry) and (ours.match(entry.name) or _temp(entry.name)):
                    Path(entry.path).unlink(missing_ok=True)
                    kept -= 1
                else:
                    strangers.append(relative)
            if sub == FRAMES and found and not kept:
                # only chained shots have frames: a storyboard without them has no frames/
                with contextlib.suppress(OSError):
                    os.rmdir(self.out_dir / FRAMES)
        for entry in _entries(self.out_dir):
            if entry.name in wanted or entry.name in (MANIFEST, SHOTS, THUMBS, FRAMES):
                continue
            if _is_file(entry) and (entry.name in (FINAL, PAGE) or _temp(entry.name)):
                Path(entry.path).unlink(missing_ok=True)
            else:
                strangers.append(entry.name)
        return strangers


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The folder's entries sorted by name; none when it is not a folder."""
    try:
        with os.scandir(folder) as found:
            return sorted(found, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file (a symlink is followed, as Path.is_file does)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file holds exactly `data` (a missing or unreadable one does not)."""
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _thumb_of(video_name: str) -> str:
    return f"{THUMBS}/{Path(video_name).stem}.jpg"


def _thumbnail(video: Path, dest: Path) -> tuple[int, int]:
    """Write the thumbnail of `video`; the video's width and height. MediaError if bad."""
    return write_thumbnail(video, dest)


def _with_starts(shots: list[ManifestShot], inputs: list[ManifestShot],
                 starts: list[float]) -> list[ManifestShot]:
    start_of = {shot.position: round(start, 3) for shot, start in zip(inputs, starts,
                                                                       strict=True)}
    return [shot if shot.start == start_of.get(shot.position)
            else replace(shot, start=start_of.get(shot.position)) for shot in shots]


def _digest(digests: Iterable[str]) -> str:
    material = json.dumps({"cut": CUT_VERSION, "videos": list(digests)}, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def _temp(name: str) -> bool:
    """A temp file of an atomic write that a killed run left behind."""
    return name.startswith(".") and name.endswith(".tmp")
