"""Where a run reads and writes (lock file, store, output folder), and which server it talks
to with which key: the two choices every command that touches renders makes first.

Simulated and real renders never mix: `--simulate` has its own lock file, store and output
folder, so an animatic can never be taken for a paid render of the same request. Cheap to
import (no HTTP client, no simulator until one is started).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.errors import NoApiKey
from kling_pipeline.storyboard.load import default_cache_dir, lock_path_for

if TYPE_CHECKING:
    from kling_pipeline.storyboard.settings import BoardSettings

SIMULATED = "simulated"
SIMULATOR_KEY = "simulator"  # the embedded simulator accepts any non-empty key


@dataclass(frozen=True)
class Target:
    """Where a run reads and writes."""

    lock_path: Path
    store_root: Path
    out_dir: Path
    simulated: bool


def target_for(storyboard: Path, board: BoardSettings, *, simulate: bool,
               cache_dir: Path | None = None, out_dir: Path | None = None) -> Target:
    """Real: `x.lock.json`, `.kling-cache/`, the output folder. Simulated: `x.simulated.lock.json`,
    `.kling-cache/simulated/`, the output folder's name plus `.simulated` (unless `--out` names
    one). The output folder is `--out`, else the storyboard's `output:` (relative to the
    storyboard file), else `renders/<name>/` beside the storyboard."""
    cache = cache_dir or default_cache_dir(storyboard)
    home = storyboard.resolve().parent
    out = out_dir or home / (board.output or f"renders/{board.name}")
    if not simulate:
        return Target(lock_path_for(storyboard), cache, out, False)
    lock = storyboard.with_name(f"{storyboard.stem}.{SIMULATED}.lock.json")
    if out_dir is None and out.name:
        out = out.with_name(f"{out.name}.{SIMULATED}")
    return Target(lock, cache / SIMULATED, out, True)


def embedded_simulator(target: Target) -> AbstractContextManager[str]:
    """The built-in simulator for a simulated target, its tasks kept in the target's store so
    a later run (or `status --refresh`) still knows them; yields its base URL."""
    from kling_pipeline.simulator.config import SimulatorConfig
    from kling_pipeline.simulator.runner import running_simulator

    return running_simulator(SimulatorConfig(state_dir=str(target.store_root / "simulator")))


def api_key_from_env(variable: str) -> str:
    """The key, from the environment only; a clear message (never the value) when it is not set."""
    key = os.environ.get(variable, "").strip()
    if not key:
        raise NoApiKey(
            f"no API key: set the environment variable {variable} (named by the storyboard's "
            "provider.api_key_env), or try the local simulator with --simulate")
    return key
