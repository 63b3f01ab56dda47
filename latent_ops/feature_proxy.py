"""A small net that stands in for "decode, then read with the perceptual net" when draws are pushed apart.

Particle guidance (``compose --repel``, ``latent_ops.flow.repulsion``) moves each denoised estimate along the
gradient that carries its perceptual-net features away from its neighbours'. Through the decoder and the perceptual
net that gradient costs 2.6 s for a pool of 1,024 on 2 CPU cores, four times a compose (1.6-1.8x the recipe's time).
The proxy maps the prior's standardised codes straight to those features with a few convolutions on the code grid,
about 35 times cheaper to differentiate, so a pushed-apart compose costs about what an independent one does.

It is trained by ``latent_ops.learn_proxy`` on the estimates that pushed-apart draws pass through, by knowledge
distillation (Hinton et al. 2015, arXiv:1503.02531) of the features together with Sobolev training (Czarnecki et al.
2017, arXiv:1706.04859) of the one gradient the push uses: ``proxy_loss`` matches the features and the direction of
J^T u, where u is each estimate's push in feature space. Only the perceptual net is imitated, never the evaluator.

Files (``RUN/proxy/``): ``model.safetensors`` (fp16) and ``proxy.json`` (its shape, and what ``learn_proxy``
measured on draws it did not learn from).

Example: ``python -m latent_ops.learn_proxy --run models/pegasus-cifar10``, then ``python -m latent_ops.compose pegasus
--repel 1`` pushes through it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from autoencoder.atomic import save_weights, write_json
from autoencoder.cli import read_json
from autoencoder.run_folder import RunError

PROXY_FOLDER = "proxy"
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "proxy.json"


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.first, self.second = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(F.silu(self.first(F.silu(x))))


class FeatureProxy(nn.Module):
    """Standardised codes (B, D) -> the perceptual net's features (B, F) of their decoded pictures, approximately.

    A spatial code (C, H, W) goes through convolutions at its own grid and at half of it, then two linear layers; a
    flat code (D,) through three linear layers. ``mean`` and ``scale`` put the output in the features' own units."""

    def __init__(self, code_shape: tuple[int, ...], features: int, width: int = 32):
        super().__init__()
        self.code_shape, self.features, self.width = tuple(int(s) for s in code_shape), int(features), int(width)
        if len(self.code_shape) == 3:
            channels, rows, cols = self.code_shape
            cells = math.ceil(rows / 2) * math.ceil(cols / 2)
            self.body = nn.Sequential(
                nn.Unflatten(1, self.code_shape), nn.Conv2d(channels, width, 3, padding=1), ResidualBlock(width),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), ResidualBlock(2 * width), nn.SiLU(),
                nn.Flatten(), nn.Linear(2 * width * cells, 256), nn.SiLU(), nn.Linear(256, features))
        elif len(self.code_shape) == 1:
            hidden = 16 * width
            self.body = nn.Sequential(nn.Linear(self.code_shape[0], hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                      nn.SiLU(), nn.Linear(hidden, features))
        else:
            raise ValueError(f"a feature proxy reads codes of shape (C, H, W) or (D,), not {self.code_shape}")
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def set_statistics(self, features: torch.Tensor) -> None:
        """The target features' mean and spread (N, F): the body predicts them standardised."""
        self.mean.copy_(features.float().mean(0))
        self.scale.copy_(features.float().std(0).clamp_min(1e-3))

    def standardised(self, codes: torch.Tensor) -> torch.Tensor:
        return self.body(codes.float())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.standardised(codes) * self.scale + self.mean


def pushed_gradient(proxy: FeatureProxy, codes: torch.Tensor, push: torch.Tensor, create_graph: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy's features of ``codes`` (B, F) and the gradient of (features . push) with respect to the codes
    (B, D): J^T push, the code-space direction particle guidance moves each code along."""
    with torch.enable_grad():
        x = codes.detach().float().clone().requires_grad_(True)
        read = proxy(x)
        gradient, = torch.autograd.grad((read * push).sum(), x, create_graph=create_graph)
    return read, gradient


def gradient_agreement(gradient: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) cosine between each row of two gradients (B, D): 1 where they point the same way, 0 where unrelated."""
    return F.cosine_similarity(gradient.float(), target.float(), dim=1, eps=1e-12)


def proxy_loss(proxy: FeatureProxy, codes: torch.Tensor, features: torch.Tensor, push: torch.Tensor,
               gradient: torch.Tensor, sobolev: float = 1.0) -> torch.Tensor:
    """Distillation with Sobolev training: the mean squared error of the standardised features plus ``sobolev``
    times (1 - the cosine between the proxy's J^T push and the true one), averaged over the batch. Only the
    gradient's direction counts: the push is rescaled to a neighbour distance anyway (``flow.block_repulsion``)."""
    read, proxy_gradient = pushed_gradient(proxy, codes, push, create_graph=sobolev > 0)
    error = ((read - features.float()) / proxy.scale).square().mean()
    if sobolev <= 0:
        return error
    return error + sobolev * (1 - gradient_agreement(proxy_gradient, gradient)).mean()


def proxy_folder(run: str | Path) -> Path:
    return Path(run) / PROXY_FOLDER


def save_proxy(proxy: FeatureProxy, folder: Path, record: dict) -> None:
    """``model.safetensors`` (fp16) and ``proxy.json`` (its shape and ``record``) into ``folder``."""
    save_weights(proxy, folder / WEIGHTS_FILE, dtype=torch.float16)
    write_json({"code_shape": list(proxy.code_shape), "features": proxy.features, "width": proxy.width, **record},
               folder / RECORD_FILE)


def has_proxy(run: str | Path) -> bool:
    return (proxy_folder(run) / WEIGHTS_FILE).is_file()


def load_proxy(run: str | Path, code_shape: tuple[int, ...] | None = None) -> FeatureProxy:
    """The run's feature proxy (``RUN/proxy/``), refused in one line when missing, damaged or made for other codes."""
    folder = proxy_folder(run)
    fix = f"learn one with python -m latent_ops.learn_proxy --run {run}"
    if not (folder / WEIGHTS_FILE).is_file():
        raise RunError(f"{run} has no feature proxy ({folder / WEIGHTS_FILE} is missing); {fix}, or push draws apart "
                       f"through the pictures with --repel_through pictures")
    record = read_json(folder / RECORD_FILE, "feature proxy record")
    try:
        proxy = FeatureProxy(tuple(record["code_shape"]), int(record["features"]), int(record["width"]))
        proxy.load_state_dict({k: v.float() for k, v in load_file(folder / WEIGHTS_FILE).items()})
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as error:
        raise RunError(f"{folder} does not hold a feature proxy this code reads ({type(error).__name__}: "
                       f"{str(error).splitlines()[0][:200]}); {fix}") from None
    if code_shape is not None and tuple(code_shape) != proxy.code_shape:
        raise RunError(f"{folder}'s feature proxy reads codes of shape {proxy.code_shape}, but the run's codes are "
                       f"{tuple(code_shape)}; {fix}")
    return proxy.eval().requires_grad_(False)
