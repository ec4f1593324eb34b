"""index.html in real headless Chromium: every clip and thumbnail loads, nothing leaves the disk.

The folder is real: MP4s from the simulator's renderer (16:9, 9:16, with sound, from an image,
multi-prompt, one starting on the last frame of another, whose PNG is in frames/), JPEG
thumbnails of their first frames, a failed shot and one in flight, and the page that
render_contact_sheet writes for them. The test also saves a full-page screenshot to
test-artifacts/contact-sheet.png (git-ignored) for people and the README.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pytest
from PIL import Image, ImageStat
from support.browser import (
    REQUIRE_ENV,
    Visit,
    launched_browser,
    media_state,
    no_browser,
    open_page,
    stable_screenshot,
)
from support.paths import ROOT

from kling_pipeline.frames import FrameRef, extract_frame
from kling_pipeline.output.contactsheet import render_contact_sheet
from kling_pipeline.output.manifest import (
    Manifest,
    ManifestFinal,
    ManifestInput,
    ManifestShot,
    write_manifest,
)
from kling_pipeline.output.media import probe_video
from kling_pipeline.simulator.video import ClipSpec, render_clip

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SCREENSHOT = ROOT / "test-artifacts" / "contact-sheet.png"
LOOK = "cinematic, 35mm film, teal and amber colour grade"
KEEPER = ROOT / "examples" / "lighthouse" / "assets" / "keeper.jpg"


@dataclass(frozen=True)
class Planned:
    """A shot of the test storyboard, and the clip to render for it (None: no video)."""

    id: str
    endpoint: str
    status: str
    prompt: str | None
    spec: ClipSpec | None
    planned: float
    multi_prompt: list[dict[str, Any]] | None = None
    error: str | None = None
    starts_on: str | None = None  # the shot whose last frame is its image


def _storyboard() -> list[Planned]:
    storm = (("Lightning splits the sky over the lighthouse", 1.0),
             ("The beam cuts through sheets of rain", 1.0),
             ("The keeper watches from the gallery, unafraid", 1.0))
    return [
        Planned("establishing", "kling-v3.0-pro-t2v", "done",
                f"Slow aerial shot circling a lighthouse at dusk, waves below, {LOOK}",
                ClipSpec(segments=(("Slow aerial shot circling a lighthouse at dusk", 2.0),),
                         aspect_ratio="16:9"), 2.0),
        Planned("keeper-climbs", "kling-v3.0-pro-i2v", "done",
                f"An old lighthouse keeper climbs the spiral stairs, lantern in hand, {LOOK}",
                ClipSpec(segments=(("keeper climbs", 1.5),), image=KEEPER.read_bytes()), 1.5),
        Planned("wave-1", "kling-v3.0-pro-t2v", "done",
                f"Close-up of a calm wave breaking on black rocks at night, {LOOK}",
                ClipSpec(segments=(("Close-up of a calm wave breaking on black rocks", 1.0),),
                         aspect_ratio="16:9", sound=True), 1.0),
        Planned("wave-2", "kling-v3.0-pro-t2v", "processing",
                f"Close-up of a restless wave breaking on black rocks at night, {LOOK}",
                None, 4.0),
        Planned("wave-3", "kling-v3.0-pro-t2v", "failed",
                f"Close-up of a furious wave breaking on black rocks at night, {LOOK}",
                None, 6.0, error="task failed: the provider rejected the request "
                                 "(1301: content did not pass the safety check)"),
        Planned("storm-sequence", "kling-v3.0-pro-t2v", "done", None,
                ClipSpec(segments=storm, aspect_ratio="16:9"), 3.0,
                multi_prompt=[{"prompt": text, "duration": int(seconds)}
                              for text, seconds in storm]),
        Planned("keeper-portrait", "kling-v3.0-std-t2v", "done",
                "Portrait of the keeper at the window, rain on the glass & the beam behind him",
                ClipSpec(segments=(("Portrait of the keeper at the window", 1.0),),
                         aspect_ratio="9:16"), 1.0),
        Planned("beam-sweeps", "kling-v3.0-pro-i2v", "done",
                f"The beam sweeps on over the sea, {LOOK}",
                ClipSpec(segments=(("The beam sweeps on over the sea", 1.0),)), 1.0,
                starts_on="establishing"),
    ]


def _thumbnail(video: Path, path: Path) -> None:
    """The video's first frame as a JPEG, as apply makes them."""
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()  # type: ignore[no-untyped-call]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=85)


