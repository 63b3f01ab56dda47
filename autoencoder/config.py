"""The training configuration: one flat dataclass, its presets, and its JSON round trip.

Every field is a command-line flag of ``python -m autoencoder.train``; the config is
saved as ``config.json`` in the run folder before the first step, and everything that
loads a run rebuilds the networks from it.

Example: ``python -m autoencoder.train --preset cpu --latent_dim 64``
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER, SelectsClasses, parse_classes
from autoencoder.cli import ConfigError, check_ranges, dataclass_from_flags, load_config
from autoencoder.models import check_code_grid


@dataclass
class TrainConfig(SelectsClasses):
    # --- run ---
    out: str = ""  # run folder; empty: outputs/runs/<preset>-<YYYYmmdd-HHMMSS>
    seed: int = 0  # one seed for data order, augmentation, mixing coefficients and prior draws
    preset: str = "cpu"  # the preset these values started from (smoke, cpu, release, release-grid8, gpu)
    device: str = "auto"  # auto (CUDA if present, else CPU), cpu or cuda
    precision: str = "auto"  # auto (bf16 autocast where supported), bf16 or fp32
    channels_last: bool = True  # NHWC memory layout for the convolutions
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    # --- data ---
    data: str = DATA_FOLDER  # folder with CIFAR-10 (torchvision layout or train/<class>/ image folders)
    download: bool = False  # fetch CIFAR-10 with torchvision when the folder has none
    classes: str = ""  # comma-separated class names to train on; empty: all ten
    cache_dir: str = CACHE_FOLDER  # where the decoded uint8 tensors are cached
    # --- model ---
    latent_dim: int = 128  # size of the code z
    width: int = 32  # channels of the first autoencoder stage (doubles per stage, capped at 4x)
    res_blocks: int = 0  # residual blocks per resolution stage of encoder and decoder
    critic_width: int = 16  # channels of the first stage of the image and interpolation critics
    image_critic_width: int = 0  # channels of the image critic's first stage; 0: --critic_width
    image_critic_patches: bool = False  # the image critic gives a logit per 20-pixel patch on an 8 x 8 grid (PatchGAN,
    #   Isola et al. 2017) instead of one per image
    image_critic_spectral: bool = True  # spectral normalisation in the image critic (Miyato et al. 2018); false: a
    #   free critic, which --r1_weight should hold in check
    spatial_channels: int = 0  # 0: a flat code; C: a C x 4 x 4 code, so --latent_dim must be 16 C (e.g. 8 for 128)
    code_grid: int = 4  # cells per side of a spatial code: 4 (8 x 8 pixels a cell) or 8 (4 x 4 pixels; then
    #   --latent_dim must be 64 C, e.g. 2, 4 or 8 channels: 128, 256 or 512 numbers)
    latent_critic_hidden: int = 512  # hidden units of the latent critic MLP
    # --- losses (a weight of 0 switches that part off) ---
    latent_weight: float = 0.005  # adversarial autoencoder term pulling codes to N(0, I)
    interp_weight: float = 0.5  # ACAI term: decoded mixes should fool the interpolation critic
    interp_gamma: float = 0.2  # ACAI regulariser: blend of data and reconstruction shown to the critic
    image_weight: float = 0.005  # GAN term: decoded images should fool the image critic
    r1_weight: float = 0.0  # gamma of the R1 penalty, gamma/2 E||grad_x D(x)||^2 on real images, added to the image
    #   critic's loss (Mescheder et al. 2018); 0: off
    gan_loss: str = "nonsaturating"  # image critic's loss: nonsaturating (Goodfellow et al. 2014) or hinge
    adaptive_image_weight: bool = False  # scale the image term so its gradient at the decoder's last layer
    #   matches the reconstruction's (VQGAN, Esser et al. 2021); --image_weight then multiplies that balance
    class_weight: float = 0.0  # cross-entropy of a linear class head on the code (CIFAR-10 labels); 0: no head
    perceptual_weight: float = 0.0  # feature-matching reconstruction term (a frozen CIFAR-10 classifier's features)
    spectral_weight: float = 0.0  # match each reconstruction's radial log power spectrum to its original's, so
    #   that detail lost to blur is put back at the right scales (Durall et al. 2020; magnitudes only); 0: off
    perceptual_net: str = ""  # folder of that classifier (trained with --role perceptual); empty: the committed one
    perceptual_source: str = "net"  # whose features: net (the classifier above) or critic (the image critic's
    #   own, as the learned similarity of Larsen et al. 2016; needs --image_weight > 0)
    # --- optimisation ---
    batch_size: int = 64  # images per step
    steps: int = 7000  # optimisation steps in total
    schedule_steps: int = 0  # steps the cosine decay spans; 0: --steps (kept when a resumed run changes --steps)
    lr: float = 1e-3  # Adam learning rate of the autoencoder
    critic_lr: float = 2e-4  # Adam learning rate of the three critics
    beta1: float = 0.9  # Adam beta1 of the autoencoder
    critic_beta1: float = 0.5  # Adam beta1 of the critics (GAN practice: short momentum)
    beta2: float = 0.99  # Adam beta2 of all optimisers
    lr_min_ratio: float = 0.05  # cosine decay of both learning rates to this fraction at the last step; 1: constant
    init_from: str = ""  # a run folder whose weights start this new run (its averaged ones, if it kept an average):
    #   the autoencoder's must fit this config's networks; a critic whose shape differs starts fresh
    train_encoder: bool = True  # false: the encoder (and class head) stay as loaded, the decoder and critics train,
    #   so every code, and the latent bank and prior built on them, stay valid (a decoder fine-tune)
    ema: float = 0.0  # decay of a moving average of the autoencoder's weights, which the run evaluates, saves and
    #   ships (autoencoder/averaging.py); 0: off, the trained weights themselves
    # --- bookkeeping ---
    log_every: int = 200  # steps between metrics.jsonl lines (with held-out PSNR)
    sample_every: int = 2000  # steps between sample grids
    checkpoint_every: int = 1000  # steps between checkpoints
    eval_images: int = 2000  # held-out test images for reconstruction MSE/PSNR
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0: no limit


PRESETS: dict[str, dict[str, typing.Any]] = {
    # seconds, tiny: what the tests and CI run
    "smoke": dict(latent_dim=16, width=8, res_blocks=0, critic_width=8, latent_critic_hidden=32,
                  batch_size=16, steps=30, log_every=10, sample_every=30, checkpoint_every=10,
                  eval_images=64),
    # sized for a 2-core CPU: about 40 minutes (about 200 images/s with bf16, see README)
    "cpu": dict(),
    # the recipe that ships (README, ablation): the cpu preset's networks with the perceptual term, a spatial
    # 8 x 4 x 4 code and a class head (the hinge critic lost its rows at equal time); 12000 steps train from
    # scratch in about 40 minutes alone on 2 CPU cores with AVX-512 bf16 (about 350 images/s; fp32 on cores
    # without bf16 runs at 54 images/s, about 4 hours), checkpointed every 250 steps
    "release": dict(perceptual_weight=1.0, spatial_channels=8, latent_dim=128, class_weight=0.1, steps=12000,
                    log_every=250, sample_every=1000, checkpoint_every=250),
    # the shipped release, the winner of the 30-minute ablation (docs/training.md): the release recipe on a 4 x 8 x 8
    # code with a wider residual autoencoder and a moving average of its weights; a cosine decay over 4,800 steps,
    # then 1,200 more at its final rate (wing accuracy 0.847 -> 0.852, Frechet 2.11 -> 1.95): 6,000 steps take
    # about 82 min alone on 2 CPU cores with AVX-512 bf16 (about 79 images/s on the decay, 100 after it);
    # a killed run resumes exactly (--resume), so a longer run (--steps) can span several sittings
    "release-grid8": dict(perceptual_weight=1.0, spatial_channels=4, latent_dim=256, code_grid=8, class_weight=0.1,
                          width=64, res_blocks=1, ema=0.999, steps=6000, schedule_steps=4800,
                          log_every=250, sample_every=1000, checkpoint_every=250),
    # the shipped decoder: release-grid8's weights, the encoder frozen (so every code, and the prior trained on
    # them, stay as they are), the decoder fine-tuned with the spectral term (Durall et al. 2020) to put back the
    # detail the pixel loss averages away; 1,200 steps take about 13 min alone on 2 AVX-512 bf16 cores
    # (docs/training.md: sharpness 0.56 -> 0.85 of real images)
    "release-grid8-sharpen": dict(perceptual_weight=1.0, spatial_channels=4, latent_dim=256, code_grid=8,
                                  width=64, res_blocks=1, init_from="outputs/runs/release-grid8", train_encoder=False,
                                  latent_weight=0.0, class_weight=0.0, spectral_weight=0.3, lr=2e-4, ema=0.99,
                                  steps=1200, log_every=200, sample_every=1200, checkpoint_every=200),
    # full size for one GPU
    "gpu": dict(width=64, res_blocks=2, critic_width=64, batch_size=256, steps=100000, perceptual_weight=1.0,
                spatial_channels=8, latent_dim=128, class_weight=0.1,
                log_every=500, sample_every=5000, checkpoint_every=5000, eval_images=10000),
}


def make_config(preset: str = "cpu", **overrides: typing.Any) -> TrainConfig:
    """A config from a preset plus flag overrides; an unknown flag or bad value is an error."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = dataclass_from_flags(TrainConfig, dict(PRESETS[preset], preset=preset), overrides)
    validate(config)
    return config


