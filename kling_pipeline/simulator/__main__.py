"""`python -m kling_pipeline.simulator`: the simulator command without the full CLI."""

from __future__ import annotations

from kling_pipeline.simulator.command import simulator_command

simulator_command()
