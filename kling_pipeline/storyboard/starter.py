"""`kling-pipeline init`: a new project that renders on the simulator at once.

A person's first minute decides whether they keep going, so `init` writes a storyboard that is
valid as written (one text-to-video and one image-to-video shot), the picture its image shot
starts from, the JSON Schema its `$schema` comment points at (editors complete and check the
file offline; the schema is written beside the storyboard, from this installed version), and
the `.gitignore` lines of docs/lockfile.md, so the cache, the renders and the simulated lock
file never land in git.

It never overwrites a file. An existing storyboard of that name is a refusal that changes
nothing, so running `init` twice is safe; an existing schema or image is kept as it is; a
`.gitignore` only gets the lines it lacks. Nothing here imports pydantic, Pillow or YAML,
except the schema (made from the models) when there is none yet: the start image is a PNG put
together with zlib's checksums and stored (uncompressed) deflate blocks, so the same init writes
the same bytes on every machine and every zlib build, and the image shot's key is the same.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import unicodedata
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.textsafe import shown

# The storyboard's `name` rule (models.Storyboard.name; a test keeps the two equal).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX = 100
NAME_RULE = (f"1..{NAME_MAX} letters (A-Z, a-z), digits, '.', '_' and '-', "
             "starting with a letter or digit")
FALLBACK_NAME = "storyboard"

SCHEMA_FILE = "storyboard.schema.json"
IMAGE_FILE = "assets/start.png"
# docs/lockfile.md, "Suggested .gitignore lines" (a test keeps the two equal).
GITIGNORE_LINES = (".kling-cache/", "renders/", ".*.lock.json.run", "*.simulated.lock.json")
GITIGNORE_COMMENT = "# kling-pipeline: the local cache, renders and run locks (docs/lockfile.md)"

IMAGE_WIDTH, IMAGE_HEIGHT = 640, 360


@dataclass(frozen=True)
class FileNote:
    """One file init looked at, and what it is (or why it was kept)."""

    path: Path
    note: str


@dataclass(frozen=True)
class StarterResult:
    """What `init` wrote, what it left as it was, and what to run next.

    `next_commands` name the storyboard as a person would type it in the folder `init` ran in.
    """

    storyboard: Path
    written: tuple[FileNote, ...]
    kept: tuple[FileNote, ...]
    next_commands: tuple[str, str]


def init_project(folder: Path, name: str | None = None, *,
                 cwd: Path | None = None) -> StarterResult:
    """Write a starter project into `folder` (made if missing); never overwrite a file.

    `name` names the storyboard (`<name>.yaml`; a trailing `.yaml` is dropped) and defaults to
    the folder's name made valid. Raises KlingPipelineError, before writing anything, when the
    name is not valid or the storyboard is already there.
    """
    here = (cwd or Path.cwd()).absolute()
    folder = Path(os.path.normpath(here / folder))
    name = check_name(name) if name is not None else name_from_folder(folder.name)
    storyboard = folder / f"{name}.yaml"
    if storyboard.exists() or storyboard.is_symlink():
        raise _refusal(storyboard, here)
    written: list[FileNote] = []
    kept: list[FileNote] = []
    if not folder.is_dir():
        _make_folder(folder)
        written.append(FileNote(folder, "the project folder"))
    _write_schema(folder / SCHEMA_FILE, written, kept)
    _write_image(folder / IMAGE_FILE, written, kept)
    _add_gitignore_lines(folder / ".gitignore", written, kept)
    if not _create(storyboard, starter_storyboard(name).encode("utf-8")):
        raise _refusal(storyboard, here)
    first = 1 if written and written[0].path == folder else 0  # after the folder it made
    written.insert(first, FileNote(storyboard, "the storyboard: a text-to-video and an "
                                               "image-to-video shot"))
    typed = typed_path(storyboard, here)
    return StarterResult(storyboard, tuple(written), tuple(kept),
                         (f"kling-pipeline plan --simulate {typed}",
                          f"kling-pipeline apply --simulate {typed}"))


# --- the name ---------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """A NAME given on the command line, as the storyboard's name; refused if not valid.

    `film.yaml` means `film`: a person naming the file is not asking for `film.yaml.yaml`.
    """
    bare = re.sub(r"\.ya?ml$", "", name, flags=re.IGNORECASE)
    if len(bare) <= NAME_MAX and re.fullmatch(NAME_PATTERN, bare):
        return bare
    suggestion = name_from_folder(name)
    raise KlingPipelineError(
        f"NAME {shown(name)} is not a valid storyboard name: it must be {NAME_RULE} "
        f"(for example {suggestion!r})")


def name_from_folder(text: str) -> str:
    """A valid storyboard name made from a folder's name: `My Film!` -> `My-Film`.

    Accents are dropped (`café` -> `cafe`), every run of other characters becomes one `-`, and
    a name with nothing left (`/`, `!!!`) is `storyboard`.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    dashed = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text)
    trimmed = dashed.strip("._-")[:NAME_MAX].rstrip("._-")
    return trimmed or FALLBACK_NAME


