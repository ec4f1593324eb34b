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
from support import located

from kling_pipeline.storyboard.images import ImageProblem, decode_data_uri

HEAD = "version: 1\nname: t\ndefaults: {model: kling-v3.0-pro-t2v}\n"
TOO_LONG = "making text longer than 100,000 characters is not allowed in templates"
MAX_SECONDS = 5.0
MAX_RSS_MB = 500
_CHILD = """
import atexit, os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
def peak_kb(usage):
    # This process's own peak (VmHWM, reset by exec); ru_maxrss keeps the peak of the process
    # that forked it, so a test process grown to 500 MB made every child look that big.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return usage.ru_maxrss
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["KLING_TEST_USAGE"], "w") as out:
        out.write(f"{usage.ru_utime + usage.ru_stime} {peak_kb(usage)}")
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
    located.refused(done, place, location, *fragments)
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


def test_printing_a_large_aliased_var_in_every_shot_stops_at_the_storyboard_limit(
        tmp_path: Path) -> None:
    """Regression: each of 20,000 shots walked the var (a million values) to find it too long
    to print, even after the storyboard's steps were spent: 50 s. A walk is now cut short by
    the steps left, and charged before anything else is done with the value."""
    lines = [HEAD, "x-anchors:\n", "  a: &a [" + ", ".join(["xxxxxxxxxx"] * 10) + "]\n"]
    for name, previous in zip("bcde", "abcd", strict=True):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]\n")
    lines.append("vars: {big: *e}\nshots:\n  - id: 's{{ index }}'\n"
                 f"    foreach: {json.dumps(list(range(5000)))}\n    prompt: 'p {{{{ big }}}}'\n")
    path = write(tmp_path, "".join(lines))
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (s1).prompt", TOO_LONG)
    refused(done, at(path, "prompt: ^'"), "shots[0] (s1000).prompt",
            "the storyboard's templates take more than 10,000,000 steps")


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


# --- templates: every way to build big is checked before it builds -----------------------------

STEPS = "the template takes more than 1,000,000 steps"
SHARED = "['x' * 99999] * 99999"  # 99,999 references to one string: 800 KB, printed 10 GB
TEMPLATE_BOMBS = [
    # the five
    ("printing a repeated list", "{{ " + SHARED + " }}", TOO_LONG),
    ("printing batch padding", "{{ [1] | batch(99999, 'x' * 99999) | list }}", TOO_LONG),
    ("indent by a number", "{{ ('a\\n' * 49999) | indent(99999) }}", TOO_LONG),
    ("tojson indent", "{{ range(99999) | list | tojson(indent=99999) }}", TOO_LONG),
    ("format width from a string", "{{ '{:{}}'.format('x', '999999999') }}", TOO_LONG),
    # the rest of their class: text made of a shared list
    ("~ of a repeated list", "{{ 'a' ~ (" + SHARED + ") }}", TOO_LONG),
    ("string filter", "{{ (" + SHARED + ") | string | length }}", TOO_LONG),
    ("center of a list", "{{ (" + SHARED + ") | center(10) }}", TOO_LONG),
    ("join of nested lists", "{{ [" + SHARED + "] | join }}", TOO_LONG),
    ("urlencode", "{{ {'a': " + SHARED + "} | urlencode | length }}", TOO_LONG),
    ("percent %s of a list", "{{ '%s' % [" + SHARED + "] }}", TOO_LONG),
    ("format filter", "{{ '%s' | format(" + SHARED + ") | length }}", TOO_LONG),
    ("is lower", "{{ (" + SHARED + ") is lower }}", TOO_LONG),
    ("printing slice padding", "{{ [1] | slice(99999, 'x' * 99999) | list }}", TOO_LONG),
    # widths and counts that add up
    ("format fields", "{{ ('{0:99999}' * 9999).format('x') }}", TOO_LONG),
    ("percent widths", "{{ ('%99999d' * 9999) % ((1,) * 9999) }}", TOO_LONG),
    ("percent key with parentheses", "{{ '%(a(b)c)99999999s' % {'a(b)c': 1} }}", TOO_LONG),
    ("expandtabs", "{{ ('\\t' * 99999).expandtabs(99999) }}", TOO_LONG),
    ("wordwrap joined by a long text",
     "{{ ('x' * 99999) | wordwrap(1, true, 'y' * 99999) | length }}", TOO_LONG),
    ("translate", "{{ ('x' * 99999).translate({120: 'y' * 99999}) | length }}", TOO_LONG),
    ("batch of a billion", "{{ [1] | batch(999999999, 0) | list | length }}", TOO_LONG),
    ("bytes repetition", "{{ ('x'.encode() * 999999999) | length }}",
     "repeating text or a list to more than 100,000"),
    ("bytes ljust", "{{ 'x'.encode().ljust(999999999) | length }}", TOO_LONG),
    ("int to_bytes", "{{ (1).to_bytes(999999999, 'big') | length }}", TOO_LONG),
    # output buffered by a block, joined at its end
    ("set block printing one string", "{% set s = 'x' * 99999 %}{% set t %}"
     "{% for i in range(99999) %}{{ s }}{% endfor %}{% endset %}{{ t | length }}", TOO_LONG),
    ("set block of literal text", "{% set t %}{% for i in range(980) %}{% for j in range(980) %}"
     + "y" * 2000 + "{% endfor %}{% endfor %}{% endset %}{{ t | length }}", TOO_LONG),
    # work over everything a shared value holds
    ("sum of lists", "{{ ([[1] * 1000] * 99999) | sum(start=[]) | length }}",
     "making a list longer than 100,000 items"),
    ("case-blind sort", "{{ (" + SHARED + ") | sort | length }}", STEPS),
    ("comparing doubled lists", "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(40) %}"
     "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}{{ ns.a == ns.b }}",
     STEPS),
    ("hashing a doubled tuple", "{% set ns = namespace(t=(1,)) %}{% for i in range(40) %}"
     "{% set ns.t = (ns.t, ns.t) %}{% endfor %}{{ {ns.t: 1} | length }}", STEPS),
    ("looking up a doubled tuple", "{% set ns = namespace(t=(1,)) %}{% for i in range(40) %}"
     "{% set ns.t = (ns.t, ns.t) %}{% endfor %}{{ {}.get(ns.t) }}", STEPS),
    ("pprint", "{{ {'k' * 50000: range(20000) | list} | pprint | length }}",
     "No filter named 'pprint'"),
]


@pytest.mark.parametrize("template,message", [b[1:] for b in TEMPLATE_BOMBS],
                         ids=[b[0] for b in TEMPLATE_BOMBS])
def test_a_template_that_would_build_gigabytes_is_refused_before_it_does(
        tmp_path: Path, template: str, message: str) -> None:
    """Regression: each grew to gigabytes (up to the 2 GB cap, exit 1 as "too much memory"),
    passed (bytes, to_bytes: 1 GB), or never finished (sum, comparing, hashing)."""
    path = prompt_board(tmp_path, template)
    done = run(tmp_path, "validate", "--no-cache", path, timeout=20)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt", message)


LONG_VAR = "vars: {big: '" + "x " * 100_000 + "'}\n"


@pytest.mark.parametrize("template", ["{{ big | upper | length }}", "{{ big.split() | length }}",
                                      "{{ big.encode('utf-32') | length }}"])
def test_a_filter_or_method_is_given_at_most_100000_characters(tmp_path: Path,
                                                              template: str) -> None:
    """What it makes is then at most a few times that: a 10 MB var split into words made
    5,000,000 strings."""
    path = prompt_board(tmp_path, template, extra=LONG_VAR)
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt",
            "giving a filter or method text or a list longer than 100,000 characters")


ORDINARY = [
    ("{{ 'ab' | replace('a', 'c') }}", "cb"),
    ("{{ '{0:>5}|{0!r}'.format('x') }}", "    x|'x'"),
    ("{{ '%s-%03d|%(w)s' % ('q', 7) if false else '%s-%03d' % ('q', 7) }}", "q-007"),
    ("{{ '%(who)s' % {'who': 'ana'} }}", "ana"),
    ("{{ '%d %s' % (1000000, 2.5) }} {{ '{}'.format(1000000) }}", "1000000 2.5 1000000"),
    ("{{ '%.2f|%5s' | format(3.14159, 'ab') }}", "3.14|   ab"),
    ("{{ {'b': [1, 2], 'a': '<x>'} | tojson }}", '{"a": "\\u003cx\\u003e", "b": [1, 2]}'),
    ("{{ [1] | tojson(indent=2) }}", "[\n  1\n]"),
    ("{{ [[1], [2, 3]] | sum(start=[]) }} {{ [1, 2] | sum }}", "[1, 2, 3] 3"),
    ("{{ ['b', 'A', 'c'] | sort | join }} {{ ['b', 'a', 'B'] | unique | join }}", "Abc ba"),
    ("{{ 'x' in ['x'] }} {{ ('a', 1) in {('a', 1): 2} }} {{ [1, [2]] == [1, [2]] }}",
     "True True True"),
    ("{{ {('a', 1): 2}[('a', 1)] }} {{ {(1, 2): 3}.get((1, 2)) }}", "2 3"),
    ("{{ 'a\\tb'.expandtabs(4) }}|{{ 'ab'.translate({97: 'xy'}) }}|{{ 'x'.center(5, '-') }}",
     "a   b|xyb|--x--"),
    ("{{ [1, 2, 3] | batch(2, 0) | list }} {{ [1, 2, 3] | slice(2) | list }}",
     "[[1, 2], [3, 0]] [[1, 2], [3]]"),
    ("{{ ['a', 'b'] ~ 1 }} {{ ('x' * 3) ~ ('y' * 2) }} {{ {'k': (1, 'v')} }}",
     "['a', 'b']1 xxxyy {'k': (1, 'v')}"),
    ("{% set ns = namespace(n=1) %}{{ ns.n }} {{ range(3) | list | string }}", "1 [0, 1, 2]"),
    ("{% macro m(x) %}<{{ x }}>{% endmacro %}{% set b %}{{ m(1) }}{{ m(2) }}{% endset %}{{ b }}",
     "<1><2>"),
    ("{{ 'ab'.encode() * 2 }} {{ ('ab' * 3)[1:4] }} {{ [3, 1, 2] | max }}", "b'abab' bab 3"),
]


def test_ordinary_templates_still_render(tmp_path: Path) -> None:
    """The checks refuse only what is huge: each of these renders as Python would."""
    shots = "".join(f"  - id: s{i}\n    prompt: '{t.replace(chr(39), chr(39) * 2)}x'\n"
                    for i, (t, _) in enumerate(ORDINARY))
    path = write(tmp_path, HEAD + "shots:\n" + shots)
    done = run(tmp_path, "validate", "--no-cache", "--json", path)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report.get("errors")
    prompts = {s["id"]: s["request"]["prompt"] for s in report["shots"]}
    for i, (template, expected) in enumerate(ORDINARY):
        assert prompts[f"s{i}"] == expected + "x", template
    bounded(done)


def test_summing_a_list_and_a_tuple_fails_as_python_does(tmp_path: Path) -> None:
    """`sum(start=[])` joins in one pass now, and still refuses what `+` would refuse."""
    path = prompt_board(tmp_path, "{{ [[1, 2], (3,)] | sum(start=[]) }}")
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (a).prompt",
            'template error: TypeError: can only concatenate list (not "tuple") to list')


@pytest.mark.slow
def test_a_step_takes_about_as_long_whatever_the_template_does(tmp_path: Path) -> None:
    """Regression: a method call was one step but took as long as 20 empty iterations, so 60
    templates of 30,000 method calls passed every limit and took 16 s of CPU. Calls, attributes,
    filters and `~` now count as many steps as they take time."""
    loop = "{% for i in range(30000) %}{% set x = v.upper() %}{% endfor %}x"
    path = write(tmp_path, HEAD + "vars: {v: ab}\nshots:\n  - id: 's{{ item }}'\n"
                 f"    foreach: {list(range(60))}\n    prompt: '{loop}'\n")
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (s10).prompt",
            "the storyboard's templates take more than 10,000,000 steps")


# --- the memo files in .kling-cache ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["3 GB", "fifo", "deeply nested"])
def test_a_memo_file_that_is_no_memo_is_ignored(tmp_path: Path, kind: str) -> None:
    """Regression: a 3 GB templates.json was read whole (exit 3, MemoryError), a deeply nested
    one overflowed json's recursion (exit 3), a FIFO would have blocked the run. A memo only
    saves work: such a file is ignored, then replaced."""
    path = prompt_board(tmp_path, "{{ 'ok' | upper }}")
    memo = tmp_path / ".kling-cache" / "templates.json"
    memo.parent.mkdir()
    if kind == "3 GB":
        with memo.open("wb") as sparse:
            sparse.truncate(3 << 30)
    elif kind == "fifo":
        os.mkfifo(memo)
    else:
        memo.write_text("[" * 200_000, encoding="utf-8")
    done = run(tmp_path, "validate", "--json", path, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["shots"][0]["request"]["prompt"] == "OKx"
    bounded(done)


def test_an_image_that_grew_after_the_plan_is_refused_without_being_read(tmp_path: Path) -> None:
    """`apply` reads a planned image again to send it: a file grown to 3 GB since was read whole
    (MemoryError); now the read stops at the limit. Run in a child capped at 1 GB."""
    with (tmp_path / "grown.png").open("wb") as sparse:
        sparse.truncate(3 << 30)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from pathlib import Path\n"
        "from kling_pipeline.storyboard.images import ImageProblem\n"
        "from kling_pipeline.storyboard.localimages import LocalImage, body_to_send\n"
        "image = LocalImage(Path(sys.argv[1]), 'ab' * 32, 'image/png', 300, 300, 1000)\n"
        "try:\n"
        "    body_to_send({'image': 'sha256:' + 'ab' * 32}, {'image': image})\n"
        "except ImageProblem as exc:\n"
        "    print(exc.reason, exc.message)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "grown.png")],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == ("IMAGE_FILE_EXCEEDS_MAX_SIZE is 3072.0 MB; at most 10 MB "
                                   "(10,485,760 bytes) is allowed"), done.stderr[-2000:]


def test_a_data_uri_is_refused_by_its_length_before_it_is_decoded() -> None:
    """The simulator decoded a data URI of any length, then found it too large."""
    with pytest.raises(ImageProblem) as refusal:
        decode_data_uri("data:image/png;base64," + "A" * (15 << 20))
    assert refusal.value.reason == "IMAGE_FILE_EXCEEDS_MAX_SIZE"
    assert refusal.value.message.startswith("is 11.2 MB; at most 10 MB")


ITEM_BY_ITEM = [
    ("batch", "{% set x = range(100000) | batch(1) | list %}"),
    ("slice", "{% set x = range(100000) | slice(100000) | list %}"),
    ("sum", "{% set x = range(100000) | batch(1) | sum(start=[]) %}"),
    ("unique", "{% set x = range(100000) | unique | list %}"),
    ("format fields", "{% set x = ('{0}' * 30000).format(1) %}"),
    ("percent conversions", "{% set x = ('%s' * 20000) % ((1,) * 20000) %}"),
    ("join of numbers", "{% set x = range(15000) | join(',') %}"),
]


@pytest.mark.parametrize("work", [w[1] for w in ITEM_BY_ITEM], ids=[w[0] for w in ITEM_BY_ITEM])
def test_work_done_item_by_item_is_counted_item_by_item(tmp_path: Path, work: str) -> None:
    """Regression: these do Python work for every item or field but counted one step per 10
    items (or none): two templates repeating `batch` or `slice` 100 times took 7 s of CPU, and
    200 `unique` or `join` of 15,000 numbers passed as a few hundred thousand steps. Now each
    counts a step per item (per field, per conversion) and stops at the template's limit."""
    loop = "{% for i in range(100) %}" + work + "{% endfor %}x"
    path = write(tmp_path, HEAD + "shots:\n  - id: 's{{ item }}'\n    foreach: [1, 2]\n"
                 f"    prompt: '{loop.replace(chr(39), chr(39) * 2)}'\n")
    done = run(tmp_path, "validate", "--no-cache", path)
    refused(done, at(path, "prompt: ^'"), "shots[0] (s2).prompt", STEPS)
