"""The ablation of the training recipes: each recipe trained for the same wall time, then measured alike.

Recipes build on each other: the `cpu` preset's recipe (``baseline``), then each change
added to the one before (a perceptual term, a hinge critic with adaptive weight and its own
width, a spatial code, a class head); ``critic-features`` is the baseline with the perceptual
term matched in the image critic's features instead of the perceptual net's; ``no-hinge`` is
``classes`` without the hinge critic (the spatial code and class head on the perceptual recipe). Each recipe is first timed for a few steps, so that
its run gets the steps that fill ``--minutes`` (its cosine schedule then ends on time), and
``--max_minutes`` guards the budget. A finished recipe is skipped and an unfinished one
resumed, so the table can be built over several sittings. Run it alone: the runs are
compared at equal CPU time.

For every recipe it writes ``outputs/ablation/<recipe>/ablation.json`` and the table
``outputs/ablation/table.md`` with: held-out PSNR (the whole test split), reconstruction
Frechet distance and sharpness (evaluator features and Laplacian variance, with the real
images' sharpness beside), the linear class probe's and the wing direction's held-out
accuracy, ``horse+wings`` recognisability over a batch of 64 (the evaluator's combined
score, batch mean and share above 0.5), and training images per second.

Example: ``python bench/ablation.py --data data --minutes 20 --recipes baseline,perceptual``
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder import metrics
from autoencoder.atomic import write_json, write_text
from autoencoder.checkpoint import has_checkpoint
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.classifier import load_evaluator
from autoencoder.config import make_config
from autoencoder.data import load_cifar10, to_float, to_uint8
from autoencoder.evaluate import reconstruct
from autoencoder.run_folder import load_run
from autoencoder.train import train
from latent_ops.compose import compose
from latent_ops.compose_files import IMAGES_FILE
from latent_ops.run_concepts import ensure_concepts

# Each recipe adds its own flags to those of the recipe it builds on. ``critic-features`` is the
# other answer to the perceptual term's question: the image critic's own features instead of a
# second classifier's (Larsen et al. 2016), on the same baseline.
RECIPES: dict[str, tuple[str | None, dict]] = {
    "baseline": (None, {}),
    "perceptual": ("baseline", {"perceptual_weight": 1.0}),
    "critic-features": ("baseline", {"perceptual_weight": 1.0, "perceptual_source": "critic"}),
    "hinge": ("perceptual", {"gan_loss": "hinge", "adaptive_image_weight": True, "image_weight": 0.1,
                             "image_critic_width": 32}),
    "spatial": ("hinge", {"spatial_channels": 8, "latent_dim": 128}),
    "classes": ("spatial", {"class_weight": 0.1}),
    "no-hinge": ("perceptual", {"spatial_channels": 8, "latent_dim": 128, "class_weight": 0.1}),  # the shipped one
    # the finer grid and what it may need: a 4 x 8 x 8 code, a wider residual autoencoder, the adaptive image
    # weight with a wider critic, and the moving average of the autoencoder's weights
    "grid8": ("no-hinge", {"spatial_channels": 4, "latent_dim": 256, "code_grid": 8}),
    "grid8-wide": ("grid8", {"width": 64, "res_blocks": 1}),
    "grid8-adaptive": ("grid8-wide", {"adaptive_image_weight": True, "image_weight": 0.1, "image_critic_width": 32}),
    "grid8-ema": ("grid8-adaptive", {"ema": 0.999}),
}
FOLDER = Path("outputs/ablation")


def recipe_flags(name: str) -> dict:
    """The flags of a recipe: its own over those of every recipe it builds on."""
    if name not in RECIPES:
        raise SystemExit(f"error: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    base, own = RECIPES[name]
    return {**(recipe_flags(base) if base else {}), **own}


def images_per_second(preset: str, flags: dict, data: str, cache_dir: str, out: Path, steps: int = 30) -> float:
    """Training speed of a recipe, from a short throwaway run."""
    shutil.rmtree(out, ignore_errors=True)
    run = train(make_config(preset, steps=steps, log_every=steps, sample_every=10 ** 6, checkpoint_every=10 ** 6,
                            eval_images=16, data=data, cache_dir=cache_dir, out=str(out), **flags), progress=False)
    speed = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]
    shutil.rmtree(out, ignore_errors=True)
    return speed


def measure(run: Path, data: str, cache_dir: str, seed: int = 0) -> dict:
    """Every column of the table for a finished run."""
    opened = load_run(run)
    config, nets, device, dtype = opened.config, opened.nets, opened.device, opened.dtype
    test = load_cifar10(data, "test", config.classes, cache_dir=cache_dir)
    judge = load_evaluator(device=device.type)
    rec = reconstruct(nets, test.images, device, dtype)
    row = {"psnr_db": metrics.reconstruction(test.images, rec)["psnr_db"]}
    rec_uint8 = to_uint8(rec)
    row["recon_frechet"] = metrics.frechet_distance(judge.features(rec_uint8), judge.features(test.images))
    row["recon_sharpness"] = metrics.laplacian_variance(to_float(rec_uint8)).mean().item()
    row["real_sharpness"] = metrics.laplacian_variance(to_float(test.images)).mean().item()
    concepts = ensure_concepts(run, data, cache_dir)
    row["probe_accuracy"] = concepts.probe.held_out_accuracy if concepts.probe is not None else None
    row["wing_accuracy"] = concepts.directions["wings"].held_out_accuracy if "wings" in concepts.directions else None
    folder = compose("horse+wings", run=str(run), data=data, cache_dir=cache_dir, n=64, seed=seed,
                     out=str(run.parent / f"{run.name}-compose"), quiet=True)
    from safetensors.torch import load_file

    images = load_file(str(folder / IMAGES_FILE))["images"]
    recognised = metrics.recognisability(judge.probabilities(images), CIFAR10_CLASSES)
    row["recognisability_mean"] = recognised["combined"].mean().item()
    row["recognisability_share_over_half"] = (recognised["combined"] > 0.5).float().mean().item()
    speeds = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    row["images_per_s"] = statistics.median(speeds)
    return row


def table(rows: dict[str, dict]) -> str:
    head = ("| recipe | PSNR dB | recon. Frechet | sharpness (real) | probe acc. | wing acc. | horse+wings "
            "combined (share > 0.5) | images/s | steps |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in rows.items():
        lines.append(f"| {name} | {r['psnr_db']:.2f} | {r['recon_frechet']:.1f} | {r['recon_sharpness']:.4f} "
                     f"({r['real_sharpness']:.4f}) | {r['probe_accuracy']:.3f} | {r['wing_accuracy']:.3f} | "
                     f"{r['recognisability_mean']:.3f} ({r['recognisability_share_over_half']:.0%}) | "
                     f"{r['images_per_s']:.0f} | {r['steps']} |")
    return head + "\n".join(lines) + "\n"


@dataclass
class AblationConfig:
    data: str = DATA_FOLDER  # CIFAR-10 folder
    minutes: float = 20.0  # wall time each recipe trains for, alone
    recipes: str = ",".join(RECIPES)  # comma-separated recipes to train, in order
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    folder: str = str(FOLDER)  # where the recipes' runs and table go
    seed: int = 0  # the seed of every draw
    preset: str = "cpu"  # the training preset measured


def run_ablation(data: str, minutes: float, recipes: str, cache_dir: str, folder: str, seed: int, preset: str) -> None:
    """Train (or resume) each recipe for ``minutes`` of wall time, measure it, and print the table."""
    names = [n.strip() for n in (recipes.split(",") if isinstance(recipes, str) else recipes) if n.strip()]
    root = Path(folder)
    rows = {}
    for name in names:
        flags = recipe_flags(name)
        run = root / name
        record_file = run / "ablation.json"
        if record_file.exists():
            rows[name] = json.loads(record_file.read_text())
            print(f"{name}: measured before, {record_file}", flush=True)
            continue
        if not has_checkpoint(run):
            speed = images_per_second(preset, flags, data, cache_dir, root / f".{name}-timing")
            batch = make_config(preset).batch_size
            steps = max(10, int(minutes * 60 * speed / batch))
            print(f"{name}: {speed:.0f} images/s, so {steps} steps fill {minutes:g} minutes", flush=True)
            shutil.rmtree(run, ignore_errors=True)
            config = make_config(preset, steps=steps, seed=seed, data=data, cache_dir=cache_dir, out=str(run),
                                 max_minutes=1.15 * minutes, sample_every=max(1, steps // 2), **flags)
            config.schedule_steps = steps
            train(config, progress=sys.stderr.isatty())
        else:
            print(f"{name}: resuming {run}", flush=True)
            from autoencoder.train import config_for

            train(config_for(preset, True, dict(out=str(run), data=data, cache_dir=cache_dir)), resume=True,
                  progress=sys.stderr.isatty())
        row = measure(run, data, cache_dir, seed)
        row.update(recipe=name, flags=flags, minutes=minutes,
                   steps=json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])
        write_json(row, record_file)
        rows[name] = row
        print(table({name: row}), flush=True)
    text = table(rows)
    write_text(text, root / "table.md")
    print(text)
    write_record("ablation", {"minutes": minutes, "rows": rows}, root)


def main(**flags) -> None:
    """Train (or resume) each recipe for ``minutes`` of wall time, measure it, and print the table. Every field of
    AblationConfig is a flag."""
    bench_main(AblationConfig, flags, run_ablation)


if __name__ == "__main__":
    fire.Fire(main)
