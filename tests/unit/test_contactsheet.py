"""index.html from a manifest: escaped, relative, complete, and honest about what is missing.

The page is parsed with the standard library's HTML parser (as a browser would tokenize it), so
the checks see attribute values and text as the browser will, not as the template spells them.
tests/e2e/test_contactsheet_browser.py loads a real folder in Chromium.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote

import pytest

from kling_pipeline.output.contactsheet import render_contact_sheet, timecode, url_of
from kling_pipeline.output.manifest import Manifest, ManifestFinal, ManifestInput, ManifestShot

HOSTILE = "</p><script>alert(\"pwned\")</script> & 'quotes' <b>bold</b> &amp; {{ x }}"
LINK_ATTRIBUTES = ("src", "href", "poster")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    row: str | None  # id of the shot <article> it is in


@dataclass
class Parsed(HTMLParser):
    """Every start tag with its attributes, and the visible text, per shot row too."""

    elements: list[Element] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    row_text: dict[str, list[str]] = field(default_factory=dict)
    styles: list[str] = field(default_factory=list)
    _rows: list[str | None] = field(default_factory=list)
    _in_style: bool = False

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "article":
            self._rows.append(values.get("id"))
        self._in_style = tag == "style"
        self.elements.append(Element(tag, values, self._rows[-1] if self._rows else None))

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._rows.pop()
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
            return
        self.text.append(data)
        row = self._rows[-1] if self._rows else None
        if row is not None:
            self.row_text.setdefault(row, []).append(data)

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [element for element in self.elements
                if (tag is None or element.tag == tag)
                and all(element.attrs.get(name.rstrip("_")) == value
                        for name, value in attrs.items())]

    def in_row(self, row: str, tag: str) -> list[Element]:
        return [element for element in self.elements if element.row == row and element.tag == tag]

    def links(self) -> list[str]:
        return [element.attrs[name] for element in self.elements for name in LINK_ATTRIBUTES
                if name in element.attrs]

    def page_text(self) -> str:
        return " ".join("".join(self.text).split())

    def shot_text(self, shot_id: str) -> str:
        return " ".join("".join(self.row_text.get(f"shot-{shot_id}", [])).split())


def parse(manifest: Manifest) -> Parsed:
    page = Parsed()
    page.feed(render_contact_sheet(manifest))
    page.close()
    return page


def shot(position: int, shot_id: str, status: str = "done", *, rendered: bool | None = None,
         **changes: Any) -> ManifestShot:
    """A shot as the manifest records it; rendered (default: status == done) adds its files."""
    base = f"{position:03d}-{shot_id}"
    value = ManifestShot(
        position=position, id=shot_id, status=status, endpoint="kling-v3.0-pro-t2v",
        key=f"{position:064x}", task_id=f"task-{position}",
        prompt=f"prompt of {shot_id}", multi_prompt=None, planned_duration=5.0)
    if status == "done" if rendered is None else rendered:
        value = replace(value, file=f"shots/{base}.mp4", thumbnail=f"thumbs/{base}.jpg",
                        duration=5.04, size=123_456, sha256="ab" * 32, width=1280, height=720,
                        start=5.0 * (position - 1))
    return replace(value, **changes)


def manifest(*shots: ManifestShot, simulated: bool = False, final: bool = True,
             name: str = "lighthouse") -> Manifest:
    rendered = [item for item in shots if item.file]
    cut = ManifestFinal(
        file="final.mp4", duration=sum(item.duration or 0.0 for item in rendered), width=1280,
        height=720, fps=24.0, size=9_876_543, has_audio=True, stream_copy=True,
        built_from="cd" * 32, missing=[item.id for item in shots if not item.file])
    return Manifest(storyboard=name, key_scheme=1, simulated=simulated, page="index.html",
                    final=cut if final and rendered else None, shots=list(shots))


def test_hostile_text_is_shown_as_text() -> None:
    hostile_id = "a\"b<c>&d'e"
    page = parse(manifest(
        shot(1, "one", prompt=HOSTILE, error=HOSTILE),
        shot(2, "two", status="failed", error=HOSTILE,
             multi_prompt=[{"prompt": HOSTILE, "duration": 2}]),
        shot(3, hostile_id),
        name=HOSTILE))
    assert page.find("script") == [] and page.find("b") == []
    text = page.page_text()
    # <title>, <h1>, shot one's prompt and error, shot two's part and error
    assert text.count(" ".join(HOSTILE.split())) == 6
    assert page.shot_text("one").count(" ".join(HOSTILE.split())) == 2
    # In attributes too: the id survives quoting and comes back exactly.
    [row] = page.find("article", id=f"shot-{hostile_id}")
    [image] = page.in_row(row.attrs["id"], "img")
    assert image.attrs["alt"] == hostile_id
    assert unquote(image.attrs["src"]) == f"thumbs/003-{hostile_id}.jpg"


def test_the_title_and_document_basics() -> None:
    source = render_contact_sheet(manifest(shot(1, "one"), name="lighthouse & sea"))
    page = Parsed()
    page.feed(source)
    assert source.startswith("<!doctype html>")
    assert page.find("html", lang="en")
    assert page.find("meta", charset="utf-8")
    assert "<title>lighthouse &amp; sea · contact sheet</title>" in source


def test_every_link_is_relative() -> None:
    page = parse(manifest(shot(1, "one"), shot(2, "two", status="failed"), shot(3, "three")))
    links = page.links()
    assert links
    for link in links:
        assert not link.startswith(("/", "\\", "//")), link
        assert ":" not in link.split("/")[0], link  # no scheme: http:, https:, file:, data: ...


def test_nothing_is_loaded_from_elsewhere() -> None:
    page = parse(manifest(shot(1, "one")))
    assert page.find("script") == [] and page.find("link") == [] and page.find("iframe") == []
    css = "".join(page.styles)
    assert css and "url(" not in css and "@import" not in css


def test_file_names_are_percent_encoded() -> None:
    odd = shot(1, "café au lait", file="shots/001-café au lait.mp4",
               thumbnail="thumbs/001-café au lait.jpg")
    page = parse(manifest(odd))
    assert "shots/001-caf%C3%A9%20au%20lait.mp4" in page.links()
    assert "thumbs/001-caf%C3%A9%20au%20lait.jpg" in page.links()


@pytest.mark.parametrize("path", ["/etc/passwd", "\\\\server\\share.mp4", "shots\\a.mp4", ""])
def test_a_path_that_is_not_relative_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="not a relative path"):
        url_of(path)
    assert url_of("http://example.com/x.mp4") == "http%3A//example.com/x.mp4"  # stays local


def test_every_file_the_manifest_names_appears() -> None:
    value = manifest(shot(1, "one"), shot(2, "two"), shot(3, "three", status="processing"))
    page = parse(value)
    linked = {unquote(link) for link in page.links()}
    assert value.files() - {value.page} <= linked
    for item in value.shots:
        if item.file is None:
            continue
        row = f"shot-{item.id}"
        [video] = page.in_row(row, "video")
        [image] = page.in_row(row, "img")
        assert video.attrs["src"] == item.file and video.attrs["poster"] == item.thumbnail
        assert video.attrs["class"] == "clip" and "controls" in video.attrs
        assert video.attrs["preload"] == "metadata"
        assert image.attrs["src"] == item.thumbnail and image.attrs["class"] == "thumb"
        assert image.attrs["alt"] == item.id
    [final] = page.find("video", id="final-video")
    assert final.attrs["src"] == "final.mp4"
    assert final.attrs["poster"] == "thumbs/001-one.jpg"


def test_the_final_poster_is_the_first_rendered_thumbnail() -> None:
    page = parse(manifest(shot(1, "one", status="failed"), shot(2, "two")))
    [final] = page.find("video", id="final-video")
    assert final.attrs["poster"] == "thumbs/002-two.jpg"


@pytest.mark.parametrize("status", ["failed", "processing", "queued", "rendered", "unknown",
                                    "submitting", "lost", "pending", "changed", "done"])
def test_a_shot_without_a_file_shows_why_not_a_broken_player(status: str) -> None:
    page = parse(manifest(shot(1, "one"),
                          shot(2, "two", status=status, rendered=False, error="boom (code 7)")))
    assert page.in_row("shot-two", "video") == [] and page.in_row("shot-two", "img") == []
    text = page.shot_text("two")
    assert f"Not rendered · {status}" in text
    assert "boom (code 7)" in text
    assert "not in the cut" in text and "5.0 s planned" in text
    assert "apply" in text  # the reason says what brings the video


def test_a_rendered_shot_shows_its_facts() -> None:
    page = parse(manifest(shot(1, "one"), shot(2, "two"), shot(16, "late", start=75.26)))
    text = page.shot_text("late")
    for expected in ("late", "kling-v3.0-pro-t2v", "5.0 s received", "1:15.3", "1280×720",
                     "prompt of late", "done"):
        assert expected in text
    [image] = page.in_row("shot-late", "img")
    assert (image.attrs["width"], image.attrs["height"]) == ("192", "108")
    assert [element.attrs["id"] for element in page.find("article")] == [
        "shot-one", "shot-two", "shot-late"]


def test_a_portrait_thumbnail_keeps_its_shape() -> None:
    page = parse(manifest(shot(1, "tall", width=720, height=1280)))
    [image] = page.in_row("shot-tall", "img")
    assert (image.attrs["width"], image.attrs["height"]) == ("61", "108")


@pytest.mark.parametrize(("status", "tone"), [
    ("done", "tone-ok"), ("failed", "tone-bad"), ("queued", "tone-wait"),
    ("processing", "tone-wait"), ("rendered", "tone-wait"), ("unknown", "tone-none"),
    ("lost", "tone-none"), ("pending", "tone-none"), ("something-new", "tone-none")])
def test_status_is_styled_by_tone(status: str, tone: str) -> None:
    page = parse(manifest(shot(1, "one", status=status, rendered=False)))
    [row] = page.find("article", id="shot-one")
    assert row.attrs["class"] == f"shot {tone}" and row.attrs["data-status"] == status
    [badge] = [element for element in page.in_row("shot-one", "span")
               if element.attrs.get("class", "").startswith("status ")]
    assert badge.attrs["class"] == f"status {tone}"


def test_multi_prompt_parts_are_shown_with_their_durations() -> None:
    parts = [{"prompt": "Lightning splits the sky", "duration": 2},
             {"prompt": "The beam cuts through rain", "duration": 3}]
    page = parse(manifest(shot(1, "storm", prompt=None, multi_prompt=parts)))
    assert len(page.in_row("shot-storm", "li")) == 2
    text = page.shot_text("storm")
    assert "2 s Lightning splits the sky" in text and "3 s The beam cuts through rain" in text


def test_no_final_cut_says_so() -> None:
    page = parse(manifest(shot(1, "one", status="processing"), shot(2, "two", status="pending")))
    assert page.find("video") == [] and page.find("img") == []
    assert page.find("p", id="no-final")
    assert "No shot is rendered yet, so there is no final cut." in page.page_text()
    assert "0 / 2 shots rendered" in page.page_text()


def test_an_empty_storyboard_still_renders() -> None:
    page = parse(manifest())
    assert "0 / 0 shots rendered" in page.page_text()
    assert page.find("nav") == []


def test_the_final_cut_facts_and_missing_shots() -> None:
    page = parse(manifest(shot(1, "one"), shot(2, "two", status="failed"),
                          shot(3, "three"), shot(4, "four", status="queued")))
    text = page.page_text()
    for expected in ("0:10.1", "1280×720", "24 fps", "9.4 MiB", "2 / 4 shots rendered"):
        assert expected in text
    assert "Left out of the cut, not rendered yet: two, four." in text
    complete = parse(manifest(shot(1, "one")))
    assert complete.find("p", id="final-missing") == []


def test_the_simulated_badge() -> None:
    simulated = parse(manifest(shot(1, "one"), simulated=True))
    assert "simulated animatic — nothing billed" in simulated.page_text()
    billed = parse(manifest(shot(1, "one"), simulated=False))
    assert "nothing billed" not in billed.page_text()


def test_the_timeline_links_every_shot_in_order() -> None:
    page = parse(manifest(shot(1, "one"), shot(2, "two", status="failed")))
    segments = [element.attrs for element in page.find("a")
                if "seg" in element.attrs.get("class", "")]
    assert [segment["href"] for segment in segments] == ["#shot-one", "#shot-two"]
    assert [segment["style"] for segment in segments] == ["flex-grow: 5.04", "flex-grow: 5.0"]


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0:00.0"), (5.04, "0:05.0"), (59.96, "1:00.0"), (75.26, "1:15.3"), (3600, "60:00.0")])
def test_timecode(seconds: float, shown: str) -> None:
    assert timecode(seconds) == shown


def test_quote_matches_the_standard_library() -> None:
    assert url_of("shots/001-a b#c?.mp4") == quote("shots/001-a b#c?.mp4")


def edge(field: str, upstream: str, *, frame: str | None = "last", at: float | None = None,
         known: bool = True, file: str | None = None) -> ManifestInput:
    return ManifestInput(field=field, shot=upstream, frame=frame, at=at,
                         sha256="ef" * 32 if known else None, file=file)


def chain() -> Manifest:
    """a, then b starting on a's last frame, then c from b at 2.5 s to a's first frame."""
    return manifest(
        shot(1, "a"),
        shot(2, "b", inputs=[edge("image", "a", file="frames/002-b-image.png")]),
        shot(3, "c", inputs=[edge("image", "b", frame=None, at=2.5,
                                  file="frames/003-c-image.png"),
                             edge("end_image", "a", frame="first",
                                  file="frames/003-c-end_image.png")]))


def test_a_chained_shot_shows_the_frames_it_starts_and_ends_on() -> None:
    value = chain()
    page = parse(value)
    assert "starts on the last frame of a" in page.shot_text("b")
    assert "starts on the frame at 2.5 s of b" in page.shot_text("c")
    assert "ends on the first frame of a" in page.shot_text("c")
    assert "starts on" not in page.shot_text("a")
    [frame] = page.find("img", class_="input-image", src="frames/002-b-image.png")
    assert frame.row == "shot-b" and frame.attrs["alt"] == "the last frame of a"
    assert (frame.attrs["width"], frame.attrs["height"]) == ("80", "45")  # a is 16:9
    assert [element.attrs["src"] for element in page.in_row("shot-c", "img")
            if element.attrs["class"] == "input-image"] == [
        "frames/003-c-image.png", "frames/003-c-end_image.png"]
    # each frame links to itself, full size, and to the row of the shot it comes from
    links = [element.attrs["href"] for element in page.in_row("shot-c", "a")]
    assert links == ["frames/003-c-image.png", "#shot-b", "frames/003-c-end_image.png",
                     "#shot-a"]
    rows = {element.attrs["id"] for element in page.find("article")}
    for element in page.find("a", class_="upstream"):
        assert unquote(element.attrs["href"][1:]) in rows
    assert value.files() - {value.page} <= {unquote(link) for link in page.links()}


def test_a_frame_is_fitted_to_the_shape_of_the_video_it_comes_from() -> None:
    page = parse(manifest(
        shot(1, "tall", width=720, height=1280),
        shot(2, "next", inputs=[edge("image", "tall", file="frames/002-next-image.png")])))
    [frame] = page.find("img", class_="input-image")
    assert (frame.attrs["width"], frame.attrs["height"]) == ("25", "45")


def test_a_frame_not_in_the_folder_says_why_instead_of_a_broken_image() -> None:
    page = parse(manifest(
        shot(1, "a", status="failed"),
        shot(2, "b", status="pending", inputs=[edge("image", "a", known=False)]),
        shot(3, "c", status="pending", inputs=[edge("image", "a")])))
    assert page.find("img", class_="input-image") == []
    assert "starts on the last frame of a (not rendered yet)" in page.shot_text("b")
    assert "starts on the last frame of a (not in this folder)" in page.shot_text("c")
    assert [element.attrs["href"] for element in page.in_row("shot-b", "a")] == ["#shot-a"]


def test_a_shot_the_page_does_not_show_is_named_not_linked() -> None:
    """A manifest edited by hand may name a shot it has no record of: no dangling link."""
    page = parse(manifest(shot(1, "b", inputs=[edge("image", "gone", known=False)])))
    assert page.in_row("shot-b", "a") == []
    assert "starts on the last frame of gone" in page.shot_text("b")


def test_a_hostile_upstream_id_is_shown_as_text_and_linked_exactly() -> None:
    hostile_id = "a\"b<c>&d'e #x"
    page = parse(manifest(
        shot(1, hostile_id),
        shot(2, "b", inputs=[edge("image", hostile_id, file="frames/002-b-image.png"),
                             edge("end_image", HOSTILE, known=False)]),
        shot(3, HOSTILE, rendered=False)))
    assert page.find("script") == [] and page.find("b") == []
    text = page.shot_text("b")
    assert f"starts on the last frame of {hostile_id}" in text
    assert f"ends on the last frame of {' '.join(HOSTILE.split())}" in text
    [link, other] = page.find("a", class_="upstream")
    assert link.attrs["href"] == "#" + quote(f"shot-{hostile_id}", safe="")
    assert unquote(link.attrs["href"][1:]) == f"shot-{hostile_id}"
    assert unquote(other.attrs["href"][1:]) == f"shot-{HOSTILE}"
    [frame] = page.find("img", class_="input-image")
    assert frame.attrs["alt"] == f"the last frame of {hostile_id}"
    assert page.find("article", id=f"shot-{hostile_id}")
