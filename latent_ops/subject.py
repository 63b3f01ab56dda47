"""Where the subject of a picture is, and what colour it is: figure-ground from pixels, helped by a class map.

- ``silhouette``: how far each pixel's colour is from the median colour of the picture's border (the
  background), a figure-ground cue;
- ``subject_pixels``: the silhouette times a class activation map of the subject's class (Zhou et al.
  2016, arXiv:1512.04150), upsampled to the picture, over its peak: the subject's pixels are those at
  least ``SUBJECT_SHARE`` of it. The maps come from the perceptual classifier, never the evaluator;
- ``subject_colour``: the mean brightness and saturation of those pixels, so that a white horse on a
  dark field is pale and a brown horse on a snowfield is not (a whole-picture mean says the opposite);
- ``rising_mass``: the share of the middle third of the picture's columns, above a side-view horse's back
  (its top ``RISE_ROWS`` share of rows), that is figure: a wing rising from the middle of the back fills
  it, the commonest failure (two blades at the ends of a table-like body: a raised head and tail) leaves
  it empty. On the kept 64 of ``make pegasus`` seeds 0-2 it separates the strict by-eye marks
  made before this rule shipped (docs/pegasus-cifar10/before-rise/marked-seed*.json) with ROC AUC 0.80; the evaluator's P(wings) does 0.58.

- ``rising_brightness``: the mean brightness of that rising figure (0 where none rises): a pale wing against a
  blue or dark sky is bright there, the usual dark blade is not.

Example: ``python -c "import torch; from latent_ops.subject import subject_colour; print(subject_colour(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), None))"``
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SUBJECT_SHARE = 0.5  # a pixel (or code cell) is the subject's when its score is at least this share of the peak
RISE_ROWS = 14 / 32  # the share of rows above a side-view horse's back
RISE_COLUMNS = (11 / 32, 21 / 32)  # the middle third of the columns


def silhouette(images: torch.Tensor, border: int = 3) -> torch.Tensor:
    """(B, H, W) in [0, 1]: each pixel's colour distance from the median border colour, over its image's peak.
    images: (B, 3, H, W) in [-1, 1]."""
    frame = torch.cat([images[:, :, :border].flatten(2), images[:, :, -border:].flatten(2),
                       images[:, :, :, :border].flatten(2), images[:, :, :, -border:].flatten(2)], 2)
    background = frame.median(2).values[:, :, None, None]  # (B, 3, 1, 1)
    distance = (images - background).norm(dim=1)
    return distance / distance.flatten(1).amax(1)[:, None, None].clamp_min(1e-6)


def subject_score(images: torch.Tensor, evidence: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) in [0, 1]: the silhouette, times the class map ``evidence`` (B, h, w; any size, upsampled and
    scaled to its peak) when given; an image whose map is nowhere positive keeps its silhouette alone.
    images: (B, 3, H, W) in [-1, 1]."""
    score = silhouette(images)
    if evidence is not None:
        heat = F.interpolate(evidence[:, None].float(), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0].clamp_min(0)
        peak = heat.flatten(1).amax(1)[:, None, None]
        score = torch.where(peak > 0, score * heat / peak.clamp_min(1e-6), score)
    return score


def subject_pixels(images: torch.Tensor, evidence: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) bool: the pixels whose subject score is at least SUBJECT_SHARE of their image's peak."""
    score = subject_score(images, evidence)
    return score >= SUBJECT_SHARE * score.flatten(1).amax(1)[:, None, None].clamp_min(1e-6)


def subject_colour(images: torch.Tensor, evidence: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean brightness and mean saturation (max - min over channels), each (N,) in [0, 1], of the subject
    pixels of uint8 images (N, 3, H, W) (the whole picture where none is found, a blank one); ``evidence`` as for
    ``subject_score``."""
    x = images.float() / 255
    inside = subject_pixels(x * 2 - 1, evidence)
    inside = torch.where(inside.flatten(1).any(1)[:, None, None], inside, torch.ones_like(inside)).float()
    count = inside.flatten(1).sum(1).clamp_min(1)
    brightness = (x.mean(1) * inside).flatten(1).sum(1) / count
    saturation = ((x.amax(1) - x.amin(1)) * inside).flatten(1).sum(1) / count
    return brightness.numpy(), saturation.numpy()


def rise_window(images: torch.Tensor, outline: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle third of the columns in the top RISE_ROWS rows, above a side-view horse's back: its figure mask
    (N, h, w) float (silhouette at least SUBJECT_SHARE of its peak) and its pixels (N, 3, h, w).
    images: (N, 3, H, W) in [-1, 1]; ``outline``: their ``silhouette`` when already computed."""
    H, W = images.shape[-2:]
    rows, (c0, c1) = round(RISE_ROWS * H), (round(RISE_COLUMNS[0] * W), round(RISE_COLUMNS[1] * W))
    figure = (silhouette(images.float()) if outline is None else outline) >= SUBJECT_SHARE
    return figure[:, :rows, c0:c1].float(), images[:, :, :rows, c0:c1].float()


def rising_mass(images: torch.Tensor, outline: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) in [0, 1]: the share of the rise window (``rise_window``) that is figure. images: (N, 3, H, W) in
    [-1, 1]; ``outline``: their ``silhouette`` when already computed."""
    return rise_window(images, outline)[0].mean((1, 2))


def rising_brightness(images: torch.Tensor) -> torch.Tensor:
    """(N,) in [0, 1]: the mean brightness of the figure pixels in the rise window (``rise_window``); 0 where none
    is figure. images: (N, 3, H, W) in [-1, 1]."""
    figure, pixels = rise_window(images)
    brightness = ((pixels + 1) / 2).mean(1)
    return (brightness * figure).flatten(1).sum(1) / figure.flatten(1).sum(1).clamp_min(1)