# Inclusive ranges of the numeric fields: a value outside is refused with the field's name.
# Upper bounds keep a typo (--latent_dim 1e9) from exhausting memory before any message.
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, 2**31 - 1), "threads": (0, 1024),
    "latent_dim": (1, 65536), "width": (1, 4096), "res_blocks": (0, 64), "critic_width": (1, 4096),
    "image_critic_width": (0, 4096), "spatial_channels": (0, 4096),
    "latent_critic_hidden": (1, 65536),
    "latent_weight": (0, 1e4), "interp_weight": (0, 1e4), "interp_gamma": (0, 1), "image_weight": (0, 1e4), "r1_weight": (0, 1e4), "perceptual_weight": (0, 1e4), "class_weight": (0, 1e4),
    "spectral_weight": (0, 1e4),
    "batch_size": (2, 65536), "steps": (1, 10**9), "schedule_steps": (0, 10**9),
    "lr": (1e-12, 10), "critic_lr": (1e-12, 10), "beta1": (0, 0.999999), "critic_beta1": (0, 0.999999),
    "beta2": (0, 0.999999), "lr_min_ratio": (1e-9, 1), "ema": (0, 0.99999),
    "log_every": (1, 10**9), "sample_every": (1, 10**9), "checkpoint_every": (1, 10**9),
    "eval_images": (1, 10**6), "max_minutes": (0, 10**7),
}


