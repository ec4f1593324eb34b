"""`index.html`: the contact sheet of an output folder, the page a person opens to review a render.

The output folder is what people look at, copy to a drive, attach to a review or open from a
zip, often with no network at all. So the page is one self-contained file: inline CSS, no
scripts, fonts or images from anywhere, and every link relative to the folder (percent-encoded),
so it works over `file://`, behind any web server and after the folder is moved. It is made from
the manifest alone (never from the lock file or the cache), so it shows exactly what the folder
holds: the final cut at the top, then one row per shot in storyboard order with its thumbnail,
the prompt as sent, the model, durations, its place in the cut, its status and the playable clip.
A shot that starts (or ends) on a frame of another shot shows that frame, small, and links to
the other shot's row: a chain reads as one from the page.

Prompts and ids are user text: the template autoescapes everything, and a shot without a video
shows its status and the reason instead of a broken image or player.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from kling_pipeline.output.manifest import Manifest, ManifestFinal, ManifestInput, ManifestShot
from kling_pipeline.output.names import MANIFEST
from kling_pipeline.sizes import human_size

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "contact_sheet.html.j2"
# Bump when this module changes what a page shows, so every folder's page is made again once.
PAGE_VERSION = 2
THUMB_BOX = (192, 108)  # CSS pixels of the thumbnail frame; the <img> is fitted inside it
FRAME_BOX = (80, 45)    # CSS pixels of a chained shot's input frame

# Status -> tone: the colour a reviewer reads first.
_TONE: dict[str, str] = {
    "done": "ok", "failed": "bad",
    "queued": "wait", "processing": "wait", "rendered": "wait",
    "submitting": "none", "unknown": "none", "lost": "none", "pending": "none",
    "changed": "none"}

# Why a shot has no video here, and what brings it (the error, when there is one, comes too).
_REASON: dict[str, str] = {
    "pending": "Not submitted yet: the next apply renders it.",
    "changed": "Its request changed since its video was made (the old one is in the cache); "
               "the next apply renders it.",
    "submitting": "Submission not confirmed; it may have been billed. "
                  "apply --resubmit-unknown sends it again.",
    "unknown": "Submission not confirmed; it may have been billed. "
               "apply --resubmit-unknown sends it again.",
    "queued": "Waiting at the provider; the next apply fetches it.",
    "processing": "Rendering at the provider; the next apply fetches it.",
    "rendered": "Rendered at the provider, not downloaded yet; the next apply fetches it.",
    "failed": "The render failed; apply --retry-failed tries again.",
    "lost": "The provider no longer has this task; only apply --force renders it again.",
    "done": "Done, but its video is not in this folder; the next apply puts it back."}


@dataclass(frozen=True)
class Part:
    """One part of a multi-prompt shot."""

    prompt: str
    duration: str  # "3 s", or "" when the part names none


@dataclass(frozen=True)
class Frame:
    """A relative URL and the size to show it at."""

    url: str
    width: int
    height: int


@dataclass(frozen=True)
class InputView:
    """A frame of another shot that a shot starts or ends on, in words and small."""

    field: str             # "image" | "end_image"
    verb: str              # "starts on" | "ends on"
    which: str             # "the last frame" | "the frame at 2.5 s"
    shot: str              # the other shot's id
    fragment: str | None   # "#shot-<id>", percent-encoded; None when it has no row here
    image: Frame | None    # the frame in frames/; None when it is not in the folder
    note: str | None       # why there is no image: "not rendered yet"


@dataclass(frozen=True)
class ShotView:
    """What one shot's row shows, formatted."""

    number: str            # "01"
    id: str
    anchor: str            # the row's id attribute: "shot-<id>"
    fragment: str          # "#shot-<id>", percent-encoded, for links to the row
    model: str
    seconds: float         # received, else planned: the width of its slot in the timeline
    duration: str          # "5.0 s"
    duration_label: str    # "received" | "planned"
    start: str | None      # "0:05.0" into the final cut; None when not in it
    frame_size: str | None  # "1280×720"
    status: str
    tone: str              # ok | bad | wait | none
    reason: str            # why there is no video (shown only then)
    prompt: str | None
    parts: tuple[Part, ...]
    error: str | None
    thumb: Frame | None
    clip: Frame | None
    poster: str | None
    inputs: tuple[InputView, ...] = ()


