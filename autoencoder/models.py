"""The networks: encoder, decoder, latent critic, interpolation critic, image critic.

- Encoder x -> z and decoder z -> x: a small residual convolutional autoencoder
  (32x32x3 <-> latent_dim), three resolution stages (32, 16, 8) and a 4x4 bottleneck. The
  code is flat (a linear bottleneck) or, with ``spatial_channels`` C, C x G x G on a grid of
  ``code_grid`` G = 4 (cells of 8 x 8 pixels) or 8 (the code taken at the 8 x 8 stage, cells of
  4 x 4 pixels): each cell comes from its own place in the image, so an edit of a cell is local
  (stored flat).
- Latent critic: an MLP telling encoded codes from N(0, I) samples, so that codes
  drawn from the prior decode to images (adversarial autoencoder, Makhzani et al. 2015,
  arXiv:1511.05644; ARAE, Zhao et al. 2018, arXiv:1706.04223).
- Interpolation critic: a convolutional net that regresses the mixing coefficient of a
  decoded mix of two codes (ACAI, Berthelot et al. 2018, arXiv:1807.07543).
- Class head (optional): a linear CIFAR-10 classifier on the code, so that codes carry the
  class (the other side of Fader networks' trade, Lample et al. 2017, arXiv:1706.00409).
- Image critic: a GAN discriminator on real vs decoded images (Goodfellow et al. 2014),
  with spectral normalisation (Miyato et al. 2018, arXiv:1802.05957) so that its input
  gradient is smooth enough to steer codes at compose time.

Example (print the networks of a preset)::

    python -c "from autoencoder import models, config; print(models.build_networks(config.make_config('cpu')))"
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from autoencoder.cli import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """What the networks are made of, and nothing else (nanoGPT's GPTConfig pattern)."""
    latent_dim: int = 128  # size of the code z
    width: int = 32  # channels of the first autoencoder stage (doubles per stage, capped at 4x)
    res_blocks: int = 0  # residual blocks per resolution stage of encoder and decoder
    critic_width: int = 16  # channels of the first stage of the image and interpolation critics
    latent_critic_hidden: int = 512  # hidden units of the latent critic MLP
    image_critic_width: int = 0  # channels of the image critic's first stage; 0: critic_width
    image_critic_patches: bool = False  # the image critic judges each 20-pixel patch on an 8 x 8 grid (PatchGAN)
    image_critic_spectral: bool = True  # spectral normalisation in the image critic (off: hold it with --r1_weight)
    spatial_channels: int = 0  # 0: a flat code; C: a C x 4 x 4 code (latent_dim = 16 C), stored flat
    class_head: bool = False  # a linear CIFAR-10 classifier on the code, trained with the autoencoder
    code_grid: int = 4  # cells per side of a spatial code: 4 (8 x 8 pixels a cell) or 8 (4 x 4 pixels)

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The code's shape: (latent_dim,) or (C, G, G); codes are stored flat, channel-major."""
        grid = self.code_grid
        return (self.spatial_channels, grid, grid) if self.spatial_channels else (self.latent_dim,)

    @classmethod
    def of(cls, config: Any) -> "ModelConfig":
        """The model part of any config with these fields (a run's TrainConfig, or a ModelConfig)."""
        return cls(**{f.name: getattr(config, f.name, f.default) for f in fields(cls)})


def check_code_grid(config) -> None:
    """A spatial code of C channels on a G x G grid has C G^2 numbers; G is 4 or 8."""
    grid = config.code_grid
    if grid not in CODE_GRIDS:
        raise ConfigError(f"--code_grid must be one of {', '.join(map(str, CODE_GRIDS))}, got {grid!r}")
    if config.code_grid != 4 and not config.spatial_channels:
        raise ConfigError(f"--code_grid {grid} shapes a spatial code: set --spatial_channels too")
    if config.spatial_channels and config.latent_dim != config.spatial_channels * grid ** 2:
        raise ConfigError(f"--spatial_channels {config.spatial_channels} makes a {config.spatial_channels} x {grid} x "
                          f"{grid} code: --latent_dim must be {config.spatial_channels * grid ** 2}, "
                          f"got {config.latent_dim}")


def stage_channels(width: int) -> list[int]:
    """Channels at 32x32, 16x16, 8x8 and 4x4: doubling per stage, capped at 4x width."""
    return [width, 2 * width, 4 * width, 4 * width]


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))); the second conv starts at zero so the block starts as identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """(B, 3, 32, 32) in [-1, 1] -> (B, latent_dim)."""

    def __init__(self, latent_dim: int, width: int, res_blocks: int, spatial_channels: int = 0, code_grid: int = 4):
        super().__init__()
        c = stage_channels(width)
        layers: list[nn.Module] = [nn.Conv2d(3, c[0], 3, padding=1)]
        stages = 2 if spatial_channels and code_grid == 8 else 3  # 32 -> 16 -> 8 (-> 4)
        for i in range(stages):
            layers += [ResBlock(c[i]) for _ in range(res_blocks)]
            layers += [nn.SiLU(), nn.Conv2d(c[i], c[i + 1], 4, stride=2, padding=1)]
        if spatial_channels:  # each cell its own code: (B, C, G, G) stored flat, channel-major
            layers += [ResBlock(c[stages]) for _ in range(res_blocks if stages == 2 else 0)]
            layers += [nn.SiLU(), nn.Conv2d(c[stages], spatial_channels, 1), nn.Flatten()]
        else:
            layers += [nn.SiLU(), nn.Flatten(), nn.Linear(c[3] * 16, latent_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, 3, 32, 32) in [-1, 1]."""

    def __init__(self, latent_dim: int, width: int, res_blocks: int, spatial_channels: int = 0, code_grid: int = 4):
        super().__init__()
        c = stage_channels(width)
        self.grid = code_grid if spatial_channels else 4
        top = 3 if self.grid == 4 else 2  # the stage the code enters: 4 x 4 (c[3]) or 8 x 8 (c[2])
        self.top_channels, self.spatial_channels = c[top], spatial_channels
        # flat: one linear map from the whole code; spatial: a 3x3 convolution over the code's cells
        self.project = (nn.Conv2d(spatial_channels, c[top], 3, padding=1) if spatial_channels
                        else nn.Linear(latent_dim, c[3] * 16))
        layers: list[nn.Module] = [ResBlock(c[top]) for _ in range(res_blocks if top == 2 else 0)]
        for i in range(top, 0, -1):  # (4 ->) 8 -> 16 -> 32
            layers += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c[i], c[i - 1], 3, padding=1)]
            layers += [ResBlock(c[i - 1]) for _ in range(res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(c[0], 3, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the final convolution: where the adaptive image weight balances gradients."""
        return self.net[-2].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.spatial_channels:
            h = self.project(z.reshape(-1, self.spatial_channels, self.grid, self.grid))  # (B, C', G, G)
        else:
            h = self.project(z).view(-1, self.top_channels, 4, 4)  # (B, C, 4, 4)
        return self.net(h)


class ConvCritic(nn.Module):
    """(B, 3, 32, 32) -> (B,): a strided conv net with one scalar output per image.

    ``spectral=True`` wraps every layer in spectral normalisation (image critic); the
    interpolation critic is left plain, as in ACAI. ``patches=True`` stops at 8 x 8 and gives a logit per
    20-pixel patch there (PatchGAN, Isola et al. 2017, arXiv:1611.07004; VQGAN's critic): each place in the
    picture is judged on its own, so blur anywhere is penalised where it is; the image's logit is their mean.
    """

    def __init__(self, width: int, spectral: bool = False, patches: bool = False):
        super().__init__()
        wrap = spectral_norm if spectral else (lambda m: m)
        c = stage_channels(width)
        stages = 2 if patches else 3  # 32 -> 16 -> 8 (-> 4)
        layers: list[nn.Module] = [wrap(nn.Conv2d(3, c[0], 3, padding=1))]
        for i in range(stages):
            layers += [nn.LeakyReLU(0.2), wrap(nn.Conv2d(c[i], c[i + 1], 4, stride=2, padding=1))]
        if patches:
            layers += [nn.LeakyReLU(0.2), wrap(nn.Conv2d(c[2], 1, 3, padding=1)), nn.Flatten()]
        else:
            layers += [nn.LeakyReLU(0.2), nn.Flatten(), wrap(nn.Linear(c[3] * 16, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, features: bool = False, per_patch: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits (B,), or with ``per_patch`` (B, P): P = 64 patches, or 1 for a whole-image critic (what
        the GAN losses average over); with ``features``, also the feature map after each activation (at 32, 16,
        8 (and 4) pixels): what matching the critic's features compares (learned similarity, Larsen et al. 2016,
        arXiv:1512.09300)."""
        maps = []
        for layer in self.net:
            x = layer(x)
            if features and isinstance(layer, nn.LeakyReLU):
                maps.append(x)
        logits = x if per_patch else x.mean(1)
        return (logits, maps) if features else logits


class LatentCritic(nn.Module):
    """(B, latent_dim) -> (B,) logit: prior sample (high) vs encoded code (low)."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


CODE_GRIDS = (4, 8)  # cells per side of a spatial code
NETWORK_NAMES = ("encoder", "decoder", "latent_critic", "interp_critic", "image_critic")
CLASS_COUNT = 10  # CIFAR-10


class Networks(nn.Module):
    """All five networks of a run (attributes named as NETWORK_NAMES), saved and loaded together."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.spatial_channels and config.latent_dim != config.spatial_channels * config.code_grid ** 2:
            raise ValueError(f"a spatial code of {config.spatial_channels} x {config.code_grid} x {config.code_grid} "
                             f"needs latent_dim {config.spatial_channels * config.code_grid ** 2}, got {config.latent_dim}")
        if config.code_grid not in CODE_GRIDS:
            raise ValueError(f"code_grid must be one of {CODE_GRIDS}, got {config.code_grid}")
        spatial = (config.spatial_channels, config.code_grid)
        self.encoder = Encoder(config.latent_dim, config.width, config.res_blocks, *spatial)
        self.decoder = Decoder(config.latent_dim, config.width, config.res_blocks, *spatial)
        self.latent_critic = LatentCritic(config.latent_dim, config.latent_critic_hidden)
        self.interp_critic = ConvCritic(config.critic_width, spectral=False)
        self.image_critic = ConvCritic(config.image_critic_width or config.critic_width,
                                       spectral=config.image_critic_spectral, patches=config.image_critic_patches)
        self.class_head = nn.Linear(config.latent_dim, CLASS_COUNT) if config.class_head else None

    @property
    def names(self) -> tuple[str, ...]:
        """The networks this run has: NETWORK_NAMES, and the class head when there is one."""
        return NETWORK_NAMES + (("class_head",) if self.class_head is not None else ())

    def autoencoder_parameters(self, encoder: bool = True) -> list[nn.Parameter]:
        """The weights the autoencoder's optimiser steps; ``encoder=False``: the decoder's alone (a decoder
        fine-tune that keeps every code, and so the latent bank and prior, as they were)."""
        if not encoder:
            return [*self.decoder.parameters()]
        head = [*self.class_head.parameters()] if self.class_head is not None else []
        return [*self.encoder.parameters(), *self.decoder.parameters(), *head]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.latent_critic.parameters(), *self.interp_critic.parameters(),
                *self.image_critic.parameters()]


def build_networks(config: Any) -> Networks:
    """The networks a config describes (a ModelConfig, or a run's config holding its fields),
    initialised from torch's current RNG state."""
    return Networks(ModelConfig.of(config))
