"""The reconstruction floor: PCA with k components, fitted on the train split, scored on the test split.

Prints both PSNR conventions: the mean of per-image PSNRs and the PSNR of the mean MSE,
so an autoencoder's figure (python -m autoencoder.evaluate) compares like with like.

Example: ``python bench/pca_floor.py --data data --components 64,128,256``
"""
from __future__ import annotations

from dataclasses import dataclass

import fire
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.data import load_cifar10, to_float
from autoencoder.metrics import pca_reconstruction, reconstruction


@dataclass
class PcaFloorConfig:
    data: str = DATA_FOLDER  # CIFAR-10 folder
    components: str = "128"  # comma-separated PCA component counts
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    seed: int = 0  # the seed of every draw


def run_pca_floor(data: str, components: str, cache_dir: str, seed: int) -> None:
    ks = [int(k) for k in (components.split(",") if isinstance(components, str) else components)]
    train = to_float(load_cifar10(data, "train", cache_dir=cache_dir).images)
    test = to_float(load_cifar10(data, "test", cache_dir=cache_dir).images)
    results = {}
    for k in ks:
        result = results[k] = reconstruction(test, pca_reconstruction(train, test, k, seed))
        print(f"PCA {k:4d}: mean per-image PSNR {result['psnr_db']:.2f} dB, "
              f"PSNR of mean MSE {result['psnr_of_mean_mse_db']:.2f} dB")
    write_record("pca_floor", {"components": results})


def main(**flags) -> None:
    """Run the pca floor bench. Every field of PcaFloorConfig is a flag."""
    bench_main(PcaFloorConfig, flags, run_pca_floor)


if __name__ == "__main__":
    fire.Fire(main)
