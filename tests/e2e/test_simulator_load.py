"""A thousand tasks in flight at once: cheap while waiting, one render, all finish."""

from __future__ import annotations

import time

import httpx
import pytest
from support.simulator_fixtures import KEY, T2V, probe, t2v_body

from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.runner import running_simulator

TASKS = 1000
QUEUE = 5.0  # seconds: longer than submitting them all takes


def submit_all(base_url: str) -> tuple[list[str], float]:
    """One keep-alive connection is the cheapest client here: the server shares our GIL."""
    with httpx.Client(base_url=base_url, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        started = time.perf_counter()
        ids = [client.post(f"/v3/async/{T2V}", json=t2v_body("the same shot")).json()["task_id"]
               for _ in range(TASKS)]
        return ids, time.perf_counter() - started


@pytest.mark.slow
def test_a_thousand_tasks_in_flight() -> None:
    config = SimulatorConfig(queue_delay=QUEUE, time_scale=0.1)
    with running_simulator(config) as url:
        ids, seconds = submit_all(url)
        assert len(set(ids)) == TASKS
        stats = httpx.get(f"{url}/_simulator/stats").json()
        in_flight = stats["tasks"]["TASK_STATUS_QUEUED"] + stats["tasks"]["TASK_STATUS_PROCESSING"]
        assert in_flight == TASKS, (stats["tasks"], seconds)
        assert list(stats["submissions"].values()) == [TASKS]
        time.sleep(QUEUE + 0.4)  # the last one was submitted just now
        stats = httpx.get(f"{url}/_simulator/stats").json()
        assert stats["tasks"]["TASK_STATUS_SUCCEED"] == TASKS
        assert stats["renders"] == 1
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            answer = client.get("/v3/async/task-result", params={"task_id": ids[-1]}).json()
        facts = probe(httpx.get(answer["videos"][0]["video_url"]).content)
        assert abs(facts.duration - 3.0) < 0.2
