"""The latent atlas: a UMAP map of a run's codes, to read the latent space by eye.

UMAP (McInnes et al. 2018, arXiv:1802.03426, the umap-learn package) embeds the codes of
the latent bank (the test split by default; ``--classes`` to restrict) in 2-D. The
embedding is cached in the cache folder, in ``CACHE/atlas/``, as a plain npz (no pickles) keyed
by the bank's contents and the UMAP settings, so a second call reuses it. Nothing is
unpickled: new codes (a composed path) are placed on the map by interpolating the
positions of their nearest mapped codes with UMAP's own membership weights (the starting
point of UMAP's ``transform``, McInnes et al. 2018, section 4), so no fitted reducer
needs to be stored.

Writes to ``outputs/atlas/<run>/``:
- ``class-map.png``: the map coloured by class, the horse and bird clusters outlined and labelled;
- ``mosaic.png``: the same map as decoded thumbnails at their positions;
- ``compose-path.png``: composed codes (an expression at several strengths) placed on the
  map among their nearest mapped codes, the path from the class towards winged images;
- ``wing-direction.png``: the map coloured by each code's signed distance along the wing
  direction, and ``wing-strip.png``: decoded images along that direction;
- ``atlas.json``: settings, timings, and where the composed codes land (the classes of
  their nearest mapped codes).

Example: ``python -m latent_ops.atlas --run outputs/runs/cpu-12k --data data``
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import replace_atomically, replace_folder, write_json
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER, parse_classes
from autoencoder.cli import ConfigError, check_ranges, claim_output, dataclass_from_flags, run_cli, save_config
from autoencoder.grids import save_grid, save_single
from autoencoder.run_folder import load_run
from latent_ops.compose_config import folder_name
from latent_ops.concepts import Concepts, heldout_members
from latent_ops.encode import BANK_FILE, LatentBank, decode_codes, load_bank
from latent_ops.expression import ExpressionError, parse
from latent_ops.run_concepts import ensure_concepts
from latent_ops.runs import resolve_run

ATLAS_CACHE = "atlas"  # inside the cache folder (--cache_dir), never inside the run's
OUTLINED = ("horse", "bird")  # classes whose clusters are outlined on the class map
CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]


@dataclass
class Atlas:
    embedding: np.ndarray  # (N, 2) UMAP coordinates
    rows: np.ndarray  # (N,) positions of the mapped codes in the bank's split
    labels: np.ndarray  # (N,) CIFAR-10 labels
    split: str  # the bank split that was mapped
    codes: np.ndarray  # (N, D) the mapped codes
    neighbours: int  # UMAP's n_neighbors
    reused: bool  # True when the embedding came from the cache
    seconds: float  # time to fit (or load)

    def transform(self, codes: np.ndarray) -> np.ndarray:
        """(M, D) codes -> (M, 2) positions on this map (``place_on_map``)."""
        return place_on_map(codes, self.codes, self.embedding, self.neighbours)


def place_on_map(codes: np.ndarray, mapped: np.ndarray, embedding: np.ndarray, neighbours: int = 15) -> np.ndarray:
    """(M, D) codes -> (M, 2) positions on a map of the ``mapped`` codes (N, D) at ``embedding`` (N, 2): the
    membership-weighted mean of the map positions of each code's ``neighbours`` nearest mapped codes (UMAP's
    fuzzy-set weights: exp(-(d - rho) / sigma), rho the nearest distance, sigma the mean distance beyond it)."""
    codes = np.asarray(codes, dtype=np.float32).reshape(len(codes), -1)
    mapped = np.asarray(mapped, dtype=np.float32)
    k = min(neighbours, len(mapped))
    squared = (codes ** 2).sum(1)[:, None] - 2 * codes @ mapped.T + (mapped ** 2).sum(1)[None]
    nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
    distance = np.sqrt(np.maximum(np.take_along_axis(squared, nearest, 1), 0))
    order = np.argsort(distance, axis=1)
    nearest, distance = np.take_along_axis(nearest, order, 1), np.take_along_axis(distance, order, 1)
    rho = distance[:, :1]
    sigma = np.maximum((distance - rho).mean(1, keepdims=True), 1e-8)
    weight = np.exp(-(distance - rho) / sigma)
    weight /= weight.sum(1, keepdims=True)
    return (weight[:, :, None] * embedding[nearest]).sum(1).astype(np.float32)


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def cache_stem(run: Path, split: str, classes: tuple[str, ...], seed: int, neighbours: int, min_dist: float,
               cache_dir: str | Path = CACHE_FOLDER) -> Path:
    """The cache files' path without suffix, in ``CACHE/atlas/`` (never inside the run's folder, which may be a
    committed model); the key covers the bank's bytes and every setting."""
    key = hashlib.sha1(f"{_sha256(run / BANK_FILE)}|{split}|{','.join(classes)}|{seed}|{neighbours}|{min_dist}"
                       .encode()).hexdigest()[:12]
    return Path(cache_dir) / ATLAS_CACHE / f"{Path(run).resolve().name}-umap-{split}-{key}"


