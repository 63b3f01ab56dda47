"""Data: both layouts, source detection, the cache round trip, class selection, clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import FAKE_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, write_folders, write_torchvision_batches
from PIL import Image

from autoencoder import data as data_module
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError
from autoencoder.data import (
    DataNotFoundError,
    find_source,
    load_cifar10,
    load_split,
    mirror,
    random_flip,
    to_float,
    to_uint8,
)


def test_folder_layout_loads_uint8_with_cifar_labels(folder_data, cache_dir):
    train = load_cifar10(folder_data, "train", cache_dir=cache_dir)
    assert train.images.shape == (TRAIN_PER_CLASS * len(FAKE_CLASSES), 3, 32, 32)
    assert train.images.dtype == torch.uint8
    expected = sorted(CIFAR10_CLASSES.index(c) for c in FAKE_CLASSES)
    assert sorted(set(train.labels.tolist())) == expected  # bird=2, cat=3, horse=7, not 0, 1, 2
    test = load_cifar10(folder_data, "test", cache_dir=cache_dir)
    assert len(test) == TEST_PER_CLASS * len(FAKE_CLASSES)


def test_jpeg_folders_load_too(tmp_path, cache_dir):
    root = write_folders(tmp_path / "jpeg", classes=("airplane",), suffix=".jpg")
    assert load_cifar10(root, "train", cache_dir=cache_dir).labels.unique().tolist() == [0]


def test_source_found_one_level_down(folder_data, tmp_path):
    parent = tmp_path / "data"
    parent.mkdir()
    shutil.copytree(folder_data, parent / "cifar10-jpeg")
    kind, path = find_source(parent)
    assert kind == "folders" and path == parent / "cifar10-jpeg"


def test_torchvision_layout_loads(tmp_path, cache_dir, monkeypatch):
    root = write_torchvision_batches(tmp_path / "tv")
    # The fake batches cannot match torchvision's md5 sums of the real files.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    assert find_source(root)[0] == "torchvision"
    train = load_cifar10(root, "train", cache_dir=cache_dir)
    test = load_cifar10(root, "test", cache_dir=cache_dir)
    assert train.images.shape == (50, 3, 32, 32) and test.images.shape == (12, 3, 32, 32)
    assert train.labels.max() < 10


def test_cache_serves_a_split_until_its_files_change(tmp_path, cache_dir, monkeypatch):
    import os

    root = write_folders(tmp_path / "src")
    first = load_split(root, "train", cache_dir)
    assert list(cache_dir.glob("*-train.safetensors")), "the decoded split was not cached"
    real_read = data_module.read_image
    monkeypatch.setattr(data_module, "read_image", lambda f: pytest.fail(f"decoded {f} despite the cache"))
    second = load_split(root, "train", cache_dir)  # the cache alone serves an unchanged folder
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    monkeypatch.setattr(data_module, "read_image", real_read)

    removed = sorted((root / "train" / "horse").glob("*.png"))[0]
    removed.unlink()
    fewer = load_split(root, "train", cache_dir)
    assert len(fewer) == len(first) - 1, "a deleted image was still served from the cache"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "cat" / "9999.png")
    assert len(load_split(root, "train", cache_dir)) == len(first)
    replaced = sorted((root / "train" / "bird").glob("*.png"))[0]
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(replaced)
    os.utime(replaced, ns=(1, 1))  # a different time, as a copy or edit gives
    assert load_split(root, "train", cache_dir).images[0].float().mean() == 255


def test_bad_images_are_named_in_one_line(tmp_path, cache_dir):
    from autoencoder.data import DataError

    root = write_folders(tmp_path / "src")
    truncated = sorted((root / "train" / "cat").glob("*.png"))[3]
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{truncated.name} cannot be read as an image"):
        load_split(root, "train", cache_dir)
    truncated.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=truncated.name):
        load_split(root, "train", cache_dir)
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(truncated)
    with pytest.raises(DataError, match=f"{truncated.name} is 32x16; CIFAR-10 images are 32x32"):
        load_split(root, "train", cache_dir)


def test_a_damaged_cache_is_rebuilt(tmp_path, cache_dir):
    root = write_folders(tmp_path / "src")
    first = load_split(root, "test", cache_dir)
    cache = next(cache_dir.glob("*-test.safetensors"))
    cache.write_bytes(cache.read_bytes()[:100])
    assert torch.equal(load_split(root, "test", cache_dir).images, first.images)


def test_select_classes_keeps_cifar_labels_and_indices(folder_data, cache_dir):
    full = load_cifar10(folder_data, "train", cache_dir=cache_dir)
    horses = load_cifar10(folder_data, "train", classes="horse", cache_dir=cache_dir)
    assert horses.labels.unique().tolist() == [CIFAR10_CLASSES.index("horse")]
    assert torch.equal(full.images[horses.indices], horses.images)


def test_unknown_class_lists_the_ten(folder_data, cache_dir):
    with pytest.raises(ConfigError) as error:
        load_cifar10(folder_data, "train", classes="horse,unicorn", cache_dir=cache_dir)
    assert "unicorn" in str(error.value)
    assert all(name in str(error.value) for name in CIFAR10_CLASSES)


def test_missing_data_says_where_and_how(tmp_path, cache_dir):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as error:
        load_cifar10(empty, "train", cache_dir=cache_dir)
    message = str(error.value)
    assert str(empty.resolve()) in message and "--download" in message and "--data" in message
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "absent", "train", cache_dir=cache_dir)


def test_non_cifar_folder_is_named(tmp_path, cache_dir):
    root = write_folders(tmp_path / "odd", classes=("horse",))
    (root / "train" / "unicorn").mkdir()
    with pytest.raises(DataNotFoundError, match="unicorn"):
        load_cifar10(root, "train", cache_dir=cache_dir)


def test_float_uint8_round_trip():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = to_float(images)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_uint8(x), images)


def test_random_flip_is_seeded_and_mirrors():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4).repeat(16, 1, 1, 1)
    a = random_flip(x, torch.Generator().manual_seed(1))
    b = random_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = [(not torch.equal(a[i], x[i])) for i in range(len(x))]
    assert 0 < sum(flipped) < len(x)
    for i in range(len(x)):
        assert torch.equal(a[i], x[i]) or torch.equal(a[i], x[i].flip(-1))


def test_mirror_flips_exactly_the_masked_images():
    x = torch.arange(4 * 3 * 4 * 4, dtype=torch.float32).view(4, 3, 4, 4)
    mask = torch.tensor([True, False, False, True])
    out = mirror(x, mask)
    for i in range(4):
        assert torch.equal(out[i], x[i].flip(-1) if mask[i] else x[i])


def test_download_asks_torchvision(tmp_path, monkeypatch, cache_dir):
    calls = []

    def fake_read(path, split, download):
        calls.append(download)
        write_torchvision_batches(path)
        raise SystemExit  # stop after recording the request

    monkeypatch.setattr(data_module, "_read_torchvision", fake_read)
    with pytest.raises(SystemExit):
        load_cifar10(tmp_path / "dl", "train", cache_dir=cache_dir, download=True)
    assert calls == [True]
