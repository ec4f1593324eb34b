"""`kling-pipeline simulator`: run the simulated API in the foreground.

One option per knob of SimulatorConfig, generated from its fields so the two never drift.
Only click is imported at module level: `--help` must stay cheap; starlette and uvicorn load
when the server really starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from kling_pipeline.simulator.config import SimulatorConfig

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8765


def _click_type(hint: Any) -> tuple[Any, bool]:
    """(click type, multiple) for a config field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0])
    if origin is tuple:
        return _click_type(args[0])[0], True
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(hint)]), False
    return {float: click.FLOAT, int: click.INT, str: click.STRING, bool: click.BOOL}[hint], False


def _knob_options(command: Callable[..., Any]) -> Callable[..., Any]:
    hints = typing.get_type_hints(SimulatorConfig)
    for spec in reversed(dataclasses.fields(SimulatorConfig)):
        flag = spec.name.replace("_", "-")
        default = spec.default
        shown = (", ".join(map(str, default)) or "none") if isinstance(default, tuple) \
            else default
        help_text = f"{spec.metadata['help']} [default: {shown}]"
        if hints[spec.name] is bool:
            option = click.option(f"--{flag}/--no-{flag}", spec.name, default=None,
                                  help=help_text)
        else:
            kind, multiple = _click_type(hints[spec.name])
            option = click.option(f"--{flag}", spec.name, type=kind, multiple=multiple,
                                  default=None, help=help_text)
        command = option(command)
    return command


def config_from_options(realistic: bool, options: dict[str, Any]) -> SimulatorConfig:
    """The config for the given command-line values (unset ones keep their defaults)."""
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    try:
        return SimulatorConfig.realistic(**given) if realistic else SimulatorConfig(**given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Loopback address to bind (127.0.0.1, localhost or ::1 only).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--realistic", is_flag=True,
              help="Real-world timing: about a minute per 5 s clip, 10 s in the queue.")
@click.option("--quiet", is_flag=True, help="No access log, warnings only (for benchmarks).")
@_knob_options
def simulator_command(host: str, port: int, realistic: bool, quiet: bool,
                      **options: Any) -> None:
    """Run a local Kling API simulator: same paths, bodies, errors and expiring URLs, real MP4s.

    Point the pipeline at the printed base URL. Admin: GET /_simulator/stats,
    GET/POST /_simulator/config, POST /_simulator/reset.
    """
    if host not in LOOPBACK_HOSTS:
        raise click.BadParameter(f"{host} is not a loopback address; use "
                                 + ", ".join(LOOPBACK_HOSTS), param_hint="--host")
    config = config_from_options(realistic, options)
    import uvicorn

    from kling_pipeline.simulator.app import create_app
    from kling_pipeline.simulator.runner import KEEP_ALIVE_SECONDS, loopback_socket

    address = "::1" if host == "::1" else "127.0.0.1"
    try:
        sock = loopback_socket(address, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {address}:{port}: {exc.strerror}") from exc
    shown = f"[{address}]" if ":" in address else address
    click.echo(f"Kling API simulator on http://{shown}:{sock.getsockname()[1]} "
               "(Ctrl-C to stop)", err=True)
    server = uvicorn.Server(uvicorn.Config(create_app(config),
                                          log_level="warning" if quiet else "info",
                                          access_log=not quiet, timeout_graceful_shutdown=3,
                                          timeout_keep_alive=KEEP_ALIVE_SECONDS))
    server.run(sockets=[sock])


if __name__ == "__main__":
    simulator_command()
