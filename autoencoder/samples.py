"""Sample grids of a run: reconstructions, horse-to-bird interpolations, prior samples.

The grid (10 columns) reads, top to bottom:
- rows 1-4: held-out images and their reconstructions, row pairs (original, reconstruction);
- rows 5-8: interpolations: a held-out horse, 8 decoded mixes of its code with a bird's
  code (mixing coefficient 0 to 1), the bird;
- rows 9-10: decoded draws from the prior N(0, I).

Example: ``python -m autoencoder.samples --run outputs/runs/NAME --data data/cifar10-jpeg --out grid.png``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.cli import ConfigError, check_writable, command, save_config
from autoencoder.data import ImageSet, load_cifar10, to_float
from autoencoder.grids import save_picture, tile
from autoencoder.models import Networks
from autoencoder.run_folder import RunConfig, load_run

COLUMNS = 10
RECON_PAIRS = 2
INTERP_ROWS = 4
PRIOR_ROWS = 2


@dataclass
class SampleInputs:
    """The fixed inputs of every grid of a run, chosen once so grids compare across steps."""
    originals: torch.Tensor  # (RECON_PAIRS*COLUMNS, 3, 32, 32) float in [-1, 1]
    starts: torch.Tensor  # (INTERP_ROWS, 3, 32, 32): horses where the classes have them
    ends: torch.Tensor  # (INTERP_ROWS, 3, 32, 32): birds where the classes have them
    prior: torch.Tensor  # (PRIOR_ROWS*COLUMNS, latent_dim)


def pick_pair_classes(labels: torch.Tensor) -> tuple[int, int]:
    """(horse, bird) labels when both are present, else the first two present classes."""
    present = sorted(set(labels.tolist()))
    horse, bird = CIFAR10_CLASSES.index("horse"), CIFAR10_CLASSES.index("bird")
    if horse in present and bird in present:
        return horse, bird
    return present[0], present[min(1, len(present) - 1)]


def _take(images: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` images, repeating when there are fewer."""
    index = torch.arange(count) % len(images)
    return to_float(images[index])


def choose_sample_inputs(held_out: ImageSet, config: RunConfig, seed: int) -> SampleInputs:
    start_label, end_label = pick_pair_classes(held_out.labels)
    starts = held_out.images[held_out.labels == start_label]
    ends = held_out.images[held_out.labels == end_label]
    generator = torch.Generator().manual_seed(seed)
    spread = held_out.images[torch.randperm(len(held_out), generator=generator)]  # all classes, not the first
    return SampleInputs(
        originals=_take(spread, RECON_PAIRS * COLUMNS),
        starts=_take(starts, INTERP_ROWS),
        ends=_take(ends.flip(0) if start_label == end_label else ends, INTERP_ROWS),
        prior=torch.randn(PRIOR_ROWS * COLUMNS, config.latent_dim, generator=generator),
    )


@torch.no_grad()
def render_grid(networks: Networks, inputs: SampleInputs, device: torch.device) -> torch.Tensor:
    """The grid as one float image in [0, 1], (3, H, W)."""
    was_training = networks.training
    networks.eval()
    enc, dec = networks.encoder, networks.decoder
    rows = []
    originals = inputs.originals.to(device)
    recon = dec(enc(originals)).float()
    for i in range(RECON_PAIRS):
        rows += [originals[i * COLUMNS:(i + 1) * COLUMNS], recon[i * COLUMNS:(i + 1) * COLUMNS]]
    z_start, z_end = enc(inputs.starts.to(device)), enc(inputs.ends.to(device))  # (R, D)
    alphas = torch.linspace(0, 1, COLUMNS - 2, device=device).view(1, -1, 1)  # (1, 8, 1)
    mixes = (1 - alphas) * z_start[:, None] + alphas * z_end[:, None]  # (R, 8, D)
    decoded = dec(mixes.flatten(0, 1)).float().view(INTERP_ROWS, COLUMNS - 2, 3, 32, 32)
    for r in range(INTERP_ROWS):
        rows.append(torch.cat([inputs.starts[r:r + 1].to(device), decoded[r], inputs.ends[r:r + 1].to(device)]))
    prior = dec(inputs.prior.to(device)).float()
    rows += [prior[i * COLUMNS:(i + 1) * COLUMNS] for i in range(PRIOR_ROWS)]
    networks.train(was_training)
    images = torch.cat(rows).cpu().add(1).div(2).clamp(0, 1)  # (10*COLUMNS, 3, 32, 32)
    return tile(images, nrow=COLUMNS)


@dataclass
class SamplesConfig:
    run: str = ""  # the finished run folder (required)
    data: str = DATA_FOLDER  # CIFAR-10 folder: the held-out images of the grid's rows
    out: str = ""  # the PNG to write; empty: RUN/samples/final.png
    seed: int = 0  # which held-out images and prior draws
    cache_dir: str = CACHE_FOLDER  # decoded data cache


def render_run(config: SamplesConfig) -> Path:
    """Render the run's sample grid; the config is saved beside the PNG as ``<name>-config.json``."""
    if not config.run:
        raise ConfigError("--run is required: the finished run folder")
    file = Path(config.out) if config.out else Path(config.run) / "samples" / "final.png"
    check_writable(file.parent)
    opened = load_run(config.run, device="cpu")
    held_out = load_cifar10(config.data, "test", opened.config.classes, cache_dir=config.cache_dir)
    save_picture(render_grid(opened.nets, choose_sample_inputs(held_out, opened.config, config.seed),
                          torch.device("cpu")), file, scale=2)
    save_config(config, file.with_name(f"{file.stem}-config.json"))
    return file


def main(run: str = "", **flags) -> None:
    """Render a grid for a finished run (default file: RUN/samples/final.png); every field of SamplesConfig
    is a flag."""
    print(f"wrote {command(SamplesConfig, dict(flags, run=run), render_run)}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
