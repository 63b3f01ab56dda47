"""CIFAR-10 as whole uint8 tensors: find the source, decode once, cache, select classes.

Two sources are read, detected from what is in the folder:
- torchvision's layout (``cifar-10-batches-py/``), fetched by torchvision when asked;
- class folders (``train/<class>/*.png|jpg`` and ``test/<class>/...``), as
  ``torchvision.datasets.ImageFolder`` reads them, e.g. the shared JPEG copy unpacked.

The decoded split is cached as ``<cache_dir>/<source-key>-<split>.safetensors``; later
loads take well under a second. Images stay uint8 (N, 3, 32, 32) until a batch is drawn;
``BatchSampler`` draws the batch of any step (each rank's share under torchrun).

Example: ``python -m autoencoder.data --data data/cifar10-jpeg`` (builds the cache, prints counts)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from autoencoder.atomic import save_tensors, write_json
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER, parse_classes
from autoencoder.cli import UserError, check_writable, command, save_config

TORCHVISION_FOLDER = "cifar-10-batches-py"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")


class DataNotFoundError(UserError, FileNotFoundError):
    """No CIFAR-10 where the user pointed; the message says where it looked and what to do."""


class DataError(UserError, ValueError):
    """A data file that cannot be used (damaged, wrong size); the message names it."""


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64, CIFAR-10's label numbers
    indices: torch.Tensor  # (N,) int64, position of each image in its full split

    def __len__(self) -> int:
        return len(self.labels)


def find_source(root: str | Path) -> tuple[str, Path]:
    """('torchvision' | 'folders', path) for the CIFAR-10 copy in ``root`` (or one folder below)."""
    root = Path(root)
    candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for path in candidates:
        if (path / TORCHVISION_FOLDER).is_dir():
            return "torchvision", path
        if path.name == TORCHVISION_FOLDER:
            return "torchvision", path.parent
        if (path / "train").is_dir() and any((path / "train" / c).is_dir() for c in CIFAR10_CLASSES):
            return "folders", path
    raise DataNotFoundError(
        f"no CIFAR-10 found in {root.resolve()} (looked for {TORCHVISION_FOLDER}/ and train/<class>/ "
        f"folders there and one level down). Download it with --download true (torchvision, needs "
        f"internet), or point --data at a local copy, e.g. tar xzf ../shared/data/cifar10-jpeg.tar.gz "
        f"-C data/ then --data data/cifar10-jpeg")


def _read_folders(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``path/split/<class>/*`` in sorted order; labels follow CIFAR-10's names."""
    split_dir = path / split
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{split_dir} is missing: a class-folder copy needs train/ and test/")
    unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in CIFAR10_CLASSES)
    if unknown:
        raise DataNotFoundError(f"{split_dir} has folders that are not CIFAR-10 classes: "
                                f"{', '.join(unknown)}; the classes are: {', '.join(CIFAR10_CLASSES)}")
    images, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for file in sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            pixels = read_image(file)
            images.append(pixels)
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"no .png or .jpg images under {split_dir}/<class>/")
    return np.stack(images), np.asarray(labels)


def read_image(file: Path) -> np.ndarray:
    """One 32x32 image as (32, 32, 3) uint8; a damaged, truncated or wrongly sized file is a DataError naming it."""
    try:
        with Image.open(file) as im:
            im.load()
            pixels = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{file} cannot be read as an image ({type(error).__name__}: {str(error)[:80]}); "
                        f"replace or remove it") from None
    if pixels.shape != (32, 32, 3):
        raise DataError(f"{file} is {pixels.shape[1]}x{pixels.shape[0]}; CIFAR-10 images are 32x32: "
                        f"replace or remove it")
    return pixels


def _read_torchvision(path: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(path), train=(split == "train"), download=download)
    except RuntimeError as error:  # "Dataset not found or corrupted"
        raise DataError(f"{path / TORCHVISION_FOLDER}: {error} Download it again with --download true") from None
    return np.asarray(dataset.data), np.asarray(dataset.targets)


