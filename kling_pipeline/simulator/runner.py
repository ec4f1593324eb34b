"""Run the simulator in a background thread on a free loopback port (tests, `apply --simulate`).

We bind the socket ourselves (port 0 lets the kernel pick a free port, with no race between
choosing and binding) and hand it to uvicorn, which then never touches logging configuration.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from kling_pipeline.simulator.config import SimulatorConfig

START_TIMEOUT = 15.0


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
def running_simulator(config: SimulatorConfig | None = None) -> Iterator[str]:
    """Yield the base URL (`http://127.0.0.1:PORT`) of a simulator running until exit."""
    import uvicorn

    from kling_pipeline.simulator.app import create_app

    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), log_config=None, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=2, timeout_keep_alive=30))
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
