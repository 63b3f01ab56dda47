"""The evaluator classifier for inference: its config, loading the committed weights, batched predictions.

The evaluator is a CIFAR-10 classifier trained from scratch by this project
(``python -m autoencoder.train_evaluator``; network in ``classifier.py``). Its penultimate
layer is the feature space of the sample-quality, uniqueness and diversity metrics
(``latent_ops/metrics.py``); its softmax answers "does this look like a horse, does it look
winged". It only measures: no loss and no code guidance uses it.

Example: ``python -c "from autoencoder.evaluator import load_evaluator; print(load_evaluator().net.feature_dim)"``
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from autoencoder.checkpoint import RunError, load_weights, model_file
from autoencoder.classifier import EvaluatorNet
from autoencoder.config import ConfigError, check_ranges, dataclass_from_flags, load_config
from autoencoder.data import to_float
from autoencoder.hardware import autocast, resolve_device, resolve_precision

SHIPPED = Path(__file__).parent / "weights" / "evaluator"  # the committed evaluator
SHIPPED_PERCEPTUAL = Path(__file__).parent / "weights" / "perceptual"  # the feature net of the perceptual loss
WEIGHTS_FILE = "evaluator.safetensors"  # fp16 weights of a finished evaluator
CONFIG_FILE = "config.json"
CARD_FILE = "card.md"
RESULT_FILE = "result.json"


@dataclass
class EvaluatorConfig:
    out: str = "outputs/evaluator/main"  # run folder
    seed: int = 0  # data order, augmentation and initialisation
    data: str = "data"  # folder with CIFAR-10 (torchvision layout or train/<class>/ image folders)
    cache_dir: str = "data/cache"  # where the decoded uint8 tensors are cached
    download: bool = False  # fetch CIFAR-10 with torchvision when the folder has none
    widths: str = "64,256,256"  # channels of the three conv groups
    logit_scale: float = 1 / 9  # the head's logits are multiplied by this
    epochs: int = 12  # passes over the train split
    batch_size: int = 1024  # images per step
    lr: float = 1.3  # peak SGD learning rate (mean loss over the batch)
    bias_lr_scale: float = 64.0  # batch-norm biases learn this much faster (their decay per step is unchanged)
    momentum: float = 0.85  # Nesterov momentum
    weight_decay: float = 1.53e-3  # L2 coefficient; the decay per step is lr * weight_decay
    label_smoothing: float = 0.2  # cross-entropy label smoothing
    warmup: float = 0.2  # fraction of all steps over which the learning rate rises linearly from 0
    translate: int = 2  # random translation in pixels, with reflected borders
    train_images: int = 0  # use only the first N training images (tests); 0: all
    precision: str = "auto"  # auto (bf16 autocast where supported), bf16 or fp32
    channels_last: bool = True  # NHWC memory layout for the convolutions
    device: str = "auto"  # auto (CUDA if present, else CPU), cpu or cuda
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    ship: str = ""  # after training, copy weights, config and card into this folder
    role: str = "evaluator"  # evaluator (measures; never guides training) or perceptual (features of a loss)

    @property
    def width_tuple(self) -> tuple[int, int, int]:
        return parse_widths(self.widths)


def parse_widths(text: str | tuple) -> tuple[int, int, int]:
    parts = text if isinstance(text, (tuple, list)) else str(text).split(",")
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"--widths takes three positive channel counts like 64,256,256, got {text!r}")
    return widths


EVALUATOR_RANGES = {"seed": (0, 2**31 - 1), "logit_scale": (1e-6, 1e6), "epochs": (1, 10**4),
                    "batch_size": (1, 65536), "lr": (1e-9, 100), "bias_lr_scale": (1e-6, 1e6),
                    "momentum": (0, 0.999999), "weight_decay": (0, 1), "label_smoothing": (0, 0.999999),
                    "warmup": (0, 0.999999), "translate": (0, 16), "train_images": (0, 10**7), "threads": (0, 1024)}


ROLES = ("evaluator", "perceptual")


def validate_evaluator_config(config: EvaluatorConfig) -> None:
    parse_widths(config.widths)
    if config.role not in ROLES:
        raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {config.role!r}")
    check_ranges(config, EVALUATOR_RANGES)
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--precision must be auto, bf16 or fp32, got {config.precision!r}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {config.device!r}")


def make_evaluator_config(**flags) -> EvaluatorConfig:
    config = dataclass_from_flags(EvaluatorConfig, {}, flags)
    validate_evaluator_config(config)
    return config


class Evaluator:
    """A trained EvaluatorNet with batched, autocast inference on float images in [-1, 1]."""

    def __init__(self, net: EvaluatorNet, device: torch.device, dtype: torch.dtype, batch_size: int = 500):
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


def build_net(config: EvaluatorConfig) -> EvaluatorNet:
    return EvaluatorNet(config.width_tuple, logit_scale=config.logit_scale)


def load_classifier(folder: str | Path, role: str) -> tuple[EvaluatorConfig, EvaluatorNet]:
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
    config = load_config(folder / CONFIG_FILE, EvaluatorConfig, validate_evaluator_config)
    if config.role != role:
        raise RunError(f"{folder} holds the {config.role} network, not a {role} one: the evaluator only "
                       f"measures and a perceptual net only trains; pass a network trained with --role {role}")
    net = build_net(config)
    load_weights(net, weights)
    return config, net.eval()


def load_evaluator(folder: str | Path = SHIPPED, device: str = "cpu", precision: str = "auto") -> Evaluator:
    """The evaluator in ``folder`` (the committed one by default), ready for inference."""
    config, net = load_classifier(folder, "evaluator")
    config = dataclasses.replace(config, device=device, precision=precision)
    dev = resolve_device(config)
    dtype = resolve_precision(config, dev)
    return Evaluator(net.to(memory_format=torch.channels_last), dev, dtype)


def load_perceptual(folder: str | Path = SHIPPED_PERCEPTUAL, device: torch.device | str = "cpu") -> EvaluatorNet:
    """The frozen feature network of the perceptual loss (role perceptual), on ``device``."""
    _, net = load_classifier(folder, "perceptual")
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.to(device)


