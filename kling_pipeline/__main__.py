"""Allow ``python -m kling_pipeline``."""

from __future__ import annotations

from kling_pipeline.cli import main

if __name__ == "__main__":
    main()
