"""The CLI on malformed storyboards: templates, --var, YAML itself, --json, real subprocesses.

Every malformed file must give `file:line:col: location: message` and exit 1 without a
traceback, and finish in seconds even when built to blow up; good files must pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from kling_pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.yaml"))
HEAD = "version: 1\nname: t\n"
BOARD = HEAD + "vars: {colour: red, who: board}\n" \
    "snippets:\n  loop: \"a {{ snippets.loop }}\"\n  ping: \"{{ snippets.pong }}\"\n" \
    "  pong: \"{{ snippets.ping }}\"\n  style: \"{{ colour }} light\"\n" \
    "defaults: {model: kling-v3.0-pro-t2v}\nshots:\n"


def write(tmp_path: Path, text: str | bytes, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def validate(path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["validate", "--no-cache", *args, str(path)])


def at(path: Path, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the `^` in `needle` (or its start) in the file."""
    text = path.read_bytes().decode("utf-8", "replace")
    index = text.index(needle.replace("^", "")) + max(needle.find("^"), 0)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def expect(result: Result, path: Path, needle: str, location: str, *fragments: str) -> str:
    """The one report line at that place; exit 1, no traceback, says what is allowed."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    line, column = at(path, needle)
    prefix = f"{path}:{line}:{column}: " + (f"{location}: " if location else "")
    found = [x for x in result.output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{result.output}"
    for fragment in fragments:
        assert any(fragment in x for x in found), f"{fragment!r} not in {found}"
    return found[0]


def run(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kling_pipeline", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# --- 6. templates -----------------------------------------------------------------------------

TEMPLATES = [
    ("syntax", "\"{{ colour \"", "template syntax error"),
    ("syntax block", "\"{% for x in %}{% endfor %}\"", "template syntax error"),
    ("undefined", "\"{{ colur }}\"", "undefined variable 'colur' (did you mean 'colour'?)"),
    ("dunder", "\"{{ ''.__class__ }}\"", "not allowed by the sandbox"),
    ("globals", "\"{{ ''.format.__globals__ }}\"", "not allowed by the sandbox"),
    ("mutation", "\"{{ [].append(1) }}\"", "not allowed by the sandbox"),
    ("random", "\"{{ [1, 2] | random }}\"", "No filter named 'random'"),
    ("lipsum", "\"{{ lipsum() }}\"", "undefined variable 'lipsum'"),
    ("self snippet", "\"{{ snippets.loop }}\"", "snippet 'loop' uses itself (loop -> loop)"),
    ("snippet cycle", "\"{{ snippets.ping }}\"", "ping -> pong -> ping"),
    ("unknown snippet", "\"{{ snippets.styl }}\"", "no snippet named 'styl' (did you mean"),
    ("zero division", "\"{{ 1 / 0 }}\"", "division by zero"),
    ("huge range", "\"{{ range(10**9) | list | length }}\"", "template error"),
    ("huge string", "\"{{ 'x' * 10**12 }}\"", "template"),
    ("include", "\"{% include 'x.txt' %}\"", "template"),
]


@pytest.mark.parametrize("prompt,allowed", [t[1:] for t in TEMPLATES],
                         ids=[t[0] for t in TEMPLATES])
def test_template_errors(tmp_path: Path, prompt: str, allowed: str) -> None:
    path = write(tmp_path, BOARD + f"  - id: a\n    prompt: {prompt}\n")
    expect(validate(path), path, f"prompt: ^{prompt}", "shots[0] (a).prompt", allowed)


def test_a_template_that_renders_no_number(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - id: a\n    prompt: p\n    duration: \"{{ colour }}\"\n")
    expect(validate(path), path, 'duration: ^"{{', "shots[0] (a).duration",
           "renders to 'red', which is not a whole number")


def test_var_precedence_cli_over_shot_over_storyboard(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, vars: {who: shot}, prompt: \"{{ who }}\"}\n"
                 "  - {id: b, prompt: \"{{ who }}\"}\n")
    prompts = {}
    for args in ((), ("--var", "who=cli")):
        result = validate(path, "--json", *args)
        assert result.exit_code == 0, result.output
        prompts[args] = [s["request"]["prompt"] for s in json.loads(result.output)["shots"]]
    assert prompts[()] == ["shot", "board"]
    assert prompts[("--var", "who=cli")] == ["cli", "cli"]


def test_a_var_on_the_command_line_fills_an_undefined_variable(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, prompt: \"{{ place }} with {{ who }}\"}\n")
    expect(validate(path), path, 'prompt: ^"{{ place', "shots[0] (a).prompt",
           "undefined variable 'place'", "defined: colour, who")
    assert validate(path, "--var", "place=a=b").exit_code == 0


@pytest.mark.parametrize("var", ["novalue", "=v", "1x=3", "a-b=1", " =1"])
def test_a_malformed_var_is_a_usage_error(tmp_path: Path, var: str) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, prompt: p}\n")
    result = validate(path, "--var", var)
    assert result.exit_code == 2, result.output
    assert "--var" in result.output and "Traceback" not in result.output


# --- 7. YAML itself -----------------------------------------------------------------------------

YAML_ERRORS = [
    ("tab", HEAD + "shots:\n\t- id: a\n", "^\t- id", "", "YAML syntax error"),
    ("duplicate key", HEAD + "name: u\nshots: [{id: a}]\n", "^name: u", "name",
     "duplicate key"),
    ("duplicate in shot", HEAD + "shots:\n  - id: a\n    prompt: x\n    prompt: y\n",
     "^prompt: y", "shots[0].prompt", "duplicate key"),
    ("empty", "", "", "", "this file is empty"),
    ("comment only", "# nothing yet\n", "", "", "this file is empty"),
    ("list", "- a\n- b\n", "", "", "this file is a list"),
    ("scalar", "just text\n", "", "", "must be a mapping"),
    ("two documents", HEAD + "---\nversion: 1\n", "^---", "", "single document"),
    ("python tag", HEAD + "shots: !!python/object:os.system [ls]\n", "^!!python", "",
     "could not determine a constructor"),
    ("bad merge", HEAD + "shots:\n  - id: a\n    <<: 5\n", "<<: ^5", "", "merging"),
    ("top-level typo", HEAD + "shot: []\n", "^shot:", "shot", "did you mean 'shots'"),
    ("version 2", "version: 2\nname: t\nshots: [{id: a}]\n", "version: ^2", "version",
     "must be 1"),
    ("no shots", HEAD + "shots: []\n", "shots: ^[]", "shots", "must not be empty"),
]


@pytest.mark.parametrize("text,needle,location,allowed", [y[1:] for y in YAML_ERRORS],
                         ids=[y[0] for y in YAML_ERRORS])
def test_yaml_errors(tmp_path: Path, text: str, needle: str, location: str,
                     allowed: str) -> None:
    path = write(tmp_path, text)
    expect(validate(path), path, needle, location, allowed)


def test_an_unclosed_quote_points_at_the_quote_or_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "shots:\n  - id: a\n    prompt: \"unclosed\n")
    result = validate(path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{path}:5:13: " in result.output or f"{path}:6:1: " in result.output), result.output
    assert "quoted scalar" in result.output


def test_a_file_that_is_not_utf8_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD.encode() + b"description: caf\xe9\nshots: [{id: a}]\n")
    result = validate(path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}:3:17: " in result.output, result.output
    assert "UTF-8" in result.output


def test_a_missing_file(tmp_path: Path) -> None:
    result = validate(tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.yaml'}: cannot read the file" in result.output


def _laughs(where: str) -> str:
    lines = [*HEAD.splitlines(), 'x-a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("defaults: {model: kling-v3.0-pro-t2v}")
    if where == "vars":
        return "\n".join([*lines, "vars: {bomb: *a9}", "shots: [{id: a, prompt: p}]\n"])
    if where == "shot vars":
        return "\n".join([*lines, "shots: [{id: a, prompt: p, vars: {bomb: *a9}}]\n"])
    if where == "prompt":
        return "\n".join([*lines, "shots: [{id: a, prompt: *a9}]\n"])
    return "\n".join([*lines, "shots: [{id: a, prompt: p}]\n"])


@pytest.mark.parametrize("where", ["vars", "shot vars", "prompt", "x- key only"])
def test_a_billion_laughs_finishes_in_seconds(tmp_path: Path, where: str) -> None:
    path = write(tmp_path, _laughs(where))
    try:
        done = run("validate", "--no-cache", path, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate still running after 5 s on an alias bomb in {where}")
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 1:
        assert f"{path}:" in done.stderr


@pytest.mark.parametrize("opening,closing", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_does_not_crash(tmp_path: Path, opening: str, closing: str) -> None:
    depth = 100_000
    path = write(tmp_path, HEAD + "x-deep: " + opening * depth + "1" * (opening == "{a: ")
                 + closing * depth + "\nshots: [{id: a, model: kling-v3.0-pro-t2v, prompt: p}]\n")
    done = run("validate", "--no-cache", path, timeout=10)
    assert done.returncode in (0, 1), (done.returncode, done.stderr[-500:])
    assert "Traceback" not in done.stderr
    if done.returncode == 1:
        assert f"{path}:3:" in done.stderr, done.stderr


# --- real processes: exit code and stderr -------------------------------------------------------

def test_subprocess_reports_every_error_with_exit_1(tmp_path: Path) -> None:
    Image.new("RGB", (299, 400)).save(tmp_path / "small.png")
    path = write(tmp_path, BOARD + "  - {id: a, prompt: \"{{ ''.__class__ }}\"}\n"
                 "  - {id: b, model: kling-v3.0-pro-i2v, image: small.png, prompt: p}\n"
                 "  - {id: c, prompt: p, duration: 16}\n")
    done = run("validate", path)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert f"{path}:11:" in done.stderr and "sandbox" in done.stderr
    assert f"{path}:12:" in done.stderr and "299x400" in done.stderr
    assert f"{path}:13:" in done.stderr and "3..15" in done.stderr
    assert "3 errors in the storyboard" in done.stderr


@pytest.mark.parametrize("text", [HEAD + "shots:\n\t- id: a\n", b"\xff\xfe\x00garbage"])
def test_subprocess_on_broken_yaml(tmp_path: Path, text: str | bytes) -> None:
    path = write(tmp_path, text)
    done = run("validate", path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr


def test_subprocess_on_a_missing_file(tmp_path: Path) -> None:
    done = run("validate", tmp_path / "nope.yaml")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot read the file" in done.stderr


# --- 8. good storyboards pass -------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_examples_are_valid(example: Path, tmp_path: Path) -> None:
    copy = tmp_path / example.parent.name
    shutil.copytree(example.parent, copy)
    result = validate(copy / example.name)
    assert result.exit_code == 0, result.output
    assert "valid:" in result.output


def test_examples_are_valid_in_a_subprocess(tmp_path: Path) -> None:
    copy = tmp_path / "lighthouse"
    shutil.copytree(ROOT / "examples" / "lighthouse", copy)
    done = run("validate", copy / "lighthouse.yaml")
    assert done.returncode == 0, done.stderr
    assert "valid: 6 shots" in done.stdout


GOOD = [
    ("only an id", "defaults: {model: kling-v3.0-pro-t2v, prompt: p, duration: 15, "
     "cfg_scale: 0, sound: true}\nshots:\n  - id: a\n  - id: b\n"),
    ("anchors under x-", "x-base: &base {model: kling-v3.0-std-t2v, duration: 3}\n"
     "x-notes: free text\nshots:\n  - {<<: *base, id: a, prompt: p}\n"
     "  - {<<: *base, id: b, prompt: q, duration: 4}\n"),
    ("templated numbers and model", "vars: {m: kling-v3.0-std-t2v, s: 10, loud: false, c: 1}\n"
     "shots:\n  - id: a\n    model: \"{{ m }}\"\n    duration: \"{{ s }}\"\n"
     "    sound: \"{{ loud }}\"\n    cfg_scale: \"{{ c / 2 }}\"\n    prompt: p\n"),
    ("templated sound on v3", "shots:\n  - {id: a, model: kling-v3.0-pro-t2v, prompt: p, "
     "sound: \"{{ 1 == 1 }}\", duration: \"{{ 3 }}\"}\n"),
    ("limits exactly", "shots:\n  - {id: a, model: kling-v3.0-pro-t2v, "
     "prompt: \"{{ 'é' * 2500 }}\", duration: 3, cfg_scale: 1}\n"
     "  - {id: b, model: kling-v1.6-t2v, prompt: \"{{ 'x' * 2000 }}\", duration: 10}\n"),
    ("matrix and foreach", "defaults: {model: kling-v3.0-pro-t2v}\nshots:\n"
     "  - {id: \"m-{{ item.a }}-{{ item.b }}\", matrix: {a: [1, 2], b: [x, y]}, prompt: p}\n"
     "  - {id: \"f-{{ index }}\", foreach: [{s: 3}, {s: 4}], prompt: p, "
     "duration: \"{{ item.s }}\"}\n"),
    ("windows-like but fine", "defaults: {model: kling-v3.0-pro-t2v, prompt: p}\nshots:\n"
     "  - id: console\n  - id: con-1\n  - id: a.b_c-d\n  - id: " + "x" * 100 + "\n"),
]


@pytest.mark.parametrize("text", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_storyboards_pass(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, HEAD + text)
    result = validate(path)
    assert result.exit_code == 0, result.output


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + HEAD.encode()
                 + b"shots: [{id: a, model: kling-v3.0-pro-t2v, prompt: p}]\n")
    assert validate(path).exit_code == 0


def test_a_cached_second_run_reports_the_same_errors(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, prompt: p, duration: 16}\n"
                 "  - {id: b, prompt: \"{{ colur }}\"}\n")
    runner = CliRunner()
    first = runner.invoke(main, ["validate", str(path)])
    second = runner.invoke(main, ["validate", str(path)])
    assert first.exit_code == second.exit_code == 1
    assert first.output == second.output and "2 errors" in first.output


# --- 9. --json ----------------------------------------------------------------------------------

def test_json_errors_carry_file_line_column_location_message(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, prompt: p, duration: 16}\n  - {id: b, promt: p}\n")
    result = validate(path, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    (line0, column0), (line1, column1) = at(path, "duration: ^16"), at(path, "^promt")
    assert (line0, column0, line1, column1) == (11, 34, 12, 13)
    assert report["errors"] == [
        {"file": str(path), "line": 11, "column": 34, "location": "shots[0] (a).duration",
         "message": "must be 3..15 for kling-v3.0-pro-t2v, got 16"},
        {"file": str(path), "line": 12, "column": 13, "location": "shots[1].promt",
         "message": report["errors"][1]["message"]},
    ]
    assert "did you mean 'prompt'" in report["errors"][1]["message"]


@pytest.mark.parametrize("text", [HEAD + "shots:\n\t- id: a\n", None])
def test_json_for_yaml_errors_and_missing_files(tmp_path: Path, text: str | None) -> None:
    path = write(tmp_path, text) if text is not None else tmp_path / "nope.yaml"
    result = validate(path, "--json")
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert len(errors) == 1
    assert set(errors[0]) == {"file", "line", "column", "location", "message"}
    assert errors[0]["file"] == str(path)
    assert (errors[0]["line"], errors[0]["column"]) == ((4, 1) if text else (None, None))


# --- 10. found by fuzzing: YAML the safe loader reads but cannot build ------------------------

UNREADABLE = [
    ("tagged int", HEAD + "shots:\n  - {id: a, duration: !!int abc}\n", "duration: ^!!int",
     "'abc' cannot be read as !!int: it must be a whole number"),
    ("tagged float", HEAD + "shots:\n  - {id: a, cfg_scale: !!float x}\n", "cfg_scale: ^!!float",
     "must be a number such as 0.5"),
    ("tagged bool", HEAD + "shots:\n  - {id: a, sound: !!bool maybe}\n", "sound: ^!!bool",
     "'maybe' cannot be read as !!bool: it must be true or false"),
    ("tagged timestamp", HEAD + "shots:\n  - {id: a, prompt: !!timestamp x}\n",
     "prompt: ^!!timestamp", "a date YYYY-MM-DD"),
    ("impossible date", HEAD + "description: 2001-13-45\nshots: [{id: a}]\n", "^2001-13-45",
     "quote it to keep it as text"),
    ("empty binary int", HEAD + "shots:\n  - {id: a, duration: 0b_}\n", "duration: ^0b_",
     "'0b_' cannot be read as !!int"),
    ("empty octal int", HEAD + "shots:\n  - {id: a, duration: 0o_}\n", "duration: ^0o_",
     "'0o_' cannot be read as !!int"),
    ("5000 digits", HEAD + "shots:\n  - {id: a, duration: " + "9" * 5000 + "}\n",
     "duration: ^999", "at most 4300 digits"),
]


@pytest.mark.parametrize("text,needle,allowed", [u[1:] for u in UNREADABLE],
                         ids=[u[0] for u in UNREADABLE])
def test_values_yaml_cannot_build_are_located(tmp_path: Path, text: str, needle: str,
                                              allowed: str) -> None:
    """PyYAML raises plain ValueError/KeyError/AttributeError for these: once exit code 3."""
    path = write(tmp_path, text)
    expect(validate(path), path, needle, "", allowed)


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf"], ids=["plain", "byte order mark"])
def test_a_control_character_is_located(tmp_path: Path, prefix: bytes) -> None:
    """Once `file: YAML error: unacceptable character ...` over three lines, with no place."""
    path = write(tmp_path, prefix + (HEAD + 'description: "caf\u00e9 \x07"\nshots: [{id: a}]\n')
                 .encode())
    result = validate(path)
    expect(result, path, "caf\u00e9 ^\x07", "", "U+0007 is not allowed in YAML")
    assert len(result.output.splitlines()) == 2, result.output


BLOCK_DEPTH = 990  # libyaml itself stops at 1,000; json and repr overflowed before that


def _deep(where: str) -> str:
    if where == "vars":
        nested = "".join(" " * (i + 2) + f"k{i}:\n" for i in range(BLOCK_DEPTH))
        return HEAD + "vars:\n" + nested + " " * (BLOCK_DEPTH + 2) + "v\n" \
            "shots: [{id: a, model: kling-v3.0-pro-t2v, prompt: p}]\n"
    nested = "".join(" " * (i + 6) + "-\n" for i in range(BLOCK_DEPTH))
    return HEAD + "shots:\n  - id: \"a{{ index }}\"\n    model: kling-v3.0-pro-t2v\n" \
        "    prompt: \"{{ item }}\"\n    foreach:\n" + nested


@pytest.mark.parametrize("where", ["vars", "foreach"])
def test_deep_block_nesting_is_refused_with_the_place(tmp_path: Path, where: str) -> None:
    """Indented nesting escaped the flow-bracket guard: RecursionError, exit 3."""
    path = write(tmp_path, _deep(where))
    result = validate(path)
    location = "vars.k0.k1.k2..." if where == "vars" else "shots[0].foreach[0]..."
    needle = "^k100:" if where == "vars" else "\n" + " " * 104 + "^-"
    expect(result, path, needle, location, "nesting deeper than 100 levels")


def test_nesting_built_from_aliases_is_refused(tmp_path: Path) -> None:
    """Each anchor wraps the one before: 150 short lines, 150 levels."""
    chain = "".join(f"x-a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 150))
    path = write(tmp_path, HEAD + "x-a0: &a0 [1]\n" + chain
                 + "vars: {v: *a149}\nshots: [{id: a, model: kling-v3.0-pro-t2v, prompt: p}]\n")
    result = validate(path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nesting deeper than 100 levels" in result.output
    assert result.output.startswith(f"{path}:"), result.output


ENTRY = {"key": "k", "key_scheme": 1, "endpoint": "kling-v3.0-pro-t2v", "status": "done",
         "request": {"prompt": "q"}}
BAD_LOCKS = [
    ("key a list", {**ENTRY, "key": []}, "shots.a.key: must be text"),
    ("key a mapping", {**ENTRY, "key": {}}, "shots.a.key: must be text"),
    ("request a list", {**ENTRY, "request": []}, "shots.a.request: must be a mapping"),
    ("request text", {**ENTRY, "status": "failed", "request": "x"},
     "shots.a.request: must be a mapping"),
    ("status a list", {**ENTRY, "status": []}, "is not one of"),
    ("take as text", {**ENTRY, "take": "2"}, "shots.a.take: must be a whole number"),
    ("task id a mapping", {**ENTRY, "status": "queued", "task_id": {}},
     "shots.a.task_id: must be text or null"),
]


@pytest.mark.parametrize("entry,message", [b[1:] for b in BAD_LOCKS],
                         ids=[b[0] for b in BAD_LOCKS])
def test_plan_with_a_lock_file_of_the_wrong_shape(tmp_path: Path, entry: dict[str, object],
                                                  message: str) -> None:
    """Valid JSON, wrong types: the planner hashed and compared them and crashed (exit 3)."""
    path = write(tmp_path, BOARD + "  - {id: a, prompt: p}\n")
    lock = tmp_path / "board.lock.json"
    lock.write_text(json.dumps({"lock_version": 1, "storyboard": "t",
                                "shots": {"a": entry, "gone": entry}}))
    result = CliRunner().invoke(main, ["plan", "--no-cache", str(path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"error: {lock}: " in result.output and message in result.output, result.output


def test_plan_with_a_lock_file_nested_too_deep(tmp_path: Path) -> None:
    path = write(tmp_path, BOARD + "  - {id: a, prompt: p}\n")
    (tmp_path / "board.lock.json").write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(main, ["plan", "--no-cache", str(path)])
    assert result.exit_code == 1, result.output
    assert "nests too deeply" in result.output and "Traceback" not in result.output
