"""What `apply` does between the plan and the summary: pick the target, select shots, run the
jobs with Ctrl-C handled, and put the videos into the output folder.

Simulated and real renders never mix: `--simulate` has its own lock file, store and output
folder, so an animatic can never be taken for a paid render of the same request.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.cache import Store
from kling_pipeline.errors import NoApiKey
from kling_pipeline.events import CancelToken, Note, OnEvent, ShotUpdate
from kling_pipeline.executor import Executor, Reporter, RunOptions
from kling_pipeline.jobs import Job
from kling_pipeline.lockstore import LockKeeper
from kling_pipeline.models import StoryboardHead
from kling_pipeline.planner import Plan
from kling_pipeline.render import ShotRequest
from kling_pipeline.results import RunReport
from kling_pipeline.storyboard import default_cache_dir, lock_path_for

if TYPE_CHECKING:
    import httpx

SIMULATED = "simulated"
SIMULATOR_KEY = "simulator"  # the embedded simulator accepts any non-empty key


@dataclass(frozen=True)
class Target:
    """Where a run reads and writes."""

    lock_path: Path
    store_root: Path
    out_dir: Path
    simulated: bool


def target_for(storyboard: Path, board: StoryboardHead, *, simulate: bool,
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


def select(plan: Plan, only: Collection[str]) -> Plan:
    """Keep the shots whose id matches one of the globs; removals wait for a run of them all."""
    if not only:
        return plan
    kept = [item for item in plan.items if item.action != "remove"
            and any(fnmatch.fnmatchcase(item.id, pattern) for pattern in only)]
    return replace(plan, items=kept)


def unmatched_globs(shots: list[ShotRequest], only: Collection[str]) -> list[str]:
    return [p for p in only if not any(fnmatch.fnmatchcase(s.id, p) for s in shots)]


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


def needs_network(jobs: list[Job]) -> bool:
    return any(job.kind in ("submit", "follow") for job in jobs)


class _Reporting:
    """The executor's reporter, turned into events for the caller."""

    def __init__(self, on_event: OnEvent) -> None:
        self._on_event = on_event

    def update(self, label: str, state: str, percent: int | None = None,
               note: str = "") -> None:
        self._on_event(ShotUpdate(label, state, percent, note))

    def message(self, text: str) -> None:
        self._on_event(Note(text))


@contextmanager
def _cancelled_by(cancel: CancelToken, executor: Executor, reporter: Reporter,
                  main: asyncio.Task[RunReport]) -> Iterator[None]:
    """First cancel (Ctrl-C, SIGTERM): stop submitting, keep task ids, wind down. Second: now.
    The token may fire on any thread; the executor is only touched on the loop's."""
    loop = asyncio.get_running_loop()

    def handle(count: int) -> None:
        if count == 1:
            reporter.message("stopping: no new submissions; every task id is kept "
                             "(Ctrl-C again to quit at once)")
            executor.stop()
        else:
            main.cancel()

    stop_listening = cancel.listen(lambda count: loop.call_soon_threadsafe(handle, count))
    try:
        yield
    finally:
        stop_listening()


async def _run(jobs: list[Job], base_url: str | None, api_key: str | None, keeper: LockKeeper,
               store: Store, options: RunOptions, reporter: Reporter,
               on_done: Callable[[Job, str], None], cancel: CancelToken,
               transport: httpx.AsyncBaseTransport | None) -> RunReport:
    import httpx

    from kling_pipeline import __version__
    from kling_pipeline.apiclient import KlingClient

    size = options.jobs * 2 + 4
    async with httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=60.0, write=120.0, pool=None),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            headers={"User-Agent": f"kling-pipeline/{__version__}"},
            transport=transport) as http:
        client = KlingClient(http, base_url, api_key) if base_url and api_key else None
        executor = Executor(client, keeper, store, options, reporter,
                            on_done=lambda job, output: on_done(job, output.sha256))
        main = asyncio.ensure_future(executor.run(jobs))
        with _cancelled_by(cancel, executor, reporter, main):
            try:
                return await main
            except asyncio.CancelledError:
                executor.report.interrupted = True
                return executor.report


def run_jobs(jobs: list[Job], *, base_url: str | None, api_key: str | None,
             keeper: LockKeeper, store: Store, options: RunOptions, on_event: OnEvent,
             on_done: Callable[[Job, str], None], cancel: CancelToken | None = None,
             transport: httpx.AsyncBaseTransport | None = None) -> RunReport:
    """Run the jobs to the end (or to a stop); every state change is already in the lock."""
    try:
        return asyncio.run(_run(jobs, base_url, api_key, keeper, store, options,
                                _Reporting(on_event), on_done, cancel or CancelToken(),
                                transport))
    finally:
        keeper.settle()  # a change a cancelled job made while a write was under way


LiveState = tuple[str, int | None, str]


async def _ask_all(base_url: str, api_key: str, tasks: dict[str, str]) -> dict[str, LiveState]:
    import httpx

    from kling_pipeline.apiclient import ApiError, KlingClient

    answers: dict[str, LiveState] = {}
    async with httpx.AsyncClient(timeout=30.0) as http:
        client = KlingClient(http, base_url, api_key)
        gate = asyncio.Semaphore(8)

        async def ask(shot_id: str, task_id: str) -> None:
            async with gate:
                try:
                    state = await client.result(task_id)
                except ApiError as exc:
                    answers[shot_id] = ("unreachable", None, str(exc))
                    return
                answers[shot_id] = (state.status, state.progress, state.reason)

        await asyncio.gather(*(ask(s, t) for s, t in tasks.items()))
    return answers


def ask_tasks(base_url: str, api_key: str, tasks: dict[str, str]) -> dict[str, LiveState]:
    """What the API says now about each task (shot id -> task id); reads only, never a submit."""
    return asyncio.run(_ask_all(base_url, api_key, tasks)) if tasks else {}
