"""Edit one code and write its picture: the command that reproduces an edit saved in the explorer.

A start code (``test:ROW`` of the bank, a PNG or JPEG picture, or a saved ``code.npz``; ``latent_ops.editor``) is
moved along the run's directions in standard deviations of the bank (``--moves wings=1.5,white=-0.5``), each move
within painted cells of the 8 x 8 code grid when ``--cells wings=HEX`` names them (``latent_ops.editing``), decoded,
and written to ``--out``:

- ``image.png`` (32 x 32) and ``image-8x.png``;
- ``code.npz``: the arrays ``start`` and ``code`` (plain arrays, no pickles);
- ``recipe.json``: the run, the start, the moves and cells, and this command;
- ``config.json``.

Example: ``python -m latent_ops.edit --run models/pegasus-cifar10 --start test:7 --moves wings=1.5``
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoencoder.atomic import replace_atomically, replace_folder, write_json
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import ConfigError, claim_output, dataclass_from_flags, release_folder, run_cli, save_config
from latent_ops.editing import format_cells, format_moves, parse_cells, parse_moves
from latent_ops.editor import BANK_START, Editor
from latent_ops.pictures import png_bytes
from latent_ops.runs import resolve_run

EDIT_FILES = ("image.png", "image-8x.png", "code.npz", "recipe.json", "start.png")


@dataclass
class EditConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs, else the shipped model
    start: str = ""  # test:ROW (a code of the bank), a PNG or JPEG picture, or a code.npz the explorer saved
    moves: str = ""  # NAME=STD pairs, e.g. wings=1.5,white=-0.5 (standard deviations of the bank's codes)
    cells: str = ""  # NAME=HEX pairs: the cells of the code grid each move applies in (none: the whole code)
    out: str = ""  # output folder; empty: outputs/edit/<start>-<moves>
    data: str = DATA_FOLDER  # CIFAR-10, only when the run has no concepts yet
    cache_dir: str = CACHE_FOLDER
    precision: str = "auto"  # auto (bf16 where native), bf16 or fp32


def edit_command_line(run: Path, start: str, moves: dict, cells: dict, out: str | Path) -> str:
    """The shell command that writes this edit into ``out``."""
    words = ["python", "-m", "latent_ops.edit", "--run", str(run), "--start", start]
    if moves:
        words += ["--moves", format_moves(moves)]
    if cells:
        words += ["--cells", format_cells(cells)]
    return shlex.join(words + ["--out", str(out)])


def write_edit(folder: Path, pixels: np.ndarray, start: np.ndarray, code: np.ndarray, recipe: dict,
               start_picture: np.ndarray | None = None) -> None:
    """The files of one edit (module docstring) into an existing ``folder``."""
    replace_atomically(lambda tmp: tmp.write_bytes(png_bytes(pixels)), folder / "image.png")
    replace_atomically(lambda tmp: tmp.write_bytes(png_bytes(pixels, 8)), folder / "image-8x.png")
    replace_atomically(lambda tmp: np.savez(tmp, start=start.astype(np.float32), code=code.astype(np.float32)),
                       folder / "code.npz")
    if start_picture is not None:
        replace_atomically(lambda tmp: tmp.write_bytes(png_bytes(start_picture)), folder / "start.png")
    write_json(recipe, folder / "recipe.json")


def default_out(start: str, moves: dict) -> Path:
    named = start if BANK_START.fullmatch(start) else Path(start).stem
    label = "-".join(f"{k}{v:+.2f}" for k, v in moves.items()) or "decoded"
    return Path("outputs/edit") / f"{named.replace(':', '')}-{label}"


def run_edit(config: EditConfig) -> Path:
    run = resolve_run(config.run)
    if not config.start:
        raise ConfigError("--start is needed: test:ROW, a PNG or JPEG picture, or a code.npz the explorer saved")
    editor = Editor(run, config.data, config.cache_dir, config.precision)
    moves = parse_moves(config.moves, editor.directions)
    cells = parse_cells(config.cells, editor.grid, editor.directions) if config.cells and editor.grid else {}
    if config.cells and editor.grid is None:
        raise ConfigError(f"--cells paints the code grid, but {run}'s code is flat; drop --cells")
    out = Path(config.out) if config.out else default_out(config.start, moves)
    claim_output(out, EDIT_FILES, "an edit")
    try:
        start = editor.start_code(config.start)
        code = editor.edit(start, moves, cells)
        pixels = editor.decode(code[None])[0]
        recipe = {"run": str(run), "start": config.start, "moves": moves, "cells": format_cells(cells),
                  "precision": "bf16" if str(editor.dtype) == "torch.bfloat16" else "fp32",
                  "command": edit_command_line(run, config.start, moves, cells, out)}

        def build(folder: Path) -> None:
            save_config(config, folder / "config.json")
            write_edit(folder, pixels, start, code, recipe)

        replace_folder(build, out)
    finally:
        release_folder(out)
    return out


def main(**flags) -> None:
    """Edit a code (--start) along the run's directions (--moves, --cells) and write its picture to --out; every
    field of EditConfig is a flag."""
    out = run_cli(lambda: run_edit(dataclass_from_flags(EditConfig, {}, flags)))
    print(f"edit: wrote {out}/image.png, image-8x.png, code.npz, recipe.json")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