def source_listing(kind: str, path: Path, split: str) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime in ns) of every file a split is decoded from, sorted: what the cache is keyed on.

    Adding, removing, replacing or touching an image changes the key, so a stale cache is
    never read; listing 60,000 files takes a fraction of a second.
    """
    if kind == "folders":
        roots = [path / split] if (path / split).is_dir() else []
    else:
        roots = [path / TORCHVISION_FOLDER]
    listing = []
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                stat = os.stat(os.path.join(folder, name))
                listing.append((os.path.relpath(os.path.join(folder, name), root), stat.st_size, stat.st_mtime_ns))
    return sorted(listing)


def _cache_file(cache_dir: Path, kind: str, path: Path, split: str) -> Path:
    digest = hashlib.sha1(f"{kind}:{path.resolve()}:{split}".encode())
    for name, size, mtime in source_listing(kind, path, split):
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return cache_dir / f"cifar10-{kind}-{digest.hexdigest()[:12]}-{split}.safetensors"


def load_split(root: str | Path, split: str, cache_dir: str | Path = CACHE_FOLDER,
               download: bool = False) -> ImageSet:
    """The whole split as uint8 tensors, from the cache when it is there."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if download and not (root / TORCHVISION_FOLDER).is_dir():
        try:
            find_source(root)
        except DataNotFoundError:
            root.mkdir(parents=True, exist_ok=True)
            _read_torchvision(root, "train", download=True)
    if not root.exists():
        raise DataNotFoundError(
            f"data folder {root.resolve()} does not exist. Download CIFAR-10 with --download true "
            f"(torchvision, needs internet), or unpack a local copy, e.g. tar xzf "
            f"../shared/data/cifar10-jpeg.tar.gz -C data/ then --data data/cifar10-jpeg")
    kind, path = find_source(root)
    cache = _cache_file(Path(cache_dir), kind, path, split)
    tensors = None
    if cache.exists():
        try:
            tensors = load_file(str(cache))
            images, labels = tensors["images"], tensors["labels"]
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32) or len(labels) != len(images) \
                    or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(CIFAR10_CLASSES)):
                raise ValueError("unexpected shapes")
        except Exception as error:  # a damaged cache is rebuilt from the images, never trusted, and said
            print(f"data cache {cache} is damaged ({type(error).__name__}); rebuilding it from {path}", flush=True)
            tensors = None
    if tensors is None:
        read = _read_folders(path, split) if kind == "folders" else _read_torchvision(path, split, False)
        images = torch.from_numpy(read[0]).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        labels = torch.from_numpy(read[1]).long()
        save_tensors({"images": images, "labels": labels}, cache)
    return ImageSet(images, labels, torch.arange(len(labels)))


def select_classes(data: ImageSet, classes: str | tuple[str, ...] = "") -> ImageSet:
    """The images of the named classes; labels stay CIFAR-10's."""
    names = parse_classes(classes)
    wanted = torch.tensor([CIFAR10_CLASSES.index(n) for n in names])
    keep = torch.isin(data.labels, wanted)
    return ImageSet(data.images[keep], data.labels[keep], data.indices[keep])


def load_cifar10(root: str | Path, split: str, classes: str | tuple[str, ...] = "",
                 cache_dir: str | Path = CACHE_FOLDER, download: bool = False) -> ImageSet:
    """One split of CIFAR-10, restricted to ``classes`` (all ten when empty)."""
    return select_classes(load_split(root, split, cache_dir, download), classes)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], same shape."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], same shape."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def mirror(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``mask`` (B,) is True. images: (B, C, H, W)."""
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2. images: (B, C, H, W)."""
    return mirror(images, torch.rand(images.shape[0], generator=generator, device="cpu") < 0.5)


def upscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    """(..., H, W) -> (..., H*scale, W*scale), nearest neighbour: pixels stay visible as pixels."""
    return image.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits the ``count`` training images."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7_919 + epoch + 1))


DATA_FILE = "data.json"  # a shipped model's record of its data's checksums


def data_checksums(data: str, cache_dir: str) -> dict[str, str]:
    """SHA-256 of each split's uint8 images and labels, in the order the loader gives them: the
    same for the JPEG folders and torchvision's copy only if their pixels are the same."""
    return {split: split_checksum(data, split, cache_dir) for split in SPLITS}


def split_checksum(data: str, split: str, cache_dir: str) -> str:
    """One split's checksum, remembered beside its cache file (``...-SPLIT.sha256.json``, keyed by the cache file's
    size and time), so that a second call reads no images."""
    kind, path = find_source(Path(data)) if Path(data).exists() else ("", Path(data))
    cache = _cache_file(Path(cache_dir), kind, path, split) if kind else None
    record = cache.with_name(cache.stem + ".sha256.json") if cache is not None else None
    if record is not None and cache.exists() and record.exists():
        stat = cache.stat()
        try:
            known = json.loads(record.read_text())
            if known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
                return str(known["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # a damaged record is made again
    images = load_split(data, split, cache_dir)
    digest = hashlib.sha256(images.images.numpy().tobytes())
    digest.update(images.labels.numpy().astype(np.int64).tobytes())
    if record is not None and cache.exists():
        stat = cache.stat()
        try:
            write_json({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}, record)
        except OSError:
            pass  # a read-only cache: the checksum is computed each time
    return digest.hexdigest()


@dataclass
class DataConfig:
    data: str = DATA_FOLDER  # folder with CIFAR-10 (torchvision layout or train/<class>/ image folders)
    cache_dir: str = CACHE_FOLDER  # where the decoded uint8 tensors are cached
    download: bool = False  # fetch CIFAR-10 with torchvision when the folder has none


def decode_data(config: DataConfig) -> dict[str, list[int]]:
    """Decode both splits into the cache; returns the images per class of each split. The config is saved
    as ``CACHE/data-config.json``."""
    check_writable(Path(config.cache_dir))
    counts = {}
    for split in SPLITS:
        images = load_cifar10(config.data, split, cache_dir=config.cache_dir, download=config.download)
        counts[split] = torch.bincount(images.labels, minlength=10).tolist()
    save_config(config, Path(config.cache_dir) / "data-config.json")
    return counts


def main(**flags) -> None:
    """Decode both splits into the cache and print what was found; every field of DataConfig is a flag."""
    for split, counts in command(DataConfig, flags, decode_data).items():
        print(f"{split}: {sum(counts)} images; per class " +
              ", ".join(f"{n} {c}" for n, c in zip(CIFAR10_CLASSES, counts)))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
