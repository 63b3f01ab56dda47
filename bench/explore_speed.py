"""The explorer's speed, measured by driving the real page in Debian's Chromium (headless), as a person uses it.

1. **Start**: the server is started ``--rounds`` times on a warm cache (its map made once before); each time, the
   seconds from starting the process to the page being usable (map drawn, sprites decoded: ``body[data-ready]``),
   with Chromium already running.
2. **Hover**: ``--hovers`` moves of the mouse onto random points; the page's own clock, from the mouse event to the
   thumbnail drawn at 4x and to the next painted frame.
3. **Slider**: ``--slides`` values of the wings slider on a selected code, one after the other; the page's clock
   from the input event to the new image decoded in the page (the server's render time beside it).
4. **Compose**: ``--composes`` composes of the recipe's expression (a pool of 64, keep 16) on seeds 0, 1, ...;
   the page's clock from the click to the grid shown, and the server's stage seconds.

Targets (the issue's): usable within 3 s, hover within 50 ms, slider within 100 ms, compose within 5 s.
Writes ``outputs/bench/explore_speed.json``.

Example: ``python bench/explore_speed.py --run models/pegasus-cifar10 --data data``
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from latent_ops.explore.driving import INSTALL, chromium_binary, start_server

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"start_seconds": 3.0, "hover_ms": 50.0, "slider_ms": 100.0, "compose_seconds": 5.0}


@dataclass
class ExploreSpeedConfig:
    run: str = "models/pegasus-cifar10"
    data: str = DATA_FOLDER  # CIFAR-10 for composes' uniqueness, as a user with the data has it
    cache_dir: str = CACHE_FOLDER
    rounds: int = 3  # server starts timed
    hovers: int = 60
    slides: int = 40
    composes: int = 3
    expression: str = "pegasus"


def figures(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median": statistics.median(samples), "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": max(samples), "count": len(samples)}


def usable(browser, url: str) -> float:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.close()
    return time.monotonic()


def hover(page, count: int) -> dict:
    box = page.locator("#map").bounding_box()
    total = page.evaluate("window.explorer.map.count")
    for k in range(count):
        i = (k * 7919) % total
        x, y = page.evaluate(f"window.explorer.map.toScreen(window.explorer.map.points.x[{i}], "
                             f"window.explorer.map.points.y[{i}])")
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.wait_for_function(f"document.getElementById('tooltip').dataset.row == window.explorer.map.points.row[{i}]"
                               f" || window.explorer.map.hovered !== {i}")
    page.wait_for_timeout(100)
    timings = page.evaluate("window.explorer.map.timings")
    return {"shown_ms": figures(timings["hover"]), "painted_ms": figures(timings["hoverPainted"])}


def slide(page, count: int) -> dict:
    x, y = page.evaluate("window.explorer.map.toScreen(window.explorer.map.points.x[0], window.explorer.map.points.y[0])")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function("Number(document.getElementById('edited').dataset.renders || 0) >= 1")
    page.evaluate("window.explorer.timings.render = []")
    for k in range(count):
        before = page.evaluate("Number(document.getElementById('edited').dataset.renders || 0)")
        page.locator("#slider-wings").fill(f"{-3 + 6 * (k + 1) / (count + 1):.2f}")
        page.wait_for_function(f"Number(document.getElementById('edited').dataset.renders || 0) > {before}")
    text = page.locator("#render-time").text_content()
    return {"shown_ms": figures(page.evaluate("window.explorer.timings.render")), "last": text}


def compose(page, url: str, count: int, expression: str) -> dict:
    seconds, server = [], []
    for seed in range(count):
        page.locator("#expression").fill(expression)
        page.locator("#seed").fill(str(seed))
        done = page.evaluate("window.explorer.timings.compose.length")
        page.locator("#compose").click()
        page.wait_for_function(f"window.explorer.timings.compose.length > {done}", timeout=300_000)
        seconds.append(page.evaluate("window.explorer.timings.compose.at(-1)") / 1000)
        job = page.evaluate("fetch('/api/compose/' + window.explorer.job).then((r) => r.json())")
        server.append({"seconds": job["seconds"], "stage_seconds": job["stage_seconds"]})
    return {"shown_seconds": figures(seconds), "samples": seconds, "server": server}


def run_explore_speed(run: str, data: str, cache_dir: str, rounds: int, hovers: int, slides: int, composes: int,
                      expression: str) -> None:
    from playwright.sync_api import sync_playwright

    binary = chromium_binary()
    if binary is None:
        raise SystemExit(f"explore_speed: Debian's Chromium is needed ({INSTALL})")
    flags = ["--run", run, "--port", "0", "--data", data, "--cache_dir", cache_dir]
    process, _, _ = start_server(flags, ROOT, wait=900)  # makes the map once when the cache is cold
    process.terminate()
    process.wait()
    record: dict = {"targets": TARGETS}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True)
        starts = []
        for _ in range(rounds):
            began = time.monotonic()
            process, url, serving = start_server(flags, ROOT)
            starts.append({"usable_seconds": usable(browser, url) - began, "serving_seconds": serving})
            if len(starts) < rounds:
                process.terminate()
                process.wait()
        record["start"] = {"usable_seconds": figures([s["usable_seconds"] for s in starts]), "rounds": starts}
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        record["hover"] = hover(page, hovers)
        record["slider"] = slide(page, slides)
        page.wait_for_timeout(3000)  # the background warm-up (the data for uniqueness) has finished
        record["compose"] = compose(page, url, composes, expression)
        browser.close()
    process.terminate()
    process.wait()
    met = {"start_seconds": record["start"]["usable_seconds"]["max"],
           "hover_ms": record["hover"]["painted_ms"]["p90"], "slider_ms": record["slider"]["shown_ms"]["p90"],
           "compose_seconds": record["compose"]["shown_seconds"]["max"]}
    record["measured"] = met
    for key, value in met.items():
        print(f"{key:16s} {value:8.2f}  (target {TARGETS[key]:g}: {'met' if value <= TARGETS[key] else 'MISSED'})")
    print(f"hover shown p90 {record['hover']['shown_ms']['p90']:.1f} ms; slider median "
          f"{record['slider']['shown_ms']['median']:.1f} ms ({record['slider']['last']}); compose server seconds "
          f"{[round(s['seconds'], 2) for s in record['compose']['server']]}")
    write_record("explore_speed", record)


def main(**flags) -> None:
    """Drive the explorer page in headless Chromium and time start, hover, slider and compose."""
    bench_main(ExploreSpeedConfig, flags, run_explore_speed)


if __name__ == "__main__":
    fire.Fire(main)
