"""The command line. Only this module prints or exits.

Exit codes: 0 ok, 1 a known error (invalid storyboard, failed shots, API refusal), 2 usage
(and `plan --detailed-exitcode` with work to do), 3 a bug (traceback only with --debug).
Heavy modules are imported inside the commands so that `--help` starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from kling_pipeline.apply import Target
    from kling_pipeline.cache import Store
    from kling_pipeline.executor import RunOptions, RunReport
    from kling_pipeline.jobs import Job
    from kling_pipeline.lockstore import LockKeeper
    from kling_pipeline.outfolder import FolderResult, OutputFolder

EXIT_ERROR = 1
EXIT_BUG = 3


def _color() -> bool | None:
    return False if os.environ.get("NO_COLOR") else None


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True, color=_color())
    sys.exit(EXIT_ERROR)


class _Group(click.Group):
    """Maps the project's errors to exit 1 and anything unexpected to exit 3."""

    def invoke(self, ctx: click.Context) -> Any:
        from kling_pipeline.errors import KlingPipelineError, StoryboardError

        try:
            return super().invoke(ctx)
        except KlingPipelineError as exc:
            if ctx.meta.get("debug"):
                raise
            prefix = "" if isinstance(exc, StoryboardError) else click.style(
                "error: ", fg="red", bold=True)
            _fail(prefix + str(exc))
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if ctx.meta.get("debug"):
                raise
            from kling_pipeline.textsafe import clip

            click.echo(f"internal error (a bug in kling-pipeline): {type(exc).__name__}: "
                       f"{clip(str(exc))}\nrun again with --debug for the traceback, and please "
                       "report it", err=True)
            sys.exit(EXIT_BUG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="KLING_PIPELINE_DEBUG",
              help="Show tracebacks for errors.")
@click.version_option(package_name="kling-pipeline", prog_name="kling-pipeline")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """A make-style pipeline for the Kling video API: storyboard in, videos out.

    Validate a storyboard, see what a render would do and cost, and render only what changed.
    """
    ctx.meta["debug"] = debug


storyboard_arg = click.argument(
    "storyboard", type=click.Path(dir_okay=False, path_type=Path))
var_option = click.option(
    "--var", "variables", multiple=True, metavar="KEY=VALUE",
    help="Set a template variable (over shot and storyboard vars). Repeatable.")
no_cache_option = click.option(
    "--no-cache", is_flag=True, help="Do not read or write the render/image memos.")


force_option = click.option(
    "--force", "force", multiple=True, metavar="SHOT",
    help="Render this shot again even if it is up to date (paid). Repeatable.")
retry_failed_option = click.option(
    "--retry-failed", is_flag=True, help="Render failed shots again (paid).")
resubmit_unknown_option = click.option(
    "--resubmit-unknown", is_flag=True,
    help="Submit again shots whose submission was never confirmed (may pay twice).")
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Where downloaded videos are stored (default: .kling-cache/ beside the storyboard).")
out_option = click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: the storyboard's output:, else renders/<name>/ beside "
         "the storyboard).")


