"""The workflow as a library: one object per storyboard, one method per command.

    from kling_pipeline import Project

    project = Project.open("film.yaml", variables={"grade": "noir"}, simulate=True)
    plan = project.plan()                  # what a render would do and cost; no network
    report = project.apply(on_event=print)  # submit, poll, download, fill the output folder
    print(report.ok, report.folder)

The command line is a thin shell over this: it parses options, calls one method, prints what
comes back and maps it to an exit code. Every step of `apply` (load, check the output folder,
take the run lock, plan, confirm, run the jobs, fill the folder) is here, once, in that order,
so the steps that later work adds (frames of other shots, a shared remote) have one home.

Nothing here prints. Errors are the exception tree of `kling_pipeline.errors`; a run's own
result (failed shots, an interrupted run) is the returned `ApplyReport`, not an exception.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kling_pipeline.errors import Declined, UsageError
from kling_pipeline.events import CancelToken, FolderStep, OnEvent, RunEnded, RunStarted, ignore

if TYPE_CHECKING:
    import httpx

    from kling_pipeline.output.folder import FolderResult
    from kling_pipeline.output.manifest import Manifest
    from kling_pipeline.plan.inputs import Resolver, Waiting
    from kling_pipeline.plan.jobs import Job
    from kling_pipeline.plan.planner import Plan
    from kling_pipeline.remote.fill import RemoteFill
    from kling_pipeline.remote.gc import RemoteGcReport
    from kling_pipeline.remote.publish import Published, Publisher
    from kling_pipeline.remote.session import RemoteSession
    from kling_pipeline.remote.transfer import PullReport, PushReport
    from kling_pipeline.remote.url import RemoteSpec
    from kling_pipeline.results import ApplyReport, RemoteUse, RunReport
    from kling_pipeline.run.claiming import Claimer
    from kling_pipeline.run.executor import RunOptions
    from kling_pipeline.state.cache import Store
    from kling_pipeline.state.lockfile import LockFile
    from kling_pipeline.state.lockstore import LockKeeper
    from kling_pipeline.storyboard.load import LoadedStoryboard
    from kling_pipeline.storyboard.render import ShotRequest
    from kling_pipeline.target import Target
    from kling_pipeline.views.status import ShotStatus


@dataclass(frozen=True)
class Validation:
    """A valid storyboard: its name and its shots, each rendered and keyed."""

    name: str
    shots: tuple[ShotRequest, ...]

    @property
    def seconds(self) -> float:
        return sum(shot.duration for shot in self.shots)

    @property
    def endpoints(self) -> list[str]:
        return sorted({shot.endpoint for shot in self.shots})


@dataclass(frozen=True)
class Selection:
    """Which shots a plan takes, beyond those whose request changed."""

    force: tuple[str, ...] = ()  # shot ids rendered again though up to date (paid)
    only: tuple[str, ...] = ()  # id globs: work on these shots only
    retry_failed: bool = False
    resubmit_unknown: bool = False  # may pay twice: the user asked


@dataclass(frozen=True)
class _Run:
    """How a run goes: `jobs` at once, each polled up to `max_wait` s, against `base_url`
    (or the storyboard's) with `key`; `network`: some job asks the API something."""

    jobs: int | None
    max_wait: float
    base_url: str | None
    key: str | None
    network: bool


class Project:
    """A storyboard and where its runs read and write (lock file, cache, output folder).

    Opening reads nothing; the storyboard is loaded (and checked) by the first call that needs
    it, once. `simulate=True` works on the built-in simulator's own lock file, store and output
    folder, so an animatic is never taken for a paid render.
    """

    def __init__(self, storyboard: Path, *, variables: Mapping[str, str], simulate: bool,
                 cache_dir: Path | None, out_dir: Path | None, use_cache: bool) -> None:
        self.path = storyboard
        self.variables = dict(variables)
        self.simulate = simulate
        self.cache_dir = cache_dir
        self.out_dir = out_dir
        self.use_cache = use_cache
        self._loaded: LoadedStoryboard | None = None

    @classmethod
    def open(cls, storyboard: str | os.PathLike[str], *,
             variables: Mapping[str, str] | None = None, simulate: bool = False,
             cache_dir: str | os.PathLike[str] | None = None,
             out_dir: str | os.PathLike[str] | None = None,
             use_cache: bool = True) -> Project:
        """`variables` override the storyboard's vars (as `--var`); `cache_dir` and `out_dir`
        as `--cache-dir` and `--out`; `use_cache=False` as `--no-cache`."""
        return cls(Path(storyboard), variables=variables or {}, simulate=simulate,
                   cache_dir=None if cache_dir is None else Path(cache_dir),
                   out_dir=None if out_dir is None else Path(out_dir), use_cache=use_cache)

    # -- the storyboard ------------------------------------------------------------------

    def _load(self) -> LoadedStoryboard:
        if self._loaded is None:
            from kling_pipeline.storyboard.load import load_storyboard

            self._loaded = load_storyboard(self.path, cli_vars=self.variables,
                                           use_cache=self.use_cache)
        return self._loaded

    def validate(self) -> Validation:
        """Load and check the storyboard against the schema and every constraint of its
        models; StoryboardError names every problem at its file, line and column."""
        loaded = self._load()
        return Validation(loaded.settings.name, tuple(loaded.shots))

    @property
    def name(self) -> str:
        return self._load().settings.name

    @functools.cached_property
    def target(self) -> Target:
        """Where runs of this storyboard read and write (once: the storyboard is loaded
        once, and the options are fixed when the project is opened)."""
        from kling_pipeline.target import target_for

        return target_for(self.path, self._load().settings, simulate=self.simulate,
                          cache_dir=self.cache_dir, out_dir=self.out_dir)

    # -- plan ----------------------------------------------------------------------------

    def plan(self, *, force: Sequence[str] = (), only: Sequence[str] = (),
             retry_failed: bool = False, resubmit_unknown: bool = False,
             remote: str | None = None, remote_endpoint_url: str | None = None,
             use_remote: bool = True) -> Plan:
        """What `apply` would do and cost now, from the lock file and the local store; the
        provider is never called. `force` names shots to render again (paid); `only` keeps
        the shots whose id matches one of the globs. With a remote (as `push` chooses it;
        `use_remote=False` for none), a shot whose video this machine lacks is looked up in
        the remote's index (one listing, and none when no shot lacks its video)."""
        from kling_pipeline.state.cache import Store
        from kling_pipeline.state.lockfile import read_lock

        selection = self._selection(force, only, retry_failed, resubmit_unknown)
        spec = self._run_remote(remote, remote_endpoint_url, use_remote)
        target = self.target
        lock = read_lock(target.lock_path, self.name)
        store = Store(target.store_root)  # what apply would reuse instead of paying
        try:
            plan = self._plan(lock, store, selection)
            if spec is None:
                return plan
            from kling_pipeline.plan.fromremote import after_peek
            from kling_pipeline.remote.fill import peek_index
            from kling_pipeline.remote.store import RemoteStore

            found, warning = peek_index(lambda: RemoteStore(spec), store, lock,
                                        lambda: self._shots(lock, store, selection.force),
                                        selected=self._chosen(selection))
            return after_peek(plan, found, selection.force, warning)
        finally:
            store.close()

    def _selection(self, force: Sequence[str], only: Sequence[str], retry_failed: bool,
                   resubmit_unknown: bool) -> Selection:
        """The selection, refused (UsageError) when it names no shot."""
        ids = {shot.id for shot in self._load().shots}
        unknown = sorted(set(force) - ids)
        if unknown:
            raise UsageError(f"no shot named {', '.join(unknown)}", option="--force")
        nothing = [p for p in only if not any(fnmatch.fnmatchcase(i, p) for i in ids)]
        if nothing:
            raise UsageError(f"{', '.join(nothing)} matches no shot id", option="--only")
        return Selection(tuple(force), tuple(only), retry_failed, resubmit_unknown)

    def _plan(self, lock: LockFile, store: Store, selection: Selection,
              fill: RemoteFill | None = None) -> Plan:
        from kling_pipeline.plan.planner import make_plan
        from kling_pipeline.plan.pricing import PriceTable

        loaded = self._load()
        shots, waiting = self._shots(lock, store, selection.force)
        plan = make_plan(loaded.settings.name, shots, lock,
                         PriceTable(loaded.settings.provider.prices),
                         force=selection.force, retry_failed=selection.retry_failed,
                         resubmit_unknown=selection.resubmit_unknown,
                         cached=store.lookup, waiting=waiting)
        if fill is not None:
            from kling_pipeline.plan.fromremote import after_fill

            plan = after_fill(plan, fill.taken, fill.fallback,
                              {refusal.key: refusal.reason for refusal in fill.refused},
                              selection.force)
        return _select(plan, selection.only)

    def _chosen(self, selection: Selection) -> Callable[[str], bool]:
        """Which shots a run may take from the remote: those it works on (`only`, and the
        shots whose frames they take), never one it is told to render again (`force`)."""
        ids = {shot.id for shot in self._load().shots}
        if selection.only:
            upstream = {shot.id: shot.upstream for shot in self._load().shots}
            work = [i for i in ids if any(fnmatch.fnmatchcase(i, p) for p in selection.only)]
            ids = set()
            while work:
                shot_id = work.pop()
                if shot_id not in ids:
                    ids.add(shot_id)
                    work.extend(upstream.get(shot_id, ()))
        chosen = ids - set(selection.force)
        return chosen.__contains__

    def _run_remote(self, url: str | None, endpoint_url: str | None,
                    use: bool) -> RemoteSpec | None:
        """The remote a plan or an apply uses (None: none named, or `use` is False); a
        simulated run uses its `simulated/` part, so an animatic never stands for a render."""
        if not use:
            if url is not None:
                raise UsageError("--remote and --no-remote say opposite things; give one")
            return None
        board = self._load().settings.remote
        if url is None and board is None and not os.environ.get("KLING_PIPELINE_REMOTE"):
            return None  # none named: nothing to import (a plan of 10,000 shots is timed)
        from kling_pipeline.remote.url import choose_remote

        spec = choose_remote(url, endpoint_url, board, self.path.resolve().parent)
        return spec.simulated() if spec is not None and self.simulate else spec

    def _shots(self, lock: LockFile, store: Store, force: Sequence[str] = ()
               ) -> tuple[list[ShotRequest], Mapping[str, Waiting]]:
        """The shots with the keys the lock and the store make exact (a shot that takes a
        frame of another is keyed by the frame's bytes once that video is here), and the
        shots whose keys still wait for frames (of shots not rendered, or `force`d)."""
        shots = self._load().shots
        if not any(shot.frames for shot in shots):
            return shots, {}  # nothing to extract or look up (nor to import: 12 ms)
        from kling_pipeline.plan.inputs import Inputs

        resolution = Inputs(store).resolve_all(shots, lock, force)
        return resolution.shots, resolution.waiting

    def _resolver(self, store: Store, selection: Selection) -> Resolver:
        from kling_pipeline.plan.inputs import Inputs, Resolver
        from kling_pipeline.plan.pricing import PriceTable

        settings = self._load().settings
        return Resolver(Inputs(store), settings.name, PriceTable(settings.provider.prices),
                        force=selection.force, retry_failed=selection.retry_failed,
                        resubmit_unknown=selection.resubmit_unknown)

    # -- apply ---------------------------------------------------------------------------

    def apply(self, *, force: Sequence[str] = (), only: Sequence[str] = (),
              retry_failed: bool = False, resubmit_unknown: bool = False,
              jobs: int | None = None, max_wait: float = 3600.0, lock_timeout: float = 30.0,
              base_url: str | None = None, api_key: str | None = None,
              on_plan: Callable[[Plan], bool | None] | None = None,
              on_event: OnEvent = ignore, cancel: CancelToken | None = None,
              transport: httpx.AsyncBaseTransport | None = None,
              remote: str | None = None, remote_endpoint_url: str | None = None,
              use_remote: bool = True, push: bool = True) -> ApplyReport:
        """Render what changed: submit, poll, download, verify, and fill the output folder.

        Every task id is in the lock file before anything else happens with it, so a run
        that stops (`cancel`, a crash, kill -9) is finished by applying again, without paying
        twice. `on_plan` sees the plan (under the run lock, after the key is found, before
        anything is written); returning False stops with `Declined`. `api_key` defaults to
        the environment variable the storyboard names; it is never written anywhere.
        `transport` replaces httpx's (a test's `httpx.MockTransport`). Shots that fail are
        in the report (`report.ok`, `report.exit_code`), not raised.

        With a remote (`remote`, else KLING_PIPELINE_REMOTE, else the storyboard's; none with
        `use_remote=False`), a shot whose video this machine lacks is first taken from the
        remote when it has it and its bytes prove it (docs/remote.md), and every video the
        run downloads is pushed to it (not with `push=False`). A remote that cannot be
        reached is a warning (`report.remote.down`); the run goes on without it.
        """
        from kling_pipeline.plan.jobs import make_jobs
        from kling_pipeline.results import ApplyReport
        from kling_pipeline.run.settle import needs_network
        from kling_pipeline.state.cache import Store
        from kling_pipeline.state.lockfile import read_lock
        from kling_pipeline.state.lockstore import LockKeeper, hold_run_lock

        selection = self._preflight(force, only, retry_failed, resubmit_unknown, base_url)
        spec = self._run_remote(remote, remote_endpoint_url, use_remote)
        target = self.target
        store = Store(target.store_root)
        session = fill = publisher = None
        try:
            with hold_run_lock(target.lock_path, lock_timeout):
                had_lock = target.lock_path.exists()
                lock = read_lock(target.lock_path, self.name)
                if spec is not None:
                    session, fill = self._take_from_remote(spec, lock, store, selection, jobs,
                                                           on_event)
                plan = self._plan(lock, store, selection, fill)
                work, changes = make_jobs(plan, store)
                network = needs_network(work)
                key = self._api_key(api_key) if network and not target.simulated else None
                if on_plan is not None and on_plan(plan) is False:
                    raise Declined("nothing was submitted")
                keeper = LockKeeper(target.lock_path, lock)
                keeper.put(changes)
                store.clean_tmp()
                resolver = self._resolver(store, selection) if any(
                    job.waits_for for job in work) else None
                claimer = None
                if session is not None:
                    claimer = self._claimer(session, store, lock, selection, network,
                                            _renewed(plan, selection),
                                            _forced_keys(plan, selection))
                if session is not None and network and push:
                    from kling_pipeline.remote.publish import Publisher

                    publisher = Publisher(session, store)
                run, folder = self._run_and_fill(
                    work, keeper, store, had_lock, _Run(jobs, max_wait, base_url, key, network),
                    on_event, cancel, transport, resolver, publisher, claimer)
        finally:
            if publisher is not None:  # only when an exception passes: closed already
                publisher.close(wait=False)
            store.close()
        covered = {shot_id for shot in run.results for shot_id in shot.shot_ids}
        missing = tuple(item.id for item in plan.items
                        if item.action != "remove" and item.id not in covered)
        return ApplyReport(plan, run, missing, folder,
                           _remote_use(session, fill, run.published) if session else None)

    def _claimer(self, session: RemoteSession, store: Store, lock: LockFile,
                 selection: Selection, network: bool,
                 renew: dict[str, str] | None = None,
                 forced: frozenset[str] = frozenset()) -> Claimer | None:
        """Put right the claims a killed run of this checkout left (whenever the lock has a
        shot in flight or unknown, even in a run with nothing to submit), and the claims of
        a run that asks the API something (None: no such run, or the remote cannot make
        claims or be reached: said once, and the run goes on)."""
        import socket

        from kling_pipeline.errors import RemoteError
        from kling_pipeline.events import Note
        from kling_pipeline.remote.claims import Claims
        from kling_pipeline.run.claiming import (
            Claimer,
            claim_expiry,
            generations_now,
            holder_id,
            owed_by,
            reconcile,
            unsettled,
        )
        from kling_pipeline.run.owed import OwedClaims

        holder = holder_id(store.root, self.target.lock_path)
        owed = OwedClaims(store.root, holder)  # updates earlier runs could not make
        if not network and not unsettled(lock) and not owed.load():
            return None
        try:
            remote = session.open()
        except RemoteError as exc:
            session.give_up(exc, "going on without the remote")
            owed.add(owed_by(lock))
            return None
        claims = Claims(remote, holder, socket.gethostname(), expiry=claim_expiry())
        if not claims.supported:
            session.note(Note(f"warning: the remote {session.shown} cannot make an atomic "
                              f"claim ({session.spec.protocol}://): two machines applying "
                              "at once may pay for the same request (docs/remote.md)"))
            owed.settle(owed.load())  # no claims here to put right
            return None
        reconcile(claims, session, lock, owed)
        if not network:
            return None
        try:
            replaced = generations_now(claims, sorted(forced)) if forced else {}
        except RemoteError as exc:
            session.give_up(exc, "going on without the remote")
            return None
        return Claimer(claims, session, resubmit_unknown=selection.resubmit_unknown,
                       renew=renew, forced=replaced, owed=owed)

    def _take_from_remote(self, spec: RemoteSpec, lock: LockFile, store: Store,
                          selection: Selection, jobs: int | None, on_event: OnEvent,
                          ) -> tuple[RemoteSession, RemoteFill]:
        """Before the plan: every video the run's shots lack that the remote can prove."""
        from kling_pipeline.remote.fill import fill_from_remote
        from kling_pipeline.remote.session import RemoteSession
        from kling_pipeline.remote.transfer import DEFAULT_JOBS

        session = RemoteSession(spec, on_event)
        fill = fill_from_remote(session, store, lock,
                                lambda: self._shots(lock, store, selection.force),
                                selected=self._chosen(selection), jobs=jobs or DEFAULT_JOBS,
                                on_event=on_event)
        return session, fill

    def _preflight(self, force: Sequence[str], only: Sequence[str], retry_failed: bool,
                   resubmit_unknown: bool, base_url: str | None) -> Selection:
        """Everything that can be refused before the run lock is taken or a file is made:
        the options, the selection, the output folder, a lock file that cannot be read."""
        from kling_pipeline.output.folder import check_output_folder
        from kling_pipeline.state.lockfile import read_lock
        from kling_pipeline.state.lockstore import run_lock_path

        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise UsageError("must start with http:// or https://", option="--base-url")
        if self.simulate and base_url:
            raise UsageError("--simulate and --base-url choose different servers; give one "
                             "of them")
        selection = self._selection(force, only, retry_failed, resubmit_unknown)
        target = self.target
        check_output_folder(target.out_dir, self.path, self.name, cache=(
            target.store_root.parent if target.simulated else target.store_root))
        if not run_lock_path(target.lock_path).exists():
            read_lock(target.lock_path, self.name)  # a bad lock file: stop before making one
        return selection

    def _run_and_fill(self, work: list[Job], keeper: LockKeeper, store: Store, had_lock: bool,
                      how: _Run, on_event: OnEvent, cancel: CancelToken | None,
                      transport: httpx.AsyncBaseTransport | None, resolver: Resolver | None,
                      publisher: Publisher | None = None, claimer: Claimer | None = None,
                      ) -> tuple[RunReport, FolderResult | None]:
        """Run the jobs, then bring the output folder in line with the lock, even when the
        run ends in an exception (the folder shows what is done; only a whole run makes a
        cut; a run with nothing to show makes no folder)."""
        from kling_pipeline.output.folder import OutputFolder

        target = self.target
        folder = OutputFolder(target.out_dir, self._load().shots, store,
                              storyboard=self.name, simulated=target.simulated)
        run = None
        try:
            on_event(RunStarted(len(work)))
            try:
                if how.network:
                    from kling_pipeline.run.runner import run_jobs

                    with self._server(how.network, how.base_url, how.key) as (url, key):
                        run = run_jobs(work, base_url=url, api_key=key, keeper=keeper,
                                       store=store,
                                       options=self._run_options(how.jobs, how.max_wait),
                                       on_event=on_event, on_done=folder.place_job,
                                       cancel=cancel, transport=transport, resolver=resolver,
                                       claimer=claimer, on_stored=None if publisher is None else (
                                           lambda job, output, followed: publisher.publish(
                                               job.key, output, job.task_id, job.endpoint,
                                               maybe_there=followed)))
                    if publisher is not None:  # the last uploads: skipped after a stop
                        run.published = publisher.close(wait=not run.interrupted)
                else:  # nothing to ask the API: no event loop, no HTTP client (settle.py)
                    from kling_pipeline.run.settle import EventReporter, settle_jobs

                    run = settle_jobs(work, keeper, EventReporter(on_event),
                                      lambda job, output: folder.place_job(job, output.sha256))
            finally:
                on_event(RunEnded())
        finally:
            if not had_lock:  # a run that recorded nothing leaves no lock file
                keeper.discard_if_empty()
            result = folder.sync(
                keeper.lock, build_final=run is not None and not run.interrupted,
                notify=lambda step: on_event(FolderStep(step)),
                as_run=self._shots(keeper.lock, store)[0],
            ) if folder.worth_writing(keeper.lock) else None
        assert run is not None  # run_jobs returned (it raised otherwise)
        return run, result

    def _api_key(self, given: str | None) -> str:
        from kling_pipeline.target import api_key_from_env

        return given if given else api_key_from_env(self._load().settings.provider.api_key_env)

    def _run_options(self, jobs: int | None, max_wait: float) -> RunOptions:
        from kling_pipeline.run.executor import RunOptions

        provider = self._load().settings.provider
        pace = _simulator_pace() if self.simulate else provider.requests_per_minute
        return RunOptions(jobs=jobs or provider.concurrency, max_wait=max_wait,
                          requests_per_minute=pace)

    @contextlib.contextmanager
    def _server(self, network: bool, base_url: str | None,
                key: str | None) -> Iterator[tuple[str | None, str | None]]:
        """The server a run talks to and the key it sends: the embedded simulator (started
        here, stopped after) for a simulated target, else `base_url` or the storyboard's
        provider with the real key; none when no job needs the network."""
        if not network:
            yield None, None
        elif self.target.simulated:
            from kling_pipeline.target import SIMULATOR_KEY, embedded_simulator

            with embedded_simulator(self.target) as url:
                yield url, SIMULATOR_KEY
        else:
            yield base_url or self._load().settings.provider.base_url, key

    # -- status --------------------------------------------------------------------------

    def status(self, *, refresh: bool = False, base_url: str | None = None,
               api_key: str | None = None) -> list[ShotStatus]:
        """Every shot's state from the lock file, the store and the output folder (offline);
        `refresh` asks the API about the tasks in flight (reads only, never a submit)."""
        from kling_pipeline.state.cache import Store
        from kling_pipeline.state.lockfile import read_lock
        from kling_pipeline.views.status import apply_refresh, collect_status

        loaded, target = self._load(), self.target
        store = Store(target.store_root)
        try:
            lock = read_lock(target.lock_path, loaded.settings.name)
            rows = collect_status(self._shots(lock, store)[0], lock, store, target.out_dir)
        finally:
            store.close()
        if not refresh:
            return rows
        tasks = {row.id: row.task_id for row in rows
                 if row.task_id and row.state in ("queued", "processing", "rendered")}
        if not tasks:
            return apply_refresh(rows, {})
        from kling_pipeline.run.runner import ask_tasks

        key = None if target.simulated else self._api_key(api_key)
        with self._server(True, base_url, key) as (url, key):
            assert url is not None and key is not None
            return apply_refresh(rows, ask_tasks(url, key, tasks))

    # -- the remote ----------------------------------------------------------------------

    def remote(self, url: str | None = None, endpoint_url: str | None = None) -> RemoteSpec:
        """The remote push and pull use: `url` (as --remote), else KLING_PIPELINE_REMOTE,
        else the storyboard's `remote:` (its `simulated/` part for a simulated project);
        UsageError when none is named."""
        spec = self._run_remote(url, endpoint_url, True)
        if spec is None:
            raise UsageError("no remote: give --remote URL, set KLING_PIPELINE_REMOTE, or add "
                             "remote: to the storyboard (docs/remote.md)", option="--remote")
        return spec

    def push(self, *, remote: str | None = None, endpoint_url: str | None = None,
             jobs: int | None = None, on_event: OnEvent = ignore) -> PushReport:
        """Upload every video the lock file references that the remote lacks (each hashed
        first), and the index entries of their request keys. Never calls the provider."""
        from kling_pipeline.remote.store import RemoteStore
        from kling_pipeline.remote.transfer import DEFAULT_JOBS, push
        from kling_pipeline.state.cache import Store
        from kling_pipeline.state.lockfile import read_lock

        spec = self.remote(remote, endpoint_url)
        target = self.target
        lock = read_lock(target.lock_path, self.name)
        store = Store(target.store_root)
        try:
            return push(RemoteStore(spec), store, lock, jobs=jobs or DEFAULT_JOBS,
                        on_event=on_event)
        finally:
            store.close()

    def pull(self, *, remote: str | None = None, endpoint_url: str | None = None,
             jobs: int | None = None, lock_timeout: float = 30.0,
             on_event: OnEvent = ignore) -> PullReport:
        """Download every video the lock file references that the local store lacks (each
        verified by its sha256; a mismatch is refused and named), then fill the output
        folder as apply does. Never calls the provider; asks the remote nothing when the
        store lacks nothing."""
        from dataclasses import replace as replace_report

        from kling_pipeline.output.folder import OutputFolder
        from kling_pipeline.remote.store import RemoteStore
        from kling_pipeline.remote.transfer import DEFAULT_JOBS, pull
        from kling_pipeline.state.cache import Store
        from kling_pipeline.state.lockfile import read_lock
        from kling_pipeline.state.lockstore import hold_run_lock

        spec = self.remote(remote, endpoint_url)
        self._preflight((), (), False, False, None)
        target = self.target
        store = Store(target.store_root)
        try:
            with hold_run_lock(target.lock_path, lock_timeout):
                lock = read_lock(target.lock_path, self.name)
                folder = OutputFolder(target.out_dir, self._load().shots, store,
                                      storyboard=self.name, simulated=target.simulated)
                report = pull(lambda: RemoteStore(spec), store, lock,
                              jobs=jobs or DEFAULT_JOBS, on_event=on_event,
                              on_stored=lambda video: folder.place(video.shot_ids,
                                                                   video.output.sha256))
                if not folder.worth_writing(lock):
                    return report
                result = folder.sync(lock, build_final=True,
                                     notify=lambda step: on_event(FolderStep(step)),
                                     as_run=self._shots(lock, store)[0])
        finally:
            store.close()
        return replace_report(report, folder=result)

    def gc_remote(self, *, remote: str | None = None, endpoint_url: str | None = None,
                  force: bool = False, lock_timeout: float = 30.0) -> RemoteGcReport:
        """The remote's objects that no lock file of the project (the storyboard's folder
        and below) references; with `force`, delete them and their index entries, holding
        the project's run locks and reading every lock again just before deleting (an object
        a lock references then is kept). Only this project's locks are known: see
        docs/remote.md before forcing on a remote other projects or branches use."""
        from kling_pipeline.remote.gc import delete_remote_garbage, find_remote_garbage
        from kling_pipeline.remote.store import RemoteStore
        from kling_pipeline.state.lockstore import hold_run_lock

        spec = self.remote(remote, endpoint_url)
        project = self.path.resolve().parent
        store = RemoteStore(spec)
        report = find_remote_garbage(store, project)
        if not force:
            return report
        with contextlib.ExitStack() as held:  # no apply here records a video meanwhile
            for lock in report.locks:
                held.enter_context(hold_run_lock(lock, lock_timeout))
            return delete_remote_garbage(store, report)

    # -- the output folder ---------------------------------------------------------------

    def manifest(self) -> Manifest | None:
        """What the output folder holds, as its last apply wrote it; None before the first."""
        from kling_pipeline.output.manifest import read_manifest

        return read_manifest(self.target.out_dir / "manifest.json")


def _select(plan: Plan, only: Sequence[str]) -> Plan:
    """Keep the shots whose id matches one of the globs, and the shots whose frames they wait
    for (said in their notes, as Terraform's -target does); removals wait for a run of them
    all."""
    if not only:
        return plan
    by_id = {item.id: item for item in plan.items if item.action != "remove"}
    kept = {item_id: item for item_id, item in by_id.items()
            if any(fnmatch.fnmatchcase(item_id, pattern) for pattern in only)}
    work = list(kept.values())
    while work:
        item = work.pop()
        for upstream in item.waits_for:
            if upstream in kept or upstream not in by_id:
                continue
            needed = by_id[upstream]
            note = f"rendered for {item.id}, which needs its frame (not in --only)"
            kept[upstream] = replace(needed, note=f"{needed.note}; {note}" if needed.note
                                     else note)
            work.append(kept[upstream])
    return replace(plan, items=[kept[item.id] for item in plan.items if item.id in kept])


def _renewed(plan: Plan, selection: Selection) -> dict[str, str]:
    """The request keys --retry-failed pays for again, each with the failed task id this lock
    has for that very request. A claim in the remote that holds that task is the render being
    replaced: superseded. One holding another task is another machine's new render of the
    request: followed, not paid twice. (Forced shots go by claim generation: _forced_keys.)"""
    if not selection.retry_failed:
        return {}
    return {item.shot.key: entry.task_id for item in plan.to_submit
            if item.shot is not None and (entry := item.entry) is not None
            and entry.status == "failed" and entry.key == item.shot.key and entry.task_id}


def _forced_keys(plan: Plan, selection: Selection) -> frozenset[str]:
    """The request keys of the shots --force names: every render of them made before the run
    is to be replaced, here or on another machine."""
    return frozenset(item.shot.key for item in plan.to_submit
                     if item.shot is not None and item.id in selection.force)


def _remote_use(session: RemoteSession, fill: RemoteFill | None,
                published: Published | None) -> RemoteUse:
    from kling_pipeline.results import RemoteUse

    return RemoteUse(
        remote=session.shown,
        taken=tuple(sorted(i for ids in (fill.taken.values() if fill else ()) for i in ids)),
        refused=tuple((", ".join(r.shot_ids), r.reason) for r in (fill.refused if fill else ())),
        pushed=published.pushed if published else 0,
        not_pushed=published.left if published else 0,
        down=session.down)


def _simulator_pace() -> int:
    """Submissions a minute the embedded simulator takes (imported only for a simulated run)."""
    from kling_pipeline.simulator.config import SimulatorConfig, submit_pace

    return submit_pace(SimulatorConfig())


