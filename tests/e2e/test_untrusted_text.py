"""Text from a file or the API reaches the terminal as text: escaped, cut, and never markup.

A committed lock file is anyone's commit: ESC ] 0 ; ... BEL retitles the window, ESC [ 2 J
clears the screen, U+202E shows what follows reversed. Every command that prints such text
(plan, status, apply, gc, validate) shows it as a visible escape instead.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.apply_fixtures import write_board

from kling_pipeline.cli import main
from kling_pipeline.errors import Diagnostic, KlingPipelineError
from kling_pipeline.textsafe import (
    clip,
    described,
    looks_like_secret,
    printable,
    shown,
    yaml_spelling,
)
from kling_pipeline.views.progress import LiveReporter, PlainReporter

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's window title
CLEAR = "\x1b[2J"  # clears the screen
REVERSE = "\u202e"  # right-to-left override
RAW = ("\x1b", "\x07", "\u202e", "\x9b")  # none of these may reach the terminal
SHOTS = [("harbour", "A harbour at dawn"), ("gulls", "Gulls over the water")]


def run(*args: str, color: bool = False) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "" if color else "1"},
                              color=color, catch_exceptions=False)


def assert_no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, f"{char!r} reached the terminal:\n{text!r}"


def hostile_lock(board: Path, lock_name: str) -> None:
    """The lock of a real simulated run, edited as a hostile commit would."""
    path = board.with_name(lock_name)
    data: dict[str, Any] = json.loads(board.with_name("board.simulated.lock.json").read_text())
    shots = data["shots"]
    harbour = shots["harbour"]
    harbour.update(status="failed", output=None, task_id=f"{CLEAR}task",
                   error=f"{TITLE} moderation {REVERSE}txet desrever [bold]x[/]")
    # a removed shot still in flight (the lock refuses control characters in ids, not bidi)
    shots[f"{REVERSE}gone[/]"] = {**shots["gulls"], "key": "0" * 64, "status": "queued",
                                  "task_id": f"{TITLE}t\x9b31m", "output": None}
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_hostile_lock_file_sends_no_escape_sequence(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    assert run("apply", str(board), "--simulate", "--yes").exit_code == 0
    for name in ("board.lock.json", "board.simulated.lock.json"):
        hostile_lock(board, name)

    outputs = [run("plan", str(board)), run("plan", str(board), "--simulate"),
               run("status", str(board)), run("status", str(board), "--simulate"),
               run("apply", str(board), "--simulate", "--yes")]
    for result in outputs:
        assert_no_raw_controls(result.output)
        assert "\\x1b]0;pwned\\x07" in result.output  # shown, not dropped
    for args in (["plan", "--json"], ["status", "--json"]):
        result = run(*args, str(board), "--simulate")
        assert_no_raw_controls(result.output)  # JSON escapes C0 itself; C1 and bidi too now
        assert f"{REVERSE}gone[/]" in json.dumps(json.loads(result.output), ensure_ascii=False)
    plan, _, status, _, apply = outputs
    assert "\\u202etxet desrever" in plan.output and "\\x1b[2Jtask" in status.output
    assert apply.exit_code == 1  # the failed shot and the lost task are reported
    assert "\\u202egone[/]" in apply.output and "\\u202egone[/]" in status.output


def test_our_own_colours_still_work(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    assert run("apply", str(board), "--simulate", "--yes").exit_code == 0
    hostile_lock(board, "board.lock.json")
    result = run("plan", str(board), color=True)
    assert "\x1b[32m+\x1b[0m" not in result.output  # nothing new: no "+" here ...
    assert "\x1b[31m-\x1b[0m" in result.output  # ... but the removed entry is red
    assert "\x1b]" not in result.output and "\x07" not in result.output
    assert "\\u202egone[/]" in result.output


def test_a_lock_file_error_quoting_a_hostile_id_is_escaped(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    board.with_name("board.lock.json").write_text(json.dumps(
        {"lock_version": 1, "storyboard": "demo", "shots": {f"{TITLE}x": "not a mapping"}}))
    result = run("plan", str(board))
    assert result.exit_code == 1
    assert_no_raw_controls(result.output)
    assert "\\x1b]0;pwned\\x07x" in result.output


def test_storyboard_values_with_controls_are_escaped(tmp_path: Path) -> None:
    board = tmp_path / "board.yaml"
    text = ('version: 1\nname: demo\n'
            'defaults: {model: kling-v3.0-pro-t2v, duration: 3, aspect_ratio: "16:9"}\n'
            'shots:\n  - {id: harbour, prompt: "A harbour \\e]0;pwned\\a \\u202eevil"}\n')
    board.write_text(text, encoding="utf-8")
    assert run("apply", str(board), "--simulate", "--yes").exit_code == 0
    board.write_text(text.replace("A harbour", "A port"), encoding="utf-8")
    plan = run("plan", str(board), "--simulate")
    assert_no_raw_controls(plan.output)
    assert '-> "A port \\x1b]0;pwned\\x07 \\u202eevil"' in plan.output

    board.write_text(text + '  - {id: "gulls\\e[2J", prompt: p}\n'
                            '  - {id: ok, prompt: p, "\\e]0;k\\a": 1}\n', encoding="utf-8")
    for args in (["validate"], ["plan"], ["status"]):
        result = run(*args, str(board))
        assert result.exit_code == 1
        assert_no_raw_controls(result.output)
        assert "\\x1b]0;k\\x07" in result.output


def test_rich_markup_in_a_label_or_note_is_shown_as_written() -> None:
    out = io.StringIO()
    reporter = LiveReporter(total=3, file=out, color=True, force_terminal=True)
    with reporter:
        reporter.update("[bold]loud[/bold]", "processing", 40)
        reporter.update(f"{TITLE}x", "queued", 0)
        reporter._live.refresh()  # draw one frame now, not at the next tick
        reporter.update("[/]", "failed", None, "[red]no[/red] [link=https://x]y")
        reporter.update("[bold]loud[/bold]", "done")
        reporter.update(f"{TITLE}x", "lost", None, f"{CLEAR}gone")
        reporter.message(f"{TITLE}[bold]message")
    text = out.getvalue()
    assert "[bold]loud[/bold]" in text
    assert "[/]" in text and "[red]no[/red] [link=https://x]y" in text
    assert "\\x1b]0;pwned\\x07x" in text and "\\x1b[2Jgone" in text
    assert "\\x1b]0;pwned\\x07[bold]message" in text
    assert "\x1b]" not in text and "\x07" not in text  # rich's own colours are CSI only


def test_plain_progress_lines_escape_labels_and_notes() -> None:
    lines: list[str] = []
    reporter = PlainReporter(lines.append, total=1)
    reporter.update(f"{TITLE}a", "failed", None, f"{CLEAR}{REVERSE}reason")
    reporter.message(f"stop {TITLE}")
    assert_no_raw_controls("\n".join(lines))
    assert lines[0].endswith("\\x1b]0;pwned\\x07a failed: \\x1b[2J\\u202ereason")


def test_gc_escapes_the_file_names_it_lists(tmp_path: Path) -> None:
    board = write_board(tmp_path, SHOTS)
    odd = tmp_path / ".kling-cache" / "simulated" / "objects" / "ab" / f"{TITLE}.mp4"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(b"x")
    for args in ([], ["--simulate"]):
        result = run("gc", str(board), *args)
        assert result.exit_code == 0
        assert_no_raw_controls(result.output)
        assert "\\x1b]0;pwned\\x07.mp4" in result.output


def test_a_rendered_value_is_cut_in_its_error(tmp_path: Path) -> None:
    board = tmp_path / "board.yaml"
    board.write_text(
        "version: 1\nname: demo\ndefaults: {model: kling-v3.0-pro-t2v}\nshots:\n"
        "  - {id: a, prompt: p, aspect_ratio: \"{{ 'y' * 100000 }}\"}\n"
        "  - {id: \"{{ 'i' * 100000 }}\", prompt: p}\n"
        "  - {id: b, prompt: p, duration: \"{{ 'd' * 100000 }}\"}\n", encoding="utf-8")
    text = run("validate", str(board)).output
    assert "3 errors" in text
    assert max(len(line) for line in text.splitlines()) < 700
    data = json.loads(run("validate", "--json", str(board)).output)
    assert all(len(error["message"]) <= 600 for error in data["errors"])


@pytest.mark.parametrize("key", [
    "sk-live-51HxQmK2eZvKYlo2C8aH3jN0fakefakefake",
    "sk_live_51HxQmK2eZvKYlo2C8aH3jN0fakefakefake",  # fits the name pattern: apply printed it
    "a8Fq2ZxK9mW4pL7vR3tY6uB1",
])
def test_an_api_key_given_as_api_key_env_is_not_echoed(tmp_path: Path, key: str) -> None:
    board = tmp_path / "board.yaml"
    board.write_text("version: 1\nname: demo\n"
                     f"provider: {{api_key_env: {key}}}\n"
                     "shots:\n  - {id: a, model: kling-v3.0-pro-t2v, prompt: p}\n",
                     encoding="utf-8")
    for args in (["validate"], ["validate", "--json"], ["plan"]):
        result = run(*args, str(board))
        assert result.exit_code == 1
        assert key not in result.output and key[:8] not in result.output
        assert "NAME of the environment variable" in result.output


def test_messages_say_what_yaml_read_and_what_is_allowed(tmp_path: Path) -> None:
    board = tmp_path / "board.yaml"
    board.write_text("version: .nan\nname: demo\n"
                     "provider: {concurrency: .nan, requests_per_minute: .inf}\n"
                     "vars: {null: b}\n"
                     "shots:\n  - {id: a, model: kling-v3.0-pro-t2v, prompt: p, null: 3,"
                     " true: 4, take: 1.5}\n", encoding="utf-8")
    text = run("validate", str(board)).output
    assert "got number nan" not in text and "None" not in text and "True" not in text
    assert "version: must be 1: the only storyboard format this version reads " \
           "(this file says .nan)" in text
    assert "provider.concurrency: must be a whole number, got .nan (not a number)" in text
    assert "provider.requests_per_minute: must be a whole number, got .inf (infinity)" in text
    assert "vars: key null is null, not a name: names use letters" in text
    assert "shots[0].null: unknown key null: YAML reads it as null, not as text, and keys " \
           "here are names; allowed here: model, prompt" in text
    assert "shots[0].true: unknown key true: YAML reads it as a boolean" in text
    assert "shots[0].take: must be a whole number, got number 1.5" in text


# -- the helpers themselves -------------------------------------------------------------------

def test_printable_escapes_controls_and_leaves_text_alone() -> None:
    assert printable("plain text, ünïcödé, 日本語") == "plain text, ünïcödé, 日本語"
    assert printable(f"{TITLE}{CLEAR}\x7f\x9b\u2028{REVERSE}\u2066\n\t") == (
        "\\x1b]0;pwned\\x07\\x1b[2J\\x7f\\x9b\\u2028\\u202e\\u2066\\n\\t")
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"
    assert printable(printable(TITLE)) == printable(TITLE)
    assert clip("x" * 150) == "x" * 100 + "... (150 characters)"


def test_shown_quotes_and_cuts_like_render_always_did() -> None:
    assert shown("abc") == "'abc'"
    assert shown("y" * 100) == repr("y" * 60) + "... (100 characters)"
    assert shown(TITLE) == repr(TITLE) and "\x1b" not in shown(TITLE)
    assert shown(float("nan")) == ".nan" and shown(float("-inf")) == "-.inf"


def test_values_are_described_as_yaml_writes_them() -> None:
    assert described(float("nan")) == ".nan (not a number)"
    assert described(float("inf")) == ".inf (infinity)"
    assert described(1.5) == "number 1.5" and described(3) == "integer 3"
    assert described("abc") == "text 'abc'" and described([1]) == "a list"
    assert [yaml_spelling(v) for v in (None, True, False, 2)] == ["null", "true", "false", "2"]


def test_errors_print_escaped_and_diagnostics_stay_short() -> None:
    assert str(KlingPipelineError(f"bad {TITLE}\nsecond line")) == \
        "bad \\x1b]0;pwned\\x07\nsecond line"
    long = Diagnostic("f.yaml", 1, 2, "shots[0]", "x" * 100_000 + " is not allowed: a, b")
    assert len(str(long)) < 600 and str(long).endswith(" is not allowed: a, b")


def test_what_looks_like_a_key_is_not_a_name() -> None:
    for name in ("NOVITA_API_KEY", "KLING_KEY_2", "MY_PROJECT_KLING_API_KEY_2024", "_x"):
        assert not looks_like_secret(name), name
    for value in ("sk-live-abc", "sk_live_abc", "my key", "1ABC", "a1b2c3d4e5f6a7b8c9d0e1f2",
                  "AbCdEfGh12IjKlMn34_OpQr"):
        assert looks_like_secret(value), value
