"""The README's screenshots: docs/app.png (desktop, 1400x1000) and docs/app-phone.png (390x844),
each taken after a real 16-bar compose with a chord lock on the shipped step-28500 checkpoint.

    .venv/bin/python scripts/screenshots.py [--seed 7]

Needs /usr/bin/chromium and playwright (as the browser tests). PNGs are kept under 300 KB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from app_harness import launch_app  # noqa: E402
from cwcompose.checkpoints import fill_with_stand_ins  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE  # noqa: E402

MAX_BYTES = 300 * 1024


def compose(page, seed: int) -> None:
    for elem_id, value in (("bars", 16), ("chords", "C G Am F")):
        box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
        box.fill(str(value))
        box.press("Tab")
    page.get_by_text("Primer bars and seed").click()
    page.locator("#random-seed input[type=checkbox]").uncheck()
    box = page.locator("#seed input").first
    box.fill(str(seed))
    box.press("Tab")
    page.get_by_text("Primer bars and seed").click()  # closed again: the picture shows the first screen
    page.locator("#generate").click()
    page.wait_for_selector("#roll .cw-roll[data-done='1']", state="attached", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('#takes [role=gridcell]')]"
                           ".some((c) => c.innerText.trim() === 'take 1')", timeout=30_000)
    page.evaluate("cw.stopAll()")
    page.wait_for_timeout(500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as folder:
        kinds = fill_with_stand_ins(folder)
        assert kinds[28500] == "real", "the step-28500 checkpoint is not shipped here"
        demo, studio = launch_app(Path(folder))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                for viewport, name in ((DESKTOP, "app.png"), (PHONE, "app-phone.png")):
                    page = browser.new_page(viewport=viewport)
                    page.goto(demo.local_url)
                    page.wait_for_selector("#generate", timeout=30_000)
                    compose(page, args.seed)
                    if viewport is PHONE:  # the first screen holds the controls; show the result below them
                        page.locator("#roll").scroll_into_view_if_needed()
                    path = ROOT / "docs" / name
                    page.screenshot(path=str(path))
                    size = path.stat().st_size
                    print(f"{path.relative_to(ROOT)}: {size / 1024:.0f} KB")
                    assert size < MAX_BYTES, f"{path} is {size} bytes, over {MAX_BYTES}"
                    page.close()
                browser.close()
        finally:
            demo.close()
            studio.close()


if __name__ == "__main__":
    main()
