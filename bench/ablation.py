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

With ``--prior true`` (the default) each row also gets the prior's columns: a small conv prior
(``--prior_steps``, ``--prior_channels``, the same recipe for every row; an MLP on a flat code) is trained on the row's codes,
then ``--per_class`` samples of each class guided at 2 are scored by the evaluator (mean P(that class),
and the Frechet distance of all of them to the test split), and an unselected batch of 64 of
``--pegasus`` (the regional conjunction the learned ``pegasus`` concept is taught from) gives the
share with P(horse) >= 0.2 and P(bird)+P(airplane) >= 0.2, written as ``<recipe>-pegasus.png`` for
a count by eye. The evaluator only measures. Rows measured before without these columns get them.

``--raw`` names recipes trained with ``--ema`` whose raw (unaveraged) weights are measured as a row
of their own, ``<recipe>-raw``: the same trajectory without the average (the checkpoint keeps the
raw weights), which stands in for the recipe without ``--ema`` at the same step count.

``--correct`` names recipes with ``--ema`` trained before the average was bias-corrected (plain
``1 - d`` steps from the random initial weights W0): their average A after t steps is corrected
exactly, (A - d^t W0) / (1 - d^t), W0 rebuilt from the run's seed, and measured as
``<recipe>-corrected``; this is the average a run makes now.

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
import torch
from prior_compare import guided_class_samples, regional_row  # bench/prior_compare.py, beside this script
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder import metrics
from autoencoder.atomic import save_weights, write_json, write_text
from autoencoder.averaging import AVERAGED
from autoencoder.checkpoint import has_checkpoint, load_train_state, state_file
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.classifier import load_evaluator, load_perceptual
from autoencoder.config import load_train_config, make_config
from autoencoder.data import load_cifar10, to_float, to_uint8
from autoencoder.models import Networks, build_networks
from autoencoder.roundtrip import reconstruct
from autoencoder.run_folder import MODEL_FILE, load_run, load_run_config, load_weights, model_file, weights_metadata
from autoencoder.train import config_for, train
from latent_ops.compose import compose
from latent_ops.compose_files import IMAGES_FILE
from latent_ops.encode import load_bank
from latent_ops.prior import make_prior_config, train_prior
from latent_ops.run_concepts import ensure_concepts, load_concepts
from latent_ops.sampling import Sources
from latent_ops.trained_prior import load_prior

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


def measure(run: Path, data: str, cache_dir: str, seed: int = 0, compose_out: Path | None = None) -> dict:
    """Every column of the table for a finished run; its horse+wings batch goes to ``compose_out``
    (default: ``<run>-compose`` beside the run)."""
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
                     out=str(compose_out or run.parent / f"{run.name}-compose"), quiet=True)
    from safetensors.torch import load_file

    images = load_file(str(folder / IMAGES_FILE))["images"]
    recognised = metrics.recognisability(judge.probabilities(images), CIFAR10_CLASSES)
    row["recognisability_mean"] = recognised["combined"].mean().item()
    row["recognisability_share_over_half"] = (recognised["combined"] > 0.5).float().mean().item()
    speeds = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    row["images_per_s"] = statistics.median(speeds)
    return row


@dataclass
class AblationConfig:
    data: str = DATA_FOLDER  # CIFAR-10 folder
    minutes: float = 20.0  # wall time each recipe trains for, alone
    recipes: str = ",".join(RECIPES)  # comma-separated recipes to train, in order
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    folder: str = str(FOLDER)  # where the recipes' runs and table go
    seed: int = 0  # the seed of every draw
    preset: str = "cpu"  # the training preset measured
    raw: str = ""  # comma-separated recipes trained with --ema whose raw weights are also measured, as <recipe>-raw
    correct: str = ""  # comma-separated --ema recipes trained before the bias correction, measured as <recipe>-corrected
    prior: bool = True  # add the prior's columns (a small conv prior per row; module doc)
    prior_steps: int = 1000  # steps of each row's prior (about 4 min alone on an 8 x 8 code)
    prior_channels: int = 64  # channels of each row's conv prior
    per_class: int = 100  # guided prior samples per class
    pegasus: str = "2*horse&3*airplane@top"  # the regional conjunction drawn unselected for the Pegasus columns


DERIVED_MARKS = ("raw_of", "corrected_average_of")  # weights metadata of the rows made from another run


