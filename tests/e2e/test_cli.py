from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result
from support.apply_fixtures import write_board
from support.imports import heavy_after
from support.paths import ROOT

from kling_pipeline.cli import main

GOOD = """version: 1
name: cli
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "{{ subject }} at dawn"}
vars: {subject: a fox}
"""


def test_help_imports_no_heavy_module() -> None:
    assert heavy_after("from kling_pipeline.cli import main") == []


def test_module_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "kling_pipeline", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("validate", "plan", "schema", "simulator"):
        assert command in out.stdout


def test_validate_ok_and_var_override(write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(GOOD)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.output == f"{path}: valid: 1 shots, 5 s of video (kling-v3.0-pro-t2v)\n"
    result = CliRunner().invoke(main, ["validate", str(path), "--json", "--var",
                                       "subject=a heron"])
    assert '"prompt": "a heron at dawn"' in result.output


def test_bad_var_is_a_usage_error(write_storyboard: Callable[[str], Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(write_storyboard(GOOD)), "--var",
                                       "no-equals"])
    assert result.exit_code == 2
    assert "key=value" in result.output


def test_invalid_storyboard_exits_1_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nname: bad\nshots:\n  - {id: a, model: kling-v3.0-pro-t2v, "
                    "prompt: p, duration: 99}\n")
    out = subprocess.run([sys.executable, "-m", "kling_pipeline", "validate", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{path}:4:61: shots[0] (a).duration: must be 3..15 for kling-v3.0-pro-t2v, " \
           "got 99" in out.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\n")
    out = subprocess.run([sys.executable, "-m", "kling_pipeline", "--debug", "validate",
                          str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: cannot read the file: No such file or directory" in result.output


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout on a pseudo-terminal, as a person would see it."""
    import os
    import pty

    master, slave = pty.openpty()
    subprocess.run([sys.executable, "-m", "kling_pipeline", *args], stdout=slave,
                   stderr=subprocess.DEVNULL, check=True,
                   env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, **env})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color(write_storyboard: Callable[[str], Path]) -> None:
    path = str(write_storyboard(GOOD))
    assert "\x1b[" in _on_a_terminal(["plan", path], {})
    assert "\x1b[" not in _on_a_terminal(["plan", path], {"NO_COLOR": "1"})


def test_version_names_the_program_however_it_is_started() -> None:
    from importlib.metadata import version

    expected = f"kling-pipeline, version {version('kling-pipeline')}\n"
    out = subprocess.run([sys.executable, "-m", "kling_pipeline", "--version"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout == expected
    usage = subprocess.run([sys.executable, "-m", "kling_pipeline", "plan"],
                           capture_output=True, text=True, cwd=ROOT)
    assert usage.stderr.startswith("Usage: kling-pipeline plan ")


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"NO_COLOR": "1"}, catch_exceptions=False)


def test_plan_validate_and_gc_take_simulate_as_status_does(tmp_path: Path) -> None:
    board = write_board(tmp_path, [("harbour", "A harbour"), ("gulls", "Gulls")])
    assert _cli("apply", str(board), "--simulate", "--yes").exit_code == 0
    real = _cli("plan", str(board))
    assert "Plan: 2 to add, 0 to change, 0 unchanged" in real.output
    simulated = _cli("plan", str(board), "--simulate", "--detailed-exitcode")
    assert simulated.exit_code == 0, simulated.output  # nothing to do
    assert "Plan: 0 to add, 0 to change, 2 unchanged" in simulated.output
    assert "Simulated:" in simulated.output and "nothing is billed" in simulated.output
    assert _cli("validate", str(board), "--simulate").exit_code == 0

    write_board(tmp_path, [("harbour", "A harbour"), ("gulls", "Gulls fighting")])
    assert _cli("apply", str(board), "--simulate", "--yes").exit_code == 0  # orphans a video
    real_orphan = tmp_path / ".kling-cache" / "objects" / "ab" / f"ab{'0' * 62}.mp4"
    real_orphan.parent.mkdir(parents=True)
    real_orphan.write_bytes(b"not referenced by any lock")
    assert "2 unreferenced objects" in _cli("gc", str(board)).output
    listed = _cli("gc", str(board), "--simulate")
    assert "1 unreferenced object " in listed.output and "(simulated)" in listed.output
    assert real_orphan.name[:12] not in listed.output
    deleted = _cli("gc", str(board), "--simulate", "--force")
    assert "deleted:" in deleted.output and real_orphan.is_file()
    assert "nothing to collect" in _cli("gc", str(board), "--simulate").output


def test_a_simulated_run_paces_as_the_simulator_does(tmp_path: Path) -> None:
    """The real API's pace (here 1 a minute) protects nothing when nothing is billed: the
    embedded simulator has no rate limit, and three shots must not take two minutes."""
    import time

    board = write_board(tmp_path, [("a", "one"), ("b", "two"), ("c", "three")])
    board.write_text(board.read_text().replace("requests_per_minute: 6000",
                                               "requests_per_minute: 1"))
    started = time.monotonic()
    result = _cli("apply", str(board), "--simulate", "--yes")
    assert result.exit_code == 0, result.output
    assert "3 done (3 submitted" in result.output
    assert time.monotonic() - started < 30
