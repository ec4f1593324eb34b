"""The command line: parse the options, make one call into the library (`Project`), print what
comes back, and give the exit code. Only this module prints or exits.

Exit codes (kling_pipeline.errors): 0 ok, 1 a known error (invalid storyboard, failed shots, API
refusal), 2 usage (and `plan --detailed-exitcode` with work to do), 3 a bug (traceback only with
--debug), 130 interrupted. A command returns its exit code; `_Group` is the one place that turns
codes and errors into an exit.
Heavy modules are imported inside the commands so that `--help` starts fast.
"""

from __future__ import annotations

import gc as _gc_module
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click

from kling_pipeline.errors import (
    EXIT_BUG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from kling_pipeline.events import (
    CancelToken,
    Event,
    FolderStep,
    Note,
    RunEnded,
    RunStarted,
    ShotUpdate,
)

# Our models use no pydantic plugin, and looking for plugins scans every installed package's
# metadata (~30 ms of every command that loads a storyboard). The command line's own process
# only: a program that imports the library keeps its plugins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

if TYPE_CHECKING:
    from kling_pipeline.plan.planner import Plan
    from kling_pipeline.project import Project
    from kling_pipeline.results import ApplyReport
    from kling_pipeline.views.progress import LiveReporter, PlainReporter


def _color() -> bool | None:
    return False if os.environ.get("NO_COLOR") else None


class _Command(click.Command):
    """Turns the library's UsageError into click's, so it reads (and exits 2) like any
    other bad option of this command."""

    def invoke(self, ctx: click.Context) -> Any:
        from kling_pipeline.errors import UsageError

        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if exc.option:
                raise click.BadParameter(str(exc), ctx=ctx, param_hint=exc.option) from None
            raise click.UsageError(str(exc), ctx=ctx) from None


class _Group(click.Group):
    """The one place that maps what a command returned or raised to an exit code: its
    returned code; the project's errors to 1; Ctrl-C to 130; anything unexpected to 3."""

    command_class = _Command
    # Commands defined in another module, imported only when asked for (or listed by --help).
    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "simulator": ("kling_pipeline.simulator.command", "simulator_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            from importlib import import_module

            module, name = self.lazy[cmd_name]
            self.add_command(getattr(import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from kling_pipeline.errors import KlingPipelineError, StoryboardError

        try:
            code = super().invoke(ctx)
        except KlingPipelineError as exc:
            if ctx.meta.get("debug"):
                raise
            prefix = "" if isinstance(exc, StoryboardError) else click.style(
                "error: ", fg="red", bold=True)
            click.echo(prefix + str(exc), err=True, color=_color())
            code = EXIT_ERROR
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            code = EXIT_INTERRUPTED
        except BrokenPipeError:  # `plan | head`: the reader has all it wanted
            _stdout_closed()
            code = EXIT_ERROR
        except Exception as exc:
            if ctx.meta.get("debug"):
                raise
            from kling_pipeline.textsafe import clip

            click.echo(f"internal error (a bug in kling-pipeline): {type(exc).__name__}: "
                       f"{clip(str(exc))}\nrun again with --debug for the traceback, and please "
                       "report it", err=True)
            code = EXIT_BUG
        finally:
            _gc_module.unfreeze()  # what _project froze: collectable again (in tests)
        if isinstance(code, int) and code != EXIT_OK:
            ctx.exit(code)
        return code


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
only_option = click.option(
    "--only", multiple=True, metavar="GLOB",
    help="Work only on shots whose id matches (e.g. 'wave-*'). Repeatable.")
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


remote_option = click.option(
    "--remote", metavar="URL", help="The remote: s3://bucket/prefix, a folder, or any fsspec "
    "URL (default: $KLING_PIPELINE_REMOTE, else the storyboard's remote:).")
remote_endpoint_option = click.option(
    "--remote-endpoint-url", metavar="URL",
    help="An S3-compatible server for an s3:// remote (MinIO, R2, ...).")
no_remote_option = click.option(
    "--no-remote", is_flag=True, help="Use no remote, even one the storyboard or "
    "$KLING_PIPELINE_REMOTE names.")


def _vars(values: tuple[str, ...]) -> dict[str, str]:
    from kling_pipeline.storyboard.load import parse_var

    parsed: dict[str, str] = {}
    for text in values:
        try:
            key, value = parse_var(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--var") from exc
        parsed[key] = value
    return parsed


def _project(storyboard: Path, variables: tuple[str, ...], no_cache: bool, simulate: bool,
             cache_dir: Path | None = None, out_dir: Path | None = None) -> Project:
    """The storyboard, loaded (a StoryboardError names every problem). What it loaded lives
    as long as this process: it is frozen out of the garbage collector's reach, so the later
    collections of a 10,000-shot plan or apply do not walk it again and again."""
    from kling_pipeline.project import Project

    project = Project.open(storyboard, variables=_vars(variables), simulate=simulate,
                           cache_dir=cache_dir, out_dir=out_dir, use_cache=not no_cache)
    project.validate()
    _gc_module.freeze()
    return project


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.option("--simulate", is_flag=True,
              help="Taken as apply takes it; a storyboard is valid or not whatever the server.")
def validate(storyboard: Path, variables: tuple[str, ...], no_cache: bool,
             as_json: bool, simulate: bool) -> int:
    """Check a storyboard against the schema and every constraint of its models."""
    from kling_pipeline.errors import StoryboardError

    try:
        valid = _project(storyboard, variables, no_cache, simulate).validate()
    except StoryboardError as exc:
        if not as_json:
            raise
        click.echo(json.dumps({"valid": False, "errors": [
            {"file": d.file, "line": d.line, "column": d.column, "location": d.location,
             "message": d.message} for d in exc.diagnostics]}, indent=2))
        return EXIT_ERROR
    if as_json:
        from kling_pipeline.textsafe import json_printable

        click.echo(json_printable(json.dumps({
            "valid": True, "storyboard": valid.name, "shots": [
                {"id": s.id, "endpoint": s.endpoint, "key": s.key, "duration": s.duration,
                 "request": s.body} for s in valid.shots]}, indent=2, ensure_ascii=False)))
        return EXIT_OK
    click.echo(f"{storyboard}: valid: {len(valid.shots)} shots, {valid.seconds} s of video "
               f"({', '.join(valid.endpoints)})")
    return EXIT_OK


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there is nothing to do, 2 when there is work to do.")
@only_option
@force_option
@retry_failed_option
@resubmit_unknown_option
@click.option("--simulate", is_flag=True,
              help="What apply --simulate would do: the simulated lock file and cache.")
@cache_dir_option
@remote_option
@remote_endpoint_option
@no_remote_option
def plan(storyboard: Path, variables: tuple[str, ...], no_cache: bool, as_json: bool,
         detailed_exitcode: bool, only: tuple[str, ...], force: tuple[str, ...],
         retry_failed: bool,
         resubmit_unknown: bool, simulate: bool, cache_dir: Path | None, remote: str | None,
         remote_endpoint_url: str | None, no_remote: bool) -> int:
    """Show what a render would do and cost, without calling the provider.

    With a remote, the shots whose videos this machine lacks are looked up in its index
    (one listing; none when nothing is lacking).
    """
    result = _project(storyboard, variables, no_cache, simulate, cache_dir).plan(
        force=force, only=only, retry_failed=retry_failed, resubmit_unknown=resubmit_unknown,
        remote=remote, remote_endpoint_url=remote_endpoint_url, use_remote=not no_remote)
    if as_json:
        from kling_pipeline.textsafe import json_printable
        from kling_pipeline.views.plan import render_json

        click.echo(json_printable(json.dumps(render_json(result), indent=2, ensure_ascii=False)))
    else:
        _show_plan(result)
        if simulate:
            click.echo("Simulated: apply --simulate renders animatics of the timing on the local "
                       "simulator; nothing is billed.")
    return EXIT_USAGE if detailed_exitcode and result.has_work else EXIT_OK


def _show_plan(plan: Plan) -> None:
    from kling_pipeline.views.plan import render_text

    click.echo(render_text(plan, lambda text, color: click.style(text, fg=color)),
               color=_color())


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
@only_option
@force_option
@retry_failed_option
@resubmit_unknown_option
@cache_dir_option
@out_option
@remote_option
@remote_endpoint_option
@no_remote_option
@click.option("--no-push", is_flag=True,
              help="Do not push the videos this run downloads to the remote.")
def apply(storyboard: Path, variables: tuple[str, ...], no_cache: bool, yes: bool,
          simulate: bool, base_url: str | None, jobs: int | None, max_wait: str,
          lock_timeout: str, only: tuple[str, ...], force: tuple[str, ...],
          retry_failed: bool, resubmit_unknown: bool, cache_dir: Path | None,
          out_dir: Path | None, remote: str | None, remote_endpoint_url: str | None,
          no_remote: bool, no_push: bool) -> int:
    """Render what changed: submit, poll, download, and fill the output folder.

    Every task id is in the lock file before anything else happens, so an interrupted run
    (Ctrl-C, a crash, kill -9) is resumed by running apply again, without paying twice.
    """
    wait, lock_wait = _seconds(max_wait), _seconds(lock_timeout)
    project = _project(storyboard, variables, no_cache, simulate, cache_dir, out_dir)

    def on_plan(plan: Plan) -> bool:
        try:
            _show_plan(plan)
            if simulate:
                click.echo("Simulated: the local simulator renders animatics of the timing; "
                           "nothing is billed.")
        except BrokenPipeError:  # `apply --yes | head`: the run was asked for all the same
            _stdout_closed()
        if plan.to_submit and not yes and not simulate:
            return _confirmed(len(plan.to_submit))
        return True

    cancel = CancelToken()
    with _ProgressView(cancel) as view:
        report = project.apply(
            force=force, only=only, retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown, jobs=jobs, max_wait=wait,
            lock_timeout=lock_wait, base_url=base_url, on_plan=on_plan, on_event=view.show,
            cancel=cancel, remote=remote, remote_endpoint_url=remote_endpoint_url,
            use_remote=not no_remote, push=not no_push)
    try:
        _show_report(report)
    except BrokenPipeError:
        _stdout_closed()
    return report.exit_code


def _stdout_closed() -> None:
    """Whoever read standard output has gone: write the rest of it nowhere, so neither a
    later line nor the flush at exit raises again (Python's advice on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _confirmed(count: int) -> bool:
    from kling_pipeline.errors import KlingPipelineError

    if not sys.stdin.isatty():
        raise KlingPipelineError(
            f"{count} shot(s) would be submitted and billed, and there is no terminal to ask "
            "for confirmation: run again with --yes to go ahead")
    return click.confirm(f"Submit {count} shot(s) now? They are billed", default=False)


class _ProgressView:
    """What `apply` shows while it runs: a live view on a terminal, plain lines elsewhere.

    While the jobs run, Ctrl-C and SIGTERM cancel the run (once: wind down, every task id
    kept; twice: stop now) instead of raising wherever the program happens to be; before
    (at the confirmation prompt) and after (the output folder) they interrupt as usual.
    """

    def __init__(self, cancel: CancelToken) -> None:
        self._cancel = cancel
        self._reporter: LiveReporter | PlainReporter | None = None
        self._before: PlainReporter | None = None
        self._handlers: dict[int, Any] = {}

    def show(self, event: Event) -> None:
        """Show one event; a reader that went away (`apply | head`) only stops the showing:
        a run that is paying must not stop because its progress cannot be printed."""
        try:
            self._show(event)
        except BrokenPipeError:
            _stdout_closed()

    def _show(self, event: Event) -> None:
        if type(event) is ShotUpdate:  # 10,000 of them in a run of 10,000 shots: first
            if self._reporter is None:  # before the plan: videos taken from the remote
                self._before = self._before or _transfer_view()
                _show_transfer(self._before, event)
            else:
                self._reporter.update(event.label, event.state, event.percent, event.note)
        elif isinstance(event, Note) and self._reporter is None:
            click.echo(event.text, err=True)
        elif isinstance(event, RunStarted):
            self._handlers = {sig: signal.signal(sig, lambda *_: self._cancel.cancel())
                              for sig in (signal.SIGINT, signal.SIGTERM)}
            self._reporter = self._open(event.total)
        elif isinstance(event, Note) and self._reporter is not None:
            self._reporter.message(event.text)
        elif isinstance(event, RunEnded):
            self._close()
        elif isinstance(event, FolderStep):
            click.echo(f"{event.text} ...")

    def _open(self, total: int) -> LiveReporter | PlainReporter:
        from kling_pipeline.views.progress import LiveReporter, PlainReporter

        live = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        reporter = LiveReporter(total, color=_color() is None) if live else PlainReporter(
            click.echo, total)
        reporter.__enter__()
        return reporter

    def _close(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}
        if self._reporter is not None:
            reporter, self._reporter = self._reporter, None
            reporter.__exit__(None, None, None)

    def __enter__(self) -> _ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


def _show_report(report: ApplyReport) -> None:
    from kling_pipeline.views.progress import render_folder, render_summary

    click.echo("")
    click.echo(render_summary(report.run, list(report.missing),
                              [item.id for item in report.plan.items]))
    click.echo(render_folder(report.folder) if report.folder is not None else
               "Output: none written: no shot is rendered yet.")
    if report.remote is not None:
        from kling_pipeline.views.transfer import render_remote_use

        click.echo(render_remote_use(report.remote), nl=False)


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
           out_dir: Path | None) -> int:
    """Show every shot's state from the lock file, the cache and the output folder.

    Offline unless --refresh is given.
    """
    from kling_pipeline.views.status import render_status_json, render_status_text

    project = _project(storyboard, variables, no_cache, simulate, cache_dir, out_dir)
    rows = project.status(refresh=refresh, base_url=base_url)
    if as_json:
        from kling_pipeline.textsafe import json_printable

        click.echo(json_printable(json.dumps(render_status_json(rows, project.name),
                                             indent=2, ensure_ascii=False)))
    else:
        click.echo(render_status_text(rows, project.name))
    return EXIT_OK


@main.command()
@storyboard_arg
@cache_dir_option
@click.option("--force", is_flag=True,
              help="Delete the unreferenced videos (without it, gc only lists them).")
@click.option("--lock-timeout", default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for an apply in the project to finish before deleting.")
@click.option("--simulate", is_flag=True,
              help="Only the simulated renders' store (<cache>/simulated/).")
@click.option("--remote", "remote", is_flag=False, flag_value="", default=None,
              metavar="[URL]", help="The remote's objects instead of the cache: --remote alone "
              "is $KLING_PIPELINE_REMOTE, else the storyboard's remote: (put it after "
              "STORYBOARD).")
@remote_endpoint_option
@var_option
def gc(storyboard: Path, cache_dir: Path | None, force: bool, lock_timeout: str,
       simulate: bool, remote: str | None, remote_endpoint_url: str | None,
       variables: tuple[str, ...]) -> None:
    """List the cached videos that no lock file of the project references; --force deletes them.

    The project is the storyboard's folder and every folder below it: each *.lock.json there
    counts, and a video any of them references is never deleted. Output folders are not
    touched (their files are links or copies of their own). With --remote, the same for the
    remote's objects and index entries (only this project's lock files are known: a remote
    other branches or projects use holds videos only they reference).
    """
    import contextlib

    wait = _seconds(lock_timeout)
    if remote is None and remote_endpoint_url is not None:
        raise click.UsageError("--remote-endpoint-url goes with --remote")
    if remote is not None:
        if simulate or cache_dir is not None:
            raise click.UsageError("gc --remote does not look at the local cache: it counts "
                                   "every lock file of the project, simulated ones included; "
                                   "leave out --simulate and --cache-dir")
        from kling_pipeline.remote.gc import render_remote_gc_text

        project_ = _project(storyboard, variables, False, False)
        remote_report = project_.gc_remote(remote=remote or None,
                                           endpoint_url=remote_endpoint_url, force=force,
                                           lock_timeout=wait)
        click.echo(render_remote_gc_text(remote_report), nl=False)
        return

    from kling_pipeline.state.gc import (
        delete_frames,
        delete_garbage,
        find_garbage,
        render_gc_text,
    )
    from kling_pipeline.state.lockstore import hold_run_lock
    from kling_pipeline.storyboard.load import default_cache_dir

    project = storyboard.resolve().parent
    cache = (cache_dir or default_cache_dir(storyboard)).resolve()
    if project not in cache.parents:
        click.echo(f"note: the cache {cache} is outside the project {project}: gc counts the "
                   f"lock files under {project} only, so videos that other projects sharing "
                   "this cache need look unreferenced to it", err=True)
    report = find_garbage(cache, project, simulated_only=simulate)
    if not force or not (report.garbage or report.frames):
        click.echo(render_gc_text(report), nl=False)
        return
    with contextlib.ExitStack() as held:  # no apply may record a video while we delete
        for lock in report.locks:
            held.enter_context(hold_run_lock(lock, wait))
        freed = delete_garbage(report)
        delete_frames(report)
    click.echo(render_gc_text(report, freed=freed), nl=False)


transfer_jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(1, 256), metavar="N",
    help="Transfers at once (default: 8).")


def _transfer_view() -> PlainReporter:
    from kling_pipeline.views.progress import PlainReporter

    return PlainReporter(click.echo, 0)


def _show_transfer(reporter: PlainReporter, event: Event) -> None:
    if type(event) is ShotUpdate:
        reporter.update(event.label, event.state, event.percent, event.note)
    elif isinstance(event, FolderStep):
        click.echo(f"{event.text} ...")


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@remote_option
@remote_endpoint_option
@transfer_jobs_option
@click.option("--simulate", is_flag=True, help="Push the simulated renders.")
@cache_dir_option
def push(storyboard: Path, variables: tuple[str, ...], no_cache: bool, remote: str | None,
         remote_endpoint_url: str | None, jobs: int | None, simulate: bool,
         cache_dir: Path | None) -> int:
    """Upload to the remote every video the lock file references that it lacks.

    Each video is hashed before it leaves; its request keys go to the remote's index. The
    provider is never called.
    """
    from kling_pipeline.views.transfer import render_push

    project = _project(storyboard, variables, no_cache, simulate, cache_dir)
    reporter = _transfer_view()
    report = project.push(remote=remote, endpoint_url=remote_endpoint_url, jobs=jobs,
                          on_event=lambda event: _show_transfer(reporter, event))
    click.echo(render_push(report))
    return EXIT_OK if report.ok else EXIT_ERROR


@main.command()
@storyboard_arg
@var_option
@no_cache_option
@remote_option
@remote_endpoint_option
@transfer_jobs_option
@click.option("--lock-timeout", default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for an apply on this storyboard to finish.")
@click.option("--simulate", is_flag=True, help="Pull the simulated renders.")
@cache_dir_option
@out_option
def pull(storyboard: Path, variables: tuple[str, ...], no_cache: bool, remote: str | None,
         remote_endpoint_url: str | None, jobs: int | None, lock_timeout: str,
         simulate: bool, cache_dir: Path | None, out_dir: Path | None) -> int:
    """Download from the remote every video the lock file references that the cache lacks,
    then fill the output folder.

    Each video is verified by its sha256 (one that does not match is refused and named). The
    provider is never called; a cache that lacks nothing asks the remote nothing.
    """
    from kling_pipeline.views.transfer import render_pull

    wait = _seconds(lock_timeout)
    project = _project(storyboard, variables, no_cache, simulate, cache_dir, out_dir)
    reporter = _transfer_view()
    report = project.pull(remote=remote, endpoint_url=remote_endpoint_url, jobs=jobs,
                          lock_timeout=wait,
                          on_event=lambda event: _show_transfer(reporter, event))
    click.echo(render_pull(report))
    return EXIT_OK if report.ok else EXIT_ERROR


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the schema to this file instead of printing it.")
def schema(output: Path | None) -> None:
    """Print the storyboard JSON Schema (for editors and other validators)."""
    from kling_pipeline.storyboard.models import storyboard_schema

    text = json.dumps(storyboard_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        from kling_pipeline.fsutil import atomic_write_bytes

        atomic_write_bytes(output, text.encode("utf-8"))
        click.echo(f"wrote {output}")


@main.command()
@click.argument("name", required=False)
@click.option("--dir", "folder", default=".", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The project folder (made if missing).")
def init(name: str | None, folder: Path) -> None:
    """Start a project: a storyboard that renders as written, and what it needs.

    Writes a storyboard with one text-to-video and one image-to-video shot, the image it
    starts from (assets/start.png), the JSON Schema its first line names for editors
    (storyboard.schema.json), and the suggested .gitignore lines (only those missing). NAME
    defaults to the folder's name. Never overwrites a file.
    """
    from kling_pipeline.storyboard.starter import init_project, typed_path
    from kling_pipeline.textsafe import printable

    here = Path.cwd()
    result = init_project(folder, name, cwd=here)
    for title, notes in (("Wrote:", result.written), ("Kept as it was:", result.kept)):
        if notes:
            shown = [printable(typed_path(n.path, here)) for n in notes]
            width = max(len(s) for s in shown)
            click.echo(title)
            for path_text, note in zip(shown, notes, strict=True):
                click.echo(f"  {path_text.ljust(width)}  {printable(note.note)}")
    click.echo("Next: see what a render would do, then render it on the local simulator "
               "(no key, nothing billed):")
    for command in result.next_commands:
        click.echo(f"  {printable(command)}")