def _vars(values: tuple[str, ...]) -> dict[str, str]:
    from kling_pipeline.storyboard import parse_var

    parsed: dict[str, str] = {}
    for text in values:
        try:
            key, value = parse_var(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--var") from exc
        parsed[key] = value
    return parsed


def _load(storyboard: Path, variables: tuple[str, ...], no_cache: bool) -> Any:
    from kling_pipeline.storyboard import load_storyboard

    return load_storyboard(storyboard, cli_vars=_vars(variables), use_cache=not no_cache)


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.option("--simulate", is_flag=True,
              help="Taken as apply takes it; a storyboard is valid or not whatever the server.")
def validate(storyboard: Path, variables: tuple[str, ...], no_cache: bool,
             as_json: bool, simulate: bool) -> None:
    """Check a storyboard against the schema and every constraint of its models."""
    from kling_pipeline.errors import StoryboardError

    try:
        loaded = _load(storyboard, variables, no_cache)
    except StoryboardError as exc:
        if not as_json:
            raise
        click.echo(json.dumps({"valid": False, "errors": [
            {"file": d.file, "line": d.line, "column": d.column, "location": d.location,
             "message": d.message} for d in exc.diagnostics]}, indent=2))
        sys.exit(EXIT_ERROR)
    if as_json:
        from kling_pipeline.textsafe import json_printable

        click.echo(json_printable(json.dumps({
            "valid": True, "storyboard": loaded.board.name, "shots": [
                {"id": s.id, "endpoint": s.endpoint, "key": s.key, "duration": s.duration,
                 "request": s.body} for s in loaded.shots]}, indent=2, ensure_ascii=False)))
        return
    endpoints = sorted({s.endpoint for s in loaded.shots})
    seconds = sum(s.duration for s in loaded.shots)
    click.echo(f"{storyboard}: valid: {len(loaded.shots)} shots, {seconds} s of video "
               f"({', '.join(endpoints)})")


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there is nothing to do, 2 when there is work to do.")
@force_option
@retry_failed_option
@resubmit_unknown_option
@click.option("--simulate", is_flag=True,
              help="What apply --simulate would do: the simulated lock file and cache.")
def plan(storyboard: Path, variables: tuple[str, ...], no_cache: bool, as_json: bool,
         detailed_exitcode: bool, force: tuple[str, ...], retry_failed: bool,
         resubmit_unknown: bool, simulate: bool) -> None:
    """Show what a render would do and cost, without touching the network."""
    from kling_pipeline.apply import target_for
    from kling_pipeline.cache import Store
    from kling_pipeline.lockfile import read_lock
    from kling_pipeline.planner import make_plan
    from kling_pipeline.planview import render_json, render_text
    from kling_pipeline.pricing import PriceTable

    loaded = _load(storyboard, variables, no_cache)
    _check_selection(loaded.shots, force, ())
    target = target_for(storyboard, loaded.board, simulate=simulate)
    lock = read_lock(target.lock_path, loaded.board.name)
    store = Store(target.store_root)  # what apply would reuse instead of paying
    try:
        result = make_plan(loaded.board.name, loaded.shots, lock,
                           PriceTable(loaded.board.provider.prices), force=force,
                           retry_failed=retry_failed, resubmit_unknown=resubmit_unknown,
                           cached=store.lookup)
    finally:
        store.close()
    if as_json:
        from kling_pipeline.textsafe import json_printable

        click.echo(json_printable(json.dumps(render_json(result), indent=2, ensure_ascii=False)))
    else:
        def style(text: str, color: str) -> str:
            return click.style(text, fg=color)

        click.echo(render_text(result, style), color=_color())
        if simulate:
            click.echo("Simulated: apply --simulate renders animatics of the timing on the local "
                       "simulator; nothing is billed.")
    if detailed_exitcode and result.has_work:
        sys.exit(2)


def _seconds(text: str) -> float:
    """`90s`, `45m`, `2h` or a plain number of seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    factor = units.get(text[-1:], 0.0)
    number = text[:-1] if factor else text
    try:
        value = float(number) * (factor or 1.0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 45m or 2h") from None
    if value <= 0:
        raise click.BadParameter("must be more than 0")
    return value


def _check_selection(shots: Any, force: tuple[str, ...], only: tuple[str, ...]) -> None:
    from kling_pipeline.apply import unmatched_globs

    ids = {s.id for s in shots}
    unknown = sorted(set(force) - ids)
    if unknown:
        raise click.BadParameter(f"no shot named {', '.join(unknown)}", param_hint="--force")
    nothing = unmatched_globs(shots, only)
    if nothing:
        raise click.BadParameter(f"{', '.join(nothing)} matches no shot id",
                                 param_hint="--only")


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("-y", "--yes", is_flag=True, help="Submit without asking for confirmation.")
@click.option("--simulate", is_flag=True,
              help="Render on the built-in local simulator: no key, no network, no charge "
                   "(its own lock file and output folder).")
@click.option("--base-url", metavar="URL", help="API server (default: the storyboard's "
                                                "provider.base_url).")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), metavar="N",
              help="Shots worked on at once (default: provider.concurrency, 4).")
@click.option("--max-wait", default="60m", show_default=True, metavar="DURATION",
              help="How long one shot is polled before it is left in flight for the next run.")
@click.option("--lock-timeout", default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for another apply on this storyboard to finish.")
@click.option("--only", multiple=True, metavar="GLOB",
              help="Work only on shots whose id matches (e.g. 'wave-*'). Repeatable.")
@force_option
@retry_failed_option
@resubmit_unknown_option
@cache_dir_option
@out_option
def apply(storyboard: Path, variables: tuple[str, ...], no_cache: bool, yes: bool,
          simulate: bool, base_url: str | None, jobs: int | None, max_wait: str,
          lock_timeout: str, only: tuple[str, ...], force: tuple[str, ...],
          retry_failed: bool, resubmit_unknown: bool, cache_dir: Path | None,
          out_dir: Path | None) -> None:
    """Render what changed: submit, poll, download, and fill the output folder.

    Every task id is in the lock file before anything else happens, so an interrupted run
    (Ctrl-C, a crash, kill -9) is resumed by running apply again, without paying twice.
    """
    from kling_pipeline.apply import api_key_from_env, needs_network, select, target_for
    from kling_pipeline.cache import Store
    from kling_pipeline.executor import RunOptions
    from kling_pipeline.jobs import make_jobs
    from kling_pipeline.lockfile import read_lock
    from kling_pipeline.lockstore import LockKeeper, hold_run_lock, run_lock_path
    from kling_pipeline.outfolder import OutputFolder, check_output_folder
    from kling_pipeline.planner import make_plan
    from kling_pipeline.planview import render_text
    from kling_pipeline.pricing import PriceTable

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with http:// or https://", param_hint="--base-url")
    if simulate and base_url:
        raise click.UsageError("--simulate and --base-url choose different servers; "
                               "give one of them")
    wait, lock_wait = _seconds(max_wait), _seconds(lock_timeout)
    loaded = _load(storyboard, variables, no_cache)
    _check_selection(loaded.shots, force, only)
    provider = loaded.board.provider
    target = target_for(storyboard, loaded.board, simulate=simulate, cache_dir=cache_dir,
                        out_dir=out_dir)
    check_output_folder(target.out_dir, storyboard, loaded.board.name)
    if not run_lock_path(target.lock_path).exists():
        read_lock(target.lock_path, loaded.board.name)  # a bad lock file: stop before making one
    store = Store(target.store_root)
    with hold_run_lock(target.lock_path, lock_wait):
        had_lock = target.lock_path.exists()
        lock = read_lock(target.lock_path, loaded.board.name)
        plan = select(make_plan(loaded.board.name, loaded.shots, lock,
                                PriceTable(provider.prices), force=force,
                                retry_failed=retry_failed, resubmit_unknown=resubmit_unknown,
                                cached=store.lookup), only)
        click.echo(render_text(plan, lambda text, color: click.style(text, fg=color)),
                   color=_color())
        work, changes = make_jobs(plan, store)
        if needs_network(work) and not target.simulated:
            api_key_from_env(provider.api_key_env)  # fail before asking, and before any write
        if target.simulated:
            click.echo("Simulated: the local simulator renders animatics of the timing; "
                       "nothing is billed.")
        elif plan.to_submit and not yes:
            _confirm(len(plan.to_submit))
        keeper = LockKeeper(target.lock_path, lock)
        keeper.put(changes)
        store.clean_tmp()
        folder = OutputFolder(target.out_dir, loaded.shots, store,
                              storyboard=loaded.board.name, simulated=target.simulated)
        options = RunOptions(jobs=jobs or provider.concurrency, max_wait=wait,
                             requests_per_minute=_simulator_pace() if target.simulated
                             else provider.requests_per_minute)
        report = None
        try:
            report = _execute(work, target, base_url or provider.base_url,
                              provider.api_key_env, keeper, store, options, folder)
        finally:
            if not had_lock:  # a run that recorded nothing leaves no lock file for git to show
                keeper.discard_if_empty()
            # Even after a crash the folder shows what is done; only a whole run makes a cut.
            # A run with nothing to show makes no folder at all.
            result = folder.sync(keeper.lock,
                                 build_final=report is not None and not report.interrupted,
                                 notify=lambda step: click.echo(f"{step} ...")
                                 ) if folder.worth_writing(keeper.lock) else None
            store.close()
    _finish(report, plan, result)


def _simulator_pace() -> int:
    """Submissions a minute the embedded simulator takes (imported only for a simulated run)."""
    from kling_pipeline.simulator.config import SimulatorConfig, submit_pace

    return submit_pace(SimulatorConfig())


def _confirm(count: int) -> None:
    if not sys.stdin.isatty():
        _fail(f"error: {count} shot(s) would be submitted and billed, and there is no "
              "terminal to ask for confirmation: run again with --yes to go ahead")
    if not click.confirm(f"Submit {count} shot(s) now? They are billed", default=False):
        _fail("nothing was submitted")


def _execute(work: list[Job], target: Target, base_url: str, key_env: str,
             keeper: LockKeeper, store: Store, options: RunOptions,
             folder: OutputFolder) -> RunReport:
    """Start the simulator if asked, pick the key, and run the jobs with a progress view."""
    import contextlib

    from kling_pipeline.apply import (
        SIMULATOR_KEY,
        api_key_from_env,
        embedded_simulator,
        needs_network,
        run_jobs,
    )
    from kling_pipeline.progress import LiveReporter, PlainReporter

    live = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    reporter = LiveReporter(len(work), color=_color() is None) if live else PlainReporter(
        click.echo, len(work))
    network = needs_network(work)
    with contextlib.ExitStack() as stack:
        key: str | None = None
        if network and target.simulated:
            base_url = stack.enter_context(embedded_simulator(target))
            key = SIMULATOR_KEY
        elif network:
            key = api_key_from_env(key_env)
        with reporter:
            return run_jobs(work, base_url=base_url if network else None, api_key=key,
                            keeper=keeper, store=store, options=options, reporter=reporter,
                            on_done=folder.place_job)


def _finish(report: Any, plan: Any, folder: FolderResult | None) -> None:
    from kling_pipeline.progress import render_folder, render_summary

    covered = {shot_id for result in report.results for shot_id in result.shot_ids}
    missing = [item.id for item in plan.items
               if item.action != "remove" and item.id not in covered]
    click.echo("")
    click.echo(render_summary(report, missing, [item.id for item in plan.items]))
    click.echo(render_folder(folder) if folder is not None else
               "Output: none written: no shot is rendered yet.")
    if report.interrupted:
        sys.exit(130)
    if missing or any(r.outcome not in ("done", "up to date") for r in report.results):
        sys.exit(EXIT_ERROR)


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--refresh", is_flag=True,
              help="Ask the API about shots in flight (reads only; nothing is submitted).")
@click.option("--simulate", is_flag=True, help="The status of the simulated renders.")
@click.option("--base-url", metavar="URL", help="API server for --refresh (default: the "
                                                "storyboard's provider.base_url).")
@cache_dir_option
@out_option
def status(storyboard: Path, variables: tuple[str, ...], no_cache: bool, as_json: bool,
           refresh: bool, simulate: bool, base_url: str | None, cache_dir: Path | None,
           out_dir: Path | None) -> None:
    """Show every shot's state from the lock file, the cache and the output folder.

    Offline unless --refresh is given.
    """
    from kling_pipeline.apply import (
        SIMULATOR_KEY,
        api_key_from_env,
        ask_tasks,
        embedded_simulator,
        target_for,
    )
    from kling_pipeline.cache import Store
    from kling_pipeline.lockfile import read_lock
    from kling_pipeline.statusview import (
        apply_refresh,
        collect_status,
        render_status_json,
        render_status_text,
    )

    loaded = _load(storyboard, variables, no_cache)
    target = target_for(storyboard, loaded.board, simulate=simulate, cache_dir=cache_dir,
                        out_dir=out_dir)
    store = Store(target.store_root)
    try:
        rows = collect_status(loaded.shots, read_lock(target.lock_path, loaded.board.name),
                              store, target.out_dir)
    finally:
        store.close()
    if refresh:
        tasks = {row.id: row.task_id for row in rows
                 if row.task_id and row.state in ("queued", "processing", "rendered")}
        if tasks and simulate:
            with embedded_simulator(target) as url:
                live = ask_tasks(url, SIMULATOR_KEY, tasks)
        elif tasks:
            live = ask_tasks(base_url or loaded.board.provider.base_url,
                             api_key_from_env(loaded.board.provider.api_key_env), tasks)
        else:
            live = {}
        rows = apply_refresh(rows, live)
    if as_json:
        from kling_pipeline.textsafe import json_printable

        click.echo(json_printable(json.dumps(render_status_json(rows, loaded.board.name),
                                             indent=2, ensure_ascii=False)))
    else:
        click.echo(render_status_text(rows, loaded.board.name))


@main.command()
@storyboard_arg
@cache_dir_option
@click.option("--force", is_flag=True,
              help="Delete the unreferenced videos (without it, gc only lists them).")
@click.option("--lock-timeout", default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for an apply in the project to finish before deleting.")
@click.option("--simulate", is_flag=True,
              help="Only the simulated renders' store (<cache>/simulated/).")
def gc(storyboard: Path, cache_dir: Path | None, force: bool, lock_timeout: str,
       simulate: bool) -> None:
    """List the cached videos that no lock file of the project references; --force deletes them.

    The project is the storyboard's folder and every folder below it: each *.lock.json there
    counts, and a video any of them references is never deleted. Output folders are not
    touched (their files are links or copies of their own).
    """
    import contextlib

    from kling_pipeline.gc import delete_garbage, find_garbage, render_gc_text
    from kling_pipeline.lockstore import hold_run_lock
    from kling_pipeline.storyboard import default_cache_dir

    wait = _seconds(lock_timeout)
    project = storyboard.resolve().parent
    cache = (cache_dir or default_cache_dir(storyboard)).resolve()
    if project not in cache.parents:
        click.echo(f"note: the cache {cache} is outside the project {project}: gc counts the "
                   f"lock files under {project} only, so videos that other projects sharing "
                   "this cache need look unreferenced to it", err=True)
    report = find_garbage(cache, project, simulated_only=simulate)
    if not force or not report.garbage:
        click.echo(render_gc_text(report), nl=False)
        return
    with contextlib.ExitStack() as held:  # no apply may record a video while we delete
        for lock in report.locks:
            held.enter_context(hold_run_lock(lock, wait))
        freed = delete_garbage(report)
    click.echo(render_gc_text(report, freed=freed), nl=False)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the schema to this file instead of printing it.")
def schema(output: Path | None) -> None:
    """Print the storyboard JSON Schema (for editors and other validators)."""
    from kling_pipeline.models import storyboard_schema

    text = json.dumps(storyboard_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        from kling_pipeline.fsutil import atomic_write_bytes

        atomic_write_bytes(output, text.encode("utf-8"))
        click.echo(f"wrote {output}")


def _register_simulator() -> None:
    try:
        from kling_pipeline.simulator.command import simulator_command
    except ImportError:  # pragma: no cover - the simulator is part of the package
        return
    main.add_command(simulator_command, "simulator")


_register_simulator()
