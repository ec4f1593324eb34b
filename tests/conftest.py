"""Shared test helpers: small real files in tmp_path, no mocks of our own code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.s3_server import S3Server
from support.simulator_fixtures import SimClient

from kling_pipeline.simulator.config import SimulatorConfig
from kling_pipeline.simulator.runner import running_simulator


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a real image file: make_image("a.png", 640, 360)."""

    def make(name: str, width: int = 640, height: int = 360, fmt: str | None = None) -> Path:
        from PIL import Image

        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (20, 90, 160)).save(path, format=fmt)
        return path

    return make


@pytest.fixture
def write_storyboard(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text as tmp_path/storyboard.yaml and return its path."""

    def write(text: str, name: str = "storyboard.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A simulator with default settings, one per test module (a module may override it)."""
    with running_simulator(SimulatorConfig()) as url:
        yield url


@pytest.fixture
def sim(server: str) -> Iterator[SimClient]:
    """A client of this module's simulator."""
    with SimClient(server) as client:
        yield client


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 server on loopback, one per test module that asks for it (its state is
    cleared before and after: support/s3_server.py)."""
    from support.s3_server import running_s3_server

    with running_s3_server() as server:
        yield server
