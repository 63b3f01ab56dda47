"""The evaluator network: a small CIFAR-10 classifier whose penultimate layer is the metrics' feature space.

The design follows two fast-CIFAR-10 recipes (ideas only, the code is ours):
- a frozen first convolution that whitens 2x2 patches (PCA of the training patches, each
  filter and its negative), from K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single
  GPU" (arXiv:2404.00498, 2024), after D. Page's "How to train your ResNet" (2018);
- three conv-pool-BN-GELU groups of two convolutions (widths 64/256/256), global max
  pooling, and a bias-free linear head whose logits are scaled down (x1/9);
- batch norms with a fixed scale of 1 (only their biases learn, at 64x the learning
  rate, see evaluator.py) and convolutions that start as identity maps on their first
  channels (torch's dirac init), both from Jordan's published ablations.

Images come in as float in [-1, 1], (B, 3, 32, 32); ``features`` is the 256-d pooled vector.

Example: ``python -c "from autoencoder.classifier import EvaluatorNet; print(EvaluatorNet())"``
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 2  # side of the whitened patches


def patch_whitening(images: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """Filters (2 * 3 * PATCH^2, 3, PATCH, PATCH) that whiten the PATCHxPATCH patches of ``images``.

    images: (N, 3, H, W) float. Each eigenvector of the patch covariance, divided by the
    square root of its eigenvalue, is one filter; its negative is another, so that a GELU
    after the convolution keeps both signs.
    """
    patches = images.unfold(2, PATCH, 1).unfold(3, PATCH, 1)  # (N, 3, H-1, W-1, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * PATCH * PATCH).double()
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt()[:, None]).flip(0)
    filters = filters.reshape(-1, 3, PATCH, PATCH).float()
    return torch.cat([filters, -filters])


class ConvGroup(nn.Module):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU; halves the resolution."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels_out)
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)  # scale fixed at 1: only the bias learns
        for conv in (self.conv1, self.conv2):  # start as identity on the first channels
            with torch.no_grad():
                nn.init.dirac_(conv.weight[:min(conv.in_channels, conv.out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class EvaluatorNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), num_classes: int = 10,
                 logit_scale: float = 1 / 9):
        super().__init__()
        self.widths, self.logit_scale = tuple(widths), logit_scale
        whiten_channels = 2 * 3 * PATCH * PATCH
        self.whiten = nn.Conv2d(3, whiten_channels, PATCH, bias=True)  # (B, 24, 31, 31)
        self.whiten.weight.requires_grad_(False)  # set once from the data, then frozen
        self.groups = nn.Sequential(ConvGroup(whiten_channels, widths[0]),  # (B, w0, 15, 15)
                                    ConvGroup(widths[0], widths[1]),  # (B, w1, 7, 7)
                                    ConvGroup(widths[1], widths[2]))  # (B, w2, 3, 3)
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        return self.widths[2]

    def set_whitening(self, images: torch.Tensor) -> None:
        """Fit the frozen first layer to training images (float [-1, 1], (N, 3, 32, 32))."""
        with torch.no_grad():
            self.whiten.weight.copy_(patch_whitening(images))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, 32, 32) in [-1, 1] -> the activations after the stem and after each conv group:
        (B, 24, 31, 31), (B, w0, 15, 15), (B, w1, 7, 7), (B, w2, 3, 3). What a perceptual loss compares."""
        maps = [F.gelu(self.whiten(x))]
        for group in self.groups:
            maps.append(group(maps[-1]))
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, feature_dim), the penultimate layer."""
        x = self.groups(F.gelu(self.whiten(x)))
        return torch.amax(x, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.logit_scale  # (B, num_classes)
