"""Real headless Chromium for tests of the pages we write (the output folder's index.html).

A page that "renders" in an HTML parser can still show a broken image, a player that never loads
or a link that reaches the network; only a browser shows that. Playwright drives the system's
Chromium (Debian's `chromium`; `$CHROMIUM` overrides the path), never a downloaded one, with the
flags that keep it off the network and working as root.

No Chromium (or no Playwright): the test is skipped with the reason, except when
KLING_REQUIRE_BROWSER=1 (CI sets it), where that is a failure: CI must not pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from support.required import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REQUIRE_ENV = "KLING_REQUIRE_BROWSER"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# --no-sandbox: tests run as root in containers. The rest stop Chromium calling Google (updates,
# sync, field trials, QUIC probes), so the network guard only ever sees the page's own requests.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic")
MEDIA_TIMEOUT = 15.0  # seconds for every <video> to load its metadata and every <img> to finish

_MEDIA_SETTLED = """() =>
  [...document.querySelectorAll('video')].every(v => v.readyState >= 1 || v.error !== null)
  && [...document.querySelectorAll('img')].every(i => i.complete)"""

_MEDIA_STATE = """() => ({
  videos: [...document.querySelectorAll('video')].map(v => ({
    src: v.getAttribute('src'), url: v.currentSrc, readyState: v.readyState,
    error: v.error ? v.error.code : null, duration: v.duration,
    videoWidth: v.videoWidth, videoHeight: v.videoHeight})),
  images: [...document.querySelectorAll('img')].map(i => ({
    src: i.getAttribute('src'), url: i.currentSrc, complete: i.complete,
    naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})),
})"""


def chromium_path() -> str | None:
    """The Chromium to drive: `$CHROMIUM`, else /usr/bin/chromium, else `chromium` on PATH."""
    override = os.environ.get("CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    if Path(DEFAULT_CHROMIUM).is_file():
        return DEFAULT_CHROMIUM
    return shutil.which("chromium")


def no_browser(reason: str) -> NoReturn:
    """Skip for want of a browser; under KLING_REQUIRE_BROWSER=1 fail instead."""
    missing(reason, REQUIRE_ENV)


@contextmanager
def launched_browser() -> Iterator[Browser]:
    """One headless Chromium (put it in a module-scoped fixture: launching takes a second)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("playwright is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        override = os.environ.get("CHROMIUM")
        no_browser(f"CHROMIUM={override} is not a file" if override else
                   f"no Chromium at {DEFAULT_CHROMIUM} or on PATH "
                   "(Debian: apt-get install chromium; or set CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS),
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """An open page and every URL it requested, in order."""

    page: Page
    requests: list[str] = field(default_factory=list)

    def off_disk(self) -> list[str]:
        """Requests that were not for a local file: the page should make none."""
        return [url for url in self.requests if not url.startswith("file://")]


@contextmanager
def open_page(browser: Browser, path: Path, width: int = 1280, height: int = 900,
              ) -> Iterator[Visit]:
    """`path` loaded over file:// in a fresh context of `width` x `height` CSS pixels.

    Every request the page makes, from its first, is recorded in `Visit.requests`.
    """
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        visit = Visit(page)
        page.on("request", lambda request: visit.requests.append(request.url))
        page.goto(path.resolve().as_uri(), wait_until="load")
        yield visit
    finally:
        context.close()


def media_state(page: Page, timeout: float = MEDIA_TIMEOUT) -> dict[str, list[dict[str, Any]]]:
    """Per <video>: src, readyState, error code, duration, videoWidth/Height; per <img>: src,
    complete, naturalWidth/Height. Waits until every video has its metadata (readyState >= 1)
    or an error and every image is complete; after `timeout` it returns the state as it is,
    so the test's assertion names the element that did not load.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with suppress(PlaywrightTimeout):
        page.wait_for_function(_MEDIA_SETTLED, timeout=timeout * 1000)
    state: dict[str, list[dict[str, Any]]] = page.evaluate(_MEDIA_STATE)
    return state


def stable_screenshot(page: Page, path: Path, timeout: float = 5.0) -> bytes:
    """A full-page PNG of `page` once two shots in a row are the same (or after `timeout`).

    Chromium's media controls fade a loading spinner out for about a second after a video
    has loaded; a screenshot meant for people should not catch it.
    """
    deadline = time.monotonic() + timeout
    shot = page.screenshot(full_page=True)
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        again = page.screenshot(full_page=True)
        if again == shot:
            break
        shot = again
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shot)
    return shot
