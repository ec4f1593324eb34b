"""A broad table of malformed lock files: each must exit 1, located, with no traceback.

A lock file is hand-edited, merged by git and restored from old commits; whatever it holds,
`plan`, `status` and `apply` must name the file, the line and column, and the field, and
write nothing. Many cases crashed before (a 5,000-digit key_scheme, `"size": 1e400`, an
output that is text), or were taken as something else (`true` as 1, `"12"` as 12).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kling_pipeline.cli import main
from kling_pipeline.errors import LockFileError
from kling_pipeline.state.lockfile import read_lock

BOARD = ("version: 1\nname: t\ndefaults: {model: kling-v3.0-pro-t2v, duration: 5}\n"
         "shots:\n  - {id: a, prompt: p}\n")
OUTPUT = {"sha256": "0" * 64, "size": 10, "duration": 5.0}
ENTRY = {"key": "1" * 64, "key_scheme": 1, "endpoint": "kling-v3.0-pro-t2v",
         "request": {"prompt": "p", "duration": 5}, "status": "done", "take": 1,
         "task_id": "t-1", "submitted_at": "2026-11-22T00:00:00Z", "output": OUTPUT}
DIGITS = "7" * 5000


def entry(**raw: str) -> str:
    """ENTRY as JSON text, each keyword's value replacing that field by its raw JSON text
    (so that NaN, 1e400 and 5,000 digits can be written); "DROP" drops the field."""
    values = {k: json.dumps(v) for k, v in ENTRY.items()}
    values.update(raw)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in values.items() if v != "DROP") + "}"


def output(**raw: str) -> str:
    values = {k: json.dumps(v) for k, v in OUTPUT.items()}
    values.update(raw)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in values.items() if v != "DROP") + "}"


def lock(shots: str | None = None, **top: str) -> str:
    values = {"lock_version": "1", "storyboard": '"t"',
              "shots": '{"a": ' + entry() + "}" if shots is None else shots}
    values.update(top)
    return "{\n" + ",\n".join(f'  "{k}": {v}' for k, v in values.items() if v != "DROP") \
        + "\n}\n"


def shots(**entries: str) -> str:
    return "{\n" + ",\n".join(f"    {json.dumps(k)}: {v}" for k, v in entries.items()) + "\n  }"


def one(**raw: str) -> str:
    return lock(shots(a=entry(**raw)))


# (name, lock text, the location the report names, a fragment of what is wrong or allowed)
CASES: list[tuple[str, str, str, str]] = [
    # the document
    ("a list", "[1, 2]\n", "", "it holds a list"),
    ("text", '"lock"\n', "", "not a kling-pipeline lock file"),
    ("lock_version true", lock(lock_version="true"), "", "lock_version is true"),
    ("lock_version 1.0", lock(lock_version="1.0"), "", "lock_version is 1.0"),
    ("lock_version text", lock(lock_version='"1"'), "", "lock_version is '1'"),
    ("lock_version missing", lock(lock_version="DROP"), "", "lock_version is missing"),
    ("lock_version 5000 digits", lock(lock_version=DIGITS), "", "5,000 digits"),
    ("lock_version NaN", lock(lock_version="NaN"), "", "JSON has no NaN"),
    ("storyboard a number", lock(storyboard="5"), "storyboard", "must be text"),
    ("storyboard 1e400", lock(storyboard="1e400"), "storyboard", "too large"),
    ("shots null", lock(shots="null"), "shots", "must be a mapping of shot id"),
    ("shots a list", lock(shots="[]"), "shots", "must be a mapping of shot id"),
    ("shots missing", lock(shots="DROP"), "", "missing fields ['shots']"),
    ("top-level typo", lock(shot="{}"), "shot", "did you mean 'shots'"),
    ("empty shot id", lock(shots(**{"": entry()})), 'shots[""]', "must not be empty"),
    ("id with an escape", lock(shots(**{"a\x1b[2J": entry()})), 'shots["a\\u001b[2J"]',
     "control characters"),
    # an entry
    ("entry text", lock(shots(a='"done"')), "shots.a", "must be a mapping of fields"),
    ("entry null", lock(shots(a="null")), "shots.a", "must be a mapping of fields"),
    ("entry a list", lock(shots(a="[]")), "shots.a", "must be a mapping of fields"),
    ("unknown field", one(colour='"red"'), "shots.a.colour", "allowed: endpoint"),
    ("field typo", one(task="1"), "shots.a.task", "did you mean 'take'"),
    ("missing fields", one(key="DROP", status="DROP"), "shots.a",
     "missing fields ['key', 'status']"),
    ("key a number", one(key="5"), "shots.a.key", "must be text"),
    ("key null", one(key="null"), "shots.a.key", "must be text"),
    ("key empty", one(key='""'), "shots.a.key", "must be text"),
    ("key_scheme 5000 digits", one(key_scheme=DIGITS), "shots.a.key_scheme", "5,000 digits"),
    ("key_scheme true", one(key_scheme="true"), "shots.a.key_scheme", "got true"),
    ("key_scheme text", one(key_scheme='"1"'), "shots.a.key_scheme", "whole number"),
    ("key_scheme 1.0", one(key_scheme="1.0"), "shots.a.key_scheme", "whole number"),
    ("key_scheme 0", one(key_scheme="0"), "shots.a.key_scheme", ">= 1"),
    ("key_scheme NaN", one(key_scheme="NaN"), "shots.a.key_scheme", "JSON has no NaN"),
    ("key_scheme 1e400", one(key_scheme="1e400"), "shots.a.key_scheme", "too large"),
    ("endpoint a number", one(endpoint="5"), "shots.a.endpoint", "must be text"),
    ("endpoint empty", one(endpoint='""'), "shots.a.endpoint", "must be text"),
    ("request text", one(request='"x"'), "shots.a.request", "must be a mapping"),
    ("request null", one(request="null"), "shots.a.request", "must be a mapping"),
    ("request with NaN", one(request='{"cfg_scale": NaN}'), "shots.a.request.cfg_scale",
     "JSON has no NaN"),
    ("request with 1e400", one(request='{"duration": 1e400}'), "shots.a.request.duration",
     "too large"),
    ("request with -Infinity deep", one(request='{"multi_prompt": [{"duration": -Infinity}]}'),
     "shots.a.request.multi_prompt[0].duration", "JSON has no NaN or Infinity"),
    ("request with 5000 digits", one(request='{"duration": ' + DIGITS + "}"),
     "shots.a.request.duration", "at most 4,300"),
    ("status upper case", one(status='"DONE"'), "shots.a.status", "is not one of"),
    ("status a number", one(status="5"), "shots.a.status", "is not one of"),
    ("status a list", one(status="[]"), "shots.a.status", "is not one of"),
    ("queued without a task", one(status='"queued"', task_id="DROP", output="DROP"),
     "shots.a.status", "needs the task_id"),
    ("lost with a null task", one(status='"lost"', task_id="null"), "shots.a.status",
     "needs the task_id"),
    ("take true", one(take="true"), "shots.a.take", "got true"),
    ("take 0", one(take="0"), "shots.a.take", ">= 1"),
    ("take 1.5", one(take="1.5"), "shots.a.take", "whole number"),
    ("take text", one(take='"2"'), "shots.a.take", "whole number"),
    ("take -Infinity", one(take="-Infinity"), "shots.a.take", "JSON has no NaN"),
    ("task_id a number", one(task_id="5"), "shots.a.task_id", "text or null"),
    ("task_id empty", one(task_id='""'), "shots.a.task_id", "text or null"),
    ("task_id true", one(task_id="true"), "shots.a.task_id", "text or null"),
    ("submitted_at a number", one(submitted_at="5"), "shots.a.submitted_at", "text or null"),
    ("error a list", one(error="[]"), "shots.a.error", "text or null"),
    # the output record
    ("output text", one(output='"x"'), "shots.a.output", "must be a mapping {sha256"),
    ("output a list", one(output="[]"), "shots.a.output", "must be a mapping {sha256"),
    ("output a number", one(output="5"), "shots.a.output", "must be a mapping {sha256"),
    ("output empty", one(output="{}"), "shots.a.output", "missing fields ['sha256'"),
    ("output unknown field", one(output=output(frames="120")), "shots.a.output.frames",
     "allowed: sha256, size, duration"),
    ("output sha256 a number", one(output=output(sha256="5")), "shots.a.output.sha256",
     "64 lowercase hex"),
    ("output sha256 a path", one(output=output(sha256='"../../../../etc/passwd"')),
     "shots.a.output.sha256", "64 lowercase hex"),
    ("output size 1e400", one(output=output(size="1e400")), "shots.a.output.size",
     "too large"),
    ("output size text", one(output=output(size='"10"')), "shots.a.output.size",
     "whole number"),
    ("output size true", one(output=output(size="true")), "shots.a.output.size", "got true"),
    ("output size negative", one(output=output(size="-1")), "shots.a.output.size", ">= 0"),
    ("output size 1.5", one(output=output(size="1.5")), "shots.a.output.size", "whole number"),
    ("output size 5000 digits", one(output=output(size=DIGITS)), "shots.a.output.size",
     "5,000 digits"),
    ("output duration NaN", one(output=output(duration="NaN")), "shots.a.output.duration",
     "JSON has no NaN"),
    ("output duration Infinity", one(output=output(duration="Infinity")),
     "shots.a.output.duration", "JSON has no NaN"),
    ("output duration text", one(output=output(duration='"5"')), "shots.a.output.duration",
     "number of seconds"),
    ("output duration false", one(output=output(duration="false")),
     "shots.a.output.duration", "got false"),
    ("output duration negative", one(output=output(duration="-5")),
     "shots.a.output.duration", ">= 0"),
]

# Every command that reads the lock reports it the same way. `apply --simulate` reads its own
# lock file (board.simulated.lock.json); both files hold the case.
COMMANDS = {
    "plan": ["plan", "--no-cache"],
    "status": ["status", "--no-cache"],
    "apply": ["apply", "--simulate", "--yes", "--no-cache"],
}
LOCKS = {"plan": "board.lock.json", "status": "board.lock.json",
         "apply": "board.simulated.lock.json"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("text,location,fragment", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_malformed_lock_is_located(tmp_path: Path, text: str, location: str, fragment: str,
                                     command: str) -> None:
    board = tmp_path / "board.yaml"
    board.write_text(BOARD)
    for name in set(LOCKS.values()):
        (tmp_path / name).write_text(text, encoding="utf-8")
    before = _files(tmp_path)
    result = CliRunner().invoke(main, [*COMMANDS[command], str(board)])
    after = _files(tmp_path)
    assert after == before, "a malformed lock file wrote files"  # not even apply's run lock
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 1, result.output
    located = re.compile("(?:error: )?" + re.escape(str(tmp_path / LOCKS[command]))
                         + r":\d+:\d+: " + (re.escape(location) + ": " if location else ""))
    lines = [line for line in result.output.splitlines() if located.match(line)]
    assert lines, f"no line at {location!r}:\n{result.output}"
    assert any(fragment in line for line in lines), result.output


def test_the_good_lock_of_the_table_is_good(tmp_path: Path) -> None:
    """The cases differ from this lock by what they name, and only by that."""
    board = tmp_path / "board.yaml"
    board.write_text(BOARD)
    (tmp_path / "board.lock.json").write_text(lock())
    for command in ("plan", "status"):
        result = CliRunner().invoke(main, [*COMMANDS[command], str(board)])
        assert result.exit_code == 0, result.output


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


def test_every_problem_of_the_file_at_once_at_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "demo.lock.json"
    path.write_text(lock(shots(a=entry(take="true"), b=entry(output=output(size="1e400")),
                               c='"x"')))
    with pytest.raises(LockFileError) as caught:
        read_lock(path, "demo")
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 3 errors in the lock file (restore it from git, or correct " \
                       "what is named):"
    text = path.read_text()

    def at(needle: str) -> str:
        offset = text.index(needle)
        line = text.count("\n", 0, offset) + 1
        return f"{path}:{line}:{offset - text.rfind(chr(10), 0, offset)}: "

    assert lines[1] == at("true") + "shots.a.take: must be a whole number >= 1, got true"
    assert lines[2].startswith(at("1e400") + "shots.b.output.size: must be a whole number")
    assert lines[3].startswith(at('"x"') + "shots.c: must be a mapping of fields")
