"""Every storyboard is refused or accepted in under 5 s of CPU and 500 MB of memory.

Each test writes a real storyboard in tmp_path and runs `kling-pipeline validate` in a child
Python whose address space is capped at 1 GB (a bomb that gets through fails the test instead
of taking the machine's memory) and which reports its own peak memory and CPU time. Refusals
must be located `file:line:col: location: message` lines, exit 1, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HEAD = "version: 1\nname: t\ndefaults: {model: kling-v3.0-pro-t2v}\n"
MAX_SECONDS = 5.0
MAX_RSS_MB = 500
_CHILD = """
import atexit, os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["KLING_TEST_USAGE"], "w") as out:
        out.write(f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}")
atexit.register(report)
sys.argv = ["kling-pipeline", *sys.argv[1:]]
runpy.run_module("kling_pipeline", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    """A finished `kling-pipeline` child: its exit code, output, CPU seconds and peak memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float


def run(tmp_path: Path, *args: str | Path, timeout: float = 60) -> Run:
    usage = tmp_path / "usage.txt"
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "KLING_TEST_USAGE": str(usage)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"kling-pipeline {' '.join(map(str, args))} still running after {timeout} s")
    seconds, rss_kb = usage.read_text().split() if usage.exists() else ("inf", "inf")
    return Run(done.returncode, done.stdout, done.stderr, float(seconds), float(rss_kb) / 1024)


def bounded(done: Run) -> None:
    """Within the goal: 5 s of CPU, 500 MB, and no sign of having hit the 1 GB cap."""
    assert "memory" not in done.stderr, done.stderr[-2000:]
    assert done.seconds < MAX_SECONDS, f"{done.seconds:.1f} s"
    assert done.rss_mb < MAX_RSS_MB, f"{done.rss_mb:.0f} MB"


def write(tmp_path: Path, text: str, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def at(path: Path, needle: str) -> str:
    """`file:line:col` of the `^` in `needle` as found in the file."""
    text = path.read_text(encoding="utf-8")
    index = text.index(needle.replace("^", "")) + max(needle.find("^"), 0)
    line = text.count("\n", 0, index) + 1
    return f"{path}:{line}:{index - (text.rfind(chr(10), 0, index) + 1) + 1}"


def refused(done: Run, place: str, location: str, *fragments: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    found = [x for x in done.stderr.splitlines() if x.startswith(f"{place}: {location}: ")]
    assert found, f"no line at {place}: {location}: in\n{done.stderr}"
    for fragment in fragments:
        assert any(fragment in x for x in found), f"{fragment!r} not in {found}"
    bounded(done)


def prompt_board(tmp_path: Path, template: str, extra: str = "") -> Path:
    quoted = template.replace("'", "''")
    return write(tmp_path, HEAD + extra + f"shots:\n  - id: a\n    prompt: '{quoted}x'\n")


# --- shared YAML structure across fan-out -----------------------------------------------------

def _alias_board(tmp_path: Path, items: int) -> Path:
    """Shot vars of ~1,700,000 values made from a few lines of aliases, and a foreach."""
    lines = [HEAD, "x-anchors:\n", "  a: &a [" + ", ".join(["xxxxxxxxxx"] * 10) + "]\n"]
    for name, previous in zip("bcde", "abcd", strict=True):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]\n")
    shot_vars = ", ".join(f"b{i}: *e" for i in range(15))
    lines.append("shots:\n  - id: 's{{ index }}'\n    vars: {" + shot_vars + "}\n"
                 f"    foreach: {json.dumps(list(range(items)))}\n"
                 "    prompt: 'p {{ item }} {{ b0 | length }}'\n")
    return write(tmp_path, "".join(lines))


def test_aliased_shot_vars_are_digested_once_per_entry_not_per_item(tmp_path: Path) -> None:
    """Regression: the shot's vars were serialised again for each foreach item (800 items
    took 215 s)."""
    path = _alias_board(tmp_path, 800)
    done = run(tmp_path, "validate", "--no-cache", "--json", path)
    assert done.returncode == 0, done.stderr[-2000:]
    shots = json.loads(done.stdout)["shots"]
    assert len(shots) == 800
    assert shots[799]["request"]["prompt"] == "p 799 10"
    bounded(done)


# --- local images ------------------------------------------------------------------------------

I2V = "  - id: a\n    model: kling-v3.0-pro-i2v\n    prompt: p\n    image: {image}\n"


def test_a_3_gb_image_is_refused_by_its_size_without_being_read(tmp_path: Path) -> None:
    """Regression: the file was read whole before its size was checked (exit 3, MemoryError)."""
    with (tmp_path / "big.png").open("wb") as sparse:
        sparse.truncate(3 << 30)
    path = write(tmp_path, HEAD + "shots:\n" + I2V.format(image="big.png"))
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "image: ^big"), "shots[0] (a).image",
            "image big.png is 3072.0 MB; at most 10 MB (10,485,760 bytes) is allowed")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_image_that_is_not_a_regular_file_is_refused_without_reading_it(
        tmp_path: Path, kind: str) -> None:
    """A FIFO would block the read for ever, /dev/zero would never end."""
    image = tmp_path / "in.png"
    if kind == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to("/dev/zero")
    path = write(tmp_path, HEAD + "shots:\n" + I2V.format(image="in.png"))
    done = run(tmp_path, "validate", "--no-cache", path, timeout=20)
    refused(done, at(path, "image: ^in"), "shots[0] (a).image", "image in.png is not a file")


# --- snippets ----------------------------------------------------------------------------------

def test_asking_whether_a_snippet_exists_is_true_or_false(tmp_path: Path) -> None:
    """Regression: `'nope' in snippets` raised "no snippet named 'nope'"."""
    path = prompt_board(tmp_path, "{{ 'nope' in snippets }} {{ 'look' in snippets }} "
                        "{{ snippets.look if 'look' in snippets }} {{ [1] in snippets }}",
                        extra="snippets: {look: 'teal'}\n")
    done = run(tmp_path, "validate", "--no-cache", "--json", path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["shots"][0]["request"]["prompt"] == "False True teal Falsex"
