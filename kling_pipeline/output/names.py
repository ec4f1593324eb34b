"""Names in the output folder: `apply` writes these files and `status` checks them."""

from __future__ import annotations

MANIFEST = "manifest.json"
PAGE = "index.html"
FINAL = "final.mp4"
SHOTS = "shots"    # NNN-<id>.mp4
THUMBS = "thumbs"  # NNN-<id>.jpg
FRAMES = "frames"  # NNN-<id>-<field>.png: the frame of another shot a shot starts or ends on


def shot_file_name(position: int, shot_id: str, total: int) -> str:
    """The file of one shot under `<out_dir>/shots/`: `NNN-<id>.mp4`.

    NNN is the shot's 1-based position in the storyboard, zero-padded to at least three digits
    (more when the storyboard has 1,000 shots or more), so that a plain sort of the folder is
    the storyboard order. Ids are unique and file-name safe (render.shot_is_safe_id), so names
    never collide. ValueError when `position` is not in 1..total.
    """
    if not 1 <= position <= total:
        raise ValueError(f"position {position} is not in 1..{total}")
    width = max(3, len(str(total)))
    return f"{position:0{width}d}-{shot_id}.mp4"


def frame_file_name(shot_file: str, field: str) -> str:
    """The file under `<out_dir>/frames/` of the frame a shot takes as `field` (`image` or
    `end_image`), from the shot's own file name: `NNN-<id>.mp4` -> `NNN-<id>-<field>.png`.
    Fields are storyboard names (letters and `_`), so names never collide."""
    stem = shot_file[:-4] if shot_file.endswith(".mp4") else shot_file
    return f"{stem}-{field}.png"
