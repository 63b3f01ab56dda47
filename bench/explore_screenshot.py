"""A screenshot of the real explorer page for the README, taken from a running server in headless Chromium.

It starts ``python -m latent_ops.explore`` on a free port, hovers a horse on the map, selects a horse, moves the
wings slider with wings painted in the top half of the code grid, and composes the recipe's expression, then
writes the whole page as a PNG.

Example: ``python bench/explore_screenshot.py --run models/pegasus-cifar10 --out docs/explorer.png``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from latent_ops.explore.driving import INSTALL, chromium_binary, start_server

ROOT = Path(__file__).resolve().parent.parent
HORSE = 7  # CIFAR-10's label of horse


@dataclass
class ExploreScreenshotConfig:
    run: str = "models/pegasus-cifar10"
    data: str = DATA_FOLDER
    cache_dir: str = CACHE_FOLDER
    out: str = "docs/explorer.png"
    expression: str = "pegasus"
    wings: float = 2.0  # the wings slider, in standard deviations
    pick: int = 3  # which horse of the map (in the bank's order) is selected
    start: str = ""  # compose from the real pictures of this class or cluster ("": from noise)
    apart: bool = False  # the compose's draws push each other apart (the page's "apart" box, compose --repel 1)


def take(run: str, data: str, cache_dir: str, out: str, expression: str, wings: float, pick: int, start: str,
         apart: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    binary = chromium_binary()
    if binary is None:
        raise SystemExit(f"explore_screenshot: Debian's Chromium is needed ({INSTALL})")
    process, url, _ = start_server(["--run", run, "--port", "0", "--data", data, "--cache_dir", cache_dir,
                                    "--out", str(Path(cache_dir) / "explore-screenshot")], ROOT, wait=900)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=binary, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 960})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            horses = page.evaluate(f"window.explorer.points.label.map((l, i) => l === {HORSE} ? i : -1)"
                                   ".filter((i) => i >= 0)")
            box = page.locator("#map").bounding_box()

            def at(i):
                x, y = page.evaluate(f"window.explorer.map.toScreen(window.explorer.map.points.x[{i}], "
                                     f"window.explorer.map.points.y[{i}])")
                return box["x"] + x, box["y"] + y

            page.mouse.click(*at(horses[pick]))
            page.wait_for_function("Number(document.getElementById('edited').dataset.renders || 0) >= 1")
            page.locator("#cells-none").click()
            cells = page.locator("#cells").bounding_box()
            row = cells["height"] / 8
            for r in range(4):  # the top half of the 8 x 8 grid, a row at a time
                page.mouse.move(cells["x"] + 4, cells["y"] + (r + 0.5) * row)
                page.mouse.down()
                page.mouse.move(cells["x"] + cells["width"] - 4, cells["y"] + (r + 0.5) * row, steps=10)
                page.mouse.up()
            page.locator("#slider-wings").fill(str(wings))
            page.locator("#expression").fill(expression)
            page.locator("#start").fill(start)
            page.locator("#apart").set_checked(apart)
            page.locator("#compose").click()
            page.wait_for_function("window.explorer.timings.compose.length > 0", timeout=300_000)
            shown = page.evaluate("window.explorer.timings.compose[0]") / 1000
            print(f"explore_screenshot: the compose showed its {page.locator('#compose-grid figure').count()} in "
                  f"{shown:.1f} s ({page.locator('#compose-stage').text_content()})")
            page.mouse.move(*at(horses[pick + 40]))
            page.wait_for_timeout(300)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait()
    print(f"explore_screenshot: wrote {out}")


def main(**flags) -> None:
    """Write a screenshot of the explorer page, as a person uses it, to --out."""
    bench_main(ExploreScreenshotConfig, flags, take)


if __name__ == "__main__":
    fire.Fire(main)
