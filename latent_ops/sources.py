"""Named sources: subsets of a class chosen by what is in the picture, usable as concepts.

Public Pegasus attempts that showed wings chose their sources: full-body horses, and birds
with spread wings (which a classifier takes for airplanes). These are those subsets, found
from the images with this project's *perceptual* classifier (never the evaluator, which
measures the results) and simple pixel statistics:

- ``bird:flight``: birds the perceptual classifier finds airplane-like (the top 15% of
  P(airplane) among birds) in a plain frame (the spread of the pixels in the 4-pixel border
  below the birds' median): spread wings against the sky. P(airplane) alone picked many perched
  birds on grey backgrounds; on the train split, by eye, about 28% of this rule's members fly,
  against 17% for the top quarter of P(airplane).
- ``horse:white``: the horses whose *subject* is pale: the brightest fifth, by the mean brightness of the
  horse's own pixels (``latent_ops.subject``: silhouette times the horse activation map), among those
  whose horse pixels are less saturated than the horses' median. A whole-picture mean picked brown
  horses on snow and white studio backdrops (until 2026-12-05).
- ``horse:fullbody``: horses whose horse evidence spans the picture: the perceptual
  classifier's class activation map for horse (Zhou et al. 2016, arXiv:1512.04150) on its
  3 x 3 grid is strong (at least half its peak) in all three columns and in the bottom
  row (legs), so the whole animal is in the frame rather than a head.

Each becomes a concept like a cluster: a Gaussian fitted to its train codes, and its
held-out test members for ``--source heldout``; ``RUN/clusters/sources.png`` shows a row of
members per source.

Example: ``python -m latent_ops.concepts --run RUN --data data`` (the sources are fitted with the concepts)
"""
from __future__ import annotations

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.data import to_float
from latent_ops.subject import subject_colour

SOURCE_NAMES = ("bird:flight", "horse:white", "horse:fullbody")
FLIGHT_QUANTILE = 0.85  # bird:flight keeps the birds above this quantile of P(airplane)...
BORDER = 4  # ...whose frame (this many pixels at each edge) varies less than the birds' median
WHITE_SHARE = 0.2  # horse:white keeps this brightest share of subjects (among the less saturated half)
CAM_SHARE = 0.5  # a cell shows the class when its activation is at least this share of the map's peak


@torch.no_grad()
def classifier_views(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 500
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, 10) and class activation maps (N, 10, 3, 3) of an EvaluatorNet-shaped
    classifier (``feature_maps``, ``head``) on uint8 images (N, 3, 32, 32)."""
    probabilities, maps = [], []
    weight = net.head.weight  # (10, C)
    for chunk in images.split(batch_size):
        last = net.feature_maps(to_float(chunk))[-1]  # (B, C, 3, 3): one pass gives both views
        logits = net.head(torch.amax(last, dim=(2, 3))) * net.logit_scale  # what net(x) computes from it
        probabilities.append(logits.softmax(1))
        maps.append(torch.einsum("kc,bchw->bkhw", weight, last))
    return torch.cat(probabilities), torch.cat(maps)


def border_spread(images: torch.Tensor) -> np.ndarray:
    """How much the pixels of each uint8 image's border (BORDER pixels at each edge) vary: (N,), low for sky."""
    x = images.float() / 255
    frame = torch.cat([x[:, :, :BORDER].flatten(2), x[:, :, -BORDER:].flatten(2),
                       x[:, :, :, :BORDER].flatten(2), x[:, :, :, -BORDER:].flatten(2)], 2)
    return frame.std(2).mean(1).numpy()


def fullbody(cam: torch.Tensor) -> np.ndarray:
    """True where a (N, 3, 3) activation map is strong in every column and in the bottom row."""
    strong = cam >= CAM_SHARE * cam.flatten(1).amax(1)[:, None, None].clamp_min(1e-8)
    return (strong.any(1).all(1) & strong[:, 2].any(1)).numpy()


def subject_colours(images: torch.Tensor, labels: np.ndarray, cams: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean brightness and saturation of each uint8 image's subject, found with the activation map of its own
    CIFAR-10 class (``cams``: (N, 10, h, w)); each (N,)."""
    own = cams[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)]
    return subject_colour(images, own)


def source_masks(images: torch.Tensor, labels: np.ndarray, net: torch.nn.Module
                 ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """{source name: (N,) bool} over uint8 images (N, 3, 32, 32) with their CIFAR-10 labels, and the
    subject colours (brightness, saturation) of every image, from one pass of the classifier."""
    probabilities, cams = classifier_views(net, images)
    brightness, saturation = subject_colours(images, labels, cams)
    horse, bird, plane = (CIFAR10_CLASSES.index(c) for c in ("horse", "bird", "airplane"))
    masks = {name: np.zeros(len(labels), dtype=bool) for name in SOURCE_NAMES}
    birds = labels == bird
    if birds.any():
        p_plane, spread = probabilities[:, plane].numpy(), border_spread(images)
        masks["bird:flight"] = (birds & (p_plane >= np.quantile(p_plane[birds], FLIGHT_QUANTILE))
                                & (spread <= np.median(spread[birds])))
    horses = labels == horse
    if horses.any():
        calm = horses & (saturation <= np.median(saturation[horses]))
        if calm.any():
            masks["horse:white"] = calm & (brightness >= np.quantile(brightness[calm], 1 - WHITE_SHARE))
        masks["horse:fullbody"] = horses & fullbody(cams[:, horse])
    return masks, (brightness, saturation)
