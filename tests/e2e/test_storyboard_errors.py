"""Every malformed storyboard gives `file:line:col: location: message`, exit 1, no traceback.

Each test writes a real storyboard (and real images) in tmp_path, runs `kling-pipeline validate`
through click's runner, and checks the exact place of the offending value, computed from the
YAML text: `^` in a needle marks the column the message must point at.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from support.located import position

from kling_pipeline.cli import main
from kling_pipeline.storyboard.endpoints import ENDPOINTS

HEAD = "version: 1\nname: t\n"
T2V = "kling-v3.0-pro-t2v"
V16 = ("kling-v1.6-i2v", "kling-v1.6-t2v")


def write(tmp_path: Path, text: str, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def validate(path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["validate", "--no-cache", *args, str(path)])


def at(path: Path, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the `^` in `needle` (or its start), as found in the file."""
    return position(path.read_text(encoding="utf-8"), needle, occurrence)


def lines_at(result: Result, path: Path, needle: str, location: str,
             occurrence: int = 1) -> list[str]:
    """The report lines for that place and location; fails unless exit 1 without traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    line, column = at(path, needle, occurrence)
    prefix = f"{path}:{line}:{column}: {location}: "
    found = [x for x in result.output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{result.output}"
    return found


def expect(path: Path, needle: str, location: str, *fragments: str, args: tuple[str, ...] = (),
           occurrence: int = 1) -> Result:
    result = validate(path, *args)
    found = lines_at(result, path, needle, location, occurrence)
    for fragment in fragments:
        assert any(fragment in x for x in found), f"{fragment!r} not in {found}"
    return result


def png(tmp_path: Path, name: str, size: tuple[int, int] = (400, 400), fmt: str = "PNG",
        **save: object) -> Path:
    path = tmp_path / name
    Image.new("RGB", size, (30, 60, 90)).save(path, format=fmt, **save)
    return path


# --- 1. one test per category ---------------------------------------------------------------

CATEGORIES = [
    ("unknown key", "  - id: a\n    ^promt: hi\n", "shots[0].promt", "did you mean 'prompt'"),
    ("wrong type", "  - id: a\n    prompt: p\n    sound: ^maybe\n", "shots[0].sound",
     "true or false"),
    ("out of range", "  - id: a\n    prompt: p\n  - id: b\n    prompt: p\n    duration: ^16\n",
     "shots[1] (b).duration", "3..15"),
    ("missing required", "  - ^prompt: p\n", "shots[0].id", "is required"),
    ("exclusive", "  - id: a\n    prompt: p\n    multi_prompt: ^[{prompt: q, duration: 5}]\n",
     "shots[0] (a).multi_prompt", "cannot be used together with prompt"),
    ("unknown model", "  - id: a\n    prompt: p\n    model: ^kling-v9\n", "shots[0] (a).model",
     "known: kling-v1.6-i2v, kling-v1.6-t2v, kling-v3.0-4k-i2v, kling-v3.0-4k-t2v, "
     "kling-v3.0-pro-i2v"),
    ("unsafe id", "  - id: ^a/b\n    prompt: p\n", "shots[0].id", "safe file name"),
    ("template syntax", "  - id: a\n    prompt: ^\"{{ x \"\n", "shots[0] (a).prompt",
     "template syntax error"),
    ("undefined variable", "  - id: a\n    prompt: ^\"{{ grde }}\"\n", "shots[0] (a).prompt",
     "did you mean 'grade'"),
    ("sandbox", "  - id: a\n    prompt: ^\"{{ ''.__class__ }}\"\n", "shots[0] (a).prompt",
     "sandbox"),
    ("too long", "  - id: a\n    prompt: ^\"{{ 'x' * 2501 }}\"\n", "shots[0] (a).prompt",
     "at most 2500"),
    ("missing image", "  - id: a\n    model: kling-v3.0-pro-i2v\n    prompt: p\n"
     "    image: ^nope.png\n", "shots[0] (a).image", "not found"),
]


@pytest.mark.parametrize("text,location,allowed", [c[1:] for c in CATEGORIES],
                         ids=[c[0] for c in CATEGORIES])
def test_each_category_is_located(tmp_path: Path, text: str, location: str,
                                  allowed: str) -> None:
    head = HEAD + f"vars: {{grade: teal}}\ndefaults: {{model: {T2V}}}\nshots:\n"
    path = write(tmp_path, head + text.replace("^", ""))
    expect(path, next(x for x in text.split("\n") if "^" in x).strip(), location, allowed)


def test_duplicate_ids_after_fan_out(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, prompt: p}}\nshots:\n"
                 "  - id: wave-2\n  - id: \"wave-{{ item }}\"\n    foreach: [1, 2]\n")
    expect(path, 'id: ^"wave-{{', "shots[1].id", "duplicate shot id 'wave-2'", "shots[0]")


# --- 2. all errors at once ------------------------------------------------------------------

def test_five_errors_in_five_shots_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 "  - {id: a, promt: p}\n"
                 "  - {id: b, prompt: p, duration: 99}\n"
                 "  - {id: c, prompt: \"{{ nope }}\"}\n"
                 "  - {id: d, prompt: p, model: kling-v9}\n"
                 "  - {id: e/f, prompt: p}\n")
    result = validate(path)
    lines_at(result, path, "^promt", "shots[0].promt")
    lines_at(result, path, "duration: ^99", "shots[1] (b).duration")
    lines_at(result, path, 'prompt: ^"{{ nope', "shots[2] (c).prompt")
    lines_at(result, path, "model: ^kling-v9", "shots[3] (d).model")
    lines_at(result, path, "id: ^e/f", "shots[4].id")
    assert "5 errors in the storyboard" in result.output


def test_errors_outside_shots_do_not_hide_the_shot_errors(tmp_path: Path) -> None:
    """A typo in `provider` must not hide a bad duration: all of a file at once."""
    path = write(tmp_path, HEAD + "provider: {requests_per_minut: 3}\n"
                 f"defaults: {{model: {T2V}}}\nshots:\n  - {{id: a, prompt: p, duration: 99}}\n")
    result = validate(path)
    lines_at(result, path, "^requests_per_minut", "provider.requests_per_minut")
    lines_at(result, path, "duration: ^99", "shots[0] (a).duration")


def test_a_bad_default_names_the_shot_it_breaks(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, duration: \"{{{{ item.s }}}}\"}}\n"
                 "shots:\n  - id: \"b{{ item.s }}\"\n    foreach: [{s: 3}, {s: 30}]\n"
                 "    prompt: p\n")
    found = lines_at(validate(path), path, 'duration: ^"{{ item', "defaults.duration")
    assert any("3..15" in x and "b30" in x for x in found), found


# --- 3. per-endpoint constraints --------------------------------------------------------------

def _cases(slug: str) -> list[tuple[str, str, str]]:
    """(shot fields, needle, what the message says) for one endpoint."""
    e = ENDPOINTS[slug]
    v16, i2v = slug in V16, e.task == "i2v"
    limit = 2000 if v16 else 2500
    cases = [(f"prompt: ^\"{{{{ 'x' * {limit + 1} }}}}\"", "prompt", f"at most {limit}"),
             ("prompt: p\n    cfg_scale: ^1.5", "cfg_scale", "0..1"),
             ("prompt: p\n    cfg_scale: ^-0.1", "cfg_scale", "0..1")]
    if v16:
        cases += [("prompt: ^\"\"", "prompt", "must not be empty"),
                  ("prompt: p\n    duration: ^7", "duration", "one of 5, 10")]
    else:
        cases += [("prompt: p\n    duration: ^2", "duration", "3..15"),
                  ("prompt: p\n    duration: ^16", "duration", "3..15"),
                  ("prompt: p\n    multi_prompt: ^[{prompt: a, duration: 5}]", "multi_prompt",
                   "cannot be used together with prompt"),
                  ("multi_prompt: ^[" + ", ".join(["{prompt: a, duration: 2}"] * 7) + "]",
                   "multi_prompt", "1..6")]
    if i2v:
        cases += [("prompt: p\n    aspect_ratio: ^\"16:9\"", "aspect_ratio",
                   "takes no aspect_ratio"),
                  ("prompt: ^p", "image", "is required")]
        if not v16:
            cases.append(("end_image: e.png\n    multi_prompt: ^[{prompt: a, duration: 5}]",
                          "multi_prompt", "cannot be used together with end_image"))
        else:
            cases.append(("prompt: p\n    end_image: ^e.png", "end_image",
                          'needs mode: "Professional"'))
    else:
        cases += [("prompt: p\n    aspect_ratio: ^\"4:3\"", "aspect_ratio", '"16:9", "9:16"'),
                  ("prompt: p\n    image: ^s.png", "image", "takes no image")]
    return cases


ENDPOINT_CASES = [(slug, *case) for slug in sorted(ENDPOINTS) for case in _cases(slug)]


@pytest.mark.parametrize("slug,fields,field,allowed", ENDPOINT_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in ENDPOINT_CASES])
def test_endpoint_constraints(tmp_path: Path, slug: str, fields: str, field: str,
                              allowed: str) -> None:
    png(tmp_path, "s.png")
    png(tmp_path, "e.png")
    image = "    image: s.png\n" if ENDPOINTS[slug].task == "i2v" and field != "image" else ""
    path = write(tmp_path, HEAD + f"shots:\n  - id: a\n    model: {slug}\n{image}"
                 f"    {fields.replace('^', '')}\n")
    needle = next(x for x in fields.split("\n") if "^" in x).strip()
    location = f"shots[0] (a).{field}"
    if field == "image" and "is required" in allowed:  # a missing field: the shot is the place
        needle, location = "- ^id: a", "shots[0] (a).image"
    expect(path, needle, location, allowed, slug)


# --- 4. images ------------------------------------------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _make(tmp_path: Path, kind: str) -> str:
    if kind == "text":
        (tmp_path / "text.png").write_text("not an image")
        return "text.png"
    if kind == "gif":
        png(tmp_path, "anim.gif", fmt="GIF")
        return "anim.gif"
    if kind == "narrow":
        png(tmp_path, "narrow.png", (299, 400))
        return "narrow.png"
    if kind == "wide":
        png(tmp_path, "wide.png", (1000, 300))
        return "wide.png"
    if kind == "big":  # a real PNG stored without compression: 1900*1900*3 bytes > 10 MiB
        path = png(tmp_path, "big.png", (1900, 1900), compress_level=0)
        assert path.stat().st_size > 10 * 1024 * 1024
        return "big.png"
    if kind == "bomb":  # a tiny, valid-looking PNG that claims 20000x20000 pixels
        (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
        return "bomb.png"
    if kind == "truncated":
        buffer = io.BytesIO()
        Image.effect_noise((400, 400), 50).convert("RGB").save(buffer, format="PNG")
        (tmp_path / "half.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        return "half.png"
    return {"missing": "nope.png", "data": "\"data:image/png;base64,iVBORw0KGgo=\"",
            "file": "\"file:///etc/hosts\"", "folder": "assets"}[kind]


IMAGES = [("missing", "not found"), ("text", "not a readable, complete image"), ("gif", "GIF"),
          ("narrow", "299x400"), ("wide", "aspect 3.33"), ("big", "at most 10 MB"),
          ("data", "local .png/.jpg path or an http(s) URL"),
          ("file", "local .png/.jpg path or an http(s) URL"), ("folder", "not a file"),
          ("bomb", "claims 400,000,000 pixels"), ("truncated", "not a readable, complete image")]


@pytest.mark.parametrize("slug", ["kling-v3.0-pro-i2v", "kling-v1.6-i2v"])
@pytest.mark.parametrize("kind,allowed", IMAGES, ids=[i[0] for i in IMAGES])
def test_bad_images(tmp_path: Path, slug: str, kind: str, allowed: str) -> None:
    (tmp_path / "assets").mkdir()
    reference = _make(tmp_path, kind)
    path = write(tmp_path, HEAD + f"shots:\n  - id: a\n    model: {slug}\n    prompt: p\n"
                 f"    image: {reference}\n")
    expect(path, f"image: ^{reference}", "shots[0] (a).image", allowed)


def test_a_bad_end_image_is_located_at_end_image(tmp_path: Path) -> None:
    png(tmp_path, "s.png")
    png(tmp_path, "e.png", (1000, 300))
    path = write(tmp_path, HEAD + "shots:\n  - id: a\n    model: kling-v3.0-std-i2v\n"
                 "    prompt: p\n    image: s.png\n    end_image: e.png\n")
    expect(path, "end_image: ^e.png", "shots[0] (a).end_image", "1:2.5 and 2.5:1")


def test_an_image_that_goes_bad_after_a_cached_run_is_caught(tmp_path: Path) -> None:
    png(tmp_path, "s.png")
    path = write(tmp_path, HEAD + "shots:\n  - {id: a, model: kling-v3.0-pro-i2v, prompt: p, "
                 "image: s.png}\n")
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(path)]).exit_code == 0
    png(tmp_path, "s.png", (299, 400))
    result = runner.invoke(main, ["validate", str(path)])
    lines_at(result, path, "image: ^s.png", "shots[0] (a).image")
    assert "299x400" in result.output


# --- 5. fan-out and ids -----------------------------------------------------------------------

FAN_OUT = [
    ("dup", 'id: "w-{{ item }}"\n    foreach: [a, b, a]', 'id: ^"w-', "shots[0].id",
     "duplicate shot id 'w-a'"),
    ("case", 'id: "c-{{ item }}"\n    foreach: [x, X]', 'id: ^"c-', "shots[0].id",
     "ignoring case"),
    ("matrix key", 'id: "m-{{ item.a }}"\n    matrix: {a: [1], ^not-ident: [2]}', "^not-ident",
     "shots[0].matrix", "letters, digits and _"),
    ("foreach mapping", "id: f\n    foreach: ^{a: 1}", "foreach: ^{a", "shots[0].foreach",
     "must be a list"),
    ("foreach and matrix", 'id: "f{{ index }}"\n    foreach: [1]\n    matrix: ^{a: [1, 2]}',
     "matrix: ^{a", "shots[0].matrix", "foreach"),
    ("empty matrix list", 'id: "e{{ item.a }}"\n    matrix: {a: ^[]}', "a: ^[]",
     "shots[0].matrix.a", "must not be empty"),
    ("escape", "id: ^../escape", "id: ^../", "shots[0].id", "safe file name"),
    ("slash", "id: ^a/b", "id: ^a/b", "shots[0].id", "safe file name"),
    ("hidden", "id: ^.hidden", "id: ^.hidden", "shots[0].id", "starting with a letter or digit"),
    ("con", "id: ^con", "id: ^con", "shots[0].id", "reserved device name"),
    ("101", "id: ^" + "x" * 101, "id: ^xxx", "shots[0].id", "1..100"),
    ("templated escape", "id: \"{{ '../up' }}\"", "id: ^\"{{", "shots[0].id", "'../up'"),
]


@pytest.mark.parametrize("fields,needle,location,allowed", [f[1:] for f in FAN_OUT],
                         ids=[f[0] for f in FAN_OUT])
def test_fan_out_and_ids(tmp_path: Path, fields: str, needle: str, location: str,
                         allowed: str) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, prompt: p}}\nshots:\n"
                 f"  - {fields.replace('^', '')}\n")
    expect(path, needle, location, allowed)


def test_an_unquoted_aspect_ratio_is_understood(tmp_path: Path) -> None:
    """YAML 1.1 reads `16:9` as the base-60 number 969: accept it, or say so with the fix."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 "  - {id: a, prompt: p, aspect_ratio: 9:16}\n")
    result = validate(path)
    if result.exit_code != 0:
        found = lines_at(result, path, "aspect_ratio: ^9:16", "shots[0].aspect_ratio")
        assert any('"9:16"' in x for x in found), found


