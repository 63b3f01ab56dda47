"""Sample grids and the reconstruction evaluation on the shared smoke run."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.data import load_cifar10
from autoencoder.evaluate import main as evaluate_main
from autoencoder.run_folder import RunError, load_run
from autoencoder.samples import choose_sample_inputs, pick_pair_classes, render_grid
from autoencoder.samples import main as samples_main

HORSE, BIRD, CAT = (CIFAR10_CLASSES.index(c) for c in ("horse", "bird", "cat"))


def test_pair_classes_prefer_horse_and_bird():
    assert pick_pair_classes(torch.tensor([CAT, BIRD, HORSE])) == (HORSE, BIRD)
    assert pick_pair_classes(torch.tensor([CAT, 9])) == (CAT, 9)
    assert pick_pair_classes(torch.tensor([CAT, CAT])) == (CAT, CAT)


def test_sample_inputs_use_horses_and_birds(smoke_run, folder_data):
    opened = load_run(smoke_run)
    config, nets = opened.config, opened.nets
    held_out = load_cifar10(folder_data, "test", cache_dir=smoke_run.parent / "cache")
    inputs = choose_sample_inputs(held_out, config, seed=0)
    horses = held_out.images[held_out.labels == HORSE].float() / 127.5 - 1
    assert any(torch.allclose(inputs.starts[0], h) for h in horses)
    assert torch.equal(inputs.prior, choose_sample_inputs(held_out, config, seed=0).prior)
    grid = render_grid(nets, inputs, torch.device("cpu"))
    assert grid.shape == (3, 10 * 34 + 2, 10 * 34 + 2)  # 10x10 tiles of 32 px with 2 px padding
    assert 0 <= grid.min() and grid.max() <= 1


def test_samples_cli_writes_png(smoke_run, folder_data, tmp_path):
    out = tmp_path / "grid.png"
    samples_main(str(smoke_run), data=str(folder_data), out=str(out), cache_dir=str(smoke_run.parent / "cache"))
    with Image.open(out) as image:
        assert image.size == (2 * 342, 2 * 342)


def test_evaluate_writes_per_class_psnr(smoke_run, folder_data, capsys):
    evaluate_main(str(smoke_run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"))
    result = json.loads((smoke_run / "reconstruction.json").read_text())
    assert result["images"] == 24
    assert set(result["per_class_psnr_db"]) == {"bird", "cat", "horse"}
    assert 5 < result["psnr_db"] < 60
    assert "mean PSNR" in capsys.readouterr().out


def test_load_run_names_missing_files(tmp_path):
    with pytest.raises(RunError, match="config.json"):
        load_run(tmp_path)
