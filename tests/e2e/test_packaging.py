"""pyproject.toml in the form today's setuptools reads without complaint.

A `license = {text = ...}` table made setuptools print a deprecation warning six times per
install (it goes away by 2027): the license is an SPDX expression, which needs setuptools 77.
"""

from __future__ import annotations

import re
import tomllib

from support.paths import ROOT


def test_the_license_is_an_spdx_expression_and_the_backend_reads_it() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["project"]["license"] == "MIT"
    (setuptools,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    found = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert found is not None and int(found.group(1)) >= 77
