"""`kling-pipeline init`: a starter project that validates and renders as written, written
without overwriting anything, the same bytes every time, and .gitignore lines never doubled."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from support.paths import ROOT

from kling_pipeline.cli import main
from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.storyboard.images import check_image_bytes
from kling_pipeline.storyboard.models import storyboard_schema
from kling_pipeline.storyboard.starter import (
    FALLBACK_NAME,
    GITIGNORE_COMMENT,
    GITIGNORE_LINES,
    IMAGE_FILE,
    NAME_MAX,
    NAME_PATTERN,
    SCHEMA_FILE,
    StarterResult,
    check_name,
    init_project,
    name_from_folder,
    start_image,
    typed_path,
)

# The start image's bytes are part of the image shot's key: they must not change between
# machines, zlib builds or releases without someone deciding so (and updating this digest).
START_IMAGE_SHA256 = "0726e9bff2e923cb240ebb1e2e44c6dea1cda19945ad8e719ff4178edd22deeb"
NEW_GITIGNORE = "\n".join((GITIGNORE_COMMENT, *GITIGNORE_LINES)) + "\n"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a before/after snapshot."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _start(tmp_path: Path, name: str | None = None, folder: str = "proj") -> StarterResult:
    return init_project(tmp_path / folder, name, cwd=tmp_path)


# --- what init writes -------------------------------------------------------------------------

def test_writes_storyboard_schema_image_and_gitignore(tmp_path: Path) -> None:
    result = _start(tmp_path)
    folder = tmp_path / "proj"
    assert result.storyboard == folder / "proj.yaml"
    assert [n.path for n in result.written] == [
        folder, folder / "proj.yaml", folder / SCHEMA_FILE, folder / IMAGE_FILE,
        folder / ".gitignore"]
    assert result.kept == ()
    assert result.next_commands == ("kling-pipeline plan --simulate proj/proj.yaml",
                                    "kling-pipeline apply --simulate proj/proj.yaml")
    text = result.storyboard.read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE}"
    assert json.loads((folder / SCHEMA_FILE).read_text(encoding="utf-8")) == storyboard_schema()
    assert (folder / IMAGE_FILE).read_bytes() == start_image()
    assert (folder / ".gitignore").read_text(encoding="utf-8") == NEW_GITIGNORE


def test_starter_has_one_text_and_one_image_shot(tmp_path: Path) -> None:
    doc = yaml.safe_load(_start(tmp_path).storyboard.read_text(encoding="utf-8"))
    assert doc["version"] == 1 and doc["name"] == "proj" and doc["vars"]
    assert doc["defaults"]["model"] == "kling-v3.0-pro-t2v"
    assert [s.get("model", doc["defaults"]["model"]) for s in doc["shots"]] == [
        "kling-v3.0-pro-t2v", "kling-v3.0-pro-i2v"]
    assert doc["shots"][1]["image"] == IMAGE_FILE


def test_starter_validates_against_its_schema_file(tmp_path: Path) -> None:
    result = _start(tmp_path)
    schema = json.loads((tmp_path / "proj" / SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(result.storyboard.read_text(encoding="utf-8")))
    assert not validator.is_valid({"version": 1, "name": "x", "shots": [], "bogus": 1})


def test_a_name_yaml_would_misread_is_quoted(tmp_path: Path) -> None:
    for name in ("1", "true", "null", "1e3"):
        result = _start(tmp_path, name, folder=f"f{name}")
        assert yaml.safe_load(result.storyboard.read_text(encoding="utf-8"))["name"] == name


# --- the name ---------------------------------------------------------------------------------

def test_name_rule_is_the_models_rule() -> None:
    rule = storyboard_schema()["properties"]["name"]
    assert (rule["pattern"], rule["maxLength"]) == (NAME_PATTERN, NAME_MAX)


@pytest.mark.parametrize(("folder", "name"), [
    ("proj", "proj"), ("My Film!", "My-Film"), ("café crème", "cafe-creme"),
    ("!!!", FALLBACK_NAME), ("", FALLBACK_NAME), (".hidden.", "hidden"), ("--a--b--", "a--b"),
    ("日本", FALLBACK_NAME), ("a" * 150, "a" * NAME_MAX), ("v1.2_final", "v1.2_final")])
def test_name_from_folder_is_valid(folder: str, name: str) -> None:
    assert name_from_folder(folder) == name
    assert re.fullmatch(NAME_PATTERN, name) and len(name) <= NAME_MAX


def test_name_defaults_to_the_folder(tmp_path: Path) -> None:
    result = _start(tmp_path, folder="My Film!")
    assert result.storyboard == tmp_path / "My Film!" / "My-Film.yaml"
    assert result.next_commands[0] == "kling-pipeline plan --simulate 'My Film!/My-Film.yaml'"


@pytest.mark.parametrize("bad", ["my film", "-x", ".x", "a/b", "", ".yaml", "a" * 101, "é"])
def test_invalid_name_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    with pytest.raises(KlingPipelineError) as caught:
        _start(tmp_path, bad)
    message = str(caught.value)
    assert "is not a valid storyboard name" in message
    assert "letters" in message and "starting with a letter or digit" in message
    assert not (tmp_path / "proj").exists()


def test_refusal_suggests_a_valid_name() -> None:
    with pytest.raises(KlingPipelineError, match="for example 'my-film'"):
        check_name("my film")


def test_a_yaml_suffix_is_dropped() -> None:
    assert check_name("film.yaml") == "film"
    assert check_name("film.YML") == "film"
    assert check_name("film.yaml.bak") == "film.yaml.bak"


# --- never overwriting ------------------------------------------------------------------------

def test_second_init_refuses_and_changes_nothing(tmp_path: Path) -> None:
    _start(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(KlingPipelineError) as caught:
        _start(tmp_path)
    message = str(caught.value)
    assert message.startswith("proj/proj.yaml already exists")
    assert "nothing was changed" in message and "--dir" in message
    assert _files(tmp_path) == before


def test_existing_schema_and_image_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    (folder / "assets").mkdir(parents=True)
    (folder / SCHEMA_FILE).write_text("{}\n", encoding="utf-8")
    (folder / IMAGE_FILE).write_bytes(b"my own picture")
    result = _start(tmp_path)
    assert [n.path for n in result.kept] == [folder / SCHEMA_FILE, folder / IMAGE_FILE]
    assert [n.path for n in result.written] == [folder / "proj.yaml", folder / ".gitignore"]
    assert (folder / SCHEMA_FILE).read_text(encoding="utf-8") == "{}\n"
    assert (folder / IMAGE_FILE).read_bytes() == b"my own picture"


def test_another_storyboard_in_the_same_folder_shares_schema_and_image(tmp_path: Path) -> None:
    _start(tmp_path, "one")
    before = _files(tmp_path / "proj")
    result = _start(tmp_path, "two")
    assert [n.path.name for n in result.written] == ["two.yaml"]
    assert [n.path.name for n in result.kept] == [SCHEMA_FILE, "start.png", ".gitignore"]
    assert {**before, "two.yaml": result.storyboard.read_bytes()} == _files(tmp_path / "proj")


def test_a_file_in_the_way_of_the_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "proj").write_text("not a folder", encoding="utf-8")
    with pytest.raises(KlingPipelineError, match="proj: a file of that name is in the way"):
        _start(tmp_path)


# --- .gitignore -------------------------------------------------------------------------------

def test_gitignore_lines_are_the_documented_ones() -> None:
    doc = (ROOT / "docs" / "lockfile.md").read_text(encoding="utf-8")
    block = re.search(r"Suggested `\.gitignore` lines.*?```\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    assert tuple(block.group(1).splitlines()) == GITIGNORE_LINES


@pytest.mark.parametrize(("existing", "after"), [
    ("node_modules/\nrenders/\n",
     "node_modules/\nrenders/\n" + GITIGNORE_COMMENT
     + "\n.kling-cache/\n.*.lock.json.run\n*.simulated.lock.json\n"),
    ("node_modules/", "node_modules/\n" + NEW_GITIGNORE),
    ("", NEW_GITIGNORE),
    ("a\r\nb", "a\r\nb\r\n" + NEW_GITIGNORE.replace("\n", "\r\n")),
])
def test_gitignore_gets_only_missing_lines(tmp_path: Path, existing: str, after: str) -> None:
    gitignore = tmp_path / "proj" / ".gitignore"
    gitignore.parent.mkdir()
    gitignore.write_bytes(existing.encode("utf-8"))
    _start(tmp_path)
    assert gitignore.read_bytes() == after.encode("utf-8")


def test_gitignore_lines_are_never_doubled(tmp_path: Path) -> None:
    gitignore = tmp_path / "proj" / ".gitignore"
    gitignore.parent.mkdir()
    gitignore.write_bytes(b"*.log\nrenders/   \n\xff\xfe not utf-8\n")
    _start(tmp_path, "one")
    once = gitignore.read_bytes()
    assert once.startswith(b"*.log\nrenders/   \n\xff\xfe not utf-8\n")
    assert once.count(b"renders/") == 1 and once.count(b".kling-cache/") == 1
    result = _start(tmp_path, "two")
    assert gitignore.read_bytes() == once
    assert any(n.path == gitignore for n in result.kept)


# --- the start image --------------------------------------------------------------------------

def test_start_image_is_deterministic() -> None:
    data = start_image()
    assert data == start_image()
    assert hashlib.sha256(data).hexdigest() == START_IMAGE_SHA256


def test_start_image_passes_the_endpoint_image_rules() -> None:
    info = check_image_bytes(start_image())
    assert (info.mime, info.width, info.height) == ("image/png", 640, 360)
    assert info.size < 200_000


def test_start_image_shows_a_sun_over_the_sea() -> None:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(start_image())) as image:
        rgb = image.convert("RGB")
    assert rgb.getpixel((320, 200)) == (255, 232, 170)   # the sun
    assert rgb.getpixel((10, 5)) == (24, 36, 84)         # night sky at the top
    assert rgb.getpixel((10, 355)) == (16, 30, 60)       # deep sea at the bottom


# --- paths as typed ---------------------------------------------------------------------------

def test_typed_path(tmp_path: Path) -> None:
    here = tmp_path / "a" / "b"
    assert typed_path(here / "x.yaml", here) == "x.yaml"
    assert typed_path(Path("p/x.yaml"), here) == "p/x.yaml"
    assert typed_path(tmp_path / "a" / "c" / "x.yaml", here) == "../c/x.yaml"
    assert typed_path(Path("/x.yaml"), here) == "/x.yaml"  # shorter than ../../..
    assert typed_path(here / "my film" / "x.yaml", here) == "'my film/x.yaml'"


# --- the command ------------------------------------------------------------------------------

def test_cli_prints_what_it_wrote_and_the_next_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["init", "demo", "--dir", "work"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Wrote:"
    assert re.fullmatch(r"  work/demo\.yaml +the storyboard: .*", lines[2])
    assert lines[-2:] == ["  kling-pipeline plan --simulate work/demo.yaml",
                          "  kling-pipeline apply --simulate work/demo.yaml"]
    again = runner.invoke(main, ["init", "demo", "--dir", "work"])
    assert again.exit_code == 1
    assert "work/demo.yaml already exists" in again.output
    assert "nothing was changed" in again.output
    assert "Traceback" not in again.output
    assert runner.invoke(main, ["validate", "work/demo.yaml"]).output == \
        "work/demo.yaml: valid: 2 shots, 9 s of video (kling-v3.0-pro-i2v, " \
        "kling-v3.0-pro-t2v)\n"


def test_cli_defaults_to_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "My Film"
    here.mkdir()
    monkeypatch.chdir(here)
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert "  kling-pipeline apply --simulate My-Film.yaml" in result.output
    assert (here / "My-Film.yaml").is_file()


def test_cli_refuses_a_bad_name_with_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "bad name", "--dir", str(tmp_path / "p")])
    assert result.exit_code == 1
    assert "NAME 'bad name' is not a valid storyboard name" in result.output
    assert not (tmp_path / "p").exists()


def _heavy_modules_after_init(folder: Path) -> list[str]:
    code = ("import sys; from kling_pipeline.cli import main; "
            f"main(['init', '--dir', {str(folder)!r}], standalone_mode=False); "
            "heavy = {'pydantic', 'jinja2', 'yaml', 'httpx', 'av', 'PIL', 'starlette', "
            "'uvicorn', 'rich'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    heavy: list[str] = json.loads(out.stdout.splitlines()[-1].replace("'", '"'))
    return heavy


def test_init_imports_only_what_it_needs(tmp_path: Path) -> None:
    assert _heavy_modules_after_init(tmp_path / "first") == ["pydantic"]  # the schema
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / SCHEMA_FILE).write_text("{}\n", encoding="utf-8")
    assert _heavy_modules_after_init(tmp_path / "second") == []


# --- end to end -------------------------------------------------------------------------------

def _frames_and_rate(path: Path) -> tuple[int, Fraction]:
    """Decode every video frame: how many there are, and the frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate is not None
        frames = sum(1 for _ in container.decode(stream))
        return frames, Fraction(stream.average_rate)


@pytest.mark.slow
def test_init_then_simulated_apply_renders_the_starter(tmp_path: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("NOVITA_API_KEY", None)

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "kling_pipeline", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "kling-pipeline apply --simulate demo/demo.yaml" in run("init", "demo",
                                                                   "--dir", "demo")
    run("apply", "--simulate", "--yes", "demo/demo.yaml")
    out = tmp_path / "demo" / "renders" / "demo.simulated"
    shots = [out / "shots" / "001-opening.mp4", out / "shots" / "002-sunrise.mp4"]
    assert all(p.is_file() for p in [*shots, out / "final.mp4"])
    (opening, rate), (sunrise, _) = (_frames_and_rate(p) for p in shots)
    assert opening / rate == 5 and sunrise / rate == 4
    final, final_rate = _frames_and_rate(out / "final.mp4")
    assert final / final_rate == opening / rate + sunrise / rate
