"""Fixtures: tiny CIFAR-like data sets the tests make themselves, in both layouts, and small runs."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoencoder.cifar10 import CIFAR10_CLASSES

FAKE_CLASSES = ("bird", "cat", "horse")
TRAIN_PER_CLASS, TEST_PER_CLASS = 16, 8


def fake_images(count: int, seed: int) -> np.ndarray:
    """Smooth random colour images (count, 32, 32, 3) uint8: blurry blobs an autoencoder can learn."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, 3, 2, 2)).astype(np.float32)
    fine = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=32, mode="bilinear",
                                           align_corners=False)
    return fine.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def write_folders(root: Path, classes=FAKE_CLASSES, suffix: str = ".png") -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png under root."""
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            seed = 1000 * (split == "test") + CIFAR10_CLASSES.index(name)
            for i, pixels in enumerate(fake_images(per_class, seed)):
                Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")
    return root


def write_torchvision_batches(root: Path) -> Path:
    """The pickled batch files of torchvision's cifar-10-batches-py layout, with fake pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 12)]:
        pixels = fake_images(count, seed=len(name) + count).transpose(0, 3, 1, 2).reshape(count, -1)
        labels = rng.integers(0, 10, size=count).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    return root


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    return write_folders(tmp_path_factory.mktemp("folders"))


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def dies_on_call(real, call: int):
    """``real``, except that its ``call``-th call raises KeyboardInterrupt: a kill at a known point."""
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return dying


def smoke_flags(data: Path, out: Path, **extra) -> dict:
    return dict(data=str(data), cache_dir=str(out.parent / "cache"), out=str(out), **extra)


@pytest.fixture(scope="session")
def smoke_run(folder_data, tmp_path_factory) -> Path:
    """A smoke run of 60 steps on the fake folders, shared by the tests that only read it."""
    from autoencoder.config import make_config
    from autoencoder.train import train

    out = tmp_path_factory.mktemp("runs") / "smoke"
    config = make_config("smoke", steps=60, log_every=10, sample_every=30, checkpoint_every=30,
                         **smoke_flags(folder_data, out))
    return train(config, progress=False)


TINY_EVALUATOR = dict(widths="8,16,16", epochs=3, batch_size=16, warmup=0.3, lr=0.2)


def tiny_evaluator_config(folder_data: Path, out: Path, **extra):
    from autoencoder.train_evaluator import make_evaluator_config

    flags = dict(TINY_EVALUATOR, data=str(folder_data), cache_dir=str(out.parent / "cache"), out=str(out))
    flags.update(extra)
    return make_evaluator_config(**flags)


@pytest.fixture(scope="session")
def tiny_evaluator(folder_data, tmp_path_factory):
    """An evaluator (widths 8/16/16) trained 3 epochs on the fake folders: (folder, result)."""
    from autoencoder.train_evaluator import train_evaluator

    out = tmp_path_factory.mktemp("evaluator") / "tiny"
    return out, train_evaluator(tiny_evaluator_config(folder_data, out), progress=False)


def fit_toy_flow(net, codes, labels, held_out, held_out_labels, steps: int, lr: float = 3e-3):
    """Train a flow net on toy codes (Adam, batches of 128, seeded); returns (held-out loss before, after)."""
    import torch

    from latent_ops.flow import flow_matching_loss

    net.set_statistics(codes)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)

    def held_out_loss():
        with torch.no_grad():
            return flow_matching_loss(net, net.standardise(held_out), held_out_labels,
                                      torch.Generator().manual_seed(99), label_dropout=0.0).item()

    before = held_out_loss()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        pick = torch.randint(len(codes), (128,), generator=g)
        loss = flow_matching_loss(net, net.standardise(codes[pick]), labels[pick], g, label_dropout=0.2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    return before, held_out_loss()


@pytest.fixture(scope="module")
def composed_run(smoke_run, folder_data, tmp_path_factory):
    """A copy of the smoke run with its latent bank and concepts (one per test module), so the shared run stays
    as trained."""
    from latent_ops.encode import encode_run
    from latent_ops.run_concepts import fit_run_concepts

    run = tmp_path_factory.mktemp("compose") / "run"
    shutil.copytree(smoke_run, run)
    encode_run(run, str(folder_data), cache_dir=str(smoke_run.parent / "cache"), progress=False)
    fit_run_concepts(run, str(folder_data), str(smoke_run.parent / "cache"))
    return run