# --- 6. found by fuzzing ----------------------------------------------------------------------

NOT_TEXT_KEYS = [
    ("int key at the top", "^1: x\nshots: [{id: a, prompt: p}]\n", "1", "unknown key 1"),
    ("null key at the top", "^null: x\nshots: [{id: a, prompt: p}]\n", "null",
     "unknown key null: YAML reads it as null"),
    ("bool key at the top", "^true: x\nshots: [{id: a, prompt: p}]\n", "true",
     "unknown key true: YAML reads it as a boolean"),
    ("int key beside a provider error", "^1: x\nprovider: {concurrency: 0}\n"
     "shots: [{id: a, prompt: p}]\n", "1", "allowed here: version, name"),
    ("int key in a shot", "shots: [{id: a, prompt: p, ^2: x}]\n", "shots[0].2",
     "allowed here: model, prompt"),
    ("int key in vars", "vars: {^1: x}\nshots: [{id: a, prompt: p}]\n", "vars",
     "key 1 is integer, not a name: names use letters, digits and _"),
]


@pytest.mark.parametrize("text,location,allowed", [k[1:] for k in NOT_TEXT_KEYS],
                         ids=[k[0] for k in NOT_TEXT_KEYS])
def test_keys_that_are_not_text(tmp_path: Path, text: str, location: str, allowed: str) -> None:
    """`1:`, `null:` and `true:` are YAML keys that are not text; once a pydantic crash."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\n" + text.replace("^", ""))
    needle = next(x for x in text.split("\n") if "^" in x)
    result = expect(path, needle, location, allowed, "not")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where", ["vars: {v: {1: x, b: y}}\nshots:\n  - {id: a, prompt: p}\n",
                                   "shots:\n  - {id: a, prompt: p, vars: {v: {1: x, b: y}}}\n",
                                   "shots:\n  - id: \"a{{ index }}\"\n    prompt: p\n"
                                   "    foreach: [{1: x, b: y}]\n"],
                         ids=["storyboard vars", "shot vars", "foreach item"])
def test_mixed_key_types_in_your_own_data_are_fine(tmp_path: Path, where: str) -> None:
    """{1: x, b: y} is valid YAML data; sorting its keys for the memo fingerprint crashed."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\n" + where)
    result = validate(path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("template,raised", [
    ("{{ 'abc' | truncate(-5) }}", "AssertionError"),
    ("{{ 'abc' | wordwrap(0) }}", "ValueError"),
])
def test_a_filter_that_fails_inside_jinja_is_a_template_error(tmp_path: Path, template: str,
                                                              raised: str) -> None:
    """truncate(-5) trips an assert inside Jinja: once exit code 3."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 f"  - id: a\n    prompt: \"{template}\"\n")
    expect(path, 'prompt: ^"{{', "shots[0] (a).prompt", "template error", raised)


def test_a_bad_default_stops_every_shot_it_breaks(tmp_path: Path) -> None:
    """The second shot a broken default broke was built anyway: .inf reached the key (exit 3)."""
    path = write(tmp_path, HEAD + "defaults: {model: kling-v1.6-t2v, cfg_scale: .inf}\nshots:\n"
                 "  - {id: a, prompt: p}\n  - {id: b, prompt: q}\n")
    found = lines_at(validate(path), path, "cfg_scale: ^.inf", "defaults.cfg_scale")
    assert any("must be a number" in x and "a, b" in x for x in found), found


def test_a_template_rendering_thousands_of_digits(tmp_path: Path) -> None:
    """int() refuses more than 4300 digits with ValueError: once exit code 3."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 "  - id: a\n    prompt: p\n    duration: \"{{ '9' * 5000 }}\"\n")
    found = lines_at(validate(path), path, 'duration: ^"{{', "shots[0] (a).duration")
    assert any("not a whole number" in x and "(5,000 characters)" in x for x in found), found
    assert all(len(x) < 400 for x in found), found


