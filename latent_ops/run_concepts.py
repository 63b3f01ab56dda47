"""A run's concept files: fitting them from its latent bank, writing them, reading them back, and the
command line. The fitting itself is pure (``latent_ops/concepts.py``).

Writes ``clusters.json``, ``directions.json`` and ``concepts.npz`` (no pickles; stamped with the
weights' digest, so concepts of other weights are refused as stale) and ``clusters/<class>.png``.
Every number read back is checked: a NaN or infinity in a file is refused where it enters.

Example: ``python -m latent_ops.run_concepts --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import replace_atomically, write_json
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.classifier import SHIPPED_PERCEPTUAL, load_perceptual
from autoencoder.cli import (
    ConfigError,
    check_ranges,
    check_writable,
    dataclass_from_flags,
    finite,
    lock_folder,
    run_cli,
    save_config,
)
from autoencoder.data import DataNotFoundError, ImageSet, load_split, select_classes
from autoencoder.grids import save_grid
from autoencoder.run_folder import RunError, load_run, weights_digest
from latent_ops.concepts import (
    DEFAULT_WING_METHOD,
    WHY_DEFAULT_WINGS,
    ClassProbe,
    Concepts,
    Direction,
    Gaussian,
    fit_concepts,
    source_concept,
    white_direction,
    whiteness_labels,
)
from latent_ops.encode import BANK_FILE, LatentBank, encode_images, encode_run, load_bank, read_stamped_npz
from latent_ops.runs import resolve_run
from latent_ops.shipped_folder import fix_for, is_shipped, refuse_remaking
from latent_ops.sources import source_masks

CLUSTERS_FILE = "clusters.json"
DIRECTIONS_FILE = "directions.json"
DENSITIES_FILE = "concepts.npz"
CONFIG_FILE = "concepts-config.json"  # in the run folder, whose config.json is the training's


@dataclass
class ConceptsConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs
    data: str = DATA_FOLDER  # CIFAR-10 folder (pixels for white, the sources and the cluster grids)
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    max_clusters: int = 6  # most clusters per class (BIC picks 2 to this many)
    cross_fraction: float = 0.9  # a direction's unit step moves this share of held-out negatives across
    seed: int = 0  # the seed of every fit
    only: str = ""  # "white": fit only what reads the subject's colour (the white direction, the horse:white source)
    # again, keeping every other concept; allowed on a shipped model, whose train codes are then encoded in memory


ONLY_CHOICES = ("", "white")
CONCEPTS_RANGES = {"max_clusters": (2, 64), "cross_fraction": (0.01, 0.999), "seed": (0, 2**31 - 1)}


def make_concepts_config(**flags) -> ConceptsConfig:
    config = dataclass_from_flags(ConceptsConfig, {}, flags)
    check_ranges(config, CONCEPTS_RANGES)
    if config.only not in ONLY_CHOICES:
        raise ConfigError(f"--only takes white (or nothing, for every concept), got {config.only!r}")
    return config


def finite_array(label: str, value: np.ndarray) -> np.ndarray:
    """``value`` when every number in it is finite; else a ConfigError naming ``label``."""
    if np.issubdtype(value.dtype, np.number) and not np.isfinite(value).all():
        raise ConfigError(f"{label} holds NaN or infinity")
    return value


def save_concepts(concepts: Concepts, record: dict, run: Path, digest: str = "") -> None:
    """concepts.npz, clusters.json and directions.json, each written atomically and stamped with ``digest``
    (the SHA-256 of the weights the codes came from)."""
    arrays = {"weights_digest": np.array(digest)}
    stored: dict[bytes, str] = {}  # a Gaussian shared by several concepts is written once
    for name, mixture in concepts.densities.items():
        for k, (w, g) in enumerate(mixture):
            key = f"density/{name}/{k}"
            arrays[f"{key}/weight"] = np.array(w)
            # a class's mixture component and its named cluster (horse:0) are the same Gaussian
            seen = hashlib.sha256(np.ascontiguousarray(g.mean).tobytes() + np.ascontiguousarray(g.chol).tobytes()).digest()
            if seen in stored:
                arrays[f"{key}/same_as"] = np.array(stored[seen])
                continue
            stored[seen] = key
            arrays[f"{key}/mean"] = g.mean
            arrays[f"{key}/chol"] = g.chol.astype(np.float32)  # float32 halves the file (shipped models are capped)
    for name, d in concepts.directions.items():
        arrays[f"direction/{name}"] = d.vector
    for name, positions in concepts.sources.items():
        arrays[f"source/{name}"] = positions
    if concepts.probe is not None:
        arrays.update({"probe/coef": concepts.probe.coef, "probe/intercept": concepts.probe.intercept,
                       "probe/labels": concepts.probe.labels,
                       "probe/held_out_accuracy": np.array(concepts.probe.held_out_accuracy)})
    write_json({"weights_digest": digest, **record}, run / CLUSTERS_FILE)
    directions = {name: d.summary() for name, d in concepts.directions.items()}
    directions["_default_wings"] = {"method": DEFAULT_WING_METHOD, "why": WHY_DEFAULT_WINGS,
                                    "horse_edit_probe": concepts.horse_edit_probe}
    directions["_weights_digest"] = digest
    write_json(directions, run / DIRECTIONS_FILE)
    replace_atomically(lambda tmp: np.savez_compressed(tmp, **arrays), run / DENSITIES_FILE)  # last: marks completion


def stored_gaussian(parts: dict[str, dict[int, dict[str, np.ndarray]]], component: dict[str, np.ndarray]) -> Gaussian:
    """The Gaussian of a stored mixture component, following ``same_as`` to the one it shares (in float64)."""
    if "same_as" in component:
        _, name, k = str(component["same_as"]).split("/")
        component = parts[name][int(k)]
    return Gaussian(component["mean"].astype(np.float64), component["chol"].astype(np.float64))


def load_concepts(run: Path) -> Concepts:
    """The concepts of a run; a missing, damaged or stale file is a RunError saying to refit them."""
    fix = fix_for(run, f"fit them again with python -m latent_ops.run_concepts --run {run} --data PATH")
    arrays = read_stamped_npz(run / DENSITIES_FILE, run, fix)
    try:
        summaries = json.loads((run / DIRECTIONS_FILE).read_text())
        if summaries.get("_weights_digest") != str(arrays["weights_digest"]):
            raise ValueError(f"{DIRECTIONS_FILE} and {DENSITIES_FILE} come from different fits")
        concepts = Concepts()
        parts: dict[str, dict[int, dict[str, np.ndarray]]] = {}
        for key, value in arrays.items():
            kind, *rest = key.split("/")
            if kind == "density":
                name, k, what = rest
                parts.setdefault(name, {}).setdefault(int(k), {})[what] = (
                    value if what == "same_as" else finite_array(f"{run / DENSITIES_FILE}: {key}", value))
            elif kind == "source":
                concepts.sources[rest[0]] = value.astype(np.int64)
            elif kind == "direction":
                s = summaries[rest[0]]
                where = f"{run / DIRECTIONS_FILE}: {rest[0]}"
                concepts.directions[rest[0]] = Direction(
                    finite_array(f"{run / DENSITIES_FILE}: direction/{rest[0]}", value),
                    finite(f"{where} offset", s["offset"]), finite(f"{where} step", s["step"]), s["method"],
                    s["held_out_accuracy"], s["train_accuracy"], s["note"])
        concepts.horse_edit_probe = summaries.get("_default_wings", {}).get("horse_edit_probe", {})
        if "probe/coef" in arrays:
            concepts.probe = ClassProbe(arrays["probe/coef"], arrays["probe/intercept"], arrays["probe/labels"],
                                        float(arrays["probe/held_out_accuracy"]))
        for name, comps in parts.items():
            concepts.densities[name] = [(float(c["weight"]), stored_gaussian(parts, c))
                                        for _, c in sorted(comps.items())]
    except ConfigError as error:
        raise RunError(f"{error}; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise RunError(f"{run / DENSITIES_FILE} or {run / DIRECTIONS_FILE} is damaged "
                       f"({type(error).__name__}: {str(error)[:80]}); {fix}") from None
    return concepts


def write_cluster_grids(record: dict, train_images: torch.Tensor, folder: Path, per_row: int = 12) -> list[Path]:
    """One PNG per class: a row per cluster of its most typical members (real train images)."""
    files = []
    for name, entry in record.items():
        if name.startswith("_") or not isinstance(entry, dict):
            continue
        rows = []
        for cluster in entry["clusters"]:
            index = torch.tensor(cluster["typical_train_indices"][:per_row])
            index = index[torch.arange(per_row) % len(index)]
            rows.append(train_images[index])
        images = torch.cat(rows).float() / 127.5 - 1
        files.append(save_grid(images, folder / f"{name}.png", nrow=per_row, scale=2))
    return files


def picture_labels(bank: LatentBank, train_images: torch.Tensor, test_images: torch.Tensor
                   ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """What the pictures of the bank's codes show, from one pass of the perceptual classifier (never the evaluator)
    over each split (the whole splits' uint8 images): the named sources' (train, test) masks and the pale-subject
    (train, test) labels of ``white``."""
    perceptual = load_perceptual(SHIPPED_PERCEPTUAL).eval()
    train_masks, train_colours = source_masks(train_images[bank.indices["train"]], bank.labels["train"], perceptual)
    test_masks, test_colours = source_masks(test_images[bank.indices["test"]], bank.labels["test"], perceptual)
    sources = {name: (train_masks[name], test_masks[name]) for name in train_masks}
    return sources, (whiteness_labels(*train_colours), whiteness_labels(*test_colours))


def fit_run_concepts(run: Path, data: str, cache_dir: str = CACHE_FOLDER, max_clusters: int = 6,
                     cross_fraction: float = 0.9, seed: int = 0) -> Concepts:
    """Fit, save and return the concepts of a run from its latent bank (pixels for ``white`` and grids)."""
    bank = load_bank(run)
    if not len(bank.codes["train"]):
        raise RunError(f"{run / BANK_FILE} holds no train codes (a shipped model keeps only the test split), and "
                       f"concepts are fitted on train codes: restore {run}'s concept files, or fit them on the "
                       f"trained run and ship it again")
    train_images = load_split(data, "train", cache_dir).images
    sources, (white_train, white_test) = picture_labels(bank, train_images, load_split(data, "test", cache_dir).images)
    concepts, record = fit_concepts(bank, white_train, white_test, max_clusters, cross_fraction, seed, sources)
    save_concepts(concepts, record, run, weights_digest(run))
    write_cluster_grids(record, train_images, run / "clusters")
    write_source_grid(record["_sources"], train_images, run / "clusters" / "sources.png")
    return concepts


def bank_with_train_codes(run: Path, bank: LatentBank, train_split: ImageSet) -> LatentBank:
    """The bank, with the train split (``train_split``, the whole of it; the run's classes are taken) encoded in
    memory by the run's encoder when it holds none (a shipped model)."""
    if len(bank.codes["train"]):
        return bank
    opened = load_run(run)
    train = select_classes(train_split, opened.config.classes)
    codes = encode_images(opened.nets.encoder, train.images, opened.device, opened.dtype, progress=False)
    return LatentBank({**bank.codes, "train": codes}, {**bank.labels, "train": train.labels.numpy()},
                      {**bank.indices, "train": train.indices.numpy()})


def refresh_white(run: Path, data: str, cache_dir: str = CACHE_FOLDER, cross_fraction: float = 0.9,
                  seed: int = 0) -> Concepts:
    """Fit the concepts that read a subject's colour again (``white``, ``horse:white``), keep the rest, and save.

    The run's weights are unchanged, so its digest stamps the files as before; a shipped model's train codes,
    which it does not keep, are encoded in memory (about a minute on 2 CPU cores)."""
    concepts = load_concepts(run)
    record = json.loads((run / CLUSTERS_FILE).read_text())
    record.pop("weights_digest", None)
    train_split = load_split(data, "train", cache_dir)
    train_images = train_split.images
    bank = bank_with_train_codes(run, load_bank(run), train_split)
    sources, (white_train, white_test) = picture_labels(bank, train_images, load_split(data, "test", cache_dir).images)
    white = white_direction(bank, white_train, white_test,
                            concepts.directions["wings"].vector if "wings" in concepts.directions else None,
                            cross_fraction, seed)
    if white is not None:
        concepts.directions["white"] = white
    fitted = source_concept(bank, *sources["horse:white"])
    if fitted is not None:
        concepts.densities["horse:white"], concepts.sources["horse:white"], entry = fitted
        record.setdefault("_sources", {})["horse:white"] = entry
    save_concepts(concepts, record, run, weights_digest(run))
    write_source_grid(record["_sources"], train_images, run / "clusters" / "sources.png")
    return concepts


def write_source_grid(sources: dict, train_images: torch.Tensor, file: Path, per_row: int = 12) -> Path | None:
    """A row per named source of its most typical members (real train images)."""
    rows = []
    for entry in sources.values():
        index = torch.tensor(entry["typical_train_indices"][:per_row])
        rows.append(train_images[index[torch.arange(per_row) % len(index)]])
    return save_grid(torch.cat(rows).float() / 127.5 - 1, file, nrow=per_row, scale=2) if rows else None


def ensure_concepts(run: Path, data: str, cache_dir: str) -> Concepts:
    """The run's concepts; the data set is encoded and the concepts fitted again when either is
    missing, damaged or was made from other weights than the run's current ones."""
    def why(file: Path, problem: RunError) -> str:
        return "(once)" if not file.exists() else f"again: {problem}"

    try:
        return load_concepts(run)
    except RunError as problem:
        if is_shipped(run):  # its bank holds test codes only, and refitting would rewrite what was shipped
            raise
        try:
            try:
                load_bank(run)
            except RunError as bank_problem:
                print(f"concepts: encoding the data set into {run / BANK_FILE} {why(run / BANK_FILE, bank_problem)}")
                encode_run(run, data, cache_dir)
            print(f"concepts: fitting clusters and directions of {run} {why(run / DENSITIES_FILE, problem)}")
            return fit_run_concepts(run, data, cache_dir)
        except DataNotFoundError:  # say what is wrong with the run, not only that the data is missing
            raise RunError(f"{problem}. Fitting them again needs CIFAR-10, and --data {data} has none: pass --data "
                           f"with CIFAR-10, or restore {run}'s concept files") from None


def print_concepts(run_dir: Path, concepts: Concepts, only: str = "") -> None:
    record = json.loads((run_dir / CLUSTERS_FILE).read_text())
    for name, entry in record.items():
        if name.startswith("_") or not isinstance(entry, dict):
            continue
        sizes = ", ".join(str(c["size"]) for c in entry["clusters"])
        print(f"{name:10s} {entry['bic_search']['chosen']} clusters by BIC (sizes {sizes})")
    if concepts.probe is not None:
        print(f"class probe (logistic regression on codes): held-out accuracy {concepts.probe.held_out_accuracy:.3f}")
    for name, d in concepts.directions.items():
        print(f"{name:15s} held-out balanced accuracy {d.held_out_accuracy:.3f} (train {d.train_accuracy:.3f}), "
              f"unit step {d.step:.2f}: {d.note}")
    grids = f"{run_dir / 'clusters' / 'sources.png'}" if only else f"{run_dir / 'clusters'}/<class>.png"
    print(f"wrote {run_dir / CLUSTERS_FILE}, {run_dir / DIRECTIONS_FILE}, {run_dir / DENSITIES_FILE}, {grids}"
          + (f" (only {only} fitted again)" if only else ""))


def run_concepts(config: ConceptsConfig) -> tuple[Path, Concepts]:
    """Fit the run's concepts; the config is saved beside them as ``concepts-config.json``."""
    run_dir = resolve_run(config.run)
    if config.only == "white":
        check_writable(run_dir)
        lock_folder(run_dir / "clusters")
        return run_dir, refresh_white(run_dir, config.data, config.cache_dir, config.cross_fraction, config.seed)
    refuse_remaking(run_dir, "fitting its concepts again")
    check_writable(run_dir)
    lock_folder(run_dir / "clusters")
    try:
        load_bank(run_dir)
    except RunError as problem:
        print(f"concepts: encoding the data set into {run_dir / BANK_FILE} first ({problem})")
        encode_run(run_dir, config.data, config.cache_dir)
    concepts = fit_run_concepts(run_dir, config.data, config.cache_dir, config.max_clusters, config.cross_fraction,
                                config.seed)
    save_config(config, run_dir / CONFIG_FILE)
    return run_dir, concepts


def main(**flags) -> None:
    """Fit clusters and directions of a run (default: the newest) and print what was found.

    Every field of ConceptsConfig is a flag: --run, --data, --max_clusters, --cross_fraction, --seed, --only
    (``--only white`` fits the white direction and the horse:white source again, a shipped model's included).
    """
    config = run_cli(lambda: make_concepts_config(**flags))
    run_dir, concepts = run_cli(lambda: run_concepts(config))
    print_concepts(run_dir, concepts, config.only)


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
