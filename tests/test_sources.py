"""Named sources: subsets of a class picked from the pictures by the perceptual classifier and pixel statistics."""
from __future__ import annotations

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import EvaluatorNet
from latent_ops.sources import SOURCE_NAMES, fullbody, source_masks


def test_fullbody_needs_every_column_and_the_bottom_row():
    cam = torch.zeros(4, 3, 3)
    cam[0] = torch.tensor([[0, 0, 0], [1, 1, 1], [0, 1, 0.]])  # a wide animal with legs
    cam[1] = torch.tensor([[1, 1, 1], [0, 0, 0], [0, 0, 0.]])  # wide, but nothing at the bottom
    cam[2] = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0.]])  # one column: a head at the side
    cam[3] = torch.tensor([[0.6, 0.2, 0.6], [0.1, 1, 0.1], [0, 0.55, 0.]])  # half the peak counts
    assert fullbody(cam).tolist() == [True, False, False, True]


def test_each_source_is_a_subset_of_its_class():
    torch.manual_seed(0)
    net = EvaluatorNet((8, 16, 16)).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = np.array([CIFAR10_CLASSES.index(c) for c in ("bird", "horse", "cat")] * 20)
    images[torch.from_numpy(np.flatnonzero(labels == 7)[:3]), :, 8:24, 8:24] = 250  # a few white horses on noise
    masks, (brightness, saturation) = source_masks(images, labels, net)
    assert brightness.shape == saturation.shape == (60,)
    assert set(masks) == set(SOURCE_NAMES)
    for name, mask in masks.items():
        subject = CIFAR10_CLASSES.index(name.split(":")[0])
        assert mask.dtype == bool and mask.shape == (60,) and (labels[mask] == subject).all(), name
    assert masks["bird:flight"].sum() <= 3  # of the top 15% of 20 birds by P(airplane), those in a plain frame
    assert 1 <= masks["horse:white"].sum() <= 3  # the brightest fifth of the less saturated half


def test_flight_needs_an_airplane_like_bird_in_a_plain_frame():
    from latent_ops.sources import border_spread

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[:20, :, :4], images[:20, :, -4:], images[:20, :, :, :4], images[:20, :, :, -4:] = 200, 200, 200, 200
    spread = border_spread(images)
    assert (spread[:20] == 0).all() and (spread[20:] > 0.2).all()  # a sky-like frame against noise

    class Planes(torch.nn.Module):  # P(airplane) rises with the image's index: a known order
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(1, 10)
            self.logit_scale = 1.0

        def feature_maps(self, x):
            return [x[:, :1, :3, :3] * 0 + torch.arange(len(x), dtype=torch.float)[:, None, None, None] / 10]

    net = Planes()
    with torch.no_grad():
        net.head.weight.zero_(), net.head.bias.zero_()
        net.head.weight[CIFAR10_CLASSES.index("airplane"), 0] = 1.0
    labels = np.full(40, CIFAR10_CLASSES.index("bird"))
    order = torch.cat([torch.arange(20, 40), torch.arange(20)])  # plain frames get the highest P(airplane)
    masks, _ = source_masks(images[order], labels, net)
    assert np.flatnonzero(masks["bird:flight"]).tolist() == list(range(34, 40))  # top 15%, all in plain frames
    masks, _ = source_masks(images, labels, net)  # now the top 15% by P(airplane) have noisy frames
    assert not masks["bird:flight"].any()


def test_the_views_come_from_one_pass_and_match_the_classifier():
    from latent_ops.sources import classifier_views

    torch.manual_seed(1)
    net = EvaluatorNet((8, 16, 16)).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    probabilities, cams = classifier_views(net, images, batch_size=2)
    from autoencoder.data import to_float
    with torch.no_grad():
        assert torch.allclose(probabilities, net(to_float(images)).softmax(1), atol=1e-6)
    assert cams.shape == (5, 10, 3, 3)
