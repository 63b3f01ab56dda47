"""What the explorer's page asks of a run, as plain functions of plain values: the server only translates requests.

A start code is named by the page as ``{"kind": "bank", "row": R}`` (a mapped code), ``{"kind": "upload", "id": U}``
(a picture the person uploaded) or ``{"kind": "compose", "job": J, "index": I}`` (a kept image of a compose);
an edit adds ``moves`` ({direction: standard deviations}) and ``cells`` ({direction: 64-cell hex}). Every answer
carries the decoded picture as a base64 PNG of 32 x 32 (the page shows it at 8x) and where the code lands on the map.
Saving writes a new folder under ``outputs/explore/`` (never an existing one) with the picture, its code, its recipe
and the ``python -m latent_ops.edit`` command that writes the same picture again.

Example: ``python -c "from latent_ops.explore.session import Explorer; print(Explorer.__doc__)"``
"""
from __future__ import annotations

import base64
import itertools
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoencoder.cli import UserError
from latent_ops.atlas import place_on_map
from latent_ops.edit import edit_command_line, write_edit
from latent_ops.editing import EditError, format_cells, hex_to_cells
from latent_ops.editor import Editor
from latent_ops.explore.composing import Composer
from latent_ops.explore.map_cache import LatentMap
from latent_ops.pictures import MAX_BYTES, png_bytes, read_picture, small_picture

UPLOADS_KEPT = 64  # uploads remembered while the server runs
MAX_START = 64  # characters of a compose's start (a class or cluster name)
PREVIEW_SIDE = 128  # the centre crop is shown at this size beside its 32 x 32


@dataclass
class Upload:
    id: int
    name: str
    small: np.ndarray  # (32, 32, 3) uint8: what is encoded
    code: np.ndarray  # (D,)


