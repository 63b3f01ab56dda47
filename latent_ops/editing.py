"""Edits of one code: moves along named directions in standard deviations, each in painted cells of the code grid.

A move of ``s`` along a direction adds ``s * spread * vector`` to the code, where ``vector`` is the direction's unit
vector and ``spread`` the standard deviation of the bank's codes along it, so sliders read the same for every
direction (GANSpace's sliders in standard deviations, Harkonen et al. 2020, arXiv:2004.02546). On a spatial code
(C, H, W) a move may be limited to cells of its H x W grid, the way ``wings@top`` limits a direction in the
expression grammar (``latent_ops.sampling.region_mask``), but with any cells a person paints.

Text forms, shared by the explorer and ``python -m latent_ops.edit``:
- moves: ``wings=1.5,white=-0.5``;
- cells: ``wings=00000000000000ff`` (a direction's 64-cell grid as hex, row-major, the first cell the highest bit);
  a direction without cells moves the whole code.

Example: ``python -c "from latent_ops.editing import parse_moves; print(parse_moves('wings=1.5,white=-0.5'))"``
"""
from __future__ import annotations

import math
import re

import numpy as np

from autoencoder.cli import UserError

MAX_SPREADS = 10.0  # a move beyond this many standard deviations leaves the data entirely
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EditError(UserError, ValueError):
    """An edit that names an unknown direction, a bad number or a bad cell grid; the message says which."""


def direction_spreads(vectors: dict[str, np.ndarray], codes: np.ndarray) -> dict[str, float]:
    """The standard deviation of ``codes`` (N, D) along each unit vector: one slider unit per direction."""
    return {name: float(np.std(codes @ vector)) for name, vector in vectors.items()}


def cells_mask(cells: np.ndarray, code_shape: tuple[int, ...]) -> np.ndarray:
    """A flat (D,) 0/1 mask of the painted ``cells`` (H, W) bool in a (C, H, W) code."""
    if len(code_shape) != 3 or tuple(cells.shape) != tuple(code_shape[1:]):
        raise EditError(f"painted cells need a spatial code of {cells.shape[0]} x {cells.shape[1]} cells; this run's "
                        f"code is {' x '.join(map(str, code_shape))}")
    return np.broadcast_to(cells.astype(np.float32)[None], code_shape).reshape(-1)


def edited_code(start: np.ndarray, moves: dict[str, float], cells: dict[str, np.ndarray],
                vectors: dict[str, np.ndarray], spreads: dict[str, float], code_shape: tuple[int, ...]) -> np.ndarray:
    """``start`` (D,) moved ``moves[name]`` standard deviations along each direction, within ``cells[name]`` when
    painted (a direction with no painted cell does nothing there); float32 (D,)."""
    code = np.asarray(start, dtype=np.float32).reshape(-1).copy()
    for name, amount in moves.items():
        if name not in vectors:
            raise EditError(f"{name!r} is not a direction of this run; it has {', '.join(vectors)}")
        vector = vectors[name]
        if name in cells:
            vector = vector * cells_mask(cells[name], code_shape)
        code += np.float32(amount * spreads[name]) * vector.astype(np.float32)
    return code


def parse_moves(text: str, known: list[str] | None = None) -> dict[str, float]:
    """``wings=1.5,white=-0.5`` -> {'wings': 1.5, 'white': -0.5}; each amount finite and within MAX_SPREADS."""
    moves: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sign, value = part.partition("=")
        name = name.strip()
        if not sign or not NAME.fullmatch(name):
            raise EditError(f"--moves takes NAME=AMOUNT pairs like wings=1.5,white=-0.5, got {part!r}")
        try:
            amount = float(value)
        except ValueError:
            raise EditError(f"--moves {part!r}: {value.strip()!r} is not a number of standard deviations") from None
        if not math.isfinite(amount) or abs(amount) > MAX_SPREADS:
            raise EditError(f"--moves {part!r}: give a number of standard deviations within +-{MAX_SPREADS:g}")
        if name in moves:
            raise EditError(f"--moves names {name} twice; give each direction once")
        if known is not None and name not in known:
            raise EditError(f"--moves {part!r}: {name} is not a direction of this run; it has {', '.join(known)}")
        moves[name] = amount
    return moves


def cells_to_hex(cells: np.ndarray) -> str:
    """(H, W) bool -> hex digits of the row-major bits, the first cell the highest bit."""
    bits = "".join("1" if c else "0" for c in np.asarray(cells, dtype=bool).reshape(-1))
    return f"{int(bits, 2):0{math.ceil(len(bits) / 4)}x}"


def hex_to_cells(text: str, grid: tuple[int, int]) -> np.ndarray:
    """The inverse of ``cells_to_hex`` for a ``grid`` (H, W)."""
    count = grid[0] * grid[1]
    digits = math.ceil(count / 4)
    if not re.fullmatch(rf"[0-9a-fA-F]{{{digits}}}", text) or int(text, 16) >> count:
        raise EditError(f"cells {text!r}: give {digits} hex digits, the {grid[0]} x {grid[1]} grid row by row "
                        f"(e.g. {'f' * (digits // 2)}{'0' * (digits - digits // 2)} for the top half)")
    bits = f"{int(text, 16):0{count}b}"
    return np.array([b == "1" for b in bits], dtype=bool).reshape(grid)


def parse_cells(text: str, grid: tuple[int, int], known: list[str] | None = None) -> dict[str, np.ndarray]:
    """``wings=ff00000000000000,white=...`` -> {name: (H, W) bool}."""
    cells: dict[str, np.ndarray] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sign, value = part.partition("=")
        name = name.strip()
        if not sign or not NAME.fullmatch(name):
            raise EditError(f"--cells takes NAME=HEX pairs like wings=ff00000000000000, got {part!r}")
        if known is not None and name not in known:
            raise EditError(f"--cells {part!r}: {name} is not a direction of this run; it has {', '.join(known)}")
        if name in cells:
            raise EditError(f"--cells names {name} twice; give each direction once")
        cells[name] = hex_to_cells(value.strip(), grid)
    return cells


def format_moves(moves: dict[str, float]) -> str:
    """The inverse of ``parse_moves`` (exact: Python's float repr round-trips); zero moves are left out."""
    return ",".join(f"{name}={float(amount)!r}" for name, amount in moves.items() if amount != 0)


def format_cells(cells: dict[str, np.ndarray]) -> str:
    return ",".join(f"{name}={cells_to_hex(grid)}" for name, grid in cells.items())
