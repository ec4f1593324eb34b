"""A broad table of malformed storyboards: each must exit 1, located, with no traceback.

The product promise for files nobody has seen: every error line is
`file:line:col: location: message` (or `file:line:col: message` for YAML itself), and a
broken file never ends in exit code 3. Each case is malformed for a stated reason; many
were found by fuzzing and crashed before. One CliRunner call per case keeps this fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from kling_pipeline.cli import main

HEAD = "version: 1\nname: t\n"
T2V = "defaults: {model: kling-v3.0-pro-t2v}\n"
I2V = "shots: [{id: a, model: kling-v3.0-pro-i2v, prompt: p, image: "

# (name, file text, a fragment the report must contain: what is wrong or what is allowed)
CASES: list[tuple[str, str | bytes, str]] = [
    # YAML itself
    ("tab indent", HEAD + "shots:\n\t- id: a\n", "YAML syntax error"),
    ("unclosed flow", HEAD + T2V + "shots: [{id: a, prompt: p}\n", "YAML syntax error"),
    ("two documents", HEAD + T2V + "shots: [{id: a, prompt: p}]\n---\nversion: 1\n",
     "single document"),
    ("empty file", "", "must be a mapping"),
    ("only a scalar", "hello\n", "must be a mapping"),
    ("only a list", "- version: 1\n", "must be a mapping"),
    ("duplicate key", HEAD + T2V + "shots: [{id: a, prompt: p, prompt: q}]\n", "duplicate key"),
    ("python tag", HEAD + "shots: !!python/object/apply:os.system [ls]\n",
     "could not determine a constructor"),
    ("bad merge", HEAD + T2V + "shots:\n  - {id: a, prompt: p, <<: 5}\n", "merg"),
    ("undefined alias", HEAD + T2V + "shots: [{id: a, prompt: *nope}]\n", "undefined alias"),
    ("recursive alias", HEAD + T2V + "x-a: &a [*a]\nshots: [{id: a, prompt: p}]\n",
     "recursive alias"),
    ("not utf-8", HEAD.encode() + b"description: caf\xe9\nshots: [{id: a}]\n", "UTF-8"),
    ("control character", HEAD + 'description: "a\x07"\nshots: [{id: a}]\n',
     "not allowed in YAML"),
    ("tagged int that is not one", HEAD + T2V + "shots: [{id: a, prompt: p, "
     "duration: !!int five}]\n", "whole number"),
    ("impossible date", HEAD + "description: 2024-02-30\n" + T2V
     + "shots: [{id: a, prompt: p}]\n", "YYYY-MM-DD"),
    ("5000-digit number", HEAD + T2V + "shots: [{id: a, prompt: p, duration: "
     + "7" * 5000 + "}]\n", "4300 digits"),
    ("deep flow nesting", HEAD + T2V + "x-deep: " + "[" * 150 + "]" * 150
     + "\nshots: [{id: a, prompt: p}]\n", "nesting deeper than 100"),
    ("deep block nesting", HEAD + T2V + "vars:\n"
     + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(150)) + " " * 152 + "v\n"
     + "shots: [{id: a, prompt: p}]\n", "nesting deeper than 100"),
    # top level
    ("version 2", "version: 2\nname: t\n" + T2V + "shots: [{id: a, prompt: p}]\n", "must be 1"),
    ("version as text", "version: '1'\nname: t\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "must be 1"),
    ("version true", "version: true\nname: t\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "must be 1"),
    ("output the storyboard's folder", HEAD + "output: .\n" + T2V
     + "shots: [{id: a, prompt: p}]\n", "holds the storyboard itself"),
    ("output the folder above", HEAD + "output: ..\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "goes up out of the storyboard's folder"),
    ("output up and around", HEAD + "output: cuts/../../x\n" + T2V
     + "shots: [{id: a, prompt: p}]\n", "goes up out of the storyboard's folder"),
    ("output in home", HEAD + "output: ~/renders\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "not your home folder"),
    ("output the root", HEAD + "output: /\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "the root folder"),
    ("keys equal once read", HEAD + T2V + "vars: {v: {1: a, 0x1: b}}\n"
     "shots: [{id: a, prompt: p}]\n", "'0x1' is read as the same key as '1'"),
    ("booleans spelled twice", HEAD + T2V + "x-a: {true: 1, True: 2}\n"
     "shots: [{id: a, prompt: p}]\n", "'True' is read as the same key as 'true'"),
    ("name with a slash", "version: 1\nname: a/b\n" + T2V + "shots: [{id: a, prompt: p}]\n",
     "simple name"),
    ("no shots", HEAD + T2V + "shots: []\n", "must not be empty"),
    ("shots a mapping", HEAD + T2V + "shots: {id: a}\n", "must be a list"),
    ("top-level typo", HEAD + T2V + "shot: [{id: a, prompt: p}]\n", "did you mean 'shots'"),
    ("int key at the top", HEAD + T2V + "1: x\nshots: [{id: a, prompt: p}]\n", "allowed here"),
    ("null key at the top", HEAD + T2V + "~: x\nshots: [{id: a, prompt: p}]\n", "allowed here"),
    ("vars a list", HEAD + T2V + "vars: [a]\nshots: [{id: a, prompt: p}]\n", "mapping"),
    ("var name with a dash", HEAD + T2V + "vars: {a-b: 1}\nshots: [{id: a, prompt: p}]\n",
     "not a valid name"),
    ("snippet not text", HEAD + T2V + "snippets: {s: 5}\nshots: [{id: a, prompt: p}]\n",
     "must be text"),
    ("reserved var", HEAD + T2V + "vars: {item: 1}\nshots: [{id: a, prompt: p}]\n",
     "sets itself"),
    # provider
    ("negative rpm", HEAD + T2V + "provider: {requests_per_minute: -1}\n"
     "shots: [{id: a, prompt: p}]\n", ">= 1"),
    ("base_url not a URL", HEAD + T2V + "provider: {base_url: ftp://x}\n"
     "shots: [{id: a, prompt: p}]\n", "https://"),
    ("price below zero", HEAD + T2V + "provider: {prices: {kling-v3.0-pro: {per_second: -1}}}\n"
     "shots: [{id: a, prompt: p}]\n", ">= 0"),
    ("price for no endpoint", HEAD + T2V + "provider: {prices: {kling-v3.0-prp: "
     "{per_second: 1}}}\nshots: [{id: a, prompt: p}]\n", "did you mean 'kling-v3.0-pro'"),
    ("price a number", HEAD + T2V + "provider: {prices: {kling-v3.0-pro: 5}}\n"
     "shots: [{id: a, prompt: p}]\n", "mapping"),
    # shot fields
    ("prompt a list", HEAD + T2V + "shots: [{id: a, prompt: [p]}]\n", "must be text"),
    ("prompt empty", HEAD + T2V + "shots: [{id: a, prompt: }]\n", "is empty"),
    ("duration as text", HEAD + T2V + "shots: [{id: a, prompt: p, duration: '5'}]\n",
     "whole number"),
    ("duration a float", HEAD + T2V + "shots: [{id: a, prompt: p, duration: 5.5}]\n",
     "whole number"),
    ("duration out of range", HEAD + T2V + "shots: [{id: a, prompt: p, duration: 99}]\n",
     "3..15"),
    ("cfg_scale nan", HEAD + T2V + "shots: [{id: a, prompt: p, cfg_scale: .nan}]\n",
     "must be a number"),
    ("infinite default", HEAD + "defaults: {model: kling-v1.6-t2v, cfg_scale: .inf}\n"
     "shots: [{id: a, prompt: p}, {id: b, prompt: q}]\n", "must be a number"),
    ("sound yes", HEAD + T2V + "shots: [{id: a, prompt: p, sound: yes}]\n", "true or false"),
    ("take zero", HEAD + T2V + "shots: [{id: a, prompt: p, take: 0}]\n", ">= 1"),
    ("take as text", HEAD + T2V + "shots: [{id: a, prompt: p, take: '2'}]\n", "whole number"),
    ("unknown model", HEAD + "shots: [{id: a, prompt: p, model: kling-v9}]\n", "known:"),
    ("no model", HEAD + "shots: [{id: a, prompt: p}]\n", "has no model"),
    ("a field and its API name", HEAD + T2V
     + "shots: [{id: a, prompt: p, cfg_scale: 1, guidance_scale: 1}]\n", "give one of them"),
    ("field the model does not take", HEAD + T2V + "shots: [{id: a, prompt: p, mode: Pro}]\n",
     "takes no mode"),
    # ids and fan-out
    ("id with a slash", HEAD + T2V + "shots: [{id: a/b, prompt: p}]\n", "safe file name"),
    ("id with a newline", HEAD + T2V + 'shots: [{id: "a\\n", prompt: p}]\n', "safe file name"),
    ("reserved id", HEAD + T2V + "shots: [{id: CON, prompt: p}]\n", "reserved device name"),
    ("templated id to dots", HEAD + T2V + "shots: [{id: \"{{ '..' }}\", prompt: p}]\n",
     "safe file name"),
    ("ids colliding", HEAD + T2V + "shots: [{id: A, prompt: p}, {id: a, prompt: p}]\n",
     "duplicate shot id"),
    ("empty foreach", HEAD + T2V + "shots: [{id: a, prompt: p, foreach: []}]\n",
     "must not be empty"),
    ("foreach not a list", HEAD + T2V + "shots: [{id: a, prompt: p, foreach: 3}]\n",
     "must be a list"),
    ("foreach ids colliding", HEAD + T2V + "shots: [{id: a, prompt: p, foreach: [1, 2]}]\n",
     "duplicate shot id"),
    ("matrix list empty", HEAD + T2V + "shots: [{id: \"a{{ item.x }}\", prompt: p, "
     "matrix: {x: []}}]\n", "must not be empty"),
    ("foreach and matrix", HEAD + T2V + "shots: [{id: \"a{{ index }}\", prompt: p, "
     "foreach: [1], matrix: {x: [1]}}]\n", "foreach"),
    # multi_prompt
    ("multi_prompt empty", HEAD + T2V + "shots: [{id: a, multi_prompt: []}]\n", "1..6"),
    ("multi_prompt part no duration", HEAD + T2V + "shots: [{id: a, "
     "multi_prompt: [{prompt: p}]}]\n", "is required"),
    ("multi_prompt part unknown key", HEAD + T2V + "shots: [{id: a, "
     "multi_prompt: [{prompt: p, duration: 3, camera: pan}]}]\n", "allowed here: prompt"),
    ("multi_prompt too short", HEAD + T2V + "shots: [{id: a, "
     "multi_prompt: [{prompt: p, duration: 1}]}]\n", "3..15"),
    # templates
    ("template syntax", HEAD + T2V + "shots: [{id: a, prompt: \"{{ x \"}]\n", "syntax error"),
    ("undefined variable", HEAD + T2V + "shots: [{id: a, prompt: \"{{ nope }}\"}]\n",
     "undefined variable"),
    ("sandbox escape", HEAD + T2V + "shots: [{id: a, prompt: \"{{ ''.__class__ }}\"}]\n",
     "sandbox"),
    ("include", HEAD + T2V + "shots: [{id: a, prompt: \"{% include 'x' %}\"}]\n", "snippets"),
    ("division by zero", HEAD + T2V + "shots: [{id: a, prompt: \"{{ 1 / 0 }}\"}]\n",
     "division by zero"),
    ("filter assert", HEAD + T2V + "shots: [{id: a, prompt: \"{{ 'x' | truncate(-5) }}\"}]\n",
     "template error"),
    ("snippet cycle", HEAD + T2V + "snippets: {a: '{{ snippets.b }}', b: '{{ snippets.a }}'}\n"
     "shots: [{id: a, prompt: '{{ snippets.a }}'}]\n", "uses itself"),
    ("duration renders text", HEAD + T2V + "shots: [{id: a, prompt: p, "
     "duration: \"{{ 'five' }}\"}]\n", "not a whole number"),
    # images
    ("missing image", HEAD + I2V + "nope.png}]\n", "not found"),
    ("image a folder", HEAD + I2V + "assets}]\n", "not a file"),
    ("image that is text", HEAD + I2V + "text.png}]\n", "not a readable, complete image"),
    ("image 1x1", HEAD + I2V + "tiny.png}]\n", "at least 300 px"),
    ("image data uri", HEAD + I2V + "\"data:image/png;base64,AAAA\"}]\n", "http(s) URL"),
    ("image ftp url", HEAD + I2V + "ftp://host/x.png}]\n", "http(s) URL"),
    ("image path with NUL", HEAD + I2V + "\"x\\0.png\"}]\n", "NUL"),
]


def _assets(folder: Path) -> None:
    (folder / "assets").mkdir()
    (folder / "text.png").write_text("not a picture")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")


# Every command that reads a storyboard reports it the same way, and writes nothing. (`gc`
# reads only the lock files of the storyboard's folder: it cleans up whatever the file says.)
COMMANDS = {
    "validate": ["validate", "--no-cache"],
    "plan": ["plan", "--no-cache"],
    "status": ["status", "--no-cache"],
    "apply": ["apply", "--simulate", "--yes", "--no-cache"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("text,allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_storyboard_is_located(tmp_path: Path, text: str | bytes,
                                           allowed: str, command: str) -> None:
    _assets(tmp_path)
    path = tmp_path / "board.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, [*COMMANDS[command], str(path)])
    assert sorted(tmp_path.rglob("*")) == before, "a malformed storyboard wrote files"
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(r"\d+ errors? in the storyboard", lines[-1]), result.output
    located = re.compile(re.escape(str(path)) + r":\d+:\d+: \S.*")
    for line in lines[:-1]:
        assert located.fullmatch(line), f"not located: {line!r}"
    assert allowed in result.output, result.output


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