def test_a_long_rendered_id_is_cut_in_its_error(tmp_path: Path) -> None:
    """Issue 9, item 11: a rendered value entered the message whole."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 "  - {id: \"{{ 'x/' * 3000 }}\", prompt: p}\n")
    result = validate(path)
    assert result.exit_code == 1 and "(6,000 characters) must be a safe file name" in result.output
    assert len(result.output) < 600


@pytest.mark.parametrize(("text", "said"), [("- a\n- b\n", "this file is a list"),
                                            ("just text\n", "this file is text 'just text'")])
def test_a_file_that_is_no_mapping_says_what_it_is_in_words(tmp_path: Path, text: str,
                                                             said: str) -> None:
    """It said "this file is a str"."""
    result = validate(write(tmp_path, text))
    assert result.exit_code == 1 and said in result.output


def test_an_image_path_with_a_nul_character(tmp_path: Path) -> None:
    """The OS refuses such a path with ValueError, which was not caught (exit 3)."""
    path = write(tmp_path, HEAD + "shots:\n  - {id: a, model: kling-v3.0-pro-i2v, prompt: p, "
                 "image: \"a\\0.png\"}\n")
    expect(path, 'image: ^"a', "shots[0] (a).image", "local .png/.jpg path or an http(s) URL",
           "NUL")


def test_an_image_that_is_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "one.png").symlink_to(tmp_path / "two.png")
    (tmp_path / "two.png").symlink_to(tmp_path / "one.png")
    path = write(tmp_path, HEAD + "shots:\n  - {id: a, model: kling-v3.0-pro-i2v, prompt: p, "
                 "image: one.png}\n")
    expect(path, "image: ^one.png", "shots[0] (a).image", "symbolic link loop", ".png/.jpg")


@pytest.mark.parametrize("shot_id", ['"a\\n"', "|\n      a\n"], ids=["escaped", "block scalar"])
def test_an_id_ending_in_a_newline_is_not_a_file_name(tmp_path: Path, shot_id: str) -> None:
    """`$` matches before a final newline: 'a\\n' passed as a safe file name."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, prompt: p}}\nshots:\n"
                 f"  - id: {shot_id}\n")
    expect(path, "id: ^" + shot_id[:2], "shots[0].id", "safe file name")


