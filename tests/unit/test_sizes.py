from __future__ import annotations

import pytest

from kling_pipeline.sizes import human_size


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (9_876_543, "9.4 MiB"),
    (5 * 2**20, "5.0 MiB"), (3 * 2**30, "3.0 GiB"), (5 * 1024**4, "5120.0 GiB")])
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown
