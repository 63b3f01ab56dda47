"""One run opened for editing single codes: start codes, moves along its directions, decoding and encoding.

The explorer (``latent_ops.explore``) and ``python -m latent_ops.edit`` both edit through an ``Editor``, so a saved
edit is reproduced by the command the explorer prints. A start code is named by text:

- ``test:ROW`` (or ``train:ROW``): the bank's code of that row of the split (``latents.npz``, no data needed);
- a ``.png`` / ``.jpg`` file: the picture, centre-cropped to 32 x 32 and encoded (``latent_ops.pictures``);
- a ``.npz`` file holding an array ``start`` (the explorer saves one beside every edit).

Example: ``python -c "from latent_ops.editor import Editor; e = Editor('models/pegasus-cifar10'); print(e.spreads)"``
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.compute import autocast
from autoencoder.data import to_float
from autoencoder.run_folder import load_run
from latent_ops.concepts import Concepts
from latent_ops.editing import EditError, direction_spreads, edited_code
from latent_ops.encode import LatentBank, load_bank
from latent_ops.pictures import read_picture, small_picture
from latent_ops.run_concepts import ensure_concepts

BANK_START = re.compile(r"(train|test):(\d+)")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return images.add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class Editor:
    """A run's networks, bank and directions, loaded once; every method is a pure function of its inputs."""

    def __init__(self, run: str | Path, data: str = DATA_FOLDER, cache_dir: str = CACHE_FOLDER,
                 precision: str = "auto"):
        opened = load_run(run, precision=precision)
        self.run = Path(run)
        self.nets = opened.nets
        self.device, self.dtype = opened.device, opened.dtype
        self.code_shape: tuple[int, ...] = tuple(opened.code_shape)
        self.concepts: Concepts = ensure_concepts(self.run, data, cache_dir)
        self.bank: LatentBank = load_bank(self.run)
        self.vectors = {name: d.vector.astype(np.float32) for name, d in self.concepts.directions.items()}
        every = np.concatenate([c for c in self.bank.codes.values() if len(c)])
        self.spreads = direction_spreads(self.vectors, every)

    @property
    def grid(self) -> tuple[int, int] | None:
        """The code's cell grid (H, W) where moves can be painted; None for a flat code."""
        return tuple(self.code_shape[1:]) if len(self.code_shape) == 3 else None

    @property
    def directions(self) -> list[str]:
        """The run's directions, wings and white first (the sliders' order)."""
        first = [name for name in ("wings", "white") if name in self.vectors]
        return first + [name for name in self.vectors if name not in first]

    def bank_code(self, split: str, row: int) -> np.ndarray:
        codes = self.bank.codes.get(split)
        if codes is None or not 0 <= row < len(codes):
            size = 0 if codes is None else len(codes)
            raise EditError(f"{split}:{row} is not a code of this run's bank ({split} holds {size} codes: "
                            f"give {split}:0 to {split}:{max(size - 1, 0)})")
        return codes[row].astype(np.float32)

    def start_code(self, start: str) -> np.ndarray:
        """The (D,) code named by ``start`` (module docstring)."""
        match = BANK_START.fullmatch(start.strip())
        if match:
            return self.bank_code(match[1], int(match[2]))
        path = Path(start)
        if path.suffix.lower() in PICTURE_SUFFIXES:
            if not path.is_file():
                raise EditError(f"--start {start}: no such picture; give a PNG or JPEG file, a saved code.npz or "
                                f"test:ROW")
            return self.encode(small_picture(read_picture(path.read_bytes(), f"--start {start}"))[None])[0]
        if path.suffix == ".npz":
            return self.saved_start(path)
        raise EditError(f"--start {start!r}: give test:ROW (a code of the bank), a PNG or JPEG picture, or a "
                        f"code.npz the explorer saved")

    def saved_start(self, path: Path) -> np.ndarray:
        size = int(np.prod(self.code_shape))
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise EditError(f"--start {path}: not an npz archive; give the code.npz the explorer saved")
        try:
            with np.load(path, allow_pickle=False) as saved:
                start = saved["start"].astype(np.float32).reshape(-1)
        except (KeyError, ValueError, OSError) as error:
            raise EditError(f"--start {path}: it holds no plain array 'start' ({type(error).__name__}); give the "
                            f"code.npz the explorer saved") from None
        if start.size != size or not np.isfinite(start).all():
            raise EditError(f"--start {path}: 'start' has {start.size} numbers, not this run's {size} finite ones; "
                            f"was it saved with another run?")
        return start

    def edit(self, start: np.ndarray, moves: dict[str, float], cells: dict[str, np.ndarray]) -> np.ndarray:
        return edited_code(start, moves, cells, self.vectors, self.spreads, self.code_shape)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, D) codes -> (N, 32, 32, 3) uint8 pictures."""
        z = torch.from_numpy(np.asarray(codes, dtype=np.float32)).to(self.device)
        out = []
        for chunk in z.split(256):
            with autocast(self.device, self.dtype):
                out.append(self.nets.decoder(chunk).float().cpu())
        return to_pixels(torch.cat(out))

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 32, 32, 3) uint8 pictures -> (N, D) float32 codes."""
        images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(self.device)
        with autocast(self.device, self.dtype):
            return self.nets.encoder(to_float(images)).float().reshape(len(pixels), -1).cpu().numpy()
