"""The simulator as an ASGI application: routes, JSON errors, and the raw `send` hook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kling_pipeline.simulator import admin, api, files, transport
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.state import RAW_SEND, Simulator


class SimulatorApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, before middleware wraps it,
    so a fault can reach the connection (see faults.drop_connection); then the transport
    layer (paths, CORS, Expect) in front of the routes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await transport.serve(super().__call__, scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse({"code": exc.status_code, "reason": reason, "message": exc.detail,
                         "metadata": {}}, status_code=exc.status_code, headers=exc.headers)


async def _crash(request: Request, exc: Exception) -> Response:
    """A bug of ours still answers in the API's error shape: clients read reason/message.
    (Starlette re-raises afterwards, so the server still logs the traceback.)"""
    return JSONResponse({"code": 500, "reason": "INTERNAL_ERROR",
                         "message": f"Internal error of the simulator: {type(exc).__name__}",
                         "metadata": {}}, status_code=500)


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    """A fresh simulator; its state is at `app.state.simulator`."""
    sim = Simulator(config or SimulatorConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        sim.renderer.close()

    app = SimulatorApp(
        routes=[
            Route("/v3/async/task-result", api.task_result, methods=["GET"]),
            Route("/v3/async/{slug}", api.submit, methods=["POST"]),
            Route("/_simulator/files/{name}", files.download, methods=["GET"]),
            Route("/_simulator/stats", admin.stats, methods=["GET"]),
            Route("/_simulator/tasks", admin.tasks, methods=["GET"]),
            Route("/_simulator/config", admin.config, methods=["GET", "POST"]),
            Route("/_simulator/reset", admin.reset, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _crash},
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
