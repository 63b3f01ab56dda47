"""Reconstruction quality of a trained run on the whole CIFAR-10 test split, per class.

Writes ``reconstruction.json`` beside the run's weights and prints a table. The figure
to compare with is PCA with the same number of components (23.3 dB at 128 on this split).

Example: ``python -m autoencoder.evaluate --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

from pathlib import Path

import torch

from autoencoder.atomic import write_json
from autoencoder.checkpoint import load_run, weights_digest
from autoencoder.config import CIFAR10_CLASSES
from autoencoder.data import load_cifar10, to_float
from autoencoder.errors import run_cli
from autoencoder.losses import psnr
from autoencoder.hardware import autocast, resolve_device, resolve_precision


@torch.no_grad()
def reconstruct(nets, images: torch.Tensor, device: torch.device, dtype: torch.dtype,
                batch_size: int = 500) -> torch.Tensor:
    """Reconstructions (N, 3, 32, 32) float in [-1, 1], on the CPU, of uint8 images (N, 3, 32, 32)."""
    out = []
    for chunk in images.split(batch_size):
        with autocast(device, dtype):
            out.append(nets.decoder(nets.encoder(to_float(chunk).to(device))).float().cpu())
    return torch.cat(out)


def reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """MSE (pixels in [-1, 1]), mean per-image PSNR and PSNR of the mean MSE (dB): the one reconstruction
    metric of the project. originals: (N, 3, H, W) uint8 or float in [-1, 1]; reconstructions: float, same shape."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions "
                         f"{tuple(reconstructions.shape)} must have the same shape")
    x = to_float(originals) if originals.dtype == torch.uint8 else originals.float()
    per_image = (reconstructions.float() - x).pow(2).flatten(1).mean(1)
    mse = per_image.mean()
    return {"mse": mse.item(), "psnr_db": psnr(x, reconstructions).mean().item(),
            "psnr_of_mean_mse_db": (10 * torch.log10(4 / mse.clamp_min(1e-10))).item()}


@torch.no_grad()
def reconstruction_psnr(run: str | Path, data: str, cache_dir: str = "data/cache",
                        batch_size: int = 500) -> dict:
    """Mean MSE and PSNR (dB) over the test split of the run's classes, overall and per class."""
    config, nets = load_run(run)
    device = resolve_device(config)
    dtype = resolve_precision(config, device)
    nets = nets.to(device)
    held_out = load_cifar10(data, "test", config.classes, cache_dir=cache_dir)
    x = to_float(held_out.images)
    x_rec = reconstruct(nets, held_out.images, device, dtype, batch_size)
    db = psnr(x, x_rec)
    result = {"images": len(db), **reconstruction_metrics(x, x_rec), "per_class_psnr_db": {}}
    for label in held_out.labels.unique().tolist():
        result["per_class_psnr_db"][CIFAR10_CLASSES[label]] = db[held_out.labels == label].mean().item()
    return result


def main(run: str, data: str = "data", cache_dir: str = "data/cache") -> None:
    result = run_cli(lambda: reconstruction_psnr(run, data, cache_dir))
    result["weights_digest"] = weights_digest(run)  # the stamp: which weights were measured
    write_json(result, Path(run) / "reconstruction.json", indent=2)
    print(f"test split, {result['images']} images: MSE {result['mse']:.5f} (pixels in [-1, 1]), "
          f"mean PSNR {result['psnr_db']:.2f} dB, PSNR of mean MSE {result['psnr_of_mean_mse_db']:.2f} dB")
    for name, value in result["per_class_psnr_db"].items():
        print(f"  {name:10s} {value:6.2f} dB")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
