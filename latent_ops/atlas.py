"""The latent atlas: a UMAP map of a run's codes, to read the latent space by eye.

UMAP (McInnes et al. 2018, arXiv:1802.03426, the umap-learn package) embeds the codes of
the latent bank (the test split by default; ``--classes`` to restrict) in 2-D. The
embedding is cached beside the bank, in ``RUN/atlas/``, keyed by the bank's contents and
the UMAP settings, so a second call reuses it. The fitted reducer is kept there too (a
joblib file, needed for UMAP's ``transform``); it is only loaded when its SHA-256 matches
the one recorded in the embedding file this module wrote, and refitted otherwise.

Writes to ``outputs/atlas/<run>/``:
- ``class-map.png``: the map coloured by class, the horse and bird clusters outlined and labelled;
- ``mosaic.png``: the same map as decoded thumbnails at their positions;
- ``compose-path.png``: composed codes (an expression at several strengths) projected with
  UMAP's transform, the path from the class towards winged images;
- ``wing-direction.png``: the map coloured by each code's signed distance along the wing
  direction, and ``wing-strip.png``: decoded images along that direction;
- ``atlas.json``: settings, timings, and where the composed codes land (the classes of
  their nearest mapped codes).

Example: ``python -m latent_ops.atlas --run outputs/runs/cpu-12k --data data``
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.checkpoint import RunError, load_run
from autoencoder.config import CIFAR10_CLASSES, ConfigError, parse_classes
from autoencoder.data import DataNotFoundError
from latent_ops.compose import ensure_concepts
from latent_ops.concepts import Concepts, heldout_members
from latent_ops.encode import BANK_FILE, LatentBank, decode_codes, load_bank
from latent_ops.expression import ExpressionError, parse
from latent_ops.images import save_grid, save_single
from latent_ops.runs import resolve_run

CACHE_FOLDER = "atlas"  # inside the run folder, beside latents.npz
OUTLINED = ("horse", "bird")  # classes whose clusters are outlined on the class map
CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]


@dataclass
class Atlas:
    embedding: np.ndarray  # (N, 2) UMAP coordinates
    rows: np.ndarray  # (N,) positions of the mapped codes in the bank's split
    labels: np.ndarray  # (N,) CIFAR-10 labels
    split: str  # the bank split that was mapped
    reducer: object  # the fitted umap.UMAP, for transform
    reused: bool  # True when the embedding came from the cache
    seconds: float  # time to fit (or load)

    def transform(self, codes: np.ndarray) -> np.ndarray:
        """(M, D) codes -> (M, 2) positions on this map (UMAP's transform)."""
        return self.reducer.transform(np.asarray(codes, dtype=np.float32))


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def cache_stem(run: Path, split: str, classes: tuple[str, ...], seed: int, neighbours: int, min_dist: float) -> Path:
    """The cache files' path without suffix; the key covers the bank's bytes and every setting."""
    key = hashlib.sha1(f"{_sha256(run / BANK_FILE)}|{split}|{','.join(classes)}|{seed}|{neighbours}|{min_dist}"
                       .encode()).hexdigest()[:12]
    return run / CACHE_FOLDER / f"umap-{split}-{key}"


def fit_or_load(run: Path, bank: LatentBank, split: str = "test", classes: str = "", seed: int = 0,
                neighbours: int = 15, min_dist: float = 0.1) -> Atlas:
    """The UMAP map of the bank's ``split`` codes of ``classes``, from the cache when it is there."""
    import joblib
    import umap

    if split not in bank.codes:
        raise ConfigError(f"--split must be one of {', '.join(bank.codes)}, got {split!r}")
    names = parse_classes(classes)
    wanted = [CIFAR10_CLASSES.index(n) for n in names]
    rows = np.flatnonzero(np.isin(bank.labels[split], wanted))
    if len(rows) <= neighbours:
        raise ConfigError(f"only {len(rows)} codes of {', '.join(names)} in the {split} split; UMAP with "
                          f"--neighbours {neighbours} needs more (lower --neighbours or add classes)")
    stem = cache_stem(run, split, names, seed, neighbours, min_dist)
    began = time.monotonic()
    embedding_file, model_file = stem.with_suffix(".npz"), stem.with_suffix(".joblib")
    if embedding_file.exists() and model_file.exists():
        with np.load(embedding_file, allow_pickle=False) as saved:
            if str(saved["model_sha256"]) == _sha256(model_file) and np.array_equal(saved["rows"], rows):
                return Atlas(saved["embedding"], rows, bank.labels[split][rows], split, joblib.load(model_file),
                             True, time.monotonic() - began)
    reducer = umap.UMAP(n_neighbors=neighbours, min_dist=min_dist, random_state=seed, n_components=2,
                        n_jobs=1)  # a random_state makes UMAP single-threaded anyway; saying so avoids its warning
    embedding = reducer.fit_transform(bank.codes[split][rows]).astype(np.float32)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_file.with_name(model_file.name + ".tmp")
    joblib.dump(reducer, tmp_model)
    tmp_model.replace(model_file)
    tmp_embedding = stem.with_name(stem.name + ".tmp.npz")
    np.savez(tmp_embedding, embedding=embedding, rows=rows, model_sha256=np.array(_sha256(model_file)))
    tmp_embedding.replace(embedding_file)
    return Atlas(embedding, rows, bank.labels[split][rows], split, reducer, False, time.monotonic() - began)


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
        if ":" not in name or name.split(":")[0] not in OUTLINED or atlas.split != "test":
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
    ax.set_title(f"'{expression}' at strengths {', '.join(f'{s:g}' for s in strengths)}, projected with "
                 "UMAP's transform (a line per start code)", fontsize=10)
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


def build_atlas(run: str = "", data: str = "data", out: str = "", classes: str = "", split: str = "test",
                expression: str = "horse+wings", strengths: str | tuple = "0,0.5,1,1.5,2,3", path_codes: int = 24,
                seed: int = 0, neighbours: int = 15, min_dist: float = 0.1, cells: int = 40,
                cache_dir: str = "data/cache", quiet: bool = False) -> dict:
    """Fit (or reuse) the map of ``run`` and write every atlas figure; returns the atlas.json record."""
    say = (lambda *a: None) if quiet else (lambda *a: print("atlas:", *a, flush=True))
    run_dir = resolve_run(run)
    out_dir = Path(out) if out else Path("outputs/atlas") / run_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    strengths = [float(s) for s in (strengths.split(",") if isinstance(strengths, str) else strengths)]
    concepts = ensure_concepts(run_dir, data, cache_dir)
    bank = load_bank(run_dir)
    _, nets = load_run(run_dir)
    atlas = fit_or_load(run_dir, bank, split, classes, seed, neighbours, min_dist)
    say(f"{'reused the cached' if atlas.reused else 'fitted the'} map of {len(atlas.rows)} codes "
        f"in {atlas.seconds:.1f} s")
    codes = bank.codes[split][atlas.rows]
    record = {"run": str(run_dir), "split": split, "classes": list(parse_classes(classes)), "codes": len(atlas.rows),
              "seed": seed, "neighbours": neighbours, "min_dist": min_dist, "reused_cache": atlas.reused,
              "map_seconds": atlas.seconds}
    record["cluster_centres"] = plot_class_map(atlas, concepts, bank, out_dir / "class-map.png")
    save_single(mosaic(atlas, codes, nets, cells), out_dir / "mosaic.png")

    path, step = expression_codes(expression, concepts, bank, strengths, path_codes, seed)
    began = time.monotonic()
    positions = atlas.transform(path.reshape(-1, path.shape[-1])).reshape(len(strengths), path_codes, 2)
    record["transform_seconds"] = time.monotonic() - began
    plot_path(atlas, positions, strengths, expression, out_dir / "compose-path.png")
    record["path"] = {"expression": expression, "strengths": strengths,
                      "landing": {f"{s:g}": landing(atlas, positions[i]) for i, s in enumerate(strengths)}}
    wings = next((n for n in parse(expression, concepts.names) if n in concepts.directions), None)
    plot_direction(atlas, codes, concepts.directions[wings], positions, wings, out_dir / "wing-direction.png")
    rows = min(6, path_codes)
    with torch.no_grad():
        strip = decode_codes(nets, torch.from_numpy(path[:, :rows].transpose(1, 0, 2).reshape(-1, path.shape[-1])))
    save_grid(strip.cpu(), out_dir / "wing-strip.png", nrow=len(strengths), scale=3)
    (out_dir / "atlas.json").write_text(json.dumps(record, indent=1) + "\n")
    say(f"wrote {out_dir}/: class-map.png, mosaic.png, compose-path.png, wing-direction.png, wing-strip.png")
    return record


def main(run: str = "", data: str = "data", out: str = "", classes: str | tuple = "", split: str = "test",
         expression: str = "horse+wings", strengths: str | tuple = "0,0.5,1,1.5,2,3", path_codes: int = 24,
         seed: int = 0, neighbours: int = 15, min_dist: float = 0.1, cells: int = 40,
         cache_dir: str = "data/cache") -> None:
    """Write the latent atlas of RUN (default: the newest run) to outputs/atlas/<run>/."""
    if isinstance(classes, (tuple, list)):
        classes = ",".join(classes)
    try:
        build_atlas(run, data, out, classes, split, expression, strengths, path_codes, seed, neighbours, min_dist,
                    cells, cache_dir)
    except (RunError, DataNotFoundError, ConfigError, ExpressionError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    import fire

    fire.Fire(main)
