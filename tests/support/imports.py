"""Which heavy libraries a fresh interpreter has loaded after a statement: start-up checks."""

from __future__ import annotations

import json
import subprocess
import sys

from support.paths import ROOT

HEAVY = ("pydantic", "jinja2", "yaml", "httpx", "av", "PIL", "starlette", "uvicorn", "rich")


def heavy_after(statement: str) -> list[str]:
    """The HEAVY modules in sys.modules after running `statement` in a new process."""
    code = (f"import json, sys; {statement}; "
            f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    found: list[str] = json.loads(out.stdout)
    return found
