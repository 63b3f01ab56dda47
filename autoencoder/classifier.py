"""The project's CIFAR-10 classifiers, for inference: the network, its small config, loading, batched predictions.

Two are trained from scratch here (``python -m autoencoder.train_evaluator``) and committed in
``autoencoder/weights/``: the *evaluator*, whose penultimate layer is the metrics' feature space
and whose softmax answers "does this look like a horse, does it look winged" (it only
measures: no loss, guidance or acceptance uses it), and the *perceptual* net, whose features
drive the perceptual loss, the pool's judge and the subject placer.

The design follows two fast-CIFAR-10 recipes (ideas only, the code is ours):
- a frozen first convolution that whitens 2x2 patches (PCA of the training patches, each
  filter and its negative), from K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single
  GPU" (arXiv:2404.00498, 2024), after D. Page's "How to train your ResNet" (2018);
- three conv-pool-BN-GELU groups of two convolutions (widths 64/256/256), global max
  pooling, and a bias-free linear head whose logits are scaled down (x1/9);
- batch norms with a fixed scale of 1 (only their biases learn, at 64x the learning
  rate, see train_evaluator.py) and convolutions that start as identity maps on their first
  channels (torch's dirac init), both from Jordan's published ablations.

Images come in as float in [-1, 1], (B, 3, 32, 32); ``features`` is the 256-d pooled vector.

Example: ``python -c "from autoencoder.classifier import EvaluatorNet; print(EvaluatorNet())"``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoencoder.cli import ConfigError, check_choice, check_ranges, load_config
from autoencoder.compute import autocast, resolve_device, resolve_precision
from autoencoder.data import to_float
from autoencoder.run_folder import RunError, load_weights, model_file

WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = WEIGHTS / "evaluator"  # the committed evaluator
SHIPPED_PERCEPTUAL = WEIGHTS / "perceptual"  # the committed feature net of the perceptual loss
WEIGHTS_FILE = "classifier.safetensors"  # fp16 weights of a finished classifier
CONFIG_FILE = "config.json"
ROLES = ("evaluator", "perceptual")

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


@dataclass
class ClassifierConfig:
    """What a trained classifier is made of, read from its folder's config.json (ModelConfig's pattern)."""
    widths: str = "64,256,256"  # channels of the three conv groups
    logit_scale: float = 1 / 9  # the head's logits are multiplied by this
    role: str = "evaluator"  # evaluator (measures; never guides training) or perceptual (features of a loss)

    @property
    def width_tuple(self) -> tuple[int, int, int]:
        return parse_widths(self.widths)


def parse_widths(text: str | tuple) -> tuple[int, int, int]:
    """``"64,256,256"`` -> (64, 256, 256); anything else is a ConfigError."""
    parts = text if isinstance(text, (tuple, list)) else str(text).split(",")
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1 or max(widths) > 8192:
        raise ConfigError(f"--widths takes three channel counts from 1 to 8192 like 64,256,256, got {text!r}")
    return widths


def check_classifier_config(config: ClassifierConfig) -> None:
    parse_widths(config.widths)
    check_choice("role", config.role, ROLES)
    check_ranges(config, {"logit_scale": (1e-6, 1e6)})


def build_classifier(config: ClassifierConfig) -> EvaluatorNet:
    return EvaluatorNet(config.width_tuple, logit_scale=config.logit_scale)


class Evaluator:
    """A trained EvaluatorNet with batched, autocast inference on float images in [-1, 1]."""

    def __init__(self, net: EvaluatorNet, device: torch.device, dtype: torch.dtype, batch_size: int = 256):
        self.net, self.device, self.dtype, self.batch_size = net.to(device).eval(), device, dtype, batch_size

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, fn) -> torch.Tensor:
        outs = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            x = (to_float(x) if x.dtype == torch.uint8 else x.float()).to(
                self.device, memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                outs.append(fn(x).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) uint8 or float [-1, 1] -> (N, feature_dim) penultimate features."""
        return self._batched(images, self.net.features)

    def logits(self, images: torch.Tensor, flip_tta: bool = True) -> torch.Tensor:
        """(N, 10) logits, averaged over the image and its mirror when ``flip_tta``."""
        if flip_tta:
            return self._batched(images, lambda x: (self.net(x) + self.net(x.flip(-1))) / 2)
        return self._batched(images, self.net)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 10) class probabilities, in CIFAR10_CLASSES order."""
        return self.logits(images).softmax(dim=1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, flip_tta: bool = True) -> float:
        return (self.logits(images, flip_tta).argmax(1) == labels).float().mean().item()


def load_classifier(folder: str | Path, role: str) -> tuple[ClassifierConfig, EvaluatorNet]:
    """The config and network (CPU, eval mode) of a trained classifier folder of the given ``role``.

    The roles never mix: the evaluator measures and must not guide training, and a perceptual
    net must not measure, or every metric would flatter the model trained against it.
    """
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        weights = model_file(folder)  # an unfinished run folder: its last epoch's checkpoint
    if not (folder / CONFIG_FILE).exists() or not weights.exists():
        raise RunError(f"no {role} network in {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE}); train one with "
                       f"python -m autoencoder.train_evaluator --role {role} --data data --out {folder}")
    try:
        config = load_config(folder / CONFIG_FILE, ClassifierConfig, check_classifier_config)
    except ConfigError as error:
        raise RunError(f"{error}; it is not a classifier's config") from None
    if config.role != role:
        raise RunError(f"{folder} holds the {config.role} network, not a {role} one: the evaluator only "
                       f"measures and a perceptual net only trains; pass a network trained with --role {role}")
    net = build_classifier(config)
    load_weights(net, weights)
    return config, net.eval()


def load_evaluator(folder: str | Path = SHIPPED, device: str = "cpu", precision: str = "auto") -> Evaluator:
    """The evaluator in ``folder`` (the committed one by default), ready for inference."""
    _, net = load_classifier(folder, "evaluator")
    where = resolve_device(device)
    return Evaluator(net.to(memory_format=torch.channels_last), where, resolve_precision(precision, where))


def load_perceptual(folder: str | Path = SHIPPED_PERCEPTUAL, device: torch.device | str = "cpu") -> EvaluatorNet:
    """The frozen feature network of the perceptual loss (role perceptual), on ``device``."""
    _, net = load_classifier(folder, "perceptual")
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.to(device)