MEMORY_BOMBS = [
    ("center filter", "{{ 'x' | center(10**9) }}"),
    ("ljust method", "{{ 'x'.ljust(10**9) }}"),
    ("percent width", "{{ '%01000000000d' % 1 }}"),
    ("format width", "{{ '{:>1000000000}'.format(1) }}"),
    ("replace", "{{ ('x' * 100000) | replace('x', 'x' * 100000) }}"),
    ("join", "{{ range(100000) | join(range(100000) | join) }}"),
    ("indent by text", "{{ ('a\\n' * 50000) | indent('x' * 100000) }}"),
    ("concatenation", "{{ ('x' * 90000) + ('x' * 90000) }}"),
    ("a loop printing", "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}"),
    ("doubling with ~", "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"),
]


@pytest.mark.parametrize("template", [m[1] for m in MEMORY_BOMBS],
                         ids=[m[0] for m in MEMORY_BOMBS])
def test_templates_that_would_build_gigabytes_are_refused(tmp_path: Path,
                                                          template: str) -> None:
    """One line each; `replace` took 23 GB of memory before it was killed."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n"
                 f"  - id: a\n    prompt: \"{template}\"\n")
    expect(path, 'prompt: ^"', "shots[0] (a).prompt", "100,000 characters")


def test_growing_filters_still_work_on_ordinary_text(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}}}\nshots:\n  - id: a\n"
                 "    prompt: \"{{ 'ab' | replace('a', 'c') }} {{ [1, 2] | join(',') }} "
                 "{{ 'x' | center(5) }} {{ 'a {} b'.format(1) }} {{ '%s-%03d' % ('q', 7) }}"
                 " {{ ','.join(['m', 'n']) }} {{ 'a' ~ 1 ~ 'b' }}\"\n")
    result = CliRunner().invoke(main, ["validate", "--no-cache", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert '"prompt": "cb 1,2   x   a 1 b q-007 m,n a1b"' in result.output


def test_a_field_under_the_api_pages_name_is_located_under_that_name(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + """shots:
  - id: a
    model: kling-v1.6-i2v
    image_url: https://example.com/a.png
    prompt: p
    guidance_scale: 3
  - id: b
    model: kling-v1.6-i2v
    image: https://example.com/a.png
    image_url: https://example.com/a.png
    prompt: p
