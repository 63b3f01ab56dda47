"""Reconstruction quality of a trained run on the whole CIFAR-10 test split, per class.

Writes ``reconstruction.json`` beside the run's weights and prints a table. The figure
to compare with is PCA with the same number of components (23.3 dB at 128 on this split).

Example: ``python -m autoencoder.evaluate --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from autoencoder.atomic import write_json
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.cli import ConfigError, check_ranges, check_writable, command, save_config
from autoencoder.data import load_cifar10, to_float
from autoencoder.metrics import psnr, reconstruction
from autoencoder.roundtrip import reconstruct
from autoencoder.run_folder import load_run, weights_digest


@torch.no_grad()
def reconstruction_psnr(run: str | Path, data: str, cache_dir: str = CACHE_FOLDER,
                        batch_size: int = 500) -> dict:
    """Mean MSE and PSNR (dB) over the test split of the run's classes, overall and per class."""
    opened = load_run(run)
    config, nets, device, dtype = opened.config, opened.nets, opened.device, opened.dtype
    held_out = load_cifar10(data, "test", config.classes, cache_dir=cache_dir)
    x = to_float(held_out.images)
    x_rec = reconstruct(nets, held_out.images, device, dtype, batch_size)
    db = psnr(x, x_rec)
    result = {"images": len(db), **reconstruction(x, x_rec), "per_class_psnr_db": {}}
    for label in held_out.labels.unique().tolist():
        result["per_class_psnr_db"][CIFAR10_CLASSES[label]] = db[held_out.labels == label].mean().item()
    return result


@dataclass
class EvaluateConfig:
    run: str = ""  # the run folder to measure (required)
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    batch_size: int = 500  # images reconstructed at once


def evaluate(config: EvaluateConfig) -> dict:
    """Measure the run's reconstructions; writes RUN/reconstruction.json (stamped with the weights' digest)
    and the config beside it as RUN/reconstruction-config.json."""
    if not config.run:
        raise ConfigError("--run is required: the run folder to measure")
    check_ranges(config, {"batch_size": (1, 65536)})
    run = Path(config.run)
    check_writable(run)
    result = reconstruction_psnr(run, config.data, config.cache_dir, config.batch_size)
    result["weights_digest"] = weights_digest(run)  # the stamp: which weights were measured
    write_json(result, run / "reconstruction.json", indent=2)
    save_config(config, run / "reconstruction-config.json")
    return result


def main(run: str = "", **flags) -> None:
    """Print and record the test split's reconstruction MSE and PSNR of RUN; every field of EvaluateConfig
    is a flag."""
    result = command(EvaluateConfig, dict(flags, run=run), evaluate)
    print(f"test split, {result['images']} images: MSE {result['mse']:.5f} (pixels in [-1, 1]), "
          f"mean PSNR {result['psnr_db']:.2f} dB, PSNR of mean MSE {result['psnr_of_mean_mse_db']:.2f} dB")
    for name, value in result["per_class_psnr_db"].items():
        print(f"  {name:10s} {value:6.2f} dB")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