def picture_data(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a data: URL of its PNG."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


class Explorer:
    """A run's editor, map and composer, opened once for the server's lifetime."""

    def __init__(self, editor: Editor, latent_map: LatentMap, composer: Composer, out: Path):
        self.editor, self.map, self.composer, self.out = editor, latent_map, composer, out
        self.uploads: OrderedDict[int, Upload] = OrderedDict()
        self.upload_ids = itertools.count(1)
        span = latent_map.embedding.max(0) - latent_map.embedding.min(0)
        self.low, self.span = latent_map.embedding.min(0), np.maximum(span, 1e-9)
        self.row_of = {int(row): i for i, row in enumerate(latent_map.rows)}

    # --- what the page shows --------------------------------------------------------------------------------------

    def state(self) -> dict:
        editor = self.editor
        return {"run": str(editor.run), "grid": list(editor.grid) if editor.grid else None,
                "directions": [{"name": name, "spread": editor.spreads[name],
                                "note": editor.concepts.directions[name].note} for name in editor.directions],
                "upload_limit_bytes": MAX_BYTES, "pool": self.composer.pool, "kept": self.composer.kept,
                "data": self.composer.data, "points": len(self.map.rows)}

    def position(self, codes: np.ndarray) -> np.ndarray:
        """(M, D) codes -> (M, 2) places on the page's map, in its [0, 1] units."""
        places = place_on_map(codes, self.map.codes, self.map.embedding, self.map.neighbours)
        return (places - self.low) / self.span

    # --- start codes and edits ------------------------------------------------------------------------------------

    def start(self, spec: dict) -> tuple[np.ndarray, str, dict]:
        """The start code named by ``spec``, the text ``latent_ops.edit --start`` takes for it (empty: the saved
        code.npz), and what the recipe records of it."""
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind == "bank":
            row = whole(spec.get("row"), "start row")
            return self.editor.bank_code(self.map.split, row), f"{self.map.split}:{row}", {"bank": f"{self.map.split}:{row}"}
        if kind == "upload":
            upload = self.uploads.get(whole(spec.get("id"), "upload id"))
            if upload is None:
                raise EditError("that upload is no longer here (the last 64 are kept while the server runs); "
                                "upload the picture again")
            return upload.code, "", {"upload": upload.name, "upload_id": upload.id}
        if kind == "compose":
            job, code = self.composer.code(whole(spec.get("job"), "compose job"), whole(spec.get("index"), "index"))
            return code, "", {"compose": job.expression, "seed": job.seed, "kept_index": whole(spec["index"], "index"),
                              "compose_command": job.command}
        raise EditError(f"start must be a bank code, an upload or a composed image, got {spec!r}")

    def moves_and_cells(self, request: dict) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        moves, cells = {}, {}
        for name, amount in dict(request.get("moves") or {}).items():
            if name not in self.editor.vectors:
                raise EditError(f"{name!r} is not a direction of this run; it has {', '.join(self.editor.directions)}")
            value = number(amount, f"move {name}")
            if value:
                moves[name] = value
        for name, text in dict(request.get("cells") or {}).items():
            if name not in self.editor.vectors:
                raise EditError(f"{name!r} is not a direction of this run; it has {', '.join(self.editor.directions)}")
            if self.editor.grid is None:
                raise EditError("this run's code is flat: there are no cells to paint")
            cells[name] = hex_to_cells(str(text), self.editor.grid)
        return moves, cells

    def render(self, request: dict) -> dict:
        """The edited code of ``request`` decoded (a data: URL) and placed on the map."""
        began = time.perf_counter()
        start, _, _ = self.start(request.get("start"))
        moves, cells = self.moves_and_cells(request)
        code = self.editor.edit(start, moves, cells)
        pixels = self.editor.decode(code[None])[0]
        x, y = self.position(code[None])[0]
        return {"image": picture_data(pixels), "x": float(x), "y": float(y),
                "milliseconds": 1000 * (time.perf_counter() - began)}

    def upload(self, data: bytes, name: str) -> dict:
        """Read, crop, resize and encode a person's picture; it becomes a start code of the page."""
        name = os.path.basename(name or "picture")[:100] or "picture"
        picture = read_picture(data, name)
        crop = small_picture(picture, PREVIEW_SIDE)
        small = small_picture(picture)
        code = self.editor.encode(small[None])[0]
        upload = Upload(next(self.upload_ids), name, small, code)
        self.uploads[upload.id] = upload
        while len(self.uploads) > UPLOADS_KEPT:
            self.uploads.popitem(last=False)
        decoded = self.editor.decode(code[None])[0]
        x, y = self.position(code[None])[0]
        return {"id": upload.id, "name": name, "size": list(picture.size), "crop": picture_data(crop),
                "small": picture_data(small), "decoded": picture_data(decoded), "x": float(x), "y": float(y)}

    # --- composes ----------------------------------------------------------------------------------------------------

    def compose(self, request: dict) -> dict:
        expression = str(request.get("expression", "")).strip()
        seed = whole(request.get("seed", 0), "seed")
        start = request.get("start", "")
        if not isinstance(start, str) or len(start) > MAX_START:
            raise EditError(f"start must be the name of a class or cluster, e.g. horse, or empty; "
                            f"got {str(start)[:40]!r}")
        apart = request.get("apart", False)
        if not isinstance(apart, bool):
            raise EditError(f"apart must be true or false, got {str(apart)[:40]!r}")
        return self.composer.submit(expression, seed, start.strip(), apart).public() | {"results": []}

    def compose_status(self, job_id: int) -> dict:
        job = self.composer.jobs.get(job_id)
        if job is None:
            raise UserError(f"no compose {job_id} here; compose again")
        public = job.public()
        if job.state == "done":
            places = self.position(job.codes)
            public["results"] = [{k: v for k, v in r.items() if k != "picture"} | {
                "image": picture_data(r["picture"]), "x": float(p[0]), "y": float(p[1])}
                for r, p in zip(job.results, places)]
        return public

    # --- save -------------------------------------------------------------------------------------------------------

    def save(self, request: dict) -> dict:
        """A new folder under ``out`` with the picture, its code, its recipe and the command that remakes it."""
        start, start_text, origin = self.start(request.get("start"))
        moves, cells = self.moves_and_cells(request)
        code = self.editor.edit(start, moves, cells)
        pixels = self.editor.decode(code[None])[0]
        folder = new_folder(self.out, label(origin, moves))
        start_text = start_text or str(folder / "code.npz")
        recipe = {"run": str(self.editor.run), "start": start_text, "origin": origin, "moves": moves,
                  "cells": format_cells(cells),
                  "command": edit_command_line(self.editor.run, start_text, moves, cells, folder.with_name(
                      folder.name + "-again"))}
        upload = self.uploads.get(origin.get("upload_id", -1)) if "upload" in origin else None
        write_edit(folder, pixels, start, code, recipe, upload.small if upload else None)
        return {"folder": str(folder), "files": sorted(p.name for p in folder.iterdir()),
                "command": recipe["command"], "image": picture_data(pixels)}


def whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise EditError(f"{what} must be a whole number, got {value!r}")
    try:
        number_ = int(value)
    except ValueError:
        raise EditError(f"{what} must be a whole number, got {value!r}") from None
    if number_ != float(value) or abs(number_) > 2**31:
        raise EditError(f"{what} must be a whole number, got {value!r}")
    return number_


def number(value, what: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{what} must be a number of standard deviations, got {value!r}") from None
    if not math.isfinite(result) or abs(result) > 10:
        raise EditError(f"{what} must be within +-10 standard deviations, got {value!r}")
    return result


def label(origin: dict, moves: dict) -> str:
    """A readable folder name: where the code started and how it moved."""
    where = origin.get("bank") or (f"compose-{origin['compose']}" if "compose" in origin else "upload")
    where = "".join(c if c.isalnum() or c in "+-_." else "-" for c in str(where))[:40]
    return "-".join([where, *(f"{k}{v:+.2f}" for k, v in moves.items())])


def new_folder(root: Path, name: str) -> Path:
    """``root/name``, or ``name-2``, ``name-3``... : a folder made now, so nothing that exists is replaced."""
    root.mkdir(parents=True, exist_ok=True)
    for count in itertools.count(1):
        folder = root / (name if count == 1 else f"{name}-{count}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")