""")
    result = validate(path)
    [scale] = lines_at(result, path, "guidance_scale: ^3", "shots[0] (a).guidance_scale")
    assert "must be 0..1" in scale
    [both] = lines_at(result, path, "image_url: https://example.com/a.png\n    prompt: p\n",
                      "shots[1].image_url", occurrence=2)
    assert "give one of them" in both


# --- 7. what the docs forbid, reported by validate (issue 9) --------------------------------

BOARD_END = f"defaults: {{model: {T2V}}}\nshots: [{{id: a, prompt: p}}]\n"


@pytest.mark.parametrize("mapping,second,first,spelled", [
    ("{1: a, 0x1: b}", "0x1", "1", "'0x1' is read as the same key as '1'"),
    ("{1: a, true: b}", "true", "1", "'true' is read as the same key as '1'"),
    ("{true: a, True: b}", "True", "true", "'True' is read as the same key as 'true'"),
    ("{null: a, ~: b}", "~", "null", "'~' is read as the same key as 'null'"),
    ("{1: a, 1.0: b}", "1.0", "1", "'1.0' is read as the same key as '1'"),
    ("{k: a, k: b}", "k", "k", "this mapping has it already"),
])
def test_keys_equal_once_read_are_duplicates_naming_both_places(
        tmp_path: Path, mapping: str, second: str, first: str, spelled: str) -> None:
    """`1` and `0x1` are one key of the dict: the second silently overwrote the first."""
    path = write(tmp_path, HEAD + f"vars: {{v: {mapping}}}\n" + BOARD_END)
    line, column = at(path, "{v: {^" + first)
    expect(path, ", ^" + second + ":", f"vars.v.{second}", "duplicate key",
           f"already at line {line}, column {column}", spelled)


@pytest.mark.parametrize("text", [
    "vars: {v: {1: a, '1': b}, w: {true: c, 'true': d}}\n",  # quoted: text, another key
    "x-a: &a {k: 1, j: 2}\nvars: {v: {<<: *a, k: 3}}\n",  # a merge is overridden, not repeated
    "x-a: &a {k: 1}\nx-b: &b {k: 2}\nvars: {v: {<<: [*a, *b], j: 3}}\n",
])
def test_keys_that_only_look_alike_are_fine(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, HEAD + text + BOARD_END)
    result = validate(path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value,fragment", [
    (".", "holds the storyboard itself"),
    ("./", "holds the storyboard itself"),
    ("..", "goes up out of the storyboard's folder"),
    ("../renders", "goes up out of the storyboard's folder"),
    ("renders/../..", "goes up out of the storyboard's folder"),
    ("'renders\\..\\..'", "goes up out of the storyboard's folder"),
    ("~/renders", "'~' is not your home folder here"),
    ("/", "the root folder"),
])
def test_an_output_that_is_not_a_folder_of_its_own_is_located(tmp_path: Path, value: str,
                                                             fragment: str) -> None:
    path = write(tmp_path, HEAD + f"output: {value}\n" + BOARD_END)
    expect(path, "output: ^" + value, "output", fragment, "renders/<name>")


@pytest.mark.parametrize("value", ["renders/v2", "./cuts", "cuts/./v1", "a..b"])
def test_an_output_below_the_storyboard_is_fine(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, HEAD + f"output: {value}\n" + BOARD_END)
    assert validate(path).exit_code == 0


def test_an_absolute_output_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"output: {tmp_path / 'elsewhere'}\n" + BOARD_END)
    assert validate(path).exit_code == 0


def test_output_dot_no_longer_writes_a_folder_beside_the_project(tmp_path: Path) -> None:
    """`apply --simulate` added `.simulated` to the storyboard folder's own name: `output: .`
    of project/board.yaml filled project.simulated/, outside the project."""
    project = tmp_path / "project"
    project.mkdir()
    path = write(project, HEAD + "output: .\n" + BOARD_END)
    result = CliRunner().invoke(main, ["apply", "--simulate", "--yes", "--no-cache", str(path)])
    assert result.exit_code == 1 and "holds the storyboard itself" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    assert sorted(p.name for p in project.iterdir()) == ["board.yaml"]


@pytest.mark.parametrize("value", ["true", "false", "'1'", "1.0"])
def test_version_must_be_the_number_1(tmp_path: Path, value: str) -> None:
    """`version: true` was taken as 1 (Python's True == 1)."""
    path = write(tmp_path, f"version: {value}\nname: t\n" + BOARD_END)
    expect(path, "version: ^" + value, "version", "must be 1", "this file says")


def test_a_price_for_no_endpoint_is_located_at_its_name(tmp_path: Path) -> None:
    """A typo in a price's name left the price silently unused."""
    path = write(tmp_path, HEAD + "provider:\n  prices:\n    kling-v3.0-pro: {per_second: 1}\n"
                 "    kling-v3.0-prp: {per_second: 2}\n    kling-v16-t2v: {per_second: 3}\n"
                 + BOARD_END)
    result = expect(path, "^kling-v3.0-prp:", "provider.prices", "names no endpoint or price "
                    "family", "did you mean 'kling-v3.0-pro'?")
    [typo] = lines_at(result, path, "^kling-v16-t2v:", "provider.prices")
    assert "did you mean 'kling-v1.6-t2v'?" in typo


def test_prices_by_slug_and_family_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "provider: {prices: {kling-v3.0-pro: {per_second: 1}, "
                 "kling-v1.6-t2v: {per_second: 2}, kling-v3.0-4k-i2v: {per_second: 3}}}\n"
                 + BOARD_END)
    assert validate(path).exit_code == 0


