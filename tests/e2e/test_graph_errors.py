"""A storyboard whose shots take frames of shots that cannot give them is refused before any
money is spent, each problem at the place the reference is written, all of them at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.located import position

from kling_pipeline.cli import main

HEAD = """version: 1
name: t
defaults: {model: kling-v3.0-pro-i2v, duration: 5}
shots:
  - {id: a, model: kling-v3.0-pro-t2v, prompt: "A"}
"""


def validate(tmp_path: Path, text: str, *args: str) -> tuple[Path, Result]:
    path = tmp_path / "board.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    return path, CliRunner().invoke(main, ["validate", "--no-cache", *args, str(path)])


def line_at(path: Path, result: Result, needle: str, location: str, occurrence: int = 1) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line, column = position(path.read_text(encoding="utf-8"), needle, occurrence)
    prefix = f"{path}:{line}:{column}: {location}: "
    found = [x for x in result.output.splitlines() if x.startswith(prefix)]
    assert len(found) == 1, f"no line starting {prefix!r} in:\n{result.output}"
    return found[0]


CASES = [
    ("unknown shot", "  - {id: b, prompt: B, image: {shot: ^openning, frame: last}}\n"
                     "  - {id: opening, model: kling-v3.0-pro-t2v, prompt: O}\n",
     "shots[1] (b).image.shot", "no shot named 'openning' (did you mean 'opening'?)"),
    ("itself", "  - {id: b, prompt: B, image: {shot: ^b, frame: first}}\n",
     "shots[1] (b).image.shot", "names this shot itself"),
    ("past the end", "  - {id: b, prompt: B, image: {shot: a, at: ^7.5}}\n",
     "shots[1] (b).image.at", "7.5 s is past the end of 'a', whose video lasts 5 s"),
    ("below zero", "  - {id: b, prompt: B, image: {shot: a, at: ^-1}}\n",
     "shots[1] (b).image.at", "must be a time in seconds, 0 or more"),
    ("a templated time", "  - {id: b, prompt: B, image: {shot: a, at: ^\"{{ 2 * 4 }}\"}}\n",
     "shots[1] (b).image.at", "8 s is past the end of 'a'"),
    ("a field the model does not take",
     "  - {id: b, model: kling-v3.0-pro-t2v, prompt: B, image: ^{shot: a, frame: last}}\n",
     "shots[1] (b).image", "kling-v3.0-pro-t2v takes no image"),
    ("neither frame nor at", "  - {id: b, prompt: B, image: ^{shot: a}}\n",
     "shots[1].image", "give one of frame: first|last or at: <seconds>"),
    ("both", "  - {id: b, prompt: B, image: ^{shot: a, frame: last, at: 1}}\n",
     "shots[1].image", "give frame or at, not both"),
    ("a frame that is neither", "  - {id: b, prompt: B, image: {shot: a, frame: ^middle}}\n",
     "shots[1].image.frame", "'first' or 'last'"),
    ("a misspelt key", "  - {id: b, prompt: B, image: {shot: a, ^fram: last}}\n",
     "shots[1].image.fram", "did you mean 'frame'?"),
]


@pytest.mark.parametrize(("text", "needle_location", "message"),
                         [(text, loc, msg) for _, text, loc, msg in CASES],
                         ids=[name for name, *_ in CASES])
def test_each_reference_problem_is_located(tmp_path: Path, text: str, needle_location: str,
                                           message: str) -> None:
    needle = next(line for line in text.splitlines() if "^" in line)  # the marked line
    path, result = validate(tmp_path, text.replace("^", ""))
    assert message in line_at(path, result, needle, needle_location)


def test_a_cycle_names_every_shot_on_it_each_at_its_place(tmp_path: Path) -> None:
    text = ("  - {id: x, prompt: X, image: {shot: z, frame: last}}\n"
            "  - {id: y, prompt: Y, image: {shot: a, frame: last}, "
            "end_image: {shot: x, frame: first}}\n"
            "  - {id: z, prompt: Z, image: {shot: y, at: 1}}\n"
            "  - {id: w, prompt: W, image: {shot: z, frame: last}}\n")
    path, result = validate(tmp_path, text)
    cycle = "a cycle (x -> z -> y -> x)"
    for needle, location in (("image: {shot: ^z, frame: last}}\n  - {id: y",
                              "shots[1] (x).image.shot"),
                             ("end_image: {shot: ^x", "shots[2] (y).end_image.shot"),
                             ("image: {shot: ^y", "shots[3] (z).image.shot")):
        assert cycle in line_at(path, result, needle, location)
    assert "(w)" not in result.output  # downstream of the cycle, not on it
    assert "3 errors in the storyboard" in result.output


def test_a_foreach_chains_to_its_predecessor_and_an_unknown_link_is_the_item(
        tmp_path: Path) -> None:
    good = ('  - id: "w-{{ item }}"\n    foreach: [1, 2, 3]\n    prompt: W\n'
            "    image: {shot: \"{{ 'a' if item == 1 else 'w-' ~ (item - 1) }}\", "
            "frame: last}\n")
    _, result = validate(tmp_path, good)
    assert result.exit_code == 0, result.output
    bad = good.replace("(item - 1)", "(item + 1)")
    _, result = validate(tmp_path, bad)
    assert result.exit_code == 1
    assert "shots[1] (w-3).image.shot: no shot named 'w-4'" in result.output
    assert "1 error in the storyboard" in result.output


def test_a_reference_to_a_shot_with_errors_of_its_own_is_not_unknown(tmp_path: Path) -> None:
    text = ("  - {id: b, prompt: B, duration: 99}\n"
            "  - {id: c, prompt: C, image: {shot: b, frame: last}}\n")
    _, result = validate(tmp_path, text)
    assert result.exit_code == 1
    assert "duration" in result.output and "no shot named" not in result.output


def test_the_memo_gives_the_same_errors_at_the_same_places(tmp_path: Path) -> None:
    """Shots come from the memo on a second run: their references are checked all the same,
    at the places of the entries as they are now."""
    text = ("  - {id: b, prompt: B, image: {shot: a, frame: last}}\n"
            "  - {id: c, prompt: C, image: {shot: nope, frame: last}}\n")
    path = tmp_path / "board.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    runs = [CliRunner().invoke(main, ["validate", str(path)]) for _ in range(2)]
    assert runs[0].output == runs[1].output and runs[1].exit_code == 1
    moved = HEAD + "  - {id: z, model: kling-v3.0-pro-t2v, prompt: Z}\n" + text
    path.write_text(moved, encoding="utf-8")
    third = CliRunner().invoke(main, ["validate", str(path)])
    line, column = position(moved, "{shot: ^nope")
    assert f"{path}:{line}:{column}: shots[3] (c).image.shot: no shot named 'nope'" \
        in third.output
