"""Measure a learned concept against the pool it was learned from, and check that it does not copy.

For the run's learned concept NAME (``latent_ops.learn``), with the evaluator (which measures only):

- **pool**: ``--count`` unselected candidates of the expression it was learned from, drawn as
  ``learn`` drew them (same guidance and steps, another seed); the share with P(horse) >= 0.2 and
  P(bird)+P(airplane) >= 0.2 (the terms of the expression's classes and wings), and the means;
- **label**: ``--count`` unselected samples of the learned label at guidance ``--guidance``; the same;
- **not copies**: the distance of each label sample to its nearest accepted code, against the
  distance of each accepted code to its nearest *other* accepted code (in code space, RMS per number).
  Samples that copied the accepted codes would sit far nearer to them than they sit to each other.

Writes ``outputs/bench/learned_concept.json`` and ``outputs/bench/learned_concept-{pool,label}.png``.

Example: ``python bench/learned_concept.py --run models/pegasus-cifar10 --name pegasus``
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fire
import numpy as np
import torch
from record import RECORDS, bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import load_evaluator, load_perceptual
from autoencoder.grids import save_grid
from autoencoder.run_folder import load_run
from latent_ops.encode import load_bank
from latent_ops.expression import parse
from latent_ops.flow import sample
from latent_ops.learn import ACCEPTED_FILE
from latent_ops.run_concepts import load_concepts
from latent_ops.sampling import DrawSettings, Sources, sample_expression
from latent_ops.trained_prior import learned_folder, load_learned, load_prior


def shares(images: torch.Tensor, judge) -> dict[str, float]:
    p = judge.probabilities(images)
    horse = p[:, CIFAR10_CLASSES.index("horse")]
    wings = p[:, CIFAR10_CLASSES.index("bird")] + p[:, CIFAR10_CLASSES.index("airplane")]
    return {"share_both_at_least_0.2": ((horse >= 0.2) & (wings >= 0.2)).float().mean().item(),
            "p_horse": horse.mean().item(), "p_wings": wings.mean().item()}


def nearest_rms(a: torch.Tensor, b: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """(len(a),) RMS-per-number distance of each row of a to its nearest row of b."""
    d = torch.cdist(a, b) / a.shape[1] ** 0.5
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values


@dataclass
class LearnedConceptConfig:
    run: str = "models/pegasus-cifar10"  # the run (or shipped model) folder
    name: str = "pegasus"  # the learned concept
    count: int = 1024  # samples drawn
    guidance: float = 3.0  # classifier-free guidance of the prior
    seed: int = 1  # the seed of every draw


def run_learned_concept(run: str, name: str, count: int, guidance: float, seed: int) -> None:
    run = Path(run)
    folder = learned_folder(run, name)
    learned_config = json.loads((folder / "config.json").read_text())
    opened = load_run(run)
    run_config, nets = opened.config, opened.nets
    judge = load_evaluator()
    sources = Sources(load_concepts(run), load_bank(run), load_prior(run), run_config.code_shape,
                      nets.decoder, load_perceptual())
    settings = DrawSettings("prior", guidance=learned_config["guidance"], prior_steps=learned_config["prior_steps"])
    pool_codes, _ = sample_expression(parse(learned_config["expression"], sources.concepts.names), sources, count,
                                      np.random.default_rng(seed), settings)
    net = load_learned(run, name)
    label_codes = sample(net, count, [(net.label_names.index(name), guidance)], learned_config["prior_steps"],
                         torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pool_images = nets.decoder(torch.from_numpy(pool_codes)).float()
        label_images = nets.decoder(label_codes).float()
    with np.load(folder / ACCEPTED_FILE, allow_pickle=False) as saved:
        accepted = torch.from_numpy(saved["codes"].astype(np.float32))
    to_accepted = nearest_rms(label_codes, accepted)
    among_accepted = nearest_rms(accepted, accepted, exclude_self=True)
    record = {"run": str(run), "name": name, "expression": learned_config["expression"], "count": count,
              "guidance": guidance, "pool": shares(pool_images, judge), "label": shares(label_images, judge),
              "accepted": len(accepted),
              "label_to_nearest_accepted_median": to_accepted.median().item(),
              "accepted_to_nearest_other_accepted_median": among_accepted.median().item(),
              "label_samples_nearer_than_1_percent_of_accepted_pairs":
                  (to_accepted < torch.quantile(among_accepted, 0.01)).float().mean().item()}
    save_grid(pool_images[:64], RECORDS / "learned_concept-pool.png", nrow=8, scale=3)
    save_grid(label_images[:64], RECORDS / "learned_concept-label.png", nrow=8, scale=3)
    pool, label = record["pool"], record["label"]
    print(f"{name} from {record['expression']}: unselected pool {pool['share_both_at_least_0.2']:.0%} with both >= 0.2 "
          f"(P(horse) {pool['p_horse']:.2f}, P(wings) {pool['p_wings']:.2f}); the label's samples "
          f"{label['share_both_at_least_0.2']:.0%} (P(horse) {label['p_horse']:.2f}, P(wings) {label['p_wings']:.2f})")
    print(f"  copies? median distance of a sample to its nearest accepted code "
          f"{record['label_to_nearest_accepted_median']:.3f}, of an accepted code to its nearest other one "
          f"{record['accepted_to_nearest_other_accepted_median']:.3f}")
    print(f"wrote {write_record('learned_concept', record)}")


def main(**flags) -> None:
    """Run the learned concept bench. Every field of LearnedConceptConfig is a flag."""
    bench_main(LearnedConceptConfig, flags, run_learned_concept)


if __name__ == "__main__":
    fire.Fire(main)
