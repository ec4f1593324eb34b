"""The summaries push and pull end with, and the lines apply ends with about its remote
(plain text; every name from a file made printable)."""

from __future__ import annotations

from collections.abc import Sequence

from kling_pipeline.remote.transfer import Problem, PullReport, PushReport
from kling_pipeline.results import RemoteUse
from kling_pipeline.textsafe import clip, printable
from kling_pipeline.views.progress import render_folder


def _problems(title: str, problems: Sequence[Problem]) -> list[str]:
    lines = [f"{title}:"] if problems else []
    lines += [f"  {clip(', '.join(p.shot_ids))}  {p.sha256[:12]}  {clip(p.reason, 400)}"
              for p in problems]
    return lines


def render_push(report: PushReport) -> str:
    lines = [f"Push to {printable(report.remote)}: {len(report.uploaded)} uploaded, "
             f"{report.present} already there, {report.index_written} index "
             f"entr{'y' if report.index_written == 1 else 'ies'} written "
             f"({report.videos} video(s) in the lock file)."]
    lines += _problems("Not in the local store (pull or apply first)", report.not_local)
    lines += _problems("Refused (local bytes do not match their name)", report.refused)
    lines += _problems("Failed", report.failed)
    return "\n".join(lines)


def render_pull(report: PullReport) -> str:
    where = f"from {printable(report.remote)}" if report.remote else "(remote not asked)"
    lines = [f"Pull {where}: {len(report.downloaded)} downloaded, {report.present} already "
             f"here ({report.videos} video(s) in the lock file)."]
    lines += _problems("Not in the remote", report.missing)
    lines += _problems("Refused (remote bytes do not match their name; not used)",
                       report.refused)
    lines += _problems("Failed", report.failed)
    lines.append(render_folder(report.folder) if report.folder is not None else
                 "Output: none written: no shot has a video yet.")
    return "\n".join(lines)


def render_remote_use(use: RemoteUse) -> str:
    """What an apply did with its remote, after its summary (ends with a newline)."""
    parts = [f"{len(use.taken)} video(s) taken" if use.taken else "",
             f"{use.pushed} pushed" if use.pushed else "",
             f"{use.not_pushed} not pushed (push sends them later)" if use.not_pushed else ""]
    said = ", ".join(part for part in parts if part) or "nothing to take or push"
    lines = [f"Remote {printable(use.remote)}: {said}."]
    if use.refused:
        lines.append("Refused (not used; see docs/remote.md):")
        lines += [f"  {clip(ids)}  {clip(reason, 400)}" for ids, reason in use.refused]
    if use.down:
        lines.append(f"warning: went on without the remote: {clip(use.down, 400)}")
    return "\n".join(lines) + "\n"
