"""The whole chain in a real browser: apply on the simulator, then its index.html in Chromium.

test_contactsheet_browser.py checks the page against a folder built by hand; this one opens
the folder `apply` itself made (a real final cut of mixed shapes with sound, thumbnails taken
from the videos, a failed shot) and keeps a screenshot in test-artifacts/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.apply_fixtures import apply
from support.browser import launched_browser, media_state, open_page, stable_screenshot
from support.paths import ROOT
from support.simulator_fixtures import SimClient

SCREENSHOT = ROOT / "test-artifacts" / "contact-sheet-apply.png"
BOARD = """\
version: 1
name: harbour
provider: {requests_per_minute: 6000}
vars: {look: "35mm film, teal and amber"}
defaults: {model: kling-v3.0-pro-t2v, duration: 3, aspect_ratio: "16:9"}
shots:
  - {id: dawn, prompt: "A harbour at dawn, {{ look }}"}
  - {id: mast, prompt: "A mast against the sky, {{ look }}", aspect_ratio: "9:16", sound: true}
  - {id: banned, prompt: "SIMULATE_FAILURE gulls"}
  - {id: dusk, prompt: "The harbour at dusk, {{ look }}"}
"""


def test_the_page_apply_made_plays_every_clip_and_shows_every_thumbnail(
        tmp_path: Path, sim: SimClient) -> None:
    board = tmp_path / "harbour.yaml"
    board.write_text(BOARD)
    assert apply(board, sim.base_url).exit_code == 1  # one shot failed, the rest is there
    folder = tmp_path / "renders" / "harbour"
    manifest = json.loads((folder / "manifest.json").read_text())
    durations = {shot["file"]: shot["duration"] for shot in manifest["shots"] if shot["file"]}
    durations["final.mp4"] = manifest["final"]["duration"]
    with launched_browser() as browser, \
            open_page(browser, folder / "index.html", width=1280, height=900) as visit:
        state = media_state(visit.page)
        assert sorted(v["src"] for v in state["videos"]) == sorted(durations)
        for video in state["videos"]:
            assert video["error"] is None and video["readyState"] >= 1, video
            assert video["duration"] == pytest.approx(durations[video["src"]], abs=0.1), video
        final = next(v for v in state["videos"] if v["src"] == "final.mp4")
        assert (final["videoWidth"], final["videoHeight"]) == (
            manifest["final"]["width"], manifest["final"]["height"])
        thumbs = {s["thumbnail"] for s in manifest["shots"] if s["thumbnail"]}
        assert {i["src"] for i in state["images"]} == thumbs and len(thumbs) == 3
        assert all(i["complete"] and i["naturalWidth"] > 0 for i in state["images"])
        assert "banned" in visit.page.inner_text("#final-missing")
        assert visit.off_disk() == []
        stable_screenshot(visit.page, SCREENSHOT)
    with Image.open(SCREENSHOT) as image:
        assert image.format == "PNG" and image.width >= 1280
