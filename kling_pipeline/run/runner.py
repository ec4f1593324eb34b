"""Running the jobs of a plan: the event loop, the HTTP client, the executor, and a cancel
token that stops them; and the read-only questions `status --refresh` asks.

`Project.apply` (project.py) calls `run_jobs` between the plan and the output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kling_pipeline.events import CancelToken, OnEvent
from kling_pipeline.plan.jobs import Job
from kling_pipeline.results import RunReport
from kling_pipeline.run.executor import Executor, RunOptions
from kling_pipeline.run.settle import EventReporter, Reporter
from kling_pipeline.state.cache import Store
from kling_pipeline.state.lockfile import Output
from kling_pipeline.state.lockstore import LockKeeper

if TYPE_CHECKING:
    import httpx

    from kling_pipeline.plan.inputs import Resolver
    from kling_pipeline.run.apiclient import KlingClient
    from kling_pipeline.run.claiming import Claimer


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
               transport: httpx.AsyncBaseTransport | None,
               resolver: Resolver | None = None,
               on_stored: Callable[[Job, Output, bool], None] | None = None,
               claimer: Claimer | None = None) -> RunReport:
    async with contextlib.AsyncExitStack() as stack:
        client = None
        if base_url and api_key:  # an HTTP client only for a run that asks the API something
            client = await stack.enter_async_context(_client(base_url, api_key, options,
                                                             transport))
        executor = Executor(client, keeper, store, options, reporter,
                            on_done=lambda job, output: on_done(job, output.sha256),
                            resolver=resolver, on_stored=on_stored, claimer=claimer)
        main = asyncio.ensure_future(executor.run(jobs))
        with _cancelled_by(cancel, executor, reporter, main):
            try:
                return await main
            except asyncio.CancelledError:
                executor.report.interrupted = True
                return executor.report


@contextlib.asynccontextmanager
async def _client(base_url: str, api_key: str, options: RunOptions,
                  transport: httpx.AsyncBaseTransport | None) -> AsyncIterator[KlingClient]:
    """The API client over one pooled httpx client (imported here: ~0.2 s that a run with
    nothing to ask, a no-op apply, does not pay)."""
    import httpx

    from kling_pipeline import __version__
    from kling_pipeline.run.apiclient import KlingClient

    size = options.jobs * 2 + 4
    async with httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=60.0, write=120.0, pool=60.0),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            headers={"User-Agent": f"kling-pipeline/{__version__}"},
            transport=transport) as http:
        yield KlingClient(http, base_url, api_key)


def run_jobs(jobs: list[Job], *, base_url: str | None, api_key: str | None,
             keeper: LockKeeper, store: Store, options: RunOptions, on_event: OnEvent,
             on_done: Callable[[Job, str], None], cancel: CancelToken | None = None,
             transport: httpx.AsyncBaseTransport | None = None,
             resolver: Resolver | None = None,
             on_stored: Callable[[Job, Output, bool], None] | None = None,
             claimer: Claimer | None = None) -> RunReport:
    """Run the jobs to the end (or to a stop); every state change is already in the lock.
    `resolver` makes exact the keys of jobs that wait for frames of other shots;
    `on_stored` hears of each video downloaded, once it is recorded; `claimer` claims each
    request key in a remote before its POST (run/claiming.py)."""
    try:
        return asyncio.run(_run(jobs, base_url, api_key, keeper, store, options,
                                EventReporter(on_event), on_done, cancel or CancelToken(),
                                transport, resolver, on_stored, claimer))
    finally:
        keeper.settle()  # a change a cancelled job made while a write was under way


LiveState = tuple[str, int | None, str]


async def _ask_all(base_url: str, api_key: str, tasks: dict[str, str]) -> dict[str, LiveState]:
    import httpx

    from kling_pipeline.run.apiclient import KlingClient
    from kling_pipeline.run.apierrors import ApiError

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
