from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from kling_pipeline.cli import main

from paths import ROOT

GOOD = """version: 1
name: cli
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "{{ subject }} at dawn"}
vars: {subject: a fox}
"""


def test_help_imports_no_heavy_module() -> None:
    code = ("import sys; from kling_pipeline.cli import main; "
            "heavy = {'pydantic', 'jinja2', 'yaml', 'httpx', 'av', 'PIL', 'starlette', "
            "'uvicorn', 'rich'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


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
