"""Compare latent priors of one run (e.g. the MLP and the conv net at equal training time) on what they make.

For each prior folder, with the same noise for every prior:

- **class samples**: ``--per_class`` codes of each CIFAR-10 class under guidance ``--guidance``,
  decoded; the Frechet distance of their evaluator features to the test split's, and the mean
  evaluator P(that class) (how recognisable a guided sample is);
- **regional**: an unselected batch of each of ``--expressions`` (regional conjunctions, drawn as
  compose draws them, with the subject-following placement), and the share with P(horse) >= 0.2
  and P(bird)+P(airplane) >= 0.2, and the mean of both; a grid of 64 per prior and expression is
  written for a look by eye.

The evaluator only measures here. Writes ``outputs/bench/prior_compare.json`` and the grids in
``outputs/bench/prior_compare/``.

Example: ``python bench/prior_compare.py --run models/pegasus-cifar10 --priors outputs/priors/conv,outputs/priors/mlp-equal --data data``
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import fire
import numpy as np
import torch
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.classifier import load_evaluator, load_perceptual
from autoencoder.data import load_cifar10, load_split, to_float
from autoencoder.grids import save_grid
from autoencoder.metrics import frechet_distance
from autoencoder.roundtrip import reconstruct
from autoencoder.run_folder import load_run
from latent_ops.encode import load_bank
from latent_ops.expression import parse
from latent_ops.flow import sample
from latent_ops.run_concepts import load_concepts
from latent_ops.sampling import DrawSettings, Sources, sample_expression
from latent_ops.trained_prior import load_prior

GRIDS = Path("outputs/bench/prior_compare")


def class_rows(prior, nets, judge, reference: torch.Tensor, per_class: int, guidance: float, steps: int) -> dict:
    """Frechet of all class samples against the test split, and the mean P(class) of each class's samples."""
    features, p_class, named = [], {}, {}
    for label, name in enumerate(CIFAR10_CLASSES):
        codes = sample(prior, per_class, [(label, guidance)], steps, torch.Generator().manual_seed(label))
        with torch.no_grad():
            images = nets.decoder(codes).float()
        features.append(judge.features(images))
        p = judge.probabilities(images)
        p_class[name] = p[:, label].mean().item()
        named[name] = (p.argmax(1) == label).float().mean().item()  # the evaluator's top class is the guided one
    return {"frechet": frechet_distance(torch.cat(features), reference), "p_class": p_class,
            "p_class_mean": float(np.mean(list(p_class.values()))), "named_share": named,
            "named_share_mean": float(np.mean(list(named.values())))}


