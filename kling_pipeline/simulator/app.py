"""The simulator as an ASGI application: routes, JSON 404/405, and the raw `send` hook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kling_pipeline.simulator import admin, api, files
from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.state import RAW_SEND, Simulator


class SimulatorApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, before middleware wraps it,
    so a fault can reach the connection (see faults.drop_connection)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse({"code": exc.status_code, "reason": reason, "message": exc.detail,
                         "metadata": {}}, status_code=exc.status_code, headers=exc.headers)


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
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
