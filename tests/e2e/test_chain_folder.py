"""The output folder of a storyboard whose shots build on shots, over the simulator on loopback.

A chained shot's frames are part of what a reviewer needs to see: the manifest records each
edge (which field, which shot, which frame, the PNG's digest, its file), the folder holds the
frame PNGs under `frames/`, and the page shows each frame small with a link to the shot it
comes from. These check that against the lock file and the bytes on disk, that a rerun writes
nothing, and that an edit upstream replaces the frames and their records.
"""

from __future__ import annotations

import hashlib
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from click.testing import Result
from PIL import Image
from support.apply_fixtures import apply, lock_of
from support.chains import HEAD, A, B, X
from support.simulator_fixtures import SimClient

from kling_pipeline.frames import FrameRef, extract_frame
from kling_pipeline.key import IMAGE_DIGEST_PREFIX

CHAIN = HEAD + A + B + """\
  - {id: c, prompt: "The lamp turns", image: {shot: b, at: 1.5},
     end_image: {shot: a, frame: first}}
""" + X
FRAMES = {"frames/002-b-image.png", "frames/003-c-image.png", "frames/003-c-end_image.png"}
PNG = b"\x89PNG\r\n\x1a\n"


def write(folder: Path, text: str) -> Path:
    board = folder / "board.yaml"
    board.write_text(text, encoding="utf-8")
    return board


def applied(board: Path, sim: SimClient, code: int = 0) -> Result:
    result = apply(board, sim.base_url)
    assert result.exit_code == code, result.output
    return result


def folder_of(board: Path) -> Path:
    return board.parent / "renders" / "demo"


def manifest_of(board: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder_of(board) / "manifest.json").read_text())
    return data


