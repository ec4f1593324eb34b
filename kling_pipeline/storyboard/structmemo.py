"""A memo of storyboard files whose structure validated, so a warm run skips pydantic.

Importing pydantic, defining the models and building Storyboard's validator cost ~100 ms of
every command that loads a storyboard, more than the rest of a no-op `plan`. Validation is a
pure function of the file's bytes (parsed by PyYAML and our loader) and of the code that
checks them: the models (this package) and pydantic. So a file whose exact bytes validated
with no problem, under the same package code (`shotmemo.code_fingerprint`), the same
pydantic, pydantic-core and PyYAML distributions and the same Python, validates again, and
to the same settings: the memo keeps those, by the sha256 of the bytes.

It cannot lose an error: only a file that had none is recorded; any changed byte, any
change of our code or of those distributions misses, and the file is validated as before;
when a distribution's version cannot be read for certain (no single dist-info beside it),
nothing is memoised. Shots are not kept here: their models are made from the raw entries
only when one must be built (render.Entry), which the shot memo usually spares.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

# import name -> distribution name, for the code that decides whether a file is valid
_CHECKERS = {"pydantic": "pydantic", "pydantic_core": "pydantic_core", "yaml": "PyYAML"}


def installed_version(module: str, distribution: str) -> str | None:
    """The version of `distribution`, from the one `<name>-<version>.dist-info` folder beside
    the package `module` an import would load; None when there is not exactly one."""
    spec = find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if len(locations) != 1:
        return None
    folder = Path(locations[0]).parent
    wanted = distribution.lower().replace("-", "_")
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    found = [name[:-len(".dist-info")].rpartition("-")[2] for name in names
             if name.endswith(".dist-info")
             and name[:-len(".dist-info")].rpartition("-")[0].lower().replace("-", "_") == wanted]
    return found[0] if len(found) == 1 else None


@lru_cache(maxsize=1)
def memo_version() -> str | None:
    """The structure memo's version: our code and the checkers' versions; None when one of
    them cannot be known (then no structure is memoised)."""
    from kling_pipeline.storyboard.shotmemo import code_fingerprint

    versions = [installed_version(module, dist) for module, dist in _CHECKERS.items()]
    if any(v is None for v in versions):
        return None
    return "/".join(["1", code_fingerprint(), sys.version, *(v or "" for v in versions)])
