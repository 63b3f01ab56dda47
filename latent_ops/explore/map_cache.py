"""The explorer's map: a UMAP embedding of the bank's codes, their clusters, and their decoded pictures as sprite
sheets, cached under the cache folder by their inputs.

UMAP (McInnes et al. 2018, arXiv:1802.03426) embeds the codes in 2-D; the TensorBoard projector's sprite atlas
(Smilkov et al. 2016, arXiv:1611.05469) shows a point's picture on hover without asking the server. A map is keyed
by the bank's bytes, the weights' digest and every setting, and stored as a plain npz (no pickles) beside PNG sheets
of ``TILES x TILES`` pictures of 32 x 32, in ``CACHE/explore/<run>-<key>/`` (never inside the run's folder). A
damaged or partial cache is made again.

Example: ``python -c "from latent_ops.explore.map_cache import map_key; print(map_key.__doc__)"``
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from autoencoder.atomic import replace_atomically
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError
from autoencoder.run_folder import weights_digest
from latent_ops.concepts import heldout_members
from latent_ops.editor import Editor
from latent_ops.encode import BANK_FILE

TILES = 32  # pictures per side of a sprite sheet: 1,024 per 1024 x 1024 PNG
SIDE = 32
MAP_FILE = "map.npz"
VERSION = 1  # bump when the cached files change meaning


@dataclass
class LatentMap:
    folder: Path  # the cache folder of this map
    rows: np.ndarray  # (N,) rows of the mapped codes in the bank's split
    embedding: np.ndarray  # (N, 2) UMAP positions
    labels: np.ndarray  # (N,) CIFAR-10 labels
    clusters: np.ndarray  # (N,) index into cluster_names, -1 where none
    cluster_names: list[str]
    codes: np.ndarray  # (N, D)
    split: str
    neighbours: int
    reused: bool
    seconds: float

    @property
    def sheets(self) -> int:
        return -(-len(self.rows) // (TILES * TILES))

    def sheet_file(self, sheet: int) -> Path:
        return self.folder / f"sprites-{sheet}.png"


def map_key(editor: Editor, split: str, points: int, seed: int, neighbours: int, min_dist: float) -> str:
    """12 hex digits over the bank's bytes, the weights and every setting: a new input is a new map."""
    digest = hashlib.sha256((editor.run / BANK_FILE).read_bytes()).hexdigest()
    text = f"{VERSION}|{digest}|{weights_digest(editor.run)}|{split}|{points}|{seed}|{neighbours}|{min_dist}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def chosen_rows(count: int, points: int, seed: int) -> np.ndarray:
    """All rows, or ``points`` of them drawn without replacement (sorted), the same for the same seed."""
    if not points or points >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=points, replace=False))