def typed_path(path: Path, cwd: Path) -> str:
    """`path` as a person types it in `cwd`: relative or absolute, whichever is shorter, quoted
    for the shell when it must be."""
    absolute = Path(os.path.normpath(cwd / path))
    try:
        relative = os.path.relpath(absolute, cwd)
    except ValueError:  # another drive (Windows): there is no relative path
        relative = str(absolute)
    return shlex.quote(min(relative, str(absolute), key=len))


def _refusal(storyboard: Path, cwd: Path) -> KlingPipelineError:
    typed = typed_path(storyboard, cwd)
    return KlingPipelineError(
        f"{typed} already exists, and init never overwrites a file: nothing was changed. "
        f"Edit it and run 'kling-pipeline plan --simulate {typed}', or start another "
        "storyboard with another NAME ('kling-pipeline init NAME') or folder ('--dir PATH').")


# --- the files --------------------------------------------------------------------------------

def starter_storyboard(name: str) -> str:
    """The starter storyboard's text: valid as written, in the style of examples/."""
    return f"""\
# yaml-language-server: $schema={SCHEMA_FILE}
# A starter storyboard made by `kling-pipeline init`: one text-to-video shot and one
# image-to-video shot. Every key is described in docs/storyboard.md of kling-pipeline.
version: 1
name: {json.dumps(name)}
description: A paper boat at sunrise, in two shots.

vars:
  subject: a small paper boat
  look: soft morning light, 35mm film, gentle colour grade

defaults:
  model: kling-v3.0-pro-t2v
  duration: 5
  aspect_ratio: "16:9"          # ignored by image-to-video shots: the image sets the frame
  negative_prompt: blurry, watermark, text

shots:
  - id: opening
    prompt: "Wide shot of {{{{ subject }}}} drifting on a calm sea at dawn, {{{{ look }}}}"

  - id: sunrise
    model: kling-v3.0-pro-i2v
    image: {IMAGE_FILE}     # a local file (relative to this file) or an https URL
    prompt: "The sun rises over the sea, the camera slowly pushes in, {{{{ look }}}}"
    duration: 4
"""


def _write_schema(path: Path, written: list[FileNote], kept: list[FileNote]) -> None:
    """The JSON Schema the `$schema` comment names; an existing one is kept (it may be newer,
    or edited): `kling-pipeline schema -o FILE` refreshes it."""
    if path.exists() or path.is_symlink():
        kept.append(FileNote(path, "already there, kept (refresh it with "
                                   f"'kling-pipeline schema -o {path.name}')"))
        return
    from kling_pipeline.storyboard.models import (
        storyboard_schema,  # pydantic: only when it is needed
    )

    text = json.dumps(storyboard_schema(), indent=2, ensure_ascii=False) + "\n"
    note = "the storyboard JSON Schema, for editors"
    _record(path, _create(path, text.encode("utf-8")), note, written, kept)


def _write_image(path: Path, written: list[FileNote], kept: list[FileNote]) -> None:
    """The image shot's first frame; an existing one (perhaps the user's own) is kept."""
    if path.exists() or path.is_symlink():
        kept.append(FileNote(path, "already there, kept (the sunrise shot starts from it)"))
        return
    _make_folder(path.parent)
    note = f"the sunrise shot's first frame ({IMAGE_WIDTH}x{IMAGE_HEIGHT} PNG)"
    _record(path, _create(path, start_image()), note, written, kept)


def _record(path: Path, created: bool, note: str, written: list[FileNote],
            kept: list[FileNote]) -> None:
    if created:
        written.append(FileNote(path, note))
    else:  # made by someone else between our look and our write
        kept.append(FileNote(path, "already there, kept"))


def _add_gitignore_lines(path: Path, written: list[FileNote], kept: list[FileNote]) -> None:
    """Append the lines `.gitignore` lacks (and a comment saying why, once); never rewrite it."""
    text = _read_text(path) if path.exists() else ""
    missing = missing_gitignore_lines(text)
    if not missing:
        kept.append(FileNote(path, "already has the kling-pipeline lines"))
        return
    addition = gitignore_addition(text, missing)
    with _writing(path), open(path, "ab") as handle:
        handle.write(addition.encode("utf-8", "surrogateescape"))
    count = f"{len(missing)} line{'s' if len(missing) != 1 else ''}"
    note = f"added {count}: {' '.join(missing)}" if text else f"new, with {count}"
    written.append(FileNote(path, note))


def missing_gitignore_lines(text: str) -> list[str]:
    """The suggested lines a `.gitignore` of this text does not have (git ignores trailing
    spaces, so `renders/ ` counts as `renders/`)."""
    present = {line.strip() for line in text.splitlines()}
    return [line for line in GITIGNORE_LINES if line not in present]


