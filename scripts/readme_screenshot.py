"""Remake docs/images/contact-sheet.png, the README's picture of the contact sheet.

Renders examples/lighthouse on the built-in simulator in a temporary copy, opens its
index.html in headless Chromium (the test suite's helper, so `pip install -e '.[test]'` and
Debian's chromium first) and keeps the top of the page. Run: .venv/bin/python
scripts/readme_screenshot.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import launched_browser, media_state, open_page, stable_screenshot  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "lighthouse"
        shutil.copytree(ROOT / "examples" / "lighthouse", project)
        subprocess.run([sys.executable, "-m", "kling_pipeline", "apply", "--simulate",
                        "lighthouse.yaml"], cwd=project, check=True, stdout=subprocess.DEVNULL)
        page_path = project / "renders" / "lighthouse.simulated" / "index.html"
        full = Path(scratch) / "full.png"
        with launched_browser() as browser, open_page(browser, page_path, 1280, 900) as visit:
            state = media_state(visit.page)
            broken = [v["src"] for v in state["videos"] if v["error"] or v["readyState"] < 1]
            if broken or visit.off_disk():
                sys.exit(f"the page is not right: {broken or visit.off_disk()}")
            stable_screenshot(visit.page, full)
        from PIL import Image

        with Image.open(full) as image:
            top = image.crop((0, 0, image.width, min(image.height, 1180)))
            out = ROOT / "docs" / "images" / "contact-sheet.png"
            top.save(out, optimize=True)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
