"""The reconstruction floor: PCA with k components, fitted on the train split, scored on the test split.

Prints both PSNR conventions: the mean of per-image PSNRs and the PSNR of the mean MSE,
so an autoencoder's figure (python -m autoencoder.evaluate) compares like with like.

Example: ``python bench/pca_floor.py --data data --components 64,128,256``
"""
from __future__ import annotations

import fire
import torch
from sklearn.decomposition import PCA

from autoencoder.data import load_cifar10, to_float
from autoencoder.losses import psnr


def main(data: str = "data", components: str | tuple = "128", cache_dir: str = "data/cache", seed: int = 0) -> None:
    ks = [int(k) for k in (components.split(",") if isinstance(components, str) else components)]
    train = to_float(load_cifar10(data, "train", cache_dir=cache_dir).images).flatten(1).numpy()
    test_images = to_float(load_cifar10(data, "test", cache_dir=cache_dir).images)
    test = test_images.flatten(1).numpy()
    for k in ks:
        pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(train)
        rec = torch.from_numpy(pca.inverse_transform(pca.transform(test))).view_as(test_images).clamp(-1, 1)
        mse = (rec - test_images).pow(2).mean().item()
        print(f"PCA {k:4d}: mean per-image PSNR {psnr(test_images, rec).mean().item():.2f} dB, "
              f"PSNR of mean MSE {10 * torch.log10(torch.tensor(4 / mse)).item():.2f} dB")


if __name__ == "__main__":
    fire.Fire(main)