def clear_derived(out: Path) -> None:
    """Remove a derived row's folder left by an earlier (killed) call; refuse any other folder at that place."""
    if not out.exists():
        return
    if not any(mark in weights_metadata(out / MODEL_FILE) for mark in DERIVED_MARKS if (out / MODEL_FILE).exists()):
        raise SystemExit(f"error: {out} exists and was not made by the ablation from another run; "
                         f"move it away or pass another --folder")
    shutil.rmtree(out)


def raw_weights_run(run: Path, out: Path) -> Path:
    """A run folder holding ``run``'s raw (unaveraged) autoencoder weights, from its checkpoint's training state,
    with its critics and its metrics: the same trajectory without the moving average."""
    if not state_file(run).exists():
        raise SystemExit(f"error: {run} holds no training state (a checkpoint), so its raw weights cannot be read; "
                         f"pass the run folder it was trained in (a shipped model's ship.json names it)")
    state = load_train_state(state_file(run))
    raw = state.get("raw_autoencoder")
    if raw is None:
        raise SystemExit(f"error: {run} was not trained with --ema, so it has no raw weights to measure apart")
    config = json.loads((run / "config.json").read_text())
    nets = Networks(load_run_config(run).model)
    load_weights(nets, model_file(run))
    nets.load_state_dict({**nets.state_dict(), **raw})
    clear_derived(out)
    out.mkdir(parents=True)
    write_json({**config, "ema": 0.0, "out": str(out)}, out / "config.json")
    shutil.copyfile(run / "metrics.jsonl", out / "metrics.jsonl")
    save_weights(nets, out / MODEL_FILE, metadata={"step": str(state["step"]), "raw_of": str(run)})
    return out


def corrected_average_run(run: Path, out: Path) -> Path:
    """A run folder holding ``run``'s average without its share of the initial weights (module doc)."""
    state = load_train_state(state_file(run))
    if state.get("raw_autoencoder") is None:
        raise SystemExit(f"error: {run} was not trained with --ema, so it has no average to correct")
    config = load_train_config(run / "config.json")
    steps, decay = int(state["step"]), config.ema
    torch.manual_seed(config.seed)  # as training builds its networks
    initial = build_networks(config).state_dict()
    nets = Networks(load_run_config(run).model)
    load_weights(nets, model_file(run))
    left = decay ** steps  # the initial weights' share of the uncorrected average
    corrected = {name: (t - left * initial[name]) / (1 - left) for name, t in nets.state_dict().items()
                 if name.startswith(AVERAGED) and t.is_floating_point()}
    nets.load_state_dict({**nets.state_dict(), **corrected})
    clear_derived(out)
    out.mkdir(parents=True)
    write_json({**json.loads((run / "config.json").read_text()), "out": str(out)}, out / "config.json")
    shutil.copyfile(run / "metrics.jsonl", out / "metrics.jsonl")
    save_weights(nets, out / MODEL_FILE, metadata={"step": str(steps), "corrected_average_of": str(run)})
    return out


def prior_columns(run: Path, data: str, cache_dir: str, config: AblationConfig) -> dict:
    """The prior's columns of a row: guided class samples and an unselected regional Pegasus batch (module doc)."""
    folder = run / "prior"
    shutil.rmtree(folder, ignore_errors=True)  # the same small recipe on every row, never another's prior
    prior_config = make_prior_config(run=str(run), data=data, cache_dir=cache_dir, net="auto",
                                     channels=config.prior_channels, steps=config.prior_steps, mirror=False,
                                     seed=config.seed, log_every=max(1, config.prior_steps // 4),
                                     checkpoint_every=config.prior_steps)
    train_prior(prior_config, progress=False)
    trained = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][-1]
    classes, opened, judge = guided_class_samples(run, data, cache_dir, config.per_class)
    nets = opened.nets
    sources = Sources(load_concepts(run), load_bank(run), None, opened.config.code_shape, nets.decoder,
                      load_perceptual())
    grid = run.parent / f"{run.name}-pegasus.png"
    pegasus = regional_row(config.pegasus, load_prior(run), nets, judge, sources, 64, 24, grid)
    return {"prior_seconds": trained.get("seconds"), "prior_held_out_loss": trained["held_out_loss"],
            "prior_p_class_mean": classes["p_class_mean"], "prior_p_class": classes["p_class"],
            "prior_frechet": classes["frechet"], "pegasus_expression": config.pegasus,
            "pegasus_share": pegasus["share_both_at_least_0.2"], "pegasus_p_horse": pegasus["p_horse"],
            "pegasus_p_wings": pegasus["p_wings"], "pegasus_grid": str(grid)}