@dataclass(frozen=True)
class FinalView:
    """The final cut's player and facts, formatted."""

    url: str
    poster: str | None
    width: int
    height: int
    duration: str          # "0:25.0"
    frame_size: str        # "1280×720"
    fps: str               # "24 fps"
    file_size: str         # "12.3 MiB"
    audio: str             # "yes" | "no"
    missing: tuple[str, ...]


@dataclass(frozen=True)
class SheetView:
    """Everything the template shows; the template formats nothing itself."""

    name: str
    simulated: bool
    rendered: int
    total: int
    runtime: str           # every shot, received else planned duration: "0:33.0"
    tallies: tuple[tuple[str, str, int], ...]  # (tone, label, count), non-zero only
    final: FinalView | None
    shots: tuple[ShotView, ...]
    manifest_file: str
    key_scheme: int


def render_contact_sheet(manifest: Manifest) -> str:
    """The folder's `index.html` for `manifest`, as text (UTF-8 when written).

    ValueError when a file the manifest names is not a relative path.
    """
    return _template().render(sheet=sheet_view(manifest))


def sheet_view(manifest: Manifest) -> SheetView:
    """The page's content as plain values: the template only lays it out."""
    poster = next((url_of(shot.thumbnail) for shot in manifest.shots
                   if shot.file and shot.thumbnail), None)
    by_id = {shot.id: shot for shot in manifest.shots} if any(
        shot.inputs for shot in manifest.shots) else {}
    shots = tuple(_shot_view(shot, len(manifest.shots), by_id) for shot in manifest.shots)
    rendered = sum(1 for shot in shots if shot.clip is not None)
    counts: dict[str, int] = {}
    for shot in shots:
        counts[shot.tone] = counts.get(shot.tone, 0) + 1
    labels = (("ok", "done"), ("wait", "in flight"), ("bad", "failed"), ("none", "not started"))
    return SheetView(
        name=manifest.storyboard, simulated=manifest.simulated, rendered=rendered,
        total=len(shots), runtime=timecode(sum(shot.seconds for shot in shots)),
        tallies=tuple((tone, label, counts[tone]) for tone, label in labels if counts.get(tone)),
        final=_final_view(manifest.final, poster) if manifest.final else None,
        shots=shots, manifest_file=MANIFEST, key_scheme=manifest.key_scheme)


def url_of(path: str) -> str:
    """A folder-relative file name as a relative URL: percent-encoded, never absolute.

    `quote` encodes ':' (so no scheme survives); a leading '/' or '\\' would make the URL leave
    the folder, so it is refused rather than guessed at.
    """
    if not path or path.startswith(("/", "\\")) or "\\" in path:
        raise ValueError(f"manifest file {path!r} is not a relative path of the output folder")
    return quote(path, safe="/")


