"""Admin routes under /_simulator/: what happened, change the knobs, start over.

They live on their own path (never under /v3) and need no key, so a test can read the
counters without disturbing them; the simulator only ever binds to loopback. Loopback is not
enough for the routes that change things: any web page the user has open may send a "simple"
cross-origin POST to 127.0.0.1 (no preflight, the answer unread), so those refuse a request
that carries an `Origin` header, which browsers add and test clients do not.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kling_pipeline.simulator.state import simulator_of
from kling_pipeline.simulator.tasks import STATUSES, view


async def stats(request: Request) -> Response:
    """GET /_simulator/stats: submissions per body hash, tasks per state, errors, requests."""
    sim = simulator_of(request)
    now = time.time()
    states = Counter({status: 0 for status in STATUSES})
    states.update(view(task, now).status for task in sim.store)
    body = sim.stats.to_json()
    body.update({
        "tasks": dict(states),
        "tasks_total": len(sim.store),
        "renders": sim.renderer.rendered,
        "accepted": sim.accepted,
        "balance_left": (None if sim.config.balance is None
                         else max(0, sim.config.balance - sim.accepted)),
    })
    return JSONResponse(body)


async def tasks(request: Request) -> Response:
    """GET /_simulator/tasks: every task (no bodies), oldest first, e.g. to find the one a
    dropped answer hid from the client."""
    sim = simulator_of(request)
    now = time.time()
    listing = sorted(sim.store, key=lambda t: t.submitted_at)
    return JSONResponse([{"task_id": t.task_id, "slug": t.slug, "body_hash": t.body_hash,
                          "status": view(t, now).status, "submitted_at": t.submitted_at}
                         for t in listing])


def _from_a_web_page(request: Request) -> Response | None:
    """403 for a state-changing request sent by a browser page (see the module docstring)."""
    if "origin" not in request.headers:
        return None
    return JSONResponse({"code": 403, "reason": "CROSS_ORIGIN_REFUSED",
                         "message": "the simulator's admin routes do not take requests from "
                                    "web pages", "metadata": {}}, status_code=403)


async def config(request: Request) -> Response:
    """GET: the knobs. POST a JSON object of knobs to change them now (400 names bad ones)."""
    sim = simulator_of(request)
    if request.method == "POST":
        if (refusal := _from_a_web_page(request)) is not None:
            return refusal
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object of knobs")
            if "state_dir" in changes and changes["state_dir"] != sim.config.state_dir:
                raise ValueError("state_dir cannot change while running")
            sim.set_config(sim.config.replace(changes))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"code": 400, "reason": "INVALID_CONFIG", "message": str(exc),
                                 "metadata": {}}, status_code=400)
    return JSONResponse(sim.config.to_json())


async def reset(request: Request) -> Response:
    """POST /_simulator/reset: forget tasks (on disk too), counters, rate windows, balance."""
    if (refusal := _from_a_web_page(request)) is not None:
        return refusal
    simulator_of(request).reset()
    return JSONResponse({"reset": True})
