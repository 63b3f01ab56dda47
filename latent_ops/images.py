"""Pictures of a code grid's regions: the cells of named regions, and images with their cells outlined in red.

Plain images and grids are written by ``autoencoder.grids``; this module adds what the grammar's regions need.

Example: ``python -c "from latent_ops.images import region_cells; print(region_cells(['top'], (4, 4)).int())"``
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from autoencoder.atomic import replace_atomically
from autoencoder.data import upscale
from autoencoder.grids import to_unit
from latent_ops.expression import region_slices


def region_cells(regions: list[str], grid: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """(rows, cols) bool: the cells of fixed REGIONS on the code grid."""
    cells = torch.zeros(grid, dtype=torch.bool)
    for region in regions:
        cells[region_slices(region, grid)] = True
    return cells


def outline_cells(image: torch.Tensor, cells: torch.Tensor, scale: int):
    """A PIL picture of one image (3, 32, 32) in [-1, 1], ``scale`` times larger, with the grid cells
    ``cells`` (rows, cols) bool outlined in red (a cell of a 4 x 4 code covers 8 x 8 pixels)."""
    from PIL import ImageDraw

    pixels = upscale(to_unit(image), scale).mul(255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    height = image.shape[-2] * scale // cells.shape[0]
    width = image.shape[-1] * scale // cells.shape[1]
    for r, c in cells.nonzero().tolist():
        draw.rectangle([c * width, r * height, (c + 1) * width - 1, (r + 1) * height - 1], outline=(255, 0, 0),
                       width=max(1, scale // 4))
    return picture


def save_region(image: torch.Tensor, cells: torch.Tensor, file: str | Path, scale: int = 8) -> Path:
    """One image (3, 32, 32) in [-1, 1], ``scale`` times larger, with the cells (rows, cols) bool outlined."""
    picture = outline_cells(image, cells, scale)
    return replace_atomically(lambda tmp: picture.save(tmp, format="PNG"), file)


def save_region_grid(images: torch.Tensor, cells: torch.Tensor, file: str | Path, nrow: int = 8,
                     scale: int = 4) -> Path:
    """Images (N, 3, 32, 32) with their own cells (N, rows, cols) outlined, ``nrow`` per row, as one PNG."""
    from PIL import Image

    pictures = [outline_cells(image, c, scale) for image, c in zip(images, cells)]
    side, pad = pictures[0].width, 2
    rows = (len(pictures) + nrow - 1) // nrow
    sheet = Image.new("RGB", (nrow * (side + pad) + pad, rows * (side + pad) + pad), (255, 255, 255))
    for i, picture in enumerate(pictures):
        sheet.paste(picture, (pad + (i % nrow) * (side + pad), pad + (i // nrow) * (side + pad)))
    return replace_atomically(lambda tmp: sheet.save(tmp, format="PNG"), file)