# --- 8. false or misplaced errors (issue 9) ---------------------------------------------------

PAIRS = "- " * 110
BRACKETS = "[" * 150


@pytest.mark.parametrize("text", [
    f"# {PAIRS}\n",  # a comment
    f"description: \"{PAIRS}\"\n",  # quoted text
    f"description: \"{BRACKETS}\"\n",
    f"description: |\n  {PAIRS}\n  {BRACKETS}\n",  # a block scalar
    f"x-note: a {PAIRS}\n",  # a plain scalar
], ids=["comment", "quoted pairs", "quoted brackets", "block scalar", "plain scalar"])
def test_nesting_that_is_only_text_is_not_nesting(tmp_path: Path, text: str) -> None:
    """110 `- ` pairs in a comment were "nesting deeper than 100 levels"."""
    path = write(tmp_path, HEAD + text + BOARD_END)
    result = validate(path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("text,needle", [
    ("x-deep:\n  " + "- " * 150 + "a\n", "  " + "- " * 100 + "^- "),
    ("x-deep: " + "[" * 150 + "]" * 150 + "\n", "x-deep: " + "[" * 100 + "^["),
    ("x-deep: " + "{a: " * 150 + "1" + "}" * 150 + "\n", "x-deep: " + "{a: " * 100 + "^{"),
], ids=["compact block", "flow sequences", "flow mappings"])
def test_real_deep_nesting_is_refused_at_the_level_too_deep(tmp_path: Path, text: str,
                                                            needle: str) -> None:
    path = write(tmp_path, HEAD + text + BOARD_END)
    result = validate(path)
    line, column = at(path, needle)
    assert result.output.startswith(f"{path}:{line}:{column}: nesting deeper than 100 levels"), \
        result.output


@pytest.mark.parametrize("text,needle,bracket,gave_up", [
    ("shots: [{id: a, prompt: p}\n# the end\n\n", "shots: ^[", "'['", "at line 7, column 1"),
    ("vars: {a: [1, 2\n" + BOARD_END, "a: ^[", "'['", "at line 4, column 9"),
    ("vars: {a: 1\n" + BOARD_END, "vars: ^{", "'{'", "at line 4, column 9"),
], ids=["at the end of the file", "before the next key", "a mapping"])
def test_an_unclosed_bracket_is_reported_where_it_opened(tmp_path: Path, text: str, needle: str,
                                                       bracket: str, gave_up: str) -> None:
    """It was reported where the parser gave up: often the end of the file."""
    head = HEAD + f"defaults: {{model: {T2V}}}\n" if text.startswith("shots") else HEAD
    path = write(tmp_path, head + text)
    result = validate(path)
    line, column = at(path, needle)
    first = result.output.splitlines()[0]
    assert first.startswith(f"{path}:{line}:{column}: YAML syntax error: this {bracket} is not "
                            f"closed: {gave_up} the parser did not find expected ','"), first


def test_a_bracket_closed_wrongly_on_its_line_is_reported_where_it_went_wrong(
        tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "vars: {a: [1, 2}\n" + BOARD_END)
    result = validate(path)
    line, column = at(path, "[1, 2^}")
    assert result.output.startswith(f"{path}:{line}:{column}: YAML syntax error: did not find "
                                    "expected ',' or ']'"), result.output


def test_ids_colliding_within_one_foreach_name_the_items(tmp_path: Path) -> None:
    """"shots[0] has it too" was said of shots[0] itself."""
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, prompt: p}}\nshots:\n"
                 "  - id: \"a-{{ item % 2 }}\"\n    foreach: [1, 2, 3, 4]\n"
                 "  - id: \"m\"\n    matrix: {x: [1, 2]}\n")
    result = validate(path)
    found = lines_at(result, path, "id: ^\"a-", "shots[0].id")
    assert sorted(found) == sorted(
        found[0].split(": shots[0].id: ")[0] + ": shots[0].id: " + message for message in (
            "duplicate shot id 'a-1' (foreach item 3): shots[0] (foreach item 1) has it too "
            "(ids must be unique, ignoring case)",
            "duplicate shot id 'a-0' (foreach item 4): shots[0] (foreach item 2) has it too "
            "(ids must be unique, ignoring case)"))
    [matrix] = lines_at(result, path, "id: ^\"m\"", "shots[1].id")
    assert "'m' (matrix combination 2): shots[1] (matrix combination 1) has it too" in matrix


def test_a_foreach_id_colliding_with_a_plain_shot_names_its_item(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"defaults: {{model: {T2V}, prompt: p}}\nshots:\n"
                 "  - id: wave-2\n  - id: \"wave-{{ item }}\"\n    foreach: [1, 2]\n")
    expect(path, 'id: ^"wave-{{', "shots[1].id",
           "duplicate shot id 'wave-2' (foreach item 2): shots[0] has it too")