def gitignore_addition(text: str, missing: list[str]) -> str:
    """What to append to a `.gitignore` of this text: its own line ending, and a newline first
    when its last line has none (or the first added line would join it)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = list(missing)
    if GITIGNORE_COMMENT not in {line.strip() for line in text.splitlines()}:
        lines.insert(0, GITIGNORE_COMMENT)
    start = newline if text and not text.endswith(("\n", "\r")) else ""
    return start + newline.join(lines) + newline


def _read_text(path: Path) -> str:
    """A text file as it is, undecodable bytes included (they are written back untouched)."""
    with _writing(path):
        return path.read_bytes().decode("utf-8", "surrogateescape")


def _create(path: Path, data: bytes) -> bool:
    """Write a new file; False, touching nothing, when one is already there.

    Exclusive creation, not look-then-write: a file made meanwhile is never overwritten. A
    write that fails removes its partial file, so the next init writes it whole.
    """
    with _writing(path):
        try:
            handle = open(path, "xb")  # noqa: SIM115 - closed below, removed when half-written
        except FileExistsError:
            return False
        try:
            with handle:
                handle.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return True


def _make_folder(folder: Path) -> None:
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OS error on `path` as the project's error, naming the file."""
    try:
        yield
    except FileExistsError as exc:  # mkdir over a file
        raise KlingPipelineError(f"cannot make the folder {exc.filename or path}: a file of "
                                 "that name is in the way") from exc
    except OSError as exc:
        raise KlingPipelineError(f"cannot write {exc.filename or path}: "
                                 f"{exc.strerror or exc}") from exc


# --- the start image --------------------------------------------------------------------------

# 16 colours: 8 sky bands from night blue to the horizon's orange, the sun, 5 sea bands, the
# sun's glint on the water, and one unused.
_SKY = ((24, 36, 84), (44, 52, 108), (72, 66, 128), (110, 82, 138), (152, 98, 136),
        (196, 118, 124), (228, 142, 112), (248, 176, 110))
_SUN, _GLINT = (255, 232, 170), (240, 196, 132)
_SEA = ((70, 84, 120), (52, 68, 104), (38, 54, 90), (26, 42, 76), (16, 30, 60))
_PALETTE = (*_SKY, _SUN, *_SEA, _GLINT, (0, 0, 0))
_HORIZON, _SUN_X, _SUN_R = 220, 320, 56


def start_image() -> bytes:
    """A 640x360 sunrise over the sea as a 4-bit palette PNG (about 116 kB).

    Stored deflate blocks, not zlib's compressor: its output differs between zlib builds
    (zlib-ng, for one), and these bytes enter the image shot's key.
    """
    rows = b"".join(b"\x00" + _pack(_row(y)) for y in range(IMAGE_HEIGHT))
    header = struct.pack(">IIBBBBB", IMAGE_WIDTH, IMAGE_HEIGHT, 4, 3, 0, 0, 0)
    palette = b"".join(bytes(colour) for colour in _PALETTE)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", palette)
            + _chunk(b"IDAT", _stored_zlib(rows)) + _chunk(b"IEND", b""))


def _row(y: int) -> list[int]:
    """Palette indexes of row `y`: a sky band and the sun above the horizon, a sea band and
    the sun's glint (every other group of three rows, narrowing with depth) below it."""
    if y < _HORIZON:
        row = [y * len(_SKY) // _HORIZON] * IMAGE_WIDTH
        rise = _HORIZON - y
        if rise < _SUN_R:
            half = int((_SUN_R * _SUN_R - rise * rise) ** 0.5)
            row[_SUN_X - half:_SUN_X + half] = [len(_SKY)] * (2 * half)
        return row
    depth = y - _HORIZON
    sea = len(_SKY) + 1 + depth * len(_SEA) // (IMAGE_HEIGHT - _HORIZON)
    row = [sea] * IMAGE_WIDTH
    half = _SUN_R - depth * _SUN_R // (IMAGE_HEIGHT - _HORIZON)
    if (depth // 3) % 2 == 0 and half > 0:
        row[_SUN_X - half:_SUN_X + half] = [len(_PALETTE) - 2] * (2 * half)
    return row


def _pack(indexes: list[int]) -> bytes:
    """Two 4-bit palette indexes per byte, the left pixel in the high half."""
    return bytes((indexes[i] << 4) | indexes[i + 1] for i in range(0, len(indexes), 2))


def _stored_zlib(data: bytes) -> bytes:
    """A zlib stream of stored deflate blocks (RFC 1950/1951): the same bytes everywhere."""
    size = 0xFFFF
    blocks = []
    for start in range(0, len(data), size):
        part = data[start:start + size]
        final = 1 if start + size >= len(data) else 0
        blocks.append(struct.pack("<BHH", final, len(part), len(part) ^ 0xFFFF) + part)
    return b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(data))


def _chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, data, and the CRC of type and data."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
