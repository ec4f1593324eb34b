"""Run the simulator in a background thread on a free loopback port (tests, `apply --simulate`).

We bind the socket ourselves (port 0 lets the kernel pick a free port, with no race between
choosing and binding) and hand it to uvicorn, which then never touches logging configuration.
A test may wrap the app in its own ASGI middleware (`wrap`) to watch or steer requests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kling_pipeline.simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from starlette.types import ASGIApp

START_TIMEOUT = 15.0
# How long an idle kept-alive connection stays open: nginx's default, as at the routers.
# Uvicorn's 5 s made pooled clients that poll every ~5 s (undici keeps sockets 4 s, requests
# forever) send requests into a socket the server was closing ("connection reset").
KEEP_ALIVE_SECONDS = 75


def loopback_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket. The explicit IPPROTO_TCP matters: asyncio turns Nagle off
    (TCP_NODELAY) only for sockets whose proto says TCP, and without that every answer on a
    kept-alive connection waits ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextmanager
def running_simulator(config: SimulatorConfig | None = None,
                      wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> Iterator[str]:
    """Yield the base URL (`http://127.0.0.1:PORT`) of a simulator running until exit.

    `wrap`, if given, is applied to the simulator's ASGI app before uvicorn serves it (a test's
    middleware). It must pass lifespan messages through. A middleware that replaces `send`
    hides the connection from the drop faults (`faults.drop_connection` then falls back to
    failing the response), so pass `send` on unchanged where those faults are used.
    """
    import uvicorn

    from kling_pipeline.simulator.app import create_app

    app: ASGIApp = create_app(config)
    if wrap is not None:
        app = wrap(app)
    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=2, timeout_keep_alive=KEEP_ALIVE_SECONDS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"simulator-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator failed to start (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start within {START_TIMEOUT:g} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