def cluster_labels(editor: Editor, split: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each mapped row's cluster (``horse:2``) as an index into the names; -1 where the split has none."""
    names = sorted(n for n in editor.concepts.densities if n.partition(":")[2].isdigit())
    labels = np.full(len(rows), -1, dtype=np.int64)
    if split != "test" or not names:
        return labels, names
    where = {row: i for i, row in enumerate(rows)}
    for k, name in enumerate(names):
        for row in heldout_members(name, editor.concepts, editor.bank):
            if row in where:
                labels[where[row]] = k
    return labels, names


def write_sheets(editor: Editor, codes: np.ndarray, folder: Path) -> None:
    """Decoded pictures of ``codes`` as PNG sheets of TILES x TILES, row-major, in ``folder``."""
    per_sheet = TILES * TILES
    for sheet, start in enumerate(range(0, len(codes), per_sheet)):
        pixels = editor.decode(codes[start:start + per_sheet])
        canvas = np.zeros((TILES * SIDE, TILES * SIDE, 3), dtype=np.uint8)
        for i, picture in enumerate(pixels):
            top, left = (i // TILES) * SIDE, (i % TILES) * SIDE
            canvas[top:top + SIDE, left:left + SIDE] = picture
        replace_atomically(lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG", compress_level=1),
                           folder / f"sprites-{sheet}.png")


def read_cached(folder: Path, rows: np.ndarray) -> dict | None:
    """The cached arrays when every file is there and they fit ``rows``; None otherwise."""
    try:
        with np.load(folder / MAP_FILE, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in ("embedding", "rows", "labels", "clusters", "cluster_names")}
        sheets = -(-len(rows) // (TILES * TILES))
        if not np.array_equal(arrays["rows"], rows) or arrays["embedding"].shape != (len(rows), 2) \
                or not np.isfinite(arrays["embedding"]).all():
            return None
        for sheet in range(sheets):
            with Image.open(folder / f"sprites-{sheet}.png") as image:
                if image.size != (TILES * SIDE, TILES * SIDE):
                    return None
        return arrays
    except Exception:  # missing, damaged or foreign: made again, never trusted
        return None


def open_map(editor: Editor, cache_dir: str | Path, split: str = "test", points: int = 0, seed: int = 0,
             neighbours: int = 15, min_dist: float = 0.1, say=print) -> LatentMap:
    """The map of the bank's ``split`` (``points`` of its codes, 0: all), from the cache when it is there."""
    codes_all = editor.bank.codes.get(split)
    if codes_all is None or len(codes_all) == 0:
        have = ", ".join(s for s, c in editor.bank.codes.items() if len(c)) or "none"
        raise ConfigError(f"--split {split}: the bank of {editor.run} holds no {split} codes (it has: {have}); "
                          f"give --split test")
    rows = chosen_rows(len(codes_all), points, seed)
    if len(rows) <= neighbours:
        raise ConfigError(f"only {len(rows)} codes to map; UMAP with --neighbours {neighbours} needs more "
                          f"(lower --neighbours or raise --points)")
    folder = Path(cache_dir) / "explore" / f"{editor.run.resolve().name}-{map_key(editor, split, points, seed, neighbours, min_dist)}"
    began = time.monotonic()
    codes = codes_all[rows]
    cached = read_cached(folder, rows)
    if cached is not None:
        return LatentMap(folder, rows, cached["embedding"], cached["labels"], cached["clusters"],
                         [str(n) for n in cached["cluster_names"]], codes, split, neighbours, True,
                         time.monotonic() - began)
    say(f"explore: mapping {len(rows)} {split} codes with UMAP and drawing their sprites into {folder}/ (once; "
        f"later starts reuse them)")
    import umap  # here: a start with a warm cache never pays the second it takes to import

    reducer = umap.UMAP(n_neighbors=neighbours, min_dist=min_dist, random_state=seed, n_components=2, n_jobs=1)
    embedding = reducer.fit_transform(codes).astype(np.float32)
    labels = editor.bank.labels[split][rows]
    clusters, names = cluster_labels(editor, split, rows)
    folder.mkdir(parents=True, exist_ok=True)
    write_sheets(editor, codes, folder)
    replace_atomically(lambda tmp: np.savez(tmp, embedding=embedding, rows=rows, labels=labels, clusters=clusters,
                                            cluster_names=np.array(names, dtype=str)), folder / MAP_FILE)
    (folder / "settings.json").write_text(json.dumps({"run": str(editor.run), "split": split, "points": points,
                                                      "seed": seed, "neighbours": neighbours,
                                                      "min_dist": min_dist}, indent=1))
    return LatentMap(folder, rows, embedding, labels, clusters, names, codes, split, neighbours, False,
                     time.monotonic() - began)


def map_points(latent_map: LatentMap) -> dict:
    """The map as plain lists for the page: positions scaled into [0, 1], labels, clusters, rows."""
    low, high = latent_map.embedding.min(0), latent_map.embedding.max(0)
    unit = (latent_map.embedding - low) / np.maximum(high - low, 1e-9)
    return {"x": np.round(unit[:, 0], 5).tolist(), "y": np.round(unit[:, 1], 5).tolist(),
            "label": latent_map.labels.tolist(), "cluster": latent_map.clusters.tolist(),
            "row": latent_map.rows.tolist(), "classes": list(CIFAR10_CLASSES),
            "cluster_names": latent_map.cluster_names, "tiles": TILES, "side": SIDE, "sheets": latent_map.sheets,
            "split": latent_map.split, "low": low.tolist(), "high": high.tolist()}
