"""The release targets, measured on a trained run (the release run), each with its verdict.

Measures the run exactly as an ablation row (``bench/ablation.py``'s ``measure``: the whole test
split) and compares with the targets: reconstruction sharpness at least 0.8x that of real
images, reconstruction Frechet distance (evaluator features) at most 8, linear class probe on
codes at least 0.70 held out, wing direction at least 0.85 held-out balanced accuracy, PSNR at
least 24 dB (the PCA-128 floor of this data copy), and, when the folder holds a latent prior (a
shipped model does), its class samples guided at 2: mean evaluator P(that class) at least 0.7
(``--per_class`` of each class), printed beside the mean P(true class) the same evaluator gives the real test
images and their reconstructions (its label smoothing keeps even real images near 0.68). A target that was not
measured says so. Writes
``outputs/bench/release_targets.json``.

``--raw true`` measures a run trained with ``--ema`` on its raw (unaveraged) weights instead, read from
its training state (``bench/ablation.py``'s ``raw_weights_run``, into ``outputs/bench/<run>-raw``), and
writes ``outputs/bench/release_targets_raw.json``: the same trajectory without the average (Polyak &
Juditsky 1992). A shipped model keeps no training state, so pass its run folder.

Example: ``python bench/release_targets.py --run models/pegasus-cifar10 --data data``
(raw weights: ``python bench/release_targets.py --run outputs/runs/release-grid8 --data data --raw true``)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fire
from ablation import measure, raw_weights_run  # bench/ablation.py, beside this script
from prior_compare import guided_class_samples, true_class_probability  # bench/prior_compare.py, beside this script
from record import RECORDS, bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.data import load_cifar10
from latent_ops.trained_prior import PRIOR_FOLDER

# name: (value of a measured row, target, True when higher is better)
TARGETS = {
    "sharpness / real": (lambda r: r["recon_sharpness"] / r["real_sharpness"], 0.8, True),
    "reconstruction Frechet": (lambda r: r["recon_frechet"], 8.0, False),
    "probe accuracy": (lambda r: r["probe_accuracy"], 0.70, True),
    "wing accuracy": (lambda r: r["wing_accuracy"], 0.85, True),
    "PSNR dB": (lambda r: r["psnr_db"], 24.0, True),
    "guided prior P(class)": (lambda r: r.get("prior_p_class_mean"), 0.7, True),
}


def verdicts(row: dict) -> dict[str, dict]:
    """Each target's measured value, the target, whether it is met and by how much it is missed."""
    out = {}
    for name, (value_of, target, higher) in TARGETS.items():
        value = value_of(row)
        if value is None:
            out[name] = {"value": None, "target": target, "met": False, "missed_by": None}
            continue
        met = value >= target if higher else value <= target
        out[name] = {"value": value, "target": target, "met": met, "missed_by": 0.0 if met else abs(value - target)}
    return out


@dataclass
class ReleaseTargetsConfig:
    run: str = ""  # the run (or shipped model) folder
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    seed: int = 0  # the seed of every draw
    per_class: int = 500  # guided prior samples per class, when the folder holds a prior
    raw: bool = False  # measure the run's raw (unaveraged) weights from its training state (a run with --ema)


def verdict_text(v: dict) -> str:
    if v["value"] is None:
        return "not measured (no prior in the folder)"
    return "yes" if v["met"] else f"no, by {v['missed_by']:.3g}"


def run_release_targets(run: str, data: str, cache_dir: str, seed: int, per_class: int, raw: bool = False) -> None:
    """Measure RUN (or its raw weights) and print each target's verdict."""
    folder = Path(run)
    if raw:
        folder = raw_weights_run(folder, RECORDS / f"{folder.name}-raw")
    # its horse+wings batch goes under outputs/bench, never beside a shipped model in models/
    row = measure(folder, data, cache_dir, seed, compose_out=RECORDS / f"{folder.name}-compose")
    row["steps"] = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    if (folder / PRIOR_FOLDER).is_dir():
        classes, opened, judge = guided_class_samples(folder, data, cache_dir, per_class)
        row.update(prior_p_class_mean=classes["p_class_mean"], prior_p_class=classes["p_class"],
                   prior_frechet=classes["frechet"], prior_named_share=classes["named_share_mean"])
        test = load_cifar10(data, "test", opened.config.classes, cache_dir=cache_dir)
        row["p_true_class"] = true_class_probability(opened.nets, judge, test.images, test.labels)
    result = verdicts(row)
    print("| target | measured | goal | met |\n|---|---|---|---|")
    for name, v in result.items():
        goal = f"{'>=' if TARGETS[name][2] else '<='} {v['target']:g}"
        value = "-" if v["value"] is None else f"{v['value']:.4g}"
        print(f"| {name} | {value} | {goal} | {verdict_text(v)} |")
    if "p_true_class" in row:
        print(f"guided prior P(class) reads against the same evaluator's mean P(true class) of the test images: "
              f"{row['p_true_class']['real']:.3f} real, {row['p_true_class']['reconstructions']:.3f} reconstructed; "
              f"it names the guided class for {row['prior_named_share']:.3f} of the samples "
              f"({row['p_true_class']['real_named_share']:.3f} of real test images, "
              f"{row['p_true_class']['reconstructions_named_share']:.3f} reconstructed)")
    write_record("release_targets_raw" if raw else "release_targets",
                 {"run": run, "raw_weights": raw, "row": row, "targets": result}, RECORDS)


def main(**flags) -> None:
    """Measure RUN and print each target's verdict. Every field of ReleaseTargetsConfig is a flag."""
    bench_main(ReleaseTargetsConfig, flags, run_release_targets)


if __name__ == "__main__":
    fire.Fire(main)