def cell(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if row.get(key) is not None else "-"


def table(rows: dict[str, dict]) -> str:
    head = ("| recipe | PSNR dB | recon. Frechet | sharpness (real) | probe acc. | wing acc. | horse+wings "
            "combined (share > 0.5) | prior P(class) | Pegasus share | images/s | steps |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in rows.items():
        lines.append(f"| {name} | {r['psnr_db']:.2f} | {r['recon_frechet']:.1f} | {r['recon_sharpness']:.4f} "
                     f"({r['real_sharpness']:.4f}) | {r['probe_accuracy']:.3f} | {r['wing_accuracy']:.3f} | "
                     f"{r['recognisability_mean']:.3f} ({r['recognisability_share_over_half']:.0%}) | "
                     f"{cell(r, 'prior_p_class_mean', '.3f')} | {cell(r, 'pegasus_share', '.0%')} | "
                     f"{r['images_per_s']:.0f} | {r['steps']} |")
    return head + "\n".join(lines) + "\n"


def train_row(name: str, run: Path, config: AblationConfig) -> None:
    """Train a recipe for ``config.minutes`` (timed first), or resume its unfinished run."""
    flags, data, cache_dir = recipe_flags(name), config.data, config.cache_dir
    if has_checkpoint(run):
        print(f"{name}: resuming {run}", flush=True)
        train(config_for(config.preset, True, {"out": str(run), "data": data, "cache_dir": cache_dir}),
              resume=True, progress=sys.stderr.isatty())
        return
    speed = images_per_second(config.preset, flags, data, cache_dir, run.parent / f".{name}-timing")
    steps = max(10, int(config.minutes * 60 * speed / make_config(config.preset).batch_size))
    print(f"{name}: {speed:.0f} images/s, so {steps} steps fill {config.minutes:g} minutes", flush=True)
    shutil.rmtree(run, ignore_errors=True)
    train_config = make_config(config.preset, steps=steps, seed=config.seed, data=data, cache_dir=cache_dir,
                               out=str(run), max_minutes=1.15 * config.minutes, sample_every=max(1, steps // 2),
                               **flags)
    train_config.schedule_steps = steps
    train(train_config, progress=sys.stderr.isatty())


def measured_row(name: str, run: Path, config: AblationConfig, flags: dict) -> dict:
    """The row of a trained run: measured now, or read from its record; the prior's columns added when missing."""
    record_file = run / "ablation.json"
    if record_file.exists():
        row = json.loads(record_file.read_text())
        print(f"{name}: measured before, {record_file}", flush=True)
    else:
        row = measure(run, config.data, config.cache_dir, config.seed)
        row.update(recipe=name, flags=flags, minutes=config.minutes,
                   steps=json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])
        write_json(row, record_file)
    if config.prior and row.get("prior_p_class_mean") is None:
        row.update(prior_columns(run, config.data, config.cache_dir, config))
        write_json(row, record_file)
    print(table({name: row}), flush=True)
    return row


def run_ablation(**fields) -> None:
    """Train (or resume) each recipe for ``minutes`` of wall time, measure it, and print the table."""
    config = AblationConfig(**fields)
    names = [n.strip() for n in str(config.recipes).split(",") if n.strip()]
    raw = {n.strip() for n in str(config.raw).split(",") if n.strip()}
    correct = {n.strip() for n in str(config.correct).split(",") if n.strip()}
    for flag, named in (("raw", raw), ("correct", correct)):
        unknown = sorted(named - set(names))
        if unknown:
            raise SystemExit(f"error: --{flag} names {unknown[0]!r}, which is not among --recipes")
    root = Path(config.folder)
    rows = {}
    for name in names:
        run = root / name
        if not (run / "ablation.json").exists():
            train_row(name, run, config)
        rows[name] = measured_row(name, run, config, recipe_flags(name))
        for suffix, make, flags in (("raw", raw_weights_run, {**recipe_flags(name), "ema": 0.0}),
                                    ("corrected", corrected_average_run, recipe_flags(name))):
            if name not in (raw if suffix == "raw" else correct):
                continue
            derived = root / f"{name}-{suffix}"
            if not (derived / "ablation.json").exists():
                make(run, derived)
            rows[derived.name] = measured_row(derived.name, derived, config, flags)
    text = table(rows)
    write_text(text, root / "table.md")
    print(text)
    write_record("ablation", {"minutes": config.minutes, "rows": rows}, root)


def main(**flags) -> None:
    """Train (or resume) each recipe for ``minutes`` of wall time, measure it, and print the table. Every field of
    AblationConfig is a flag."""
    bench_main(AblationConfig, flags, run_ablation)


if __name__ == "__main__":
    fire.Fire(main)