def fit_or_load(run: Path, bank: LatentBank, split: str = "test", classes: str = "", seed: int = 0,
                neighbours: int = 15, min_dist: float = 0.1, cache_dir: str | Path = CACHE_FOLDER) -> Atlas:
    """The UMAP map of the bank's ``split`` codes of ``classes``, from the cache when it is there.

    The cache is an npz read with ``allow_pickle=False``; one that is damaged or does not
    match the codes is refitted. No reducer is stored, so nothing in the folder can run code.
    """
    import umap

    if split not in bank.codes:
        raise ConfigError(f"--split must be one of {', '.join(bank.codes)}, got {split!r}")
    names = parse_classes(classes)
    wanted = [CIFAR10_CLASSES.index(n) for n in names]
    rows = np.flatnonzero(np.isin(bank.labels[split], wanted))
    if len(rows) <= neighbours:
        raise ConfigError(f"only {len(rows)} codes of {', '.join(names)} in the {split} split; UMAP with "
                          f"--neighbours {neighbours} needs more (lower --neighbours or add classes)")
    codes = bank.codes[split][rows]
    stem = cache_stem(run, split, names, seed, neighbours, min_dist, cache_dir)
    began = time.monotonic()
    embedding_file = stem.with_suffix(".npz")
    if embedding_file.exists():
        try:
            with np.load(embedding_file, allow_pickle=False) as saved:
                embedding, saved_rows = saved["embedding"], saved["rows"]
            if np.array_equal(saved_rows, rows) and embedding.shape == (len(rows), 2) and np.isfinite(embedding).all():
                return Atlas(embedding, rows, bank.labels[split][rows], split, codes, neighbours, True,
                             time.monotonic() - began)
        except Exception:  # damaged or foreign: refit below, never trust
            pass
    reducer = umap.UMAP(n_neighbors=neighbours, min_dist=min_dist, random_state=seed, n_components=2,
                        n_jobs=1)  # a random_state makes UMAP single-threaded anyway; saying so avoids its warning
    embedding = reducer.fit_transform(codes).astype(np.float32)
    replace_atomically(lambda tmp: np.savez(tmp, embedding=embedding, rows=rows), embedding_file)
    return Atlas(embedding, rows, bank.labels[split][rows], split, codes, neighbours, False, time.monotonic() - began)


def _figure(size: float = 9.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size))
    ax.set_xticks([]), ax.set_yticks([])
    return plt, fig, ax


def _scatter_classes(ax, atlas: Atlas, alpha: float = 0.6, size: float = 3.0, legend: bool = True) -> None:
    for label in np.unique(atlas.labels):
        mine = atlas.labels == label
        ax.scatter(*atlas.embedding[mine].T, s=size, alpha=alpha, color=CLASS_COLOURS[label], linewidths=0,
                   label=CIFAR10_CLASSES[label])
    if legend:
        ax.legend(markerscale=4, loc="best", fontsize=9, framealpha=0.85)


