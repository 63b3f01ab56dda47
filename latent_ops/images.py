"""Writing images and grids of 32x32 images as PNG, upscaled (nearest) so they can be seen.

Example: ``python -c "import torch; from latent_ops.images import save_grid; save_grid(torch.zeros(4,3,32,32), 'g.png', 2)"``
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from autoencoder.atomic import replace_atomically
from autoencoder.data import upscale
from latent_ops.expression import region_slices


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


def save_grid(images: torch.Tensor, file: str | Path, nrow: int, scale: int = 3) -> Path:
    """images (N, 3, 32, 32) in [-1, 1] as a grid of ``nrow`` per row, written as PNG."""
    return save_png(upscale(tile(to_unit(images), nrow), scale), file)


def save_single(image: torch.Tensor, file: str | Path, scale: int = 1) -> Path:
    """One image (3, 32, 32) in [-1, 1] as PNG, ``scale`` times larger."""
    return save_png(upscale(to_unit(image), scale), file)


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