def validate(config: TrainConfig) -> None:
    """Reject values that would fail later, with a message naming the field."""
    if config.preset not in PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}; choose one of {', '.join(PRESETS)}")
    parse_classes(config.classes)
    check_ranges(config, TRAIN_RANGES)
    if config.batch_size % 2:
        raise ConfigError(f"--batch_size must be even, got {config.batch_size}: interpolation mixes "
                          f"codes in pairs within a batch")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--precision must be auto, bf16 or fp32, got {config.precision!r}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {config.device!r}")
    check_code_grid(config)
    if config.perceptual_source not in PERCEPTUAL_SOURCES:
        raise ConfigError(f"--perceptual_source must be one of {', '.join(PERCEPTUAL_SOURCES)}, "
                          f"got {config.perceptual_source!r}")
    if config.perceptual_source == "critic" and config.perceptual_weight > 0 and config.image_weight == 0:
        raise ConfigError("--perceptual_source critic matches the image critic's features, which needs the critic: "
                          "set --image_weight above 0 or use --perceptual_source net")
    if not config.train_encoder:
        if not config.init_from:
            raise ConfigError("--train_encoder false keeps the encoder as loaded, so it needs --init_from RUN, "
                              "the run whose encoder to keep")
        acting = [f"--{k} {getattr(config, k):g}" for k in ("latent_weight", "class_weight") if getattr(config, k) > 0]
        if acting:
            raise ConfigError(f"--train_encoder false leaves nothing for {', '.join(acting)} to train (it acts on "
                              f"the encoder's codes); set it to 0")
    if config.r1_weight > 0 and config.image_weight == 0:
        raise ConfigError("--r1_weight penalises the image critic, which --image_weight 0 switches off: set "
                          "--image_weight above 0 or --r1_weight 0")
    if config.gan_loss not in GAN_LOSSES:
        raise ConfigError(f"--gan_loss must be one of {', '.join(GAN_LOSSES)}, got {config.gan_loss!r}")


GAN_LOSSES = ("nonsaturating", "hinge")
PERCEPTUAL_SOURCES = ("net", "critic")


def load_train_config(path) -> TrainConfig:
    """A run's saved training config, checked like flags (``validate``)."""
    return load_config(path, TrainConfig, validate, strict=True)