def true_class_probability(nets, judge, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean evaluator P(true class) of real images (uint8 (N, 3, 32, 32), on the CPU like ``nets``) and of their
    reconstructions, and the share of each that the evaluator names right (``*_named_share``): what the guided
    prior's P(class) reads against. The evaluator trained with label smoothing 0.2, so even real test images
    score well below 1 (about 0.68), though it names 0.90 of them right."""
    out = {}
    rebuilt = reconstruct(nets, images, torch.device("cpu"), torch.float32)
    for name, pictures in (("real", images), ("reconstructions", rebuilt)):
        p = judge.probabilities(pictures)
        out[name] = p[torch.arange(len(p)), labels].mean().item()
        out[f"{name}_named_share"] = (p.argmax(1) == labels).float().mean().item()
    return out


def guided_class_samples(run: Path, data: str, cache_dir: str, per_class: int, guidance: float = 2.0,
                         steps: int = 24) -> tuple[dict, object, object]:
    """The class rows of the folder's own prior (never trained here), with the run opened on the CPU and the
    evaluator, which only measures: (class rows, opened run, evaluator)."""
    opened = load_run(run)
    opened.nets.float().cpu()
    judge = load_evaluator()
    reference = judge.features(to_float(load_cifar10(data, "test", opened.config.classes, cache_dir=cache_dir).images))
    return class_rows(load_prior(run), opened.nets, judge, reference, per_class, guidance, steps), opened, judge


def regional_row(expression: str, prior, nets, judge, sources: Sources, count: int, steps: int, grid: Path) -> dict:
    sources.prior = prior
    weights = parse(expression, sources.concepts.names)
    began = time.perf_counter()
    codes, _ = sample_expression(weights, sources, count, np.random.default_rng(0),
                                 DrawSettings("prior", guidance=1.0, prior_steps=steps))
    seconds = time.perf_counter() - began
    with torch.no_grad():
        images = nets.decoder(torch.from_numpy(codes)).float()
    p = judge.probabilities(images)
    horse = p[:, CIFAR10_CLASSES.index("horse")]
    wings = p[:, CIFAR10_CLASSES.index("bird")] + p[:, CIFAR10_CLASSES.index("airplane")]
    save_grid(images[:64], grid, nrow=8, scale=3)
    return {"share_both_at_least_0.2": ((horse >= 0.2) & (wings >= 0.2)).float().mean().item(),
            "p_horse": horse.mean().item(), "p_wings": wings.mean().item(), "count": count,
            "draw_seconds": seconds, "grid": str(grid)}


@dataclass
class PriorCompareConfig:
    run: str = "models/pegasus-cifar10"  # the run (or shipped model) folder
    priors: str = ""  # comma-separated prior folders to compare; empty: RUN/prior and its learned concepts
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    per_class: int = 500  # prior samples per class
    guidance: float = 2.0  # classifier-free guidance of the prior
    steps: int = 32  # steps per measurement
    count: int = 512  # samples drawn
    expressions: str = "2*horse&3*airplane@top;2*horse&3*airplane@back;2*horse&2*wings@back"  # ';'-separated expressions composed per prior


def run_prior_compare(run: str, priors: str, data: str, cache_dir: str, per_class: int, guidance: float, steps: int,
                      count: int, expressions: str) -> None:
    run = Path(run)
    folders = [Path(p) for p in str(priors).split(",") if p] or [run / "prior"]
    opened = load_run(run)
    run_config, nets = opened.config, opened.nets
    judge = load_evaluator()
    reference = judge.features(to_float(load_split(data, "test", cache_dir).images))
    sources = Sources(load_concepts(run), load_bank(run), None, run_config.code_shape,
                      nets.decoder, load_perceptual())
    GRIDS.mkdir(parents=True, exist_ok=True)
    record = {"run": str(run), "guidance": guidance, "steps": steps, "per_class": per_class, "priors": {}}
    for folder in folders:
        prior = load_prior(run, folder=folder)
        config = json.loads((folder / "config.json").read_text())
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        row = {"net": config.get("net", "mlp"), "train_seconds": metrics[-1].get("seconds"),
               "steps": metrics[-1]["step"], "held_out_loss": metrics[-1]["held_out_loss"],
               **class_rows(prior, nets, judge, reference, per_class, guidance, steps), "regional": {}}
        for i, expression in enumerate(e for e in expressions.split(";") if e):
            grid = GRIDS / f"{folder.name}-{i}.png"
            row["regional"][expression] = regional_row(expression, prior, nets, judge, sources, count, steps, grid)
        record["priors"][str(folder)] = row
        print(f"{folder}: {row['net']}, {row['steps']} steps in {row['train_seconds'] or 0:.0f} s, held-out loss "
              f"{row['held_out_loss']:.3f}; class samples Frechet {row['frechet']:.1f}, mean P(class) "
              f"{row['p_class_mean']:.3f}")
        for expression, r in row["regional"].items():
            print(f"  {expression}: {r['share_both_at_least_0.2']:.0%} with both >= 0.2 (P(horse) {r['p_horse']:.2f}, "
                  f"P(wings) {r['p_wings']:.2f}), {r['count']} drawn in {r['draw_seconds']:.1f} s -> {r['grid']}")
    print(f"wrote {write_record('prior_compare', record)}")


def main(**flags) -> None:
    """Run the prior compare bench. Every field of PriorCompareConfig is a flag."""
    bench_main(PriorCompareConfig, flags, run_prior_compare)


if __name__ == "__main__":
    fire.Fire(main)
