"""How high the evaluator reads a horse that is also winged: real pictures against composed ones.

The Pegasus targets ask for an image the evaluator calls a horse (P(horse) at least 0.6) and winged (P(bird) +
P(airplane) at least 0.25) at once. This bench counts, for each pair of bounds, how many real CIFAR-10 test pictures
reach them, and how many candidates of each compose output given (their recorded evaluator readings in
``scores.json``): whether a target is one that real pictures reach at all. It also gives the evaluator's reading of
real horses (label smoothing, Szegedy et al. 2016, keeps its probabilities off 1) and the highest P(horse) + P(bird) +
P(airplane) any real picture gets. The evaluator only measures here.

Writes ``outputs/bench/evaluator_reach.json``.

Example: ``python bench/evaluator_reach.py --composes outputs/compose/pegasus``
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fire
import torch
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError

HORSE = CIFAR10_CLASSES.index("horse")
WINGED = [CIFAR10_CLASSES.index(c) for c in ("bird", "airplane")]


@dataclass
class EvaluatorReachConfig:
    data: str = "data"  # CIFAR-10 (its test split is read)
    cache_dir: str = "data/cache"  # where the decoded split is cached
    horse_bounds: str = "0.3,0.4,0.5,0.6"  # bounds on P(horse), comma-separated
    wings_bounds: str = "0.2,0.25"  # bounds on P(bird)+P(airplane), comma-separated
    composes: str = ""  # compose output folders to count beside the real pictures, comma-separated


def bounds(text: str, flag: str) -> list[float]:
    """``"0.3,0.6"`` -> [0.3, 0.6]; anything that is not numbers between 0 and 1 is a ConfigError naming the flag."""
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v <= 1 for v in values):
        raise ConfigError(f"--{flag} must be numbers between 0 and 1, comma-separated (e.g. 0.3,0.6), got {text!r}")
    return values


def reach_counts(horse: torch.Tensor, wings: torch.Tensor, horse_bounds: list[float],
                 wings_bounds: list[float]) -> dict[str, int]:
    """How many of the readings (N,) reach each pair of bounds: {"horse>=H,wings>=W": count}."""
    return {f"horse>={h:g},wings>={w:g}": int(((horse >= h) & (wings >= w)).sum())
            for h in horse_bounds for w in wings_bounds}


def compose_readings(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluator's P(horse) and P(wings) of every candidate of a compose output (its ``scores.json``)."""
    try:
        candidates = json.loads((folder / "scores.json").read_text())["candidates"]
        terms = [c["intent_terms"] for c in candidates]
        horse = [next(v for k, v in t.items() if k.partition(":")[0] == "horse") for t in terms]
        wings = [t["wings"] for t in terms]
    except (OSError, ValueError, KeyError, StopIteration) as error:
        raise ConfigError(f"{folder} is not a compose output whose intent reads horse and wings ({error!r}); give "
                          f"folders that python -m latent_ops.compose wrote for a winged horse") from None
    return torch.tensor(horse), torch.tensor(wings)


def run_evaluator_reach(data: str, cache_dir: str, horse_bounds: str, wings_bounds: str, composes: str) -> None:
    from autoencoder.classifier import load_evaluator
    from autoencoder.data import load_split

    horse_at, wings_at = bounds(horse_bounds, "horse_bounds"), bounds(wings_bounds, "wings_bounds")
    folders = [Path(f.strip()) for f in str(composes).split(",") if f.strip()]
    read = {folder: compose_readings(folder) for folder in folders}  # bad folders refused before the slow part
    test = load_split(data, "test", cache_dir)
    judge = load_evaluator()
    with torch.inference_mode():
        p = torch.cat([judge.probabilities(chunk).float() for chunk in test.images.split(500)])
    labels = torch.as_tensor(test.labels)
    horse, wings = p[:, HORSE], p[:, WINGED].sum(1)
    real_horses = horse[labels == HORSE]
    record = {"real": {"count": len(p), "reach": reach_counts(horse, wings, horse_at, wings_at),
                       "horses_p_horse_mean": real_horses.mean().item(),
                       "horses_p_horse_median": real_horses.median().item(),
                       "horses_share_at_least_0.6": (real_horses >= 0.6).float().mean().item(),
                       "max_p_horse_plus_wings": (horse + wings).max().item()},
              "composes": {str(f): {"count": len(h), "reach": reach_counts(h, w, horse_at, wings_at),
                                    "max_p_horse_plus_wings": (h + w).max().item()} for f, (h, w) in read.items()}}
    real = record["real"]
    print(f"real test pictures ({real['count']}): horses read P(horse) {real['horses_p_horse_mean']:.3f} on average "
          f"({real['horses_share_at_least_0.6']:.0%} at least 0.6); the highest P(horse)+P(bird)+P(airplane) of any "
          f"is {real['max_p_horse_plus_wings']:.3f}")
    for pair, count in real["reach"].items():
        beside = ", ".join(f"{Path(f).name} {c['reach'][pair]} of {c['count']}" for f, c in record["composes"].items())
        print(f"  {pair}: real {count} of {real['count']}" + (f"; {beside}" if beside else ""))
    write_record("evaluator_reach", record)


def main(**flags) -> None:
    """Run the evaluator reach bench. Every field of EvaluatorReachConfig is a flag."""
    bench_main(EvaluatorReachConfig, flags, run_evaluator_reach)


if __name__ == "__main__":
    fire.Fire(main)
