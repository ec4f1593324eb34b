"""Each command imports only what it uses: start-up is most of what a person waits for.

A command runs in a fresh interpreter (`cli.main([...], standalone_mode=False)`), then prints
`sorted(sys.modules)`; the test names the modules it must not have pulled in. Offline commands
never need the HTTP stack, the video codecs, the simulator's server or the live progress view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import ROOT

BOARD = """version: 1
name: imports
vars: {subject: a fox}
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "{{ subject }} at dawn"}
  - {id: b, model: kling-v3.0-pro-t2v, prompt: "{{ subject }} at dusk", duration: 10}
"""
RUN = """
import json, sys
from kling_pipeline.cli import main
try:
    main(json.loads(sys.argv[1]), prog_name="kling-pipeline", standalone_mode=False)
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""
OFFLINE_NEVER = ("httpx", "httpcore", "av", "starlette", "uvicorn", "rich.live",
                 "kling_pipeline.run.executor", "kling_pipeline.run.apiclient",
                 "kling_pipeline.simulator", "fsspec", "s3fs", "kling_pipeline.remote")
# gc needs where the cache and the lock files are, never a storyboard's models or templates.
GC_NEVER = (*OFFLINE_NEVER, "pydantic", "jinja2", "kling_pipeline.storyboard.models",
            "kling_pipeline.storyboard.render")
HELP_NEVER = ("pydantic", "jinja2", "yaml", "httpx", "av", "PIL", "starlette", "uvicorn", "rich")
COMMANDS = {
    "validate": ["validate", "{board}"],
    "plan": ["plan", "{board}"],
    "status": ["status", "{board}"],
    "schema": ["schema"],
    "gc": ["gc", "{board}"],
    "--help": ["--help"],
}
def _cases() -> list[object]:
    cases: list[object] = []
    for command in COMMANDS:
        never = {"--help": HELP_NEVER, "gc": GC_NEVER}.get(command, OFFLINE_NEVER)
        for module in never:
            cases.append(pytest.param(command, module, id=f"{command}-{module}"))
    return cases


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The modules each command left in sys.modules, from one run of each."""
    folder = tmp_path_factory.mktemp("imports")
    board = folder / "imports.yaml"
    board.write_text(BOARD, encoding="utf-8")
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    found: dict[str, set[str]] = {}
    for command, args in COMMANDS.items():
        argv = [arg.format(board=board) for arg in args]
        done = subprocess.run([sys.executable, "-c", RUN, json.dumps(argv)], cwd=folder,
                              env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        marker = done.stdout.rindex("\nMODULES ")
        found[command] = set(json.loads(done.stdout[marker + len("\nMODULES "):]))
    return found


def _loaded(modules: set[str], name: str) -> list[str]:
    """`name` and its submodules among `modules` (a package counts with what is under it)."""
    return sorted(m for m in modules if m == name or m.startswith(name + "."))


@pytest.mark.parametrize(("command", "module"), _cases())
def test_command_does_not_import(imported: dict[str, set[str]], command: str,
                                 module: str) -> None:
    assert _loaded(imported[command], module) == []


def test_the_commands_did_run(imported: dict[str, set[str]]) -> None:
    """A command that failed before importing anything would pass every case above."""
    assert "kling_pipeline.storyboard.render" in imported["validate"]
    assert "kling_pipeline.plan.planner" in imported["plan"]
    assert "kling_pipeline.views.status" in imported["status"]
    assert "kling_pipeline.storyboard.models" in imported["schema"]
    assert "kling_pipeline.state.gc" in imported["gc"]


WARM_NEVER = ("jinja2", "markupsafe", "kling_pipeline.storyboard.sandbox")


@pytest.mark.parametrize("command", ["validate", "plan", "status"])
def test_a_warm_run_does_not_import_jinja(tmp_path: Path, command: str) -> None:
    """Every text of an unchanged storyboard comes from the memos: no template is compiled,
    so Jinja and the sandbox are never imported (the memos name Jinja's version without it)."""
    board = tmp_path / "imports.yaml"
    board.write_text(BOARD, encoding="utf-8")
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    found = []
    for _ in range(2):  # the first run renders and fills the memos
        done = subprocess.run([sys.executable, "-c", RUN, json.dumps([command, str(board)])],
                              cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        marker = done.stdout.rindex("\nMODULES ")
        found.append(set(json.loads(done.stdout[marker + len("\nMODULES "):])))
    assert "jinja2" in found[0]
    assert [m for name in WARM_NEVER for m in _loaded(found[1], name)] == []


NOOP_APPLY_NEVER = ("asyncio", "httpx", "httpcore", "kling_pipeline.run.executor",
                    "kling_pipeline.run.runner", "kling_pipeline.run.apiclient",
                    "kling_pipeline.simulator.app", "uvicorn", "starlette")


def test_an_apply_with_nothing_to_ask_the_api_starts_no_event_loop(tmp_path: Path) -> None:
    """A no-op apply settles every shot from the store and the lock (run/settle.py): no
    event loop, no HTTP client, not even asyncio (a fifth of what it cost beyond its plan)."""
    board = tmp_path / "imports.yaml"
    board.write_text(BOARD, encoding="utf-8")
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    found = []
    for _ in range(2):  # the first one renders on the embedded simulator
        done = subprocess.run(
            [sys.executable, "-c", RUN, json.dumps(["apply", str(board), "--simulate", "--yes"])],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        marker = done.stdout.rindex("\nMODULES ")
        found.append(set(json.loads(done.stdout[marker + len("\nMODULES "):])))
    assert "asyncio" in found[0] and "kling_pipeline.run.executor" in found[0]
    assert "kling_pipeline.run.settle" in found[1]
    assert [m for name in NOOP_APPLY_NEVER for m in _loaded(found[1], name)] == []
