"""The explorer page in a real browser: Debian's Chromium, headless, driven by pytest-playwright.

The server is started as a user starts it (``python -m latent_ops.explore`` in a subprocess, on a free port) with the
shipped model, a map of 1,000 of its codes in a fresh cache folder, and no CIFAR-10. Chromium comes from
``apt-get install -y chromium``; Playwright never downloads a browser here. Without Chromium these tests are skipped
with the reason, except under CI (``CI=true``), where its absence fails the run.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_ops.explore.driving import INSTALL, chromium_binary, start_server

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "pegasus-cifar10"
CHROMIUM = chromium_binary()
if CHROMIUM is None:
    why = f"Debian's Chromium is not installed ({INSTALL})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"under CI the browser tests must run: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer on a free port; yields (url, folder of its files)."""
    root = tmp_path_factory.mktemp("explorer")
    flags = ["--run", str(SHIPPED), "--port", "0", "--points", "1000", "--cache_dir", str(root / "cache"),
             "--out", str(root / "saved"), "--data", str(root / "no-data"), "--pool", "64", "--kept", "16"]
    try:
        process, url, _ = start_server(flags, ROOT)
    except RuntimeError as error:
        pytest.fail(str(error))
    yield url, root
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture()
def ready(page, server):
    url, root = server
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def pixels_of(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), np.float32)


def point_on_screen(page, index: int) -> tuple[float, float]:
    x, y = page.evaluate(f"(() => {{ const m = window.explorer.map; return m.toScreen(m.points.x[{index}], "
                         f"m.points.y[{index}]); }})()")
    box = page.locator("#map").bounding_box()
    return box["x"] + x, box["y"] + y


def select_point(page, index: int = 0) -> None:
    page.mouse.click(*point_on_screen(page, index))
    page.wait_for_function("Number(document.getElementById('edited').dataset.renders || 0) >= 1")


def renders(page) -> int:
    return int(page.evaluate("Number(document.getElementById('edited').dataset.renders || 0)"))


def wait_for_render(page, after: int) -> np.ndarray:
    page.wait_for_function(f"Number(document.getElementById('edited').dataset.renders || 0) > {after}")
    page.wait_for_function("!window.explorer.inflight && window.explorer.pending === null")
    return pixels_of(page.locator("#edited").get_attribute("src"))


def test_the_map_draws(ready):
    shot = np.asarray(Image.open(io.BytesIO(ready.locator("#map").screenshot())).convert("RGB"), np.int32)
    background = np.array([0xfb, 0xfb, 0xf8])
    coloured = (np.abs(shot - background).sum(-1) > 60).mean()
    assert coloured > 0.01, f"only {coloured:.3%} of the map has points"
    assert len(ready.locator("#legend .legend-item").all()) == 10


def test_hovering_shows_a_thumbnail(ready):
    ready.mouse.move(*point_on_screen(ready, 17))
    tooltip = ready.locator("#tooltip")
    tooltip.wait_for(state="visible")
    row = ready.evaluate("window.explorer.map.points.row[17]")
    assert tooltip.get_attribute("data-row") == str(row)
    thumb = np.asarray(Image.open(io.BytesIO(tooltip.locator("canvas").screenshot())).convert("RGB"), np.float32)
    assert thumb.shape[:2] == (128, 128) and thumb.std() > 10, "the thumbnail is a picture, not a blank"


def test_a_slider_changes_the_image(ready):
    select_point(ready, 5)
    before = wait_for_render(ready, 0)
    count = renders(ready)
    ready.locator("#slider-wings").fill("2.5")
    after = wait_for_render(ready, count)
    assert np.abs(after - before).mean() > 2, "moving wings by 2.5 standard deviations changes the picture"
    assert ready.evaluate("window.explorer.map.markers.some((m) => m.name === 'edit')")


def test_a_painted_region_changes_that_region_most(ready):
    select_point(ready, 9)
    base = wait_for_render(ready, 0)
    ready.locator("input[type=radio][value=white]").check()
    count = renders(ready)
    ready.locator("#cells-none").click()
    wait_for_render(ready, count)
    box = ready.locator("#cells").bounding_box()
    count = renders(ready)
    ready.mouse.move(box["x"] + 8, box["y"] + 8)  # the top-left cell...
    ready.mouse.down()
    ready.mouse.move(box["x"] + 60, box["y"] + 60, steps=6)  # ... to the second row and column: four cells
    ready.mouse.up()
    wait_for_render(ready, count)
    count = renders(ready)
    ready.locator("#slider-white").fill("3")
    edited = wait_for_render(ready, count)
    change = np.abs(edited - base).mean(-1)  # (32, 32)
    inside = change[:8, :8].mean()
    outside = np.delete(change.reshape(-1), [r * 32 + c for r in range(8) for c in range(8)]).mean()
    assert inside > 2 * outside, f"painted cells changed {inside:.1f}, the rest {outside:.1f}"


def test_an_upload_appears_on_the_map(ready, tmp_path):
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[:, :, 0] = np.linspace(0, 255, 300, dtype=np.uint8)[None]
    picture[60:140, 110:190] = (250, 250, 250)
    file = tmp_path / "my horse.png"
    Image.fromarray(picture).save(file)
    ready.locator("#upload").set_input_files(str(file))
    ready.wait_for_function("window.explorer.map.markers.some((m) => m.name === 'upload')")
    assert ready.locator("#upload-views").is_visible()
    small = pixels_of(ready.locator("#upload-small").get_attribute("src"))
    assert small.shape == (32, 32, 3)
    assert "my horse.png" in ready.locator("#selected-name").text_content()
    count = renders(ready)
    ready.locator("#slider-white").fill("1")
    wait_for_render(ready, count)  # an upload is edited like any code


