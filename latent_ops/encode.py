"""The latent bank: every CIFAR-10 image of a run's classes encoded once, saved as ``latents.npz``.

The bank holds, for the train and test splits, the codes (N, latent_dim) float32, the
CIFAR-10 labels and the images' positions in their split. Everything in latent_ops that
needs codes of real images reads it.

Example: ``python -m latent_ops.encode --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autoencoder.atomic import replace_atomically
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import check_ranges, check_writable, command, save_config
from autoencoder.compute import autocast
from autoencoder.data import SPLITS, load_cifar10, to_float
from autoencoder.models import Networks
from autoencoder.run_folder import RunError, checked_weights_digest, load_run, weights_digest
from latent_ops.runs import resolve_run
from latent_ops.shipped_folder import fix_for, refuse_remaking

BANK_FILE = "latents.npz"


@dataclass
class LatentBank:
    codes: dict[str, np.ndarray]  # split -> (N, D) float32
    labels: dict[str, np.ndarray]  # split -> (N,) int64, CIFAR-10 labels
    indices: dict[str, np.ndarray]  # split -> (N,) int64, position in the full split


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device,
                  dtype: torch.dtype, batch_size: int = 500, progress: bool = True) -> np.ndarray:
    """Codes of uint8 images (N, 3, 32, 32) -> (N, D) float32, in batches."""
    codes = []
    for chunk in tqdm(images.split(batch_size), disable=not progress, desc="encode", leave=False):
        with autocast(device, dtype):
            codes.append(encoder(to_float(chunk).to(device)).float().cpu())
    return torch.cat(codes).numpy()


@torch.no_grad()
def decode_codes(nets: Networks, codes: torch.Tensor, batch_size: int = 64,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, 32, 32) float32 for codes (N, D), on the codes' device;
    ``dtype`` bf16 decodes under autocast."""
    out = []
    for chunk in codes.split(batch_size):
        with autocast(chunk.device, dtype):
            out.append(nets.decoder(chunk).float())
    return torch.cat(out)


def encode_run(run: str | Path, data: str, cache_dir: str = CACHE_FOLDER, batch_size: int = 500,
               progress: bool = True) -> Path:
    """Encode both splits of the run's classes with its encoder; returns the bank's path."""
    run = Path(run)
    opened = load_run(run)
    config, nets, device, dtype = opened.config, opened.nets, opened.device, opened.dtype
    if config.channels_last:  # 1.45x faster encoding with bf16 here (bench/latent_ops_speed.py)
        nets = nets.to(memory_format=torch.channels_last)
    arrays = {}
    for split in SPLITS:
        images = load_cifar10(data, split, config.classes, cache_dir=cache_dir)
        arrays[f"{split}_codes"] = encode_images(nets.encoder, images.images, device, dtype, batch_size, progress)
        arrays[f"{split}_labels"] = images.labels.numpy()
        arrays[f"{split}_indices"] = images.indices.numpy()
    arrays["weights_digest"] = np.array(weights_digest(run))  # the stamp: which weights made these codes
    file = run / BANK_FILE
    replace_atomically(lambda tmp: np.savez(tmp, **arrays), file)
    return file


class StaleError(RunError):
    """A derived file made from other weights than the run's current ones."""


def read_stamped_npz(file: Path, run: Path, fix: str) -> dict[str, np.ndarray]:
    """All arrays of an npz derived from ``run``'s weights (no pickles); a missing, damaged or stale
    file is a RunError naming it and saying ``fix``."""
    if not file.exists():
        raise RunError(f"{file} is missing; {fix}")
    if not zipfile.is_zipfile(file):  # numpy would try it as a pickle, and its message says to allow pickles
        raise RunError(f"{file} is damaged: it is not an npz archive; {fix}")
    try:
        with np.load(file, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except ValueError as error:  # an array stored as pickled objects: never loaded
        if "pickle" not in str(error):
            raise RunError(f"{file} is damaged ({' '.join(str(error).split()[:12])}); {fix}") from None
        raise RunError(f"{file} holds pickled objects, which this project never loads; {fix}") from None
    except Exception as error:  # a torn zip
        raise RunError(f"{file} is damaged ({type(error).__name__}: {' '.join(str(error).split()[:12])}); "
                       f"{fix}") from None
    stamp = str(arrays.get("weights_digest", ""))
    if stamp != checked_weights_digest(run):
        raise StaleError(f"{file} was made from other weights than {run}'s current ones; {fix}")
    return arrays


def load_bank(run: str | Path) -> LatentBank:
    run = Path(run)
    arrays = read_stamped_npz(run / BANK_FILE, run, fix_for(run, f"encode the data set again with "
                                                                 f"python -m latent_ops.encode --run {run} --data PATH"))
    try:
        bank = LatentBank(*({s: arrays[f"{s}_{k}"] for s in SPLITS} for k in ("codes", "labels", "indices")))
        bank.codes = {s: c.astype(np.float32) for s, c in bank.codes.items()}  # a shipped bank stores fp16
    except KeyError as error:
        raise RunError(f"{run / BANK_FILE} lacks {error}; encode the data set again with "
                       f"python -m latent_ops.encode --run {run} --data PATH") from None
    for s in SPLITS:
        if bank.codes[s].ndim != 2 or not len(bank.codes[s]) == len(bank.labels[s]) == len(bank.indices[s]) \
                or not np.isfinite(bank.codes[s]).all():
            raise RunError(f"{run / BANK_FILE}: the {s} arrays do not fit together; encode the data set again")
    return bank


@dataclass
class EncodeConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    batch_size: int = 500  # images encoded at once


def encode_command(config: EncodeConfig) -> Path:
    """Write RUN/latents.npz; the config is saved beside it as RUN/encode-config.json."""
    check_ranges(config, {"batch_size": (1, 65536)})
    run = resolve_run(config.run)
    refuse_remaking(run, "encoding the data set into it")
    check_writable(run)
    file = encode_run(run, config.data, config.cache_dir, config.batch_size)
    save_config(config, run / "encode-config.json")
    return file


def main(**flags) -> None:
    """Write RUN/latents.npz (default run: the newest in outputs/runs); every field of EncodeConfig is a flag."""
    file = command(EncodeConfig, flags, encode_command)
    bank = load_bank(file.parent)
    print(f"wrote {file}: " + ", ".join(f"{s} {len(bank.labels[s])} codes" for s in SPLITS))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