def timecode(seconds: float) -> str:
    """m:ss.s, rounded to a tenth: 75.26 -> '1:15.3'."""
    tenths = round(seconds * 10)
    minutes, rest = divmod(tenths, 600)
    return f"{minutes}:{rest / 10:04.1f}"


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _fit(width: int | None, height: int | None, box: tuple[int, int]) -> tuple[int, int]:
    """The largest size of the video's aspect (16:9 when unknown) that fits in `box`."""
    if not width or not height:
        width, height = 16, 9
    scale = min(box[0] / width, box[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _part(raw: Any) -> Part:
    item = raw if isinstance(raw, dict) else {"prompt": raw}
    seconds = item.get("duration")
    shown = "" if seconds is None else f"{seconds} s"
    return Part(prompt=str(item.get("prompt", "")), duration=shown)


def _anchor(shot_id: str) -> tuple[str, str]:
    """A shot row's id attribute and the percent-encoded fragment that links to it."""
    anchor = f"shot-{shot_id}"
    return anchor, "#" + quote(anchor, safe="")


_VERB = {"image": "starts on", "end_image": "ends on"}


def _input_view(edge: ManifestInput, by_id: dict[str, ManifestShot]) -> InputView:
    """A chained shot's input: the frame as a small image (fitted to the other shot's video,
    which it is a frame of) and a link to that shot's row."""
    upstream = by_id.get(edge.shot)
    if edge.frame is not None:
        which = f"the {edge.frame} frame"
    elif edge.at is not None:
        which = f"the frame at {edge.at:g} s"
    else:
        which = "a frame"
    image = note = None
    if edge.file:
        size = _fit(upstream.width, upstream.height, FRAME_BOX) if upstream else (
            _fit(None, None, FRAME_BOX))
        image = Frame(url_of(edge.file), *size)
    else:
        note = "not rendered yet" if edge.sha256 is None else "not in this folder"
    return InputView(field=edge.field, verb=_VERB.get(edge.field, f"takes as {edge.field}"),
                     which=which, shot=edge.shot,
                     fragment=_anchor(edge.shot)[1] if upstream is not None else None,
                     image=image, note=note)


def _shot_view(shot: ManifestShot, total: int, by_id: dict[str, ManifestShot]) -> ShotView:
    received = shot.duration is not None
    seconds = shot.duration if shot.duration is not None else shot.planned_duration
    clip = thumb = None
    poster = url_of(shot.thumbnail) if shot.thumbnail else None
    if shot.file:
        clip = Frame(url_of(shot.file), shot.width or 16 * 20, shot.height or 9 * 20)
        if poster is not None:
            thumb = Frame(poster, *_fit(shot.width, shot.height, THUMB_BOX))
    anchor, fragment = _anchor(shot.id)
    return ShotView(
        number=f"{shot.position:0{max(2, len(str(total)))}d}", id=shot.id, anchor=anchor,
        fragment=fragment, model=shot.endpoint,
        seconds=seconds if math.isfinite(seconds) and seconds > 0 else 0.0,
        duration=_seconds_text(seconds), duration_label="received" if received else "planned",
        start=timecode(shot.start) if shot.start is not None else None,
        frame_size=f"{shot.width}×{shot.height}" if shot.width and shot.height else None,
        status=shot.status, tone=_TONE.get(shot.status, "none"),
        reason=_REASON.get(shot.status, f"Not rendered ({shot.status})."),
        prompt=shot.prompt, parts=tuple(_part(raw) for raw in shot.multi_prompt or ()),
        error=shot.error, thumb=thumb, clip=clip, poster=poster if clip else None,
        inputs=tuple(_input_view(edge, by_id) for edge in shot.inputs or ()))


def _final_view(final: ManifestFinal, poster: str | None) -> FinalView:
    fps = f"{final.fps:.2f}".rstrip("0").rstrip(".")
    return FinalView(
        url=url_of(final.file), poster=poster, width=final.width, height=final.height,
        duration=timecode(final.duration), frame_size=f"{final.width}×{final.height}",
        fps=f"{fps} fps", file_size=human_size(final.size),
        audio="yes" if final.has_audio else "no", missing=tuple(final.missing))


def page_recipe(manifest_digest: str) -> str:
    """A digest that changes whenever the page of a manifest would: the manifest's own digest,
    the template's text and PAGE_VERSION. A folder whose page was made from the same recipe
    needs no new page (rendering one for 10,000 shots takes a second)."""
    material = f"{PAGE_VERSION}\n{manifest_digest}\n{_template_source()}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@functools.cache
def _template_source() -> str:
    return (importlib.resources.files("kling_pipeline") / "data" / TEMPLATE).read_text("utf-8")


@functools.cache
def _template() -> jinja2.Template:
    # The template is ours and trusted; the data is user text, shown only as values, so plain
    # Jinja with autoescape is enough. StrictUndefined: a misspelt field fails the tests.
    # Imported here: a rerun whose page is already right never needs Jinja.
    import jinja2

    source = _template_source()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(source)