def shots_of(board: Path) -> dict[str, dict[str, Any]]:
    return {shot["id"]: shot for shot in manifest_of(board)["shots"]}


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def named_files(manifest: dict[str, Any]) -> set[str]:
    named = {manifest["page"], "manifest.json"}
    if manifest["final"]:
        named.add(manifest["final"]["file"])
    for shot in manifest["shots"]:
        named.update(name for name in (shot["file"], shot["thumbnail"]) if name)
        named.update(edge["file"] for edge in shot.get("inputs") or () if edge["file"])
    return named


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stat_all(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file and folder in the output folder, itself included."""
    paths = [folder, *folder.rglob("*")]
    return {path.relative_to(folder).as_posix(): (path.stat().st_ino, path.stat().st_mtime_ns)
            for path in paths}


def check_edges(board: Path) -> dict[str, dict[str, Any]]:
    """Every edge's record agrees with the lock's request and the PNG in frames/."""
    folder, lock, shots = folder_of(board), lock_of(board), shots_of(board)
    for shot in shots.values():
        for edge in shot.get("inputs") or ():
            png = folder / edge["file"]
            assert png.read_bytes().startswith(PNG)
            with Image.open(png) as image:
                assert image.format == "PNG" and image.width > 0
            assert sha256(png) == edge["sha256"]
            assert lock[shot["id"]]["request"][edge["field"]] == \
                IMAGE_DIGEST_PREFIX + edge["sha256"]
    return shots


def test_the_manifest_records_each_frame_a_shot_takes_and_the_folder_holds_it(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    folder = folder_of(board)
    shots = check_edges(board)
    assert "inputs" not in shots["a"] and "inputs" not in shots["x"]  # no key, not null
    b, c = shots["b"]["inputs"], shots["c"]["inputs"]
    last_of_a = extract_frame(folder / shots["a"]["file"], FrameRef("last"))
    assert b == [{"field": "image", "shot": "a", "frame": "last", "at": None,
                  "sha256": last_of_a.sha256, "file": "frames/002-b-image.png"}]
    assert (folder / "frames/002-b-image.png").read_bytes() == last_of_a.png
    assert [(e["field"], e["shot"], e["frame"], e["at"], e["file"]) for e in c] == [
        ("image", "b", None, 1.5, "frames/003-c-image.png"),
        ("end_image", "a", "first", None, "frames/003-c-end_image.png")]
    first_of_a = extract_frame(folder / shots["a"]["file"], FrameRef("first"))
    assert c[1]["sha256"] == first_of_a.sha256
    manifest = manifest_of(board)
    assert {name for name in files_in(folder) if name.startswith("frames/")} == FRAMES
    assert files_in(folder) == named_files(manifest)
    # the fields in their order, inputs last
    assert list(manifest["shots"][1])[-2:] == ["error", "inputs"]


def test_a_rerun_writes_nothing_and_a_deleted_frame_is_put_back(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    folder = folder_of(board)
    before = stat_all(folder)
    result = applied(board, sim)
    assert "(unchanged)" in result.output
    assert stat_all(folder) == before
    frame = folder / "frames/003-c-end_image.png"
    digest = sha256(frame)
    frame.unlink()
    applied(board, sim)
    assert sha256(frame) == digest
    again = stat_all(folder)
    assert {name for name in again if again[name] != before.get(name)} <= {
        ".", "frames", "frames/003-c-end_image.png"}
    applied(board, sim)
    assert stat_all(folder) == again


def test_an_edit_upstream_replaces_the_frames_and_their_records(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    folder = folder_of(board)
    old = {name: sha256(folder / name) for name in FRAMES}
    old_edges = {shot_id: shot["inputs"] for shot_id, shot in shots_of(board).items()
                 if shot_id in ("b", "c")}
    write(tmp_path, CHAIN.replace("A lighthouse at dusk", "A lighthouse at dawn"))
    applied(board, sim)
    shots = check_edges(board)
    new = {name: sha256(folder / name) for name in FRAMES}
    assert all(new[name] != old[name] for name in FRAMES), (old, new)
    for shot_id in "bc":
        edges = shots[shot_id]["inputs"]
        assert [edge["sha256"] for edge in edges] != [
            edge["sha256"] for edge in old_edges[shot_id]]
        assert [edge["file"] for edge in edges] == [edge["file"] for edge in old_edges[shot_id]]
    assert {name for name in files_in(folder) if name.startswith("frames/")} == FRAMES
    assert files_in(folder) == named_files(manifest_of(board))


def test_a_chain_undone_leaves_no_frames(tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    plain = CHAIN.replace(', image: {shot: a, frame: last}', ', model: kling-v3.0-pro-t2v')
    plain = plain.replace(', image: {shot: b, at: 1.5},\n     end_image: {shot: a, frame: first}',
                          ', model: kling-v3.0-pro-t2v')
    assert "shot:" not in plain
    write(tmp_path, plain)
    applied(board, sim)
    folder = folder_of(board)
    assert not (folder / "frames").exists()
    text = (folder / "manifest.json").read_text()
    assert '"inputs"' not in text
    assert files_in(folder) == named_files(manifest_of(board))


def test_a_frame_not_known_yet_is_recorded_without_a_digest_or_a_file(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN.replace("A lighthouse at dusk", "SIMULATE_FAILURE at dusk"))
    applied(board, sim, code=1)
    shots = shots_of(board)
    assert shots["b"]["status"] == "pending"
    assert shots["b"]["inputs"] == [{"field": "image", "shot": "a", "frame": "last", "at": None,
                                     "sha256": None, "file": None}]
    assert not (folder_of(board) / "frames").exists()
    page = Links.of(folder_of(board) / "index.html")
    assert "starts on the last frame of a (not rendered yet)" in page.row_text["shot-b"]


class Links(HTMLParser):
    """The page's links and images per shot row, and each row's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.row_text: dict[str, str] = {}
        self._row: str | None = None

    @classmethod
    def of(cls, path: Path) -> Links:
        page = cls()
        page.feed(path.read_text(encoding="utf-8"))
        page.close()
        page.row_text = {row: " ".join(text.split()) for row, text in page.row_text.items()}
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "article":
            self._row = values.get("id")
        if self._row is None:
            return
        if tag == "a" and "href" in values:
            self.links.setdefault(self._row, []).append(values["href"])
        if tag == "img":
            self.images.setdefault(self._row, []).append(values["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self.row_text[self._row] = self.row_text.get(self._row, "") + data


def test_the_page_shows_each_frame_and_links_to_the_shot_it_comes_from(
        tmp_path: Path, sim: SimClient) -> None:
    board = write(tmp_path, CHAIN)
    applied(board, sim)
    folder = folder_of(board)
    page = Links.of(folder / "index.html")
    assert "starts on the last frame of a" in page.row_text["shot-b"]
    assert "starts on the frame at 1.5 s of b" in page.row_text["shot-c"]
    assert "ends on the first frame of a" in page.row_text["shot-c"]
    assert "#shot-a" in page.links["shot-b"] and "frames/002-b-image.png" in page.images["shot-b"]
    assert {"#shot-a", "#shot-b"} <= set(page.links["shot-c"])
    assert {"frames/003-c-image.png", "frames/003-c-end_image.png"} <= set(page.images["shot-c"])
    for links in page.links.values():  # every link on a card goes somewhere real
        for link in links:
            if link.startswith("#"):
                assert link[1:] in page.ids, link
            else:
                assert (folder / link).is_file(), link
    assert os.path.commonpath([folder, *(folder / src for srcs in page.images.values()
                                         for src in srcs)]) == str(folder)


def test_a_frame_taken_from_another_shot_with_the_same_video_is_recorded_as_such(
        tmp_path: Path, sim: SimClient) -> None:
    """Two shots with one request share one video, so taking the frame from the other one
    changes no key: the folder still follows the storyboard's words (its recipe holds them)."""
    twins = HEAD + """\
  - {id: a, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "A lighthouse at dusk"}
  - {id: twin, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "A lighthouse at dusk"}
  - {id: b, prompt: "The keeper climbs", image: {shot: a, frame: last}}
"""
    board = write(tmp_path, twins)
    applied(board, sim)
    before = sim.stats()["submissions_total"]
    key = lock_of(board)["b"]["key"]
    write(tmp_path, twins.replace("{shot: a, frame: last}", "{shot: twin, frame: last}"))
    applied(board, sim)
    assert sim.stats()["submissions_total"] == before and lock_of(board)["b"]["key"] == key
    [edge] = check_edges(board)["b"]["inputs"]
    assert edge["shot"] == "twin"
    page = Links.of(folder_of(board) / "index.html")
    assert "starts on the last frame of twin" in page.row_text["shot-b"]
    assert "#shot-twin" in page.links["shot-b"]
