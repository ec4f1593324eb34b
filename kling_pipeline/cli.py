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
from typing import Any, NoReturn

import click

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
            click.echo(f"internal error (a bug in kling-pipeline): {type(exc).__name__}: "
                       f"{exc}\nrun again with --debug for the traceback, and please report "
                       "it", err=True)
            sys.exit(EXIT_BUG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="KLING_PIPELINE_DEBUG",
              help="Show tracebacks for errors.")
@click.version_option(package_name="kling-pipeline")
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
def validate(storyboard: Path, variables: tuple[str, ...], no_cache: bool,
             as_json: bool) -> None:
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
        click.echo(json.dumps({"valid": True, "storyboard": loaded.board.name, "shots": [
            {"id": s.id, "endpoint": s.endpoint, "key": s.key, "duration": s.duration,
             "request": s.body} for s in loaded.shots]}, indent=2, ensure_ascii=False))
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
@click.option("--force", "force", multiple=True, metavar="SHOT",
              help="Plan to render this shot again even if it is up to date. Repeatable.")
@click.option("--retry-failed", is_flag=True, help="Plan to render failed shots again.")
@click.option("--resubmit-unknown", is_flag=True,
              help="Plan to submit again shots whose submission was never confirmed.")
def plan(storyboard: Path, variables: tuple[str, ...], no_cache: bool, as_json: bool,
         detailed_exitcode: bool, force: tuple[str, ...], retry_failed: bool,
         resubmit_unknown: bool) -> None:
    """Show what a render would do and cost, without touching the network."""
    from kling_pipeline.lockfile import read_lock
    from kling_pipeline.planner import make_plan
    from kling_pipeline.planview import render_json, render_text
    from kling_pipeline.pricing import PriceTable
    from kling_pipeline.storyboard import lock_path_for

    loaded = _load(storyboard, variables, no_cache)
    unknown = sorted(set(force) - {s.id for s in loaded.shots})
    if unknown:
        raise click.BadParameter(f"no shot named {', '.join(unknown)}", param_hint="--force")
    lock = read_lock(lock_path_for(storyboard), loaded.board.name)
    result = make_plan(loaded.board.name, loaded.shots, lock,
                       PriceTable(loaded.board.provider.prices), force=force,
                       retry_failed=retry_failed, resubmit_unknown=resubmit_unknown)
    if as_json:
        click.echo(json.dumps(render_json(result), indent=2, ensure_ascii=False))
    else:
        def style(text: str, color: str) -> str:
            return click.style(text, fg=color)

        click.echo(render_text(result, style), color=_color())
    if detailed_exitcode and result.has_work:
        sys.exit(2)


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