def cluster_outline(points: np.ndarray, core: float = 0.8) -> np.ndarray:
    """The convex hull (K, 2) of the ``core`` share of ``points`` (N, 2) nearest their median."""
    from scipy.spatial import ConvexHull

    distance = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    kept = points[distance <= np.quantile(distance, core)]
    if len(kept) < 3:
        return kept
    hull = ConvexHull(kept)
    return kept[np.append(hull.vertices, hull.vertices[0])]


def plot_class_map(atlas: Atlas, concepts: Concepts, bank: LatentBank, file: Path) -> dict:
    """The map coloured by class with the OUTLINED classes' clusters drawn; returns their centres."""
    plt, fig, ax = _figure()
    _scatter_classes(ax, atlas)
    position_of = {row: i for i, row in enumerate(atlas.rows)}
    centres = {}
    for name in sorted(concepts.densities):
        if not name.partition(":")[2].isdigit() or name.split(":")[0] not in OUTLINED or atlas.split != "test":
            continue
        members = [position_of[r] for r in heldout_members(name, concepts, bank) if r in position_of]
        if len(members) < 3:
            continue
        points = atlas.embedding[members]
        outline = cluster_outline(points)
        colour = CLASS_COLOURS[CIFAR10_CLASSES.index(name.split(":")[0])]
        ax.plot(*outline.T, color="black", linewidth=2.2)
        ax.plot(*outline.T, color=colour, linewidth=1.2)
        centre = np.median(points, axis=0)
        centres[name] = centre.tolist()
        ax.annotate(name, centre, fontsize=11, weight="bold", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor=colour, alpha=0.9))
    ax.set_title(f"UMAP of {len(atlas.rows)} {atlas.split} codes by class; horse and bird clusters outlined "
                 "(central 80%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return centres


def mosaic(atlas: Atlas, codes: np.ndarray, nets, cells: int = 40) -> torch.Tensor:
    """(3, cells*32, cells*32) in [-1, 1]: in each grid cell of the map, the decoded code nearest its centre."""
    low, high = atlas.embedding.min(0), atlas.embedding.max(0)
    cell = np.floor((atlas.embedding - low) / (high - low + 1e-9) * cells).astype(int).clip(0, cells - 1)
    centre = low + (cell + 0.5) / cells * (high - low)
    distance = np.linalg.norm(atlas.embedding - centre, axis=1)
    chosen: dict[tuple[int, int], int] = {}
    for i in np.argsort(distance):
        chosen.setdefault((cell[i, 0], cell[i, 1]), i)
    picks = list(chosen.items())
    device = next(nets.decoder.parameters()).device
    with torch.no_grad():
        images = decode_codes(nets, torch.from_numpy(codes[[i for _, i in picks]]).float().to(device)).cpu()
    canvas = torch.ones(3, cells * 32, cells * 32)
    for ((cx, cy), _), image in zip(picks, images):
        top = (cells - 1 - cy) * 32  # y grows upwards on the map, downwards in the image
        canvas[:, top:top + 32, cx * 32:cx * 32 + 32] = image
    return canvas


def expression_codes(expression: str, concepts: Concepts, bank: LatentBank, strengths: list[float], count: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes (S, count, D) of ``expression``'s class part plus each strength times its directions.

    The same ``count`` held-out codes start every strength, so each row of the path is one image.
    """
    weights = parse(expression, concepts.names)
    starts = [n for n in weights if n in concepts.densities]
    moves = [n for n in weights if n in concepts.directions]
    if not starts or not moves:
        raise ExpressionError(f"a path needs a class or cluster and a direction (e.g. horse+wings); "
                              f"{expression!r} has {', '.join(weights)}")
    rng = np.random.default_rng(seed)
    base = 0.0
    for name in starts:
        members = heldout_members(name, concepts, bank)
        base = base + weights[name] * bank.codes["test"][rng.choice(members, size=count, replace=len(members) < count)]
    step = sum(weights[n] * concepts.directions[n].step * concepts.directions[n].vector for n in moves)
    return np.stack([base + s * step[None, :] for s in strengths]).astype(np.float32), step


def landing(atlas: Atlas, positions: np.ndarray, k: int = 15) -> dict[str, float]:
    """Shares of classes among the ``k`` nearest mapped codes of each position (M, 2), averaged."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k).fit(atlas.embedding).kneighbors(positions, return_distance=False)
    labels = atlas.labels[index].ravel()
    return {CIFAR10_CLASSES[c]: float(np.mean(labels == c)) for c in np.unique(atlas.labels)}


def plot_path(atlas: Atlas, paths: np.ndarray, strengths: list[float], expression: str, file: Path) -> None:
    """paths: (S, count, 2) positions; grey-ish class map underneath, a line per start code."""
    plt, fig, ax = _figure()
    _scatter_classes(ax, atlas, alpha=0.25, size=2.5)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(strengths)))
    for j in range(paths.shape[1]):
        ax.plot(*paths[:, j].T, color="black", linewidth=0.7, alpha=0.6)
    for s, colour in enumerate(colours):
        ax.scatter(*paths[s].T, s=28, color=colour, edgecolors="black", linewidths=0.5, zorder=3,
                   label=f"{expression}, strength {strengths[s]:g}")
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(f"'{expression}' at strengths {', '.join(f'{s:g}' for s in strengths)}, placed among their "
                 "nearest mapped codes (a line per start code)", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def plot_direction(atlas: Atlas, codes: np.ndarray, direction, paths: np.ndarray, name: str, file: Path) -> None:
    """The map coloured by signed distance along ``direction``; an arrow per start code from its
    first to its last position in ``paths`` (S, count, 2)."""
    plt, fig, ax = _figure()
    distance = direction.signed_distance(codes)
    limit = np.quantile(np.abs(distance), 0.98)
    points = ax.scatter(*atlas.embedding.T, c=distance, cmap="coolwarm", vmin=-limit, vmax=limit, s=3, linewidths=0)
    fig.colorbar(points, ax=ax, shrink=0.7, label=f"signed distance along '{name}' (positive: winged side)")
    for j in range(paths.shape[1]):
        ax.annotate("", paths[-1, j], paths[0, j], arrowprops=dict(arrowstyle="-|>", color="black", lw=1.2))
    ax.set_title(f"The '{name}' direction on the map; arrows: each start code from strength 0 to the largest",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


@dataclass
class AtlasConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs
    data: str = DATA_FOLDER  # CIFAR-10 folder (to fit concepts when the run has none)
    cache_dir: str = CACHE_FOLDER  # where the decoded data is cached
    out: str = ""  # output folder; empty: outputs/atlas/<run>-<expression>-<seed>, one per expression
    classes: str = ""  # comma-separated classes to map; empty: all of the run's
    split: str = "test"  # the bank split to map
    expression: str = "horse+wings"  # the composed path drawn on the map
    strengths: str = "0,0.5,1,1.5,2,3"  # strengths of the path's directions
    path_codes: int = 24  # start codes of the path
    seed: int = 0  # UMAP's random_state and the path's draws
    neighbours: int = 15  # UMAP's n_neighbors
    min_dist: float = 0.1  # UMAP's min_dist
    cells: int = 40  # cells per side of the mosaic

    @property
    def strength_list(self) -> list[float]:
        try:
            values = [float(v) for v in self.strengths.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(np.isfinite(v) and abs(v) <= 100 for v in values):
            raise ConfigError(f"--strengths takes finite numbers within +-100 like 0,1,2, got {self.strengths!r}")
        return values


ATLAS_RANGES = {"path_codes": (1, 4096), "seed": (0, 2**31 - 1), "neighbours": (2, 200), "min_dist": (0, 10),
                "cells": (1, 200)}
ATLAS_FILES = {"class-map.png", "mosaic.png", "compose-path.png", "wing-direction.png", "wing-strip.png",
               "atlas.json", "config.json"}


def make_atlas_config(**flags) -> AtlasConfig:
    config = dataclass_from_flags(AtlasConfig, {}, flags)
    check_ranges(config, ATLAS_RANGES)
    parse_classes(config.classes)
    config.strength_list
    parse(config.expression)
    return config


def atlas_folder(config: AtlasConfig, run_dir: Path) -> Path:
    """--out, or one folder per run, expression and seed: two atlases never share a default folder."""
    if config.out:
        return Path(config.out)
    return Path("outputs/atlas") / f"{run_dir.name}-{folder_name(config.expression, config.seed)}"


def build_atlas(quiet: bool = False, **flags) -> dict:
    """Fit (or reuse) the map of a run and write every atlas figure; returns the atlas.json record.

    ``flags``: the fields of AtlasConfig, checked like command-line flags.
    """
    config = make_atlas_config(**flags)
    say = (lambda *a: None) if quiet else (lambda *a: print("atlas:", *a, flush=True))
    run_dir = resolve_run(config.run)
    out_dir = atlas_folder(config, run_dir)
    claim_output(out_dir, ATLAS_FILES, "an atlas")
    strengths = config.strength_list
    concepts = ensure_concepts(run_dir, config.data, config.cache_dir)
    bank = load_bank(run_dir)
    # every input is checked before the minute of fitting: the expression against the run's concepts
    path, step = expression_codes(config.expression, concepts, bank, strengths, config.path_codes, config.seed)
    nets = load_run(run_dir).nets
    atlas = fit_or_load(run_dir, bank, config.split, config.classes, config.seed, config.neighbours, config.min_dist,
                        config.cache_dir)
    say(f"{'reused the cached' if atlas.reused else 'fitted the'} map of {len(atlas.rows)} codes "
        f"in {atlas.seconds:.1f} s")
    codes = atlas.codes
    record = {"run": str(run_dir), "split": config.split, "classes": list(parse_classes(config.classes)),
              "codes": len(atlas.rows), "seed": config.seed, "neighbours": config.neighbours,
              "min_dist": config.min_dist, "reused_cache": atlas.reused, "map_seconds": atlas.seconds}
    began = time.monotonic()
    positions = atlas.transform(path.reshape(-1, path.shape[-1])).reshape(len(strengths), config.path_codes, 2)
    record["transform_seconds"] = time.monotonic() - began
    record["path"] = {"expression": config.expression, "strengths": strengths,
                      "landing": {f"{s:g}": landing(atlas, positions[i]) for i, s in enumerate(strengths)}}
    wings = next((n for n in parse(config.expression, concepts.names) if n in concepts.directions), None)
    rows = min(6, config.path_codes)
    with torch.no_grad():
        strip = decode_codes(nets, torch.from_numpy(path[:, :rows].transpose(1, 0, 2).reshape(-1, path.shape[-1])))

    def build(folder: Path) -> None:
        save_config(config, folder / "config.json")
        record["cluster_centres"] = plot_class_map(atlas, concepts, bank, folder / "class-map.png")
        save_single(mosaic(atlas, codes, nets, config.cells), folder / "mosaic.png")
        plot_path(atlas, positions, strengths, config.expression, folder / "compose-path.png")
        plot_direction(atlas, codes, concepts.directions[wings], positions, wings, folder / "wing-direction.png")
        save_grid(strip.cpu(), folder / "wing-strip.png", nrow=len(strengths), scale=3)
        write_json(record, folder / "atlas.json")

    replace_folder(build, out_dir)
    say(f"wrote {out_dir}/: class-map.png, mosaic.png, compose-path.png, wing-direction.png, wing-strip.png")
    return record


def main(**flags) -> None:
    """Write the latent atlas of RUN (default: the newest run) to outputs/atlas/<run>/; every field of
    AtlasConfig is a flag."""
    run_cli(lambda: build_atlas(**flags))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
