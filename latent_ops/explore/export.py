"""The explorer's map as one self-contained HTML file: points, pan and zoom, and hover thumbnails, with no server.

The page's own ``map.js`` and ``style.css`` are written inline, the points as JSON and the sprite sheets as base64
PNG data URLs, so the file opens from disk (or inline in a notebook) with nothing else. 10,000 codes make about
28 MiB; ``--points`` makes a lighter file.

Example: ``python -m latent_ops.explore --run models/pegasus-cifar10 --points 2000 --export outputs/explore/map.html``
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import NamedTuple

from autoencoder.atomic import write_text
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from latent_ops.explore.map_cache import LatentMap, map_points, open_map

STATIC = Path(__file__).resolve().parent / "static"


class Exported(NamedTuple):
    file: Path
    codes: int  # codes on the map

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}
body {{ background: #fff; }} #map {{ height: 620px; }}</style></head>
<body>
<div class="panel" style="max-width: 760px">
  <div class="row"><b>{title}</b>
    <label>colour by <select id="colour-by"><option value="class">class</option>
      <option value="cluster">cluster</option></select></label>
    <button id="reset-view" type="button">reset view</button>
    <span class="muted">drag to pan, wheel to zoom, hover to see a decoded code (4x)</span></div>
  <div id="map-box"><canvas id="map"></canvas>
    <div id="tooltip" hidden><canvas width="128" height="128"></canvas><div class="caption"></div></div></div>
  <div id="legend"></div>
</div>
<script>{map_js}</script>
<script>
"use strict";
const POINTS = {points};
const SHEETS = {sheets};
const map = new LatentMap(document.getElementById("map"), document.getElementById("tooltip"), POINTS,
  loadSheets(SHEETS));
drawLegend(document.getElementById("legend"), POINTS, "class");
document.getElementById("colour-by").addEventListener("change", (e) => {{
  map.colourBy = e.target.value; map.draw(); drawLegend(document.getElementById("legend"), POINTS, e.target.value); }});
document.getElementById("reset-view").addEventListener("click", () => map.resetView());
window.explorer = {{ map }};
document.body.dataset.ready = "1";
</script>
</body></html>
"""


def export_page(latent_map: LatentMap, run: Path) -> str:
    """The HTML text of the self-contained map."""
    sheets = ["data:image/png;base64," + base64.b64encode(latent_map.sheet_file(k).read_bytes()).decode()
              for k in range(latent_map.sheets)]
    title = f"latent map of {Path(run).name}: {len(latent_map.rows)} {latent_map.split} codes"
    script_safe = json.dumps(map_points(latent_map)).replace("</", "<\\/")
    return PAGE.format(title=html.escape(title), style=(STATIC / "style.css").read_text(),
                       map_js=(STATIC / "map.js").read_text(), points=script_safe, sheets=json.dumps(sheets))


def write_export(latent_map: LatentMap, run: Path, file: Path) -> Path:
    """Write the self-contained map to ``file`` (atomically)."""
    return write_text(export_page(latent_map, run), file)


def export_map(out: str | Path, run: str = "", points: int = 0, data: str = DATA_FOLDER,
               cache_dir: str = CACHE_FOLDER, split: str = "test", seed: int = 0, neighbours: int = 15,
               min_dist: float = 0.1) -> Exported:
    """The map of ``run`` (``points`` of its codes, 0: all) written to ``out`` as one HTML file; for notebooks."""
    from latent_ops.editor import Editor
    from latent_ops.runs import resolve_run

    folder = resolve_run(run)
    editor = Editor(folder, data, cache_dir)
    latent_map = open_map(editor, cache_dir, split, points, seed, neighbours, min_dist)
    return Exported(write_export(latent_map, folder, Path(out)), len(latent_map.rows))
