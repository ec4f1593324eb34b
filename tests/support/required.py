"""Tools some tests need from outside Python (Chromium, Node): skip without them, except in CI.

CI sets KLING_REQUIRE_<TOOL>=1 and installs the tool, so there a missing tool fails the test:
a suite must never pass by skipping what it claims to check.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, require_env: str) -> NoReturn:
    """Skip for want of a tool; when `require_env` is "1", fail instead."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{reason} ({require_env}=1: this test must run here, not skip)")
    pytest.skip(reason)
