"""Templates, snippets and fan-out cannot make `validate` run for ever or run out of memory.

Each test writes a real storyboard in tmp_path and runs the real CLI in a subprocess with a
timeout, so a template that never finishes fails the test instead of hanging the suite. Every
refusal must be a located `file:line:col: location: message` line, exit 1, no traceback.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.located import refused

HEAD = "version: 1\nname: t\ndefaults: {model: kling-v3.0-pro-t2v}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _limit_memory() -> None:
    """A bomb that gets through must not take the machine's memory with it."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def run(*args: str | Path, timeout: float = 15) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "kling_pipeline", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kling-pipeline {' '.join(map(str, args))} still running after {timeout} s")
    return done, time.perf_counter() - start


def at(path: Path, needle: str) -> str:
    """`file:line:col` of the `^` in `needle` as found in the file."""
    text = path.read_text(encoding="utf-8")
    index = text.index(needle.replace("^", "")) + max(needle.find("^"), 0)
    line = text.count("\n", 0, index) + 1
    return f"{path}:{line}:{index - (text.rfind(chr(10), 0, index) + 1) + 1}"



# --- 1. templates that never finish -----------------------------------------------------------

# A template stops after 1,000,000 steps (or, a backstop, 10 s): both messages say so.
LIMIT = "a template may take at most"
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
CPU_BOMBS = [
    ("nested ranges", SPIN, "1,000,000 steps"),
    ("nested loops over text",
     '{% set s = "x" * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}',
     LIMIT),
    ("a loop whose if is never true",
     "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}{% endfor %}{% endfor %}",
     LIMIT),
    ("a macro calling itself twice",
     "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
     LIMIT),
    ("a recursive loop",
     "{% for x in [1, 2] recursive %}{% if loop.depth < 60 %}{{ loop([1, 2]) }}{% endif %}"
     "{% endfor %}", LIMIT),
    ("slow filters in a loop",
     "{% for i in range(100000) %}{% set x = range(100000) | list | sort %}{% endfor %}",
     LIMIT),
    ("a huge power", "{{ (((10 ** 64) ** 64) ** 64) ** 64 % 7 }}", "10,000 digits"),
    ("squaring in a loop",
     "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
     "{% endfor %}{{ ns.n % 7 }}", "10,000 digits"),
]


@pytest.mark.parametrize("template,allowed", [b[1:] for b in CPU_BOMBS],
                         ids=[b[0] for b in CPU_BOMBS])
def test_a_template_that_never_finishes_is_stopped(tmp_path: Path, template: str,
                                                   allowed: str) -> None:
    path = write(tmp_path, HEAD + f"shots:\n  - id: a\n    prompt: '{template}x'\n")
    done, seconds = run("validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt", allowed)
    assert seconds < 10


def test_a_snippet_that_never_finishes_is_stopped_at_the_template_using_it(
        tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f"snippets: {{spin: '{SPIN}'}}\nshots:\n"
                 "  - id: a\n    prompt: '{{ snippets.spin }}x'\n")
    done, _ = run("validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt", LIMIT)


def test_slow_templates_over_many_shots_stop_at_the_storyboard_limit(tmp_path: Path) -> None:
    """Each shot's template stays under the per-template limit; 60 of them do not."""
    loop = "{% for i in range(600) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
    path = write(tmp_path, HEAD + "shots:\n  - id: 's{{ item }}'\n    foreach: "
                 f"{list(range(60))}\n    prompt: '{loop}x'\n")
    done, seconds = run("validate", "--no-cache", path, timeout=30)
    found = refused(done, at(path, "prompt: ^'"), "shots[0] (s59).prompt", "together")
    assert "the storyboard's templates take more than 10,000,000 steps" in found[0]
    assert seconds < 15


@pytest.mark.slow
def test_a_large_storyboard_of_ordinary_templates_is_not_refused_for_its_size(
        tmp_path: Path) -> None:
    """Regression: a storyboard-wide 5 s limit counted compiling too, and refused a valid
    storyboard of 20,000 shots whose prompts each used two filters (from shot 7,464 on)."""
    shots = "".join(f"  - id: s{i}\n    prompt: \"{{{{ keeper | capitalize }}}} walks {i} steps, "
                    f"{{{{ snippets.look | trim }}}}\"\n" for i in range(12_000))
    path = write(tmp_path, HEAD + "vars: {keeper: an old keeper}\n"
                 "snippets: {look: \"{{ 'cinematic' | upper }} light\"}\nshots:\n" + shots)
    done, _ = run("validate", "--no-cache", path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "valid: 12000 shots" in done.stdout


def test_loops_macros_and_numbers_of_real_use_still_render(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "vars: {cast: [ana, bo, cy]}\n"
                 "snippets: {names: '{% for c in cast %}{{ c | capitalize }}"
                 "{{ \", \" if not loop.last }}{% endfor %}'}\nshots:\n"
                 "  - id: a\n    prompt: '{% macro two(x) %}{{ x }}{{ x }}{% endmacro %}"
                 "{{ snippets.names }}: {{ two(\"ha\") }} {{ 2 ** 64 }} "
                 "{{ range(1000) | sum }}'\n")
    done, _ = run("validate", "--no-cache", "--json", path)
    assert done.returncode == 0, done.stderr
    assert '"prompt": "Ana, Bo, Cy: haha 18446744073709551616 499500"' in done.stdout


# --- 2. snippets that explode -----------------------------------------------------------------

def _chain(count: int, uses: int, last: str) -> str:
    """Snippets s0..s<count>, each using the next one `uses` times; the last is `last`."""
    lines = ["snippets:"]
    lines += [f"  s{i}: '" + f"{{{{ snippets.s{i + 1} }}}}" * uses + "'" for i in range(count)]
    return "\n".join([*lines, f"  s{count}: '{last}'"]) + "\n"


def test_snippets_used_twice_each_render_once(tmp_path: Path) -> None:
    """s0 uses s1 twice, s1 uses s2 twice, ...: 2**30 renders unless each renders once."""
    path = write(tmp_path, HEAD + _chain(30, 2, "") + "shots:\n  - id: a\n"
                 "    prompt: 'x{{ snippets.s0 }}'\n")
    done, seconds = run("validate", "--no-cache", "--json", path)
    assert done.returncode == 0, done.stderr
    assert '"prompt": "x"' in done.stdout
    assert seconds < 10


def test_a_snippet_renders_once_per_shot_not_once_per_storyboard(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "snippets: {who: '{{ item }}-{{ index }}'}\nshots:\n"
                 "  - id: 's{{ item }}'\n    foreach: [a, b]\n"
                 "    prompt: '{{ snippets.who }} {{ snippets.who }}'\n"
                 "    negative_prompt: 'not {{ snippets.who }}'\n")
    done, _ = run("validate", "--no-cache", "--json", path)
    assert done.returncode == 0, done.stderr
    for text in ('"prompt": "a-1 a-1"', '"negative_prompt": "not a-1"',
                 '"prompt": "b-2 b-2"', '"negative_prompt": "not b-2"'):
        assert text in done.stdout


@pytest.mark.parametrize("snippets,message", [
    ("snippets: {s0: '{{ snippets.s1 }}', s1: '{{ snippets.s0 }}'}\n",
     "snippet 's0' uses itself (s0 -> s1 -> s0)"),
    (_chain(200, 1, "x"), "snippets use snippets more than 50 deep (s0 -> ... -> s50)"),
], ids=["cycle", "200 deep"])
def test_snippets_that_nest_without_end_are_located(tmp_path: Path, snippets: str,
                                                    message: str) -> None:
    path = write(tmp_path, HEAD + snippets + "shots:\n  - id: a\n    prompt: '{{ snippets.s0 }}'\n")
    done, _ = run("validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt", message)



# --- 3. fan-out that makes too many shots -----------------------------------------------------

def test_a_huge_matrix_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """100 x 100 x 100 is 1,000,000 shots (and 1,000,000 error lines: over 4 GB)."""
    hundred = list(range(100))
    path = write(tmp_path, HEAD + "shots:\n  - id: a\n    prompt: '{{ nope }}'\n"
                 "  - id: 's{{ item.a }}-{{ item.b }}-{{ item.c }}'\n"
                 f"    matrix: {{a: {hundred}, b: {hundred}, c: {hundred}}}\n"
                 "    prompt: '{{ nope }}'\n")
    done, seconds = run("validate", "--no-cache", path)
    refused(done, at(path, "^matrix:"), "shots[1].matrix",
            "makes 1,000,000 shots (100 x 100 x 100 combinations) and the entries before it "
            "1, 1,000,001 in all: a storyboard may make at most 20,000 shots after foreach "
            "and matrix")
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt", "undefined variable 'nope'")
    assert len(done.stderr.splitlines()) == 3
    assert seconds < 10


def test_thousands_of_errors_print_200_lines_and_json_lists_them_all(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "shots:\n  - id: 'f{{ item }}'\n"
                 f"    foreach: {list(range(20_000))}\n    prompt: '{{{{ nope }}}}'\n"
                 "  - id: z\n    prompt: p\n  - id: y\n    prompt: p\n")
    done, _ = run("validate", "--no-cache", path, timeout=30)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(lines) == 202, lines[-5:]
    assert all(x.startswith(f"{path}:7:13: shots[0] (f") for x in lines[:200])
    assert lines[200:] == ["... and 19,801 more errors (validate --json lists them all)",
                           "20,001 errors in the storyboard"]
    done, _ = run("validate", "--no-cache", "--json", path, timeout=30)
    errors = json.loads(done.stdout)["errors"]
    assert len(errors) == 20_001
    line, column = map(int, at(path, "- ^id: z").split(":")[1:])
    assert {"file": str(path), "line": line, "column": column, "location": "shots[1]",
            "message": "would be shot 20,001: a storyboard may make at most 20,000 shots "
                       "after foreach and matrix; this entry and the 1 after it not checked"
            } in errors
