"""Helpers for the apply tests: storyboards, running the CLI, reading what it left behind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from kling_pipeline.cli import main
from kling_pipeline.output.media import probe_video
from support.simulator_fixtures import KEY

FAST = ("--max-wait", "60s", "--lock-timeout", "5s")


def storyboard_text(shots: Sequence[tuple[str, str]], *, duration: int = 3,
                    name: str = "demo", extra: str = "") -> str:
    lines = ["version: 1", f"name: {name}", "provider: {requests_per_minute: 6000}",
             f"defaults: {{model: kling-v3.0-pro-t2v, duration: {duration}, "
             'aspect_ratio: "16:9"}', extra, "shots:"]
    lines += [f"  - {{id: {shot_id}, prompt: {json.dumps(prompt)}}}" for shot_id, prompt in shots]
    return "\n".join(lines) + "\n"


def write_board(folder: Path, shots: Sequence[tuple[str, str]], **kwargs: Any) -> Path:
    path = folder / "board.yaml"
    path.write_text(storyboard_text(shots, **kwargs), encoding="utf-8")
    return path


def apply(board: Path, server: str, *args: str, key: str | None = KEY,
          input: str | None = None) -> Result:
    """`kling-pipeline apply BOARD --base-url SERVER --yes ARGS` in-process."""
    env = {"NOVITA_API_KEY": key, "NO_COLOR": "1"}
    return CliRunner().invoke(main, ["apply", str(board), "--base-url", server, "--yes",
                                     *FAST, *args], env=env, input=input,
                              catch_exceptions=False)


def lock_of(board: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(board.with_name("board.lock.json").read_text())
    shots: dict[str, Any] = data["shots"]
    return shots


def statuses(board: Path) -> dict[str, str]:
    return {shot_id: entry["status"] for shot_id, entry in lock_of(board).items()}


@dataclass(frozen=True)
class ShotFile:
    path: Path
    duration: float
    sha256: str


def shot_files(board: Path, name: str = "demo") -> dict[str, ShotFile]:
    """The videos in the output folder, decoded in full, by file name."""
    folder = board.parent / "renders" / name / "shots"
    found = {}
    for path in sorted(folder.glob("*.mp4")):
        info = probe_video(path, decode=True)
        found[path.name] = ShotFile(path, info.duration,
                                    hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def submissions(stats: dict[str, Any]) -> list[int]:
    """How many tasks each distinct request body made."""
    return sorted(stats["submissions"].values())
