"""Writing images and grids of 32x32 images as PNG, upscaled (nearest) so they can be seen.

Example: ``python -c "import torch; from latent_ops.images import save_grid; save_grid(torch.zeros(4,3,32,32), 'g.png', 2)"``
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from autoencoder.atomic import replace_atomically
from autoencoder.samples import upscale
from latent_ops.expression import REGIONS


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] on the CPU."""
    return images.detach().float().cpu().add(1).div(2).clamp(0, 1)


def save_grid(images: torch.Tensor, file: str | Path, nrow: int, scale: int = 3) -> Path:
    """images (N, 3, 32, 32) in [-1, 1] as a grid of ``nrow`` per row, written as PNG."""
    grid = make_grid(to_unit(images), nrow=nrow, padding=2, pad_value=1.0)
    return replace_atomically(lambda tmp: save_image(upscale(grid, scale), str(tmp)), file)


def save_single(image: torch.Tensor, file: str | Path, scale: int = 1) -> Path:
    """One image (3, 32, 32) in [-1, 1] as PNG, ``scale`` times larger."""
    return replace_atomically(lambda tmp: save_image(upscale(to_unit(image), scale), str(tmp)), file)


def save_region(image: torch.Tensor, regions: list[str], file: str | Path, scale: int = 8) -> Path:
    """One image (3, 32, 32) in [-1, 1], ``scale`` times larger, with each region's cells outlined in red
    (a cell of a 4 x 4 spatial code covers 8 x 8 pixels)."""
    from PIL import Image, ImageDraw

    pixels = upscale(to_unit(image), scale).mul(255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    cell = 8 * scale
    for region in regions:
        (r0, r1), (c0, c1) = REGIONS[region]
        draw.rectangle([c0 * cell, r0 * cell, c1 * cell - 1, r1 * cell - 1], outline=(255, 0, 0), width=2)
    return replace_atomically(lambda tmp: picture.save(tmp, format="PNG"), file)
