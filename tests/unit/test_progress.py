"""The progress views and the summary: plain lines off a terminal, a live view on one."""

from __future__ import annotations

import io

from kling_pipeline.results import RunReport, ShotResult
from kling_pipeline.views.progress import LiveReporter, PlainReporter, render_summary


def test_plain_lines_one_per_state_change() -> None:
    lines: list[str] = []
    reporter = PlainReporter(lines.append, total=2)
    with reporter:
        reporter.update("a", "waiting")
        reporter.update("a", "submitting")
        reporter.update("a", "processing", 10)
        reporter.update("a", "processing", 60)  # same state: no new line
        reporter.update("b", "up to date")  # nothing happened to it: no line
        reporter.update("a", "failed", None, "ILLEGAL_PROMPT")
        reporter.message("stopping")
    assert [line.split("] ", 1)[1] for line in lines] == [
        "a submitting", "a processing 10%", "a failed: ILLEGAL_PROMPT", "stopping"]
    assert all(line.startswith("[00:0") for line in lines)


def test_the_live_view_shows_active_shots_a_total_bar_and_what_did_not_finish() -> None:
    out = io.StringIO()
    reporter = LiveReporter(total=3, file=out, color=False, force_terminal=True)
    with reporter:
        reporter.update("harbour", "processing", 40)
        reporter.update("gulls", "queued", 0)
        reporter._live.refresh()  # draw one frame now, not at the next tick
        reporter.update("harbour", "done")
        reporter.update("gulls", "failed", None, "moderation")
        reporter.update("storm", "up to date")
    text = out.getvalue()
    assert "harbour" in text and "processing" in text and "40%" in text
    assert "failed gulls: moderation" in text
    assert "3/3" in text  # the total bar ends complete


def test_the_summary_lists_what_did_not_finish_and_counts_everything() -> None:
    report = RunReport([
        ShotResult(("a",), "done", "t-1", submitted=True),
        ShotResult(("b", "c"), "up to date", "t-2"),
        ShotResult(("d",), "failed", "t-3", "ILLEGAL_PROMPT", submitted=True),
        ShotResult(("e",), "unknown", None, "may have been billed", submitted=False),
    ], stop_reason="BILLING_BALANCE_NOT_ENOUGH: top up")
    text = render_summary(report, ["f"])
    assert any(line.split()[:2] == ["d", "failed"] for line in text.splitlines())
    assert "ILLEGAL_PROMPT" in text and "may have been billed" in text
    assert "f" in text and "interrupted" in text
    assert ("Apply: 1 done, 2 up to date, 1 failed, 1 unknown, 1 interrupted "
            "(2 submitted in this run).") in text
    assert text.endswith("Submitting stopped: BILLING_BALANCE_NOT_ENOUGH: top up")
    assert "\n  a " not in text  # a shot that simply finished is not listed


def test_the_summary_lists_shots_in_storyboard_order_interrupted_ones_included() -> None:
    """Issue 9, item 5: rows came in the order shots ended, interrupted ones last."""
    report = RunReport([
        ShotResult(("c",), "failed", "t-3", "late failure"),
        ShotResult(("a",), "unknown", None, "may have been billed"),
    ])
    text = render_summary(report, ["b"], ["a", "b", "c", "d"])
    rows = [line.split()[0] for line in text.splitlines()[1:] if line.startswith("  ")]
    assert rows == ["a", "b", "c"]