def test_a_text_file_named_png_is_refused_with_the_message(ready, tmp_path):
    file = tmp_path / "notes.png"
    file.write_text("these are notes, not a picture\n")
    ready.locator("#upload").set_input_files(str(file))
    error = ready.locator("#upload-error")
    error.wait_for(state="visible")
    ready.wait_for_function("document.getElementById('upload-error').textContent.length > 0")
    assert error.text_content() == "notes.png is not a PNG or JPEG picture; choose a PNG or JPEG picture"
    select_point(ready, 3)  # the server keeps answering


def test_an_expression_composes_into_a_grid(ready):
    ready.locator("#expression").fill("horse+wings")
    ready.locator("#compose").click()
    ready.wait_for_function("document.querySelectorAll('#compose-grid figure').length === 16", timeout=120_000)
    assert "kept of 64" in ready.locator("#compose-stage").text_content()
    captions = [ready.locator("#compose-grid figcaption").nth(k).text_content() for k in range(16)]
    assert all("score" in c and any(p in c for p in ("through the gates", "below a gate"))
               for c in captions), captions
    assert "then the rest by score" in ready.locator("#compose-grid figcaption").first.get_attribute("title")
    count = renders(ready)
    ready.locator("#compose-grid figure").nth(2).click()
    wait_for_render(ready, count)
    assert "rank" in ready.locator("#selected-name").text_content()


def test_a_compose_can_start_from_real_pictures_and_shows_the_command_that_does(ready, server):
    ready.locator("#expression").fill("pegasus")
    ready.locator("#start").fill("horse")
    ready.locator("#compose").click()
    ready.wait_for_function("document.querySelectorAll('#compose-grid figure').length === 16", timeout=120_000)
    command = shlex.split(ready.locator("#compose-command").text_content())
    assert command[command.index("--start") + 1] == "horse" and command[command.index("--project") + 1] == "0.8"
    assert command[command.index("--negative") + 1] == ""  # as make pegasus-varied
    assert command[command.index("--guidance") + 1] == "2.25"  # at its guidance, not the recipe's
    ready.locator("#compose-grid figure").first.click()
    ready.wait_for_function("document.getElementById('selected-name').textContent.includes('from horse')")
    ready.locator("#start").fill("unicorn")
    ready.locator("#compose").click()
    ready.wait_for_function("document.getElementById('compose-error').textContent.length > 0")
    cli = subprocess.run([sys.executable, "-m", "latent_ops.compose", "pegasus", "--run", str(SHIPPED), "--start",
                          "unicorn", "--project", "0.8"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and ready.locator("#compose-error").text_content() == cli.stderr.strip()
    ready.locator("#start").fill("")


def test_a_compose_can_push_its_draws_apart_and_shows_the_command_that_does(ready, server):
    ready.locator("#expression").fill("pegasus")
    ready.locator("#apart").check()
    ready.locator("#compose").click()
    ready.wait_for_function("document.querySelectorAll('#compose-grid figure').length === 16 && "
                            "document.getElementById('compose-command').textContent.includes('--repel')",
                            timeout=120_000)
    command = shlex.split(ready.locator("#compose-command").text_content())
    assert command[command.index("--repel") + 1] == "1"  # as make pegasus-diverse
    ready.locator("#compose-grid figure").first.click()
    ready.wait_for_function("document.getElementById('selected-name').textContent.includes('apart')")
    ready.locator("#expression").fill("horse+wings")  # held-out codes: no draws to push apart
    ready.locator("#compose").click()
    ready.wait_for_function("document.getElementById('compose-error').textContent.length > 0")
    cli = subprocess.run([sys.executable, "-m", "latent_ops.compose", "horse+wings", "--run", str(SHIPPED), "--repel",
                          "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and ready.locator("#compose-error").text_content() == cli.stderr.strip()
    ready.locator("#apart").uncheck()


def test_a_bad_expression_shows_the_cli_message(ready, server):
    ready.locator("#expression").fill("horse+")
    ready.locator("#compose").click()
    ready.wait_for_function("document.getElementById('compose-error').textContent.length > 0")
    cli = subprocess.run([sys.executable, "-m", "latent_ops.compose", "horse+", "--run", str(SHIPPED)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert ready.locator("#compose-error").text_content() == cli.stderr.strip()
    ready.locator("#expression").fill("horse+wing")
    ready.locator("#compose").click()
    ready.wait_for_function("document.getElementById('compose-error').textContent.includes('wing')")
    assert "unknown concept 'wing'" in ready.locator("#compose-error").text_content()


def test_save_writes_the_files_and_a_command_that_remakes_them(ready, server, tmp_path):
    _, root = server
    select_point(ready, 11)
    count = renders(ready)
    ready.locator("#slider-wings").fill("1.5")
    wait_for_render(ready, count)
    ready.locator("#save").click()
    ready.wait_for_function("document.getElementById('saved').textContent.includes('python -m latent_ops.edit')")
    text = ready.locator("#saved").text_content()
    folder = Path(text.split("saved in ", 1)[1].split("/:", 1)[0])
    assert folder.parent == root / "saved"
    assert {"image.png", "image-8x.png", "code.npz", "recipe.json"} <= {p.name for p in folder.iterdir()}
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["moves"] == {"wings": 1.5}
    words = shlex.split(text.rsplit("\n", 1)[1])
    words[words.index("--out") + 1] = str(tmp_path / "again")
    again = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "image.png").read_bytes() == (folder / "image.png").read_bytes()