@dataclass(frozen=True)
class Folder:
    path: Path
    manifest: Manifest
    durations: dict[str, float]  # src attribute -> seconds of that video


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """A real output folder, as apply leaves it, with its index.html."""
    out = tmp_path_factory.mktemp("renders") / "lighthouse"
    (out / "shots").mkdir(parents=True)
    planned = _storyboard()
    shots: list[ManifestShot] = []
    durations: dict[str, float] = {}
    start = 0.0
    for position, item in enumerate(planned, start=1):
        base = f"{position:03d}-{item.id}"
        fields: dict[str, Any] = {}
        spec = item.spec
        if item.starts_on is not None and spec is not None:  # a chain, as apply leaves it
            [upstream] = [shot for shot in shots if shot.id == item.starts_on]
            assert upstream.file is not None
            frame = extract_frame(out / upstream.file, FrameRef("last"))
            (out / "frames").mkdir(exist_ok=True)
            (out / "frames" / f"{base}-image.png").write_bytes(frame.png)
            spec = replace(spec, image=frame.png)
            fields["inputs"] = [ManifestInput(
                field="image", shot=upstream.id, frame="last", at=None, sha256=frame.sha256,
                file=f"frames/{base}-image.png")]
        if spec is not None:
            video = out / "shots" / f"{base}.mp4"
            video.write_bytes(render_clip(spec))
            info = probe_video(video)
            _thumbnail(video, out / "thumbs" / f"{base}.jpg")
            fields |= {"file": f"shots/{base}.mp4", "thumbnail": f"thumbs/{base}.jpg",
                      "duration": info.duration, "size": video.stat().st_size,
                      "sha256": "0" * 64, "width": info.width, "height": info.height,
                      "start": start}
            durations[fields["file"]] = info.duration
            start += info.duration
        shots.append(ManifestShot(
            position=position, id=item.id, status=item.status, endpoint=item.endpoint,
            key=f"{position:064x}", task_id=f"task-{position}", prompt=item.prompt,
            multi_prompt=item.multi_prompt, planned_duration=item.planned, error=item.error,
            **fields))
    # A stand-in for the final cut (apply's own is tested through apply): one clip with every
    # rendered shot's prompt for its duration, so its length is the cut's.
    rendered = [shot for shot in shots if shot.file]
    cut = ClipSpec(segments=tuple((shot.id, shot.duration or 0.0) for shot in rendered),
                   aspect_ratio="16:9", sound=True)
    (out / "final.mp4").write_bytes(render_clip(cut))
    final_info = probe_video(out / "final.mp4")
    durations["final.mp4"] = final_info.duration
    final = ManifestFinal(
        file="final.mp4", duration=final_info.duration, width=final_info.width,
        height=final_info.height, fps=final_info.fps, size=(out / "final.mp4").stat().st_size,
        has_audio=final_info.has_audio, stream_copy=False, built_from="0" * 64,
        missing=[shot.id for shot in shots if not shot.file])
    manifest = Manifest(storyboard="lighthouse", key_scheme=1, simulated=True, page="index.html",
                        final=final, shots=shots)
    write_manifest(out / "manifest.json", manifest)
    (out / "index.html").write_text(render_contact_sheet(manifest), encoding="utf-8")
    return Folder(out, manifest, durations)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def visit(browser: Browser, folder: Folder) -> Iterator[tuple[Visit, dict[str, Any]]]:
    """The page open at 1280 px wide, its media settled, and their state."""
    with open_page(browser, folder.path / "index.html", width=1280, height=900) as opened:
        yield opened, media_state(opened.page)


def test_every_video_loads_its_clip(folder: Folder, visit: tuple[Visit, dict[str, Any]]) -> None:
    videos = visit[1]["videos"]
    assert sorted(video["src"] for video in videos) == sorted(folder.durations)
    for video in videos:
        assert video["error"] is None, video
        assert video["readyState"] >= 1, video
        assert video["duration"] == pytest.approx(folder.durations[video["src"]], abs=0.1), video
        assert video["videoWidth"] > 0, video


