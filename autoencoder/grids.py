"""Writing 32x32 images and grids of them as PNG, upscaled (nearest) so their pixels can be seen.

The one place a picture becomes a file: the training's sample grids (``autoencoder.samples``) and
every grid of compose, the report, the atlas and learn go through ``save_grid`` or ``save_picture``.

Example: ``python -c "import torch; from autoencoder.grids import save_grid; save_grid(torch.zeros(4,3,32,32), 'g.png', 2)"``
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from autoencoder.atomic import replace_atomically
from autoencoder.data import upscale


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] on the CPU."""
    return images.detach().float().cpu().add(1).div(2).clamp(0, 1)


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """images (N, C, H, W) -> one (C, rows (H + padding) + padding, cols (W + padding) + padding) picture, ``nrow``
    per row, ``padding`` pixels of ``pad_value`` around each (the layout of torchvision's make_grid, without
    importing torchvision, which costs a command over a second)."""
    count, channels, height, width = images.shape
    cols = min(nrow, count)
    rows = -(-count // cols)
    grid = images.new_full((channels, rows * (height + padding) + padding, cols * (width + padding) + padding),
                           pad_value)
    for i, image in enumerate(images):
        top, left = padding + (i // cols) * (height + padding), padding + (i % cols) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_png(picture: torch.Tensor, file: str | Path) -> Path:
    """A (3, H, W) picture in [0, 1] as an 8-bit PNG, written atomically."""
    pixels = picture.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return replace_atomically(lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"), file)


def save_picture(picture: torch.Tensor, file: str | Path, scale: int = 1) -> Path:
    """A (3, H, W) picture in [0, 1] as PNG, ``scale`` times larger."""
    return save_png(upscale(picture.detach().float().cpu(), scale), file)


def save_grid(images: torch.Tensor, file: str | Path, nrow: int, scale: int = 3) -> Path:
    """images (N, 3, 32, 32) in [-1, 1] as a grid of ``nrow`` per row, written as PNG."""
    return save_picture(tile(to_unit(images), nrow), file, scale)


def save_single(image: torch.Tensor, file: str | Path, scale: int = 1) -> Path:
    """One image (3, 32, 32) in [-1, 1] as PNG, ``scale`` times larger."""
    return save_picture(to_unit(image), file, scale)
