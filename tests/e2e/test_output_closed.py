"""A reader that stops reading (`apply | head`) must not stop a run that is paying: the run
goes on to the end with its output going nowhere, and exits with the run's own code.

Before the fix, the first progress line written after the reader left raised BrokenPipeError
inside the executor: the run ended as an 'internal error' with shots rendered and paid but
not downloaded, and the rest never submitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.apply_fixtures import storyboard_text


def test_apply_runs_to_the_end_when_its_reader_goes_away(tmp_path: Path) -> None:
    shots = [(f"shot-{n}", f"Shot number {n}") for n in range(1, 7)]
    board = tmp_path / "board.yaml"
    board.write_text(storyboard_text(shots), encoding="utf-8")
    env = {**os.environ, "NO_COLOR": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "kling_pipeline", "apply", str(board), "--simulate", "--yes"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()
    assert first.startswith(b"Storyboard demo")
    child.stdout.close()  # like `head -1`: every later write finds no reader
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    lock = json.loads((tmp_path / "board.simulated.lock.json").read_text())
    assert {entry["status"] for entry in lock["shots"].values()} == {"done"}
    assert len(lock["shots"]) == 6
    assert (tmp_path / "renders" / "demo.simulated" / "final.mp4").is_file()


def test_plan_into_a_closed_reader_is_no_internal_error(tmp_path: Path) -> None:
    shots = [(f"shot-{n}", f"Shot number {n} " + "x" * 200) for n in range(1, 400)]
    board = tmp_path / "board.yaml"
    board.write_text(storyboard_text(shots), encoding="utf-8")
    child = subprocess.Popen([sys.executable, "-m", "kling_pipeline", "plan", str(board)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # gone before the plan (~0.3 s of loading) is written
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1, stderr  # nothing was shown: not a success
    assert "internal error" not in stderr and "Traceback" not in stderr
