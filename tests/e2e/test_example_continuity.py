"""examples/continuity renders end to end on the simulator, as its README section says.

The other examples are loaded, validated and checked against the schema wherever
tests/support/paths.py's EXAMPLES is used (this one too); this file is what proves that a
storyboard whose shots take frames of other shots renders whole: every shot done, the cut as
long as the shots, each chained request keyed by a frame's digest, the shared keyframe one
PNG, and a second run with nothing to do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.paths import ROOT

from kling_pipeline.cli import main
from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.output.media import probe_video

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "continuity"
SHOTS = {"dawn": 4, "launch": 5, "drift-1": 5, "drift-2": 5, "arrival": 5, "morning": 6}


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "1"}, catch_exceptions=False)


def frame_digest(request: dict[str, object], field: str) -> str:
    value = request[field]
    assert isinstance(value, str) and value.startswith(IMAGE_DIGEST_PREFIX), value
    return value[len(IMAGE_DIGEST_PREFIX):]


def test_the_continuity_example_renders_whole_on_the_simulator(tmp_path: Path) -> None:
    folder = tmp_path / "continuity"
    # without what a run of the README's command leaves there (the files .gitignore lists)
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(
        ".kling-cache", "renders", "*.lock.json", ".*.lock.json.run"))
    board = folder / "continuity.yaml"

    result = cli("apply", str(board), "--simulate", "--yes")
    assert result.exit_code == 0, result.output
    assert "Apply: 6 done (6 submitted in this run)." in result.output
    assert "arrival taking frames: from drift-2, from dawn" in result.output

    lock = json.loads((folder / "continuity.simulated.lock.json").read_text("utf-8"))["shots"]
    assert {shot_id: entry["status"] for shot_id, entry in lock.items()} == \
        dict.fromkeys(SHOTS, "done")
    # each link of the chain is a frame's digest in the request, as a local image's would be
    requests = {shot_id: entry["request"] for shot_id, entry in lock.items()}
    chained = [frame_digest(requests[shot_id], "image")
               for shot_id in ("drift-1", "drift-2", "arrival", "morning")]
    assert len(set(chained)) == 4
    # the shared keyframe: arrival ends on dawn's first frame and morning starts on it
    assert frame_digest(requests["arrival"], "end_image") == chained[-1]
    # upstream first: a chained shot was sent after the video it starts on was downloaded
    for shot_id, upstream in (("drift-1", "launch"), ("drift-2", "drift-1"),
                              ("arrival", "drift-2"), ("arrival", "dawn"),
                              ("morning", "dawn")):
        assert lock[shot_id]["submitted_at"] >= lock[upstream]["finished_at"]

    out = folder / "renders" / "continuity.simulated"
    videos = sorted(path.name for path in (out / "shots").glob("*.mp4"))
    assert videos == [f"{n:03d}-{shot_id}.mp4" for n, shot_id in enumerate(SHOTS, 1)]
    final = probe_video(out / "final.mp4", decode=True)
    assert final.duration == pytest.approx(sum(SHOTS.values()), abs=0.1)

    again = cli("plan", str(board), "--simulate")
    assert again.exit_code == 0, again.output
    assert "Plan: 0 to add, 0 to change, 6 unchanged" in again.output
