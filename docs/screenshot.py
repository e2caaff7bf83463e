"""Take the README's screenshot, docs/images/space.png: the Space (app.py) serving the shipped ensemble
(models/cifar10/) on a local port, classifying a real photo in headless Chromium, with the top-3, each member's
answer, the prediction set and a Grad-CAM heatmap per member.

    python docs/screenshot.py       # about a minute of CPU; needs Debian's chromium (apt-get install chromium)

The app and the browser are started as the tests start them (tests/conftest.py: start_app, browser_page).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from a checkout without installing; the tests' helpers

from conftest import CHROMIUM, browser_page, start_app  # noqa: E402

WIDTH, HEIGHT = 1280, 900  # the browser window; the screenshot is the Classify tab's inputs and answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "flower.jpg", help="the photo to classify "
                        "(default: examples/flower.jpg)")
    parser.add_argument("--manifest", type=Path, default=Path("models/cifar10"), help="the ensemble the Space serves, "
                        "relative to the repository (default: models/cifar10, the shipped one; the Space shows the path)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "space.png",
                        help="the PNG to write (default: docs/images/space.png)")
    args = parser.parse_args(argv)
    if CHROMIUM is None:
        print("error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_app(args.manifest, Path(tmp) / "app.log")
        try:
            with browser_page(url, WIDTH, HEIGHT) as page:
                page.locator("input[type=file]").first.set_input_files(str(args.image))
                page.get_by_role("button", name="Classify", exact=True).click()
                page.get_by_text("members agree").first.wait_for(state="visible", timeout=120_000)
                page.get_by_role("button", name="Explain (Grad-CAM per member)").click()
                page.get_by_text("Grad-CAM for the ensemble's top class").first.wait_for(state="visible",
                                                                                        timeout=120_000)
                page.locator("[data-testid='gallery'] img, .gallery-container img").first.wait_for(
                    state="visible", timeout=30_000)
                page.wait_for_timeout(1000)  # the label bars and the gallery finish drawing
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.locator(".gradio-container").first.screenshot(path=str(args.output))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