def test_every_thumbnail_renders(folder: Folder, visit: tuple[Visit, dict[str, Any]]) -> None:
    """The shots' thumbnails, and the frames that chained shots start on."""
    images = visit[1]["images"]
    frames = [edge.file for shot in folder.manifest.shots for edge in shot.inputs or ()
              if edge.file]
    assert frames
    assert sorted(image["src"] for image in images) == sorted(
        [shot.thumbnail for shot in folder.manifest.shots if shot.thumbnail] + frames)
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0, image


def test_a_chained_shot_shows_its_frame_and_links_to_the_shot_it_comes_from(
        browser: Browser, folder: Folder) -> None:
    with open_page(browser, folder.path / "index.html") as opened:
        page = opened.page
        media_state(page)
        # every in-page link has a target: the timeline's and the chained shots' alike
        dangling = page.evaluate("""() => [...document.querySelectorAll('a[href^="#"]')]
            .map(a => a.getAttribute('href'))
            .filter(href => !document.getElementById(decodeURIComponent(href.slice(1))))""")
        assert dangling == []
        row = page.locator("#shot-beam-sweeps")
        assert "starts on the last frame of establishing" in row.inner_text()
        frame = row.locator("img.input-image")
        assert frame.evaluate("i => i.complete && i.naturalWidth > 0")
        box = frame.bounding_box()
        assert box is not None and box["width"] > 20 and box["height"] > 10  # shown, small
        row.locator("a.upstream").click()
        assert page.evaluate("() => location.hash") == "#shot-establishing"
        assert page.evaluate("() => document.querySelector(':target').id") == \
            "shot-establishing"
        assert opened.off_disk() == []


def test_the_final_cut_plays(browser: Browser, folder: Folder) -> None:
    """Not only its header: Chromium decodes and plays the H.264 (muted, as autoplay allows)."""
    with open_page(browser, folder.path / "index.html") as opened:
        opened.page.eval_on_selector("#final-video", "v => { v.muted = true; return v.play(); }")
        opened.page.wait_for_function(
            "() => document.querySelector('#final-video').currentTime > 0.3", timeout=15_000)
        assert opened.off_disk() == []


def test_no_request_leaves_the_disk(visit: tuple[Visit, dict[str, Any]]) -> None:
    opened = visit[0]
    assert opened.requests, "the guard saw no request at all, not even the page's own"
    assert opened.off_disk() == []


def test_the_page_shows_each_shot(folder: Folder, visit: tuple[Visit, dict[str, Any]]) -> None:
    page = visit[0].page
    text = page.inner_text("body")
    for shot in folder.manifest.shots:
        row = page.locator(f"#shot-{shot.id}")
        assert row.count() == 1
        assert shot.id in text
        prompts = [part["prompt"] for part in shot.multi_prompt or []] or [shot.prompt]
        for prompt in prompts:
            assert prompt is not None and prompt in row.inner_text()
        has_media = row.locator("video.clip").count() + row.locator("img.thumb").count()
        assert has_media == (2 if shot.file else 0)
    assert "wave-2" in page.inner_text("#final-missing")
    assert "task failed" in page.inner_text("#shot-wave-3")


@pytest.mark.parametrize("width", [390, 900, 1280])
def test_no_sideways_scrolling(browser: Browser, folder: Folder, width: int) -> None:
    """A phone, a narrow window, the README's width: the cards wrap, nothing sticks out."""
    with open_page(browser, folder.path / "index.html", width=width, height=800) as opened:
        overflow = opened.page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        assert opened.off_disk() == []


def test_full_page_screenshot(visit: tuple[Visit, dict[str, Any]]) -> None:
    stable_screenshot(visit[0].page, SCREENSHOT)
    with Image.open(SCREENSHOT) as image:
        assert image.format == "PNG"
        assert image.width >= 800 and image.height >= 600
        extrema = ImageStat.Stat(image.convert("L")).extrema[0]
        assert extrema[1] - extrema[0] > 64, "the screenshot is (nearly) one colour"


def test_ci_fails_rather_than_skips_without_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard .ci/run relies on: with KLING_REQUIRE_BROWSER=1 no browser is a failure."""
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        no_browser("no Chromium here")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"no Chromium here \(KLING_REQUIRE_BROWSER=1"):
        no_browser("no Chromium here")
