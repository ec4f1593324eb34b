"""Allow ``python -m kling_pipeline``: the same program, and it says so.

Click names a program after how it was started; under ``-m`` that is ``python -m
kling_pipeline`` (or ``__main__``), so usage lines and ``--version`` would name no program a
person can type. The name is given here.
"""

from __future__ import annotations

from kling_pipeline.cli import main

if __name__ == "__main__":
    main(prog_name="kling-pipeline")
