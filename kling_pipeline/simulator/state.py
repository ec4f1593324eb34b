"""What one running simulator knows: config, tasks, counters, dice, and the error answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.faults import Dice, RateLimiter
from kling_pipeline.simulator.renderer import Renderer
from kling_pipeline.simulator.stats import Stats
from kling_pipeline.simulator.store import TaskStore
from kling_pipeline.simulator.urls import Signer

RAW_SEND = "kling_simulator.raw_send"  # scope key of the server's own `send`


class Simulator:
    """The shared state behind every route; `config` may be swapped at run time."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.store = TaskStore(config.state_dir)
        self.renderer = Renderer(config.render_workers, config.render_cache_size)
        self.stats = Stats()
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter()
        self.signer = Signer.kept_in(config.state_dir)
        self.accepted = 0  # submissions counted against `balance`
        self.polls: dict[str, int] = {}  # task id -> task-result answers given (unknown_polls)

    def set_config(self, config: SimulatorConfig) -> None:
        if config.seed != self.config.seed:
            self.dice = Dice(config.seed)
        self.renderer.cache_size = config.render_cache_size
        self.config = config

    def reset(self) -> None:
        """Forget tasks, counters, rate windows, polls and spent balance (clips stay)."""
        self.store.clear()
        self.stats = Stats()
        self.dice = Dice(self.config.seed)
        self.limiter.clear()
        self.accepted = 0
        self.polls.clear()

    def error(self, status: int, reason: str, message: str,
              metadata: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        """The API's error body `{code, reason, message, metadata}`, counted in the stats."""
        self.stats.errors[reason] += 1
        return JSONResponse({"code": status, "reason": reason, "message": message,
                             "metadata": metadata or {}}, status_code=status, headers=headers)


def simulator_of(request: Request) -> Simulator:
    sim: Simulator = request.app.state.simulator
    return sim
