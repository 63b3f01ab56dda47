"""Regions that follow the subject: find it in each candidate part way through sampling, and put the
cells of a ``@back`` condition just above its back, and those of a ``@body`` condition on the subject itself.

A fixed band (``@top``) puts a wing on the sky of a small horse and on the head of a big one. Here
each candidate's own denoised estimate, decoded, says where its subject is:

- **silhouette**: how far each pixel's colour is from the median colour of the picture's border
  (the background), a figure-ground cue;
- **evidence**: the perceptual classifier's class activation map of the subject's class (Zhou et
  al. 2016, arXiv:1512.04150), upsampled from its 3 x 3 grid. Only the perceptual net is used,
  never the evaluator, which measures the results.

Their product (``latent_ops.subject``), averaged over each cell of the code's grid, marks the subject's cells (those at
least ``SUBJECT_SHARE`` of the strongest). The wing cells are, in every column the subject
occupies, the cells above its topmost cell (at most ``ABOVE_SHARE`` of the grid's rows); where the subject
reaches the top row, its top row itself. A candidate whose subject is not found gets the top
``ABOVE_SHARE`` of the rows. The body cells (``@body``, e.g. ``pegasus&white@body`` for a pale horse on
any sky) are the subject's cells themselves.

Example: ``python -m latent_ops.compose "horse&airplane@back" --run models/pegasus-cifar10``
(``region.png`` and ``regions64.png`` outline the cells chosen for each image)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from autoencoder.data import to_uint8
from latent_ops.expression import FOLLOWING_REGIONS
from latent_ops.flow import Condition, Drift, Guide
from latent_ops.sources import classifier_views
from latent_ops.subject import SUBJECT_SHARE, subject_score

ABOVE_SHARE = 0.5  # how far above the subject's top a wing may reach, as a share of the picture's height


def subject_cells(images: torch.Tensor, evidence: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """(B, rows, cols) bool: the cells of the code grid that hold the subject.

    images: (B, 3, H, W) in [-1, 1]; evidence: (B, h, w) class activation map of the subject (any
    size, upsampled), or None for the silhouette alone.
    """
    cells = F.adaptive_avg_pool2d(subject_score(images, evidence)[:, None], grid)[:, 0]  # (B, rows, cols)
    return cells >= SUBJECT_SHARE * cells.flatten(1).amax(1)[:, None, None].clamp_min(1e-6)


def cells_above(subject: torch.Tensor) -> torch.Tensor:
    """(B, rows, cols) bool: in each column the subject occupies, up to ABOVE_SHARE of the grid's rows
    above its top cell (its top cell itself when that is the top row); those top rows where no subject is found."""
    B, rows, cols = subject.shape
    above_rows = max(1, round(ABOVE_SHARE * rows))  # 2 cells of a 4 x 4 grid, 4 of an 8 x 8
    row = torch.arange(rows)[None, :, None]  # (1, rows, 1)
    has = subject.any(1, keepdim=True)  # (B, 1, cols)
    top = torch.where(subject, row, torch.full_like(row, rows)).amin(1, keepdim=True)  # (B, 1, cols)
    above = (row < top) & (row >= top - above_rows) & has
    above = above | ((top == 0) & (row == 0) & has)
    missing = ~subject.flatten(1).any(1)
    above[missing] = (row < above_rows).expand(int(missing.sum()), rows, cols)
    return above


class SubjectPlacer:
    """Called by ``flow.integrate`` part way through: decodes the denoised estimate, finds the subject
    and gives every guide of a following region (``back``) the cells above it. ``cells`` keeps the
    last placement, (B, rows, cols) bool, to be shown on the output."""

    def __init__(self, decoder: torch.nn.Module, perceptual: torch.nn.Module | None, subject: int,
                 code_shape: Sequence[int]):
        if len(code_shape) != 3:
            raise ValueError(f"a region that follows the subject needs a spatial code, got shape {tuple(code_shape)}")
        self.decoder, self.perceptual, self.subject = decoder, perceptual, subject
        self.code_shape = tuple(code_shape)
        self.cells: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, estimate: torch.Tensor, guides: Sequence[Guide]) -> list[Guide]:
        C, rows, cols = self.code_shape
        device = next(self.decoder.parameters()).device
        images = self.decoder(estimate.to(device)).float().cpu()  # (B, 3, 32, 32)
        evidence = None
        if self.perceptual is not None:
            _, maps = classifier_views(self.perceptual, to_uint8(images))
            evidence = maps[:, self.subject]
        subject = subject_cells(images, evidence, (rows, cols))
        placed = {"back": cells_above(subject), "body": subject}
        following = [g.region for g in guides if isinstance(g, (Condition, Drift)) and g.region in FOLLOWING_REGIONS]
        self.cells = placed[following[0]] if following else placed["back"]
        masks = {region: cells[:, None].expand(-1, C, -1, -1).reshape(len(images), -1).float().to(estimate.device)
                 for region, cells in placed.items()}
        return [g._replace(mask=masks[g.region]) if isinstance(g, (Condition, Drift)) and g.region in FOLLOWING_REGIONS
                else g for g in guides]
