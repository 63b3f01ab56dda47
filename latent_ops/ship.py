"""Ship a trained run as a self-contained model folder that compose uses without the data set.

``python -m latent_ops.ship --run outputs/runs/release --data data`` writes
``models/pegasus-cifar10/`` (``make model`` runs it): the run's ``config.json``, its weights
in fp16 (``model.safetensors``), and everything compose draws on, made from those fp16
weights so that every stamp matches: the concepts (clusters, directions, probe, named
sources), the latent prior (``prior/``, its checkpoints left out), and the latent bank cut to
the test split (fp16 codes: the sources compose draws from). ``data.json`` records the
SHA-256 of the CIFAR-10 images and labels it was made from, ``ship.json`` the timings, and
``MODEL_CARD.md`` is written from them with the measurements handed in (``--targets``, a
``bench/release_targets.py`` record; ``--card_notes``, a Markdown file of hand-written
sections).

The folder is built beside its destination and put in place whole; a killed ship resumes
(the prior from its checkpoint, the bank and concepts when their stamps still match).

``--prior_from MODEL`` takes the prior of another shipped model instead of training one, when the two
share every encoder weight (a decoder fine-tuned with ``--train_encoder false`` keeps every code, and so
the prior's training data): it is refused when they do not, or when the prior's steps, channels or data differ.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import is_temporary, replace_atomically, save_tensors, save_weights, write_json, write_text
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import CONFIG_FILE, ConfigError, claim_output, dataclass_from_flags, read_json, run_cli
from autoencoder.compute import machine_name
from autoencoder.data import DATA_FILE, SPLITS, data_checksums
from autoencoder.run_folder import (
    METRICS_FILE,
    RunError,
    load_run,
    load_run_config,
    model_file,
    read_tensors,
    weights_digest,
)
from latent_ops.encode import BANK_FILE, encode_run, load_bank
from latent_ops.prior import make_prior_config, train_prior
from latent_ops.run_concepts import fit_run_concepts, load_concepts
from latent_ops.runs import SHIPPED_MODEL
from latent_ops.shipped_folder import (
    CARD_FILE,
    LATER_NAMES,
    SHIP_FILE,
    SHIPPED_NAMES,
    SIZE_LIMIT,
    folder_bytes,
    is_shipped,
)
from latent_ops.trained_prior import PRIOR_FOLDER, SOURCE_FILE


@dataclass
class ShipConfig:
    run: str = "outputs/runs/release"  # the trained run to ship
    data: str = DATA_FOLDER  # CIFAR-10: encoded for the bank, concepts and prior
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    out: str = str(SHIPPED_MODEL)  # the model folder to write (replaced whole at the end)
    prior_steps: int = 5000  # steps of the latent prior (latent_ops.prior)
    prior_channels: int = 128  # channels of the conv prior on a spatial code (its cost grows with the grid's cells)
    prior_threads: int = 0  # CPU threads for the prior; 0 keeps torch's default
    targets: str = ""  # a bench/release_targets.py record (JSON) whose numbers go into the card; empty: none
    card_notes: str = ""  # a Markdown file appended to the card (hand-written sections); empty: none
    report: str = ""  # a latent_ops.report report.json of the shipped model whose metrics go into the card; empty: none
    prior_from: str = ""  # a shipped model with the same encoder (so the same codes) whose prior is taken as it is;
    #   empty: train the prior
    replace_learned: bool = False  # ship into a model folder that holds learned/ concepts and a compose.json recipe,
    #   which are deleted (they were made for the old weights); without it that is refused


def write_fp16_weights(run: Path, folder: Path) -> None:
    """The run's config and weights (floating tensors in fp16) into ``folder``."""
    nets = load_run(run, device="cpu").nets
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / CONFIG_FILE, folder / CONFIG_FILE)
    if (run / METRICS_FILE).exists():
        shutil.copy2(run / METRICS_FILE, folder / METRICS_FILE)
    save_weights(nets, model_file(folder), dtype=torch.float16,
                 metadata={"shipped_from": str(run), "source_weights_digest": weights_digest(run)})


ENCODER_PREFIX = "encoder."


def adopt_prior(source: Path, staging: Path, config: ShipConfig, data: dict[str, str]) -> None:
    """Copy ``source``'s prior into ``staging`` and stamp it with staging's weights; refused (RunError, nothing
    copied) unless both folders hold the same fp16 encoder weights, and so the same codes of the same data,
    and the prior has the steps and channels this ship was asked for."""
    fix = "ship without --prior_from to train the prior"
    if not is_shipped(source) or not (source / PRIOR_FOLDER / SOURCE_FILE).exists():
        raise RunError(f"--prior_from {source} is not a shipped model with a prior; {fix}")
    theirs = read_tensors(model_file(source), fix)
    ours = read_tensors(model_file(staging), "ship again")
    encoder = sorted(k for k in ours if k.startswith(ENCODER_PREFIX))
    if sorted(k for k in theirs if k.startswith(ENCODER_PREFIX)) != encoder \
            or any(not torch.equal(ours[k], theirs[k]) for k in encoder):
        raise RunError(f"--prior_from {source} has other encoder weights than {config.run}, so other codes; {fix}")
    if read_json(source / DATA_FILE, "shipped data record") != data:
        raise RunError(f"--prior_from {source} was made from other data than {config.data}; {fix}")
    prior_config = read_json(source / PRIOR_FOLDER / CONFIG_FILE, "prior config")
    asked = {"steps": config.prior_steps, "channels": config.prior_channels}
    if any(prior_config.get(k) != v for k, v in asked.items()):
        raise RunError(f"--prior_from {source} has a prior of {prior_config.get('steps')} steps and "
                       f"{prior_config.get('channels')} channels, not the {asked['steps']} and {asked['channels']} asked "
                       f"for; pass --prior_steps and --prior_channels to match, or {fix}")
    target = staging / PRIOR_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / PRIOR_FOLDER, target)
    stamp = json.loads((target / SOURCE_FILE).read_text())
    write_json({**stamp, "weights_digest": weights_digest(staging), "adopted_from": str(source)}, target / SOURCE_FILE)


def test_split_bank(folder: Path) -> None:
    """Cut the bank to the test split with fp16 codes (compressed); the train arrays stay, empty."""
    bank = load_bank(folder)
    arrays = {"weights_digest": np.array(weights_digest(folder))}
    for split in SPLITS:
        keep = split == "test"
        arrays[f"{split}_codes"] = (bank.codes[split] if keep else bank.codes[split][:0]).astype(np.float16)
        arrays[f"{split}_labels"] = bank.labels[split] if keep else bank.labels[split][:0]
        arrays[f"{split}_indices"] = bank.indices[split] if keep else bank.indices[split][:0]
    replace_atomically(lambda tmp: np.savez_compressed(tmp, **arrays), folder / BANK_FILE)


def slim_prior(folder: Path) -> None:
    """Sampling needs only the prior's weights (kept in fp16), config and source stamp: no checkpoints."""
    prior = folder / PRIOR_FOLDER
    shutil.rmtree(prior / "checkpoints", ignore_errors=True)
    (prior / "checkpoint.json").unlink(missing_ok=True)
    tensors = read_tensors(model_file(prior), "train the prior again")
    save_tensors({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, model_file(prior))


def metric_lines(file: Path) -> list[dict]:
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def report_lines(report: dict) -> list[str]:
    """The report's metrics with their real-data floors, as Markdown lines for the card."""
    rec, pca = report["reconstruction"], report.get("pca_floor") or {}
    lines = ["", f"The evaluation report (`python -m latent_ops.report --run {report['run']} --data data`; feature "
             "numbers in this project's own evaluator's features, not Inception's):", "",
             f"- Reconstruction of the 10,000 test images: PSNR {rec['psnr_db']:.2f} dB"
             + (f" (PCA with as many components, the linear floor: {pca['psnr_db']:.2f} dB)" if pca else "") + ".",
             "", "| images | Frechet | sharpness | NN train dist. (features) | diversity of 64 (features) |",
             "|---|---|---|---|---|"]
    rows = report["sets"] + [row for c in report.get("compositions", []) for row in c.get("sets", [])]
    for row in rows:
        frechet = "-" if row.get("frechet") is None else f"{row['frechet']:.3g}"
        lines.append(f"| {row['name']} | {frechet} | {row['sharpness']:.4f} | {row['nn_feature_median']:.3f} | "
                     f"{row['diversity_feature']:.3f} |")
    return lines


def target_line(name: str, verdict: dict) -> str:
    """One row of the card's targets table (a target without a measurement says so)."""
    goal = f"{'<=' if name == 'reconstruction Frechet' else '>='} {verdict['target']:g}"
    if verdict["value"] is None:
        return f"| {name} | - | {goal} | not measured |"
    met = "yes" if verdict["met"] else f"no, by {verdict['missed_by']:.3g}"
    return f"| {name} | {verdict['value']:.4g} | {goal} | {met} |"


def model_card(folder: Path, config: ShipConfig, record: dict, targets: dict | None, notes: str,
               report: dict | None = None) -> str:
    """MODEL_CARD.md: how the model was made, what it measured, and (from ``notes``) what it cannot do."""
    run_config = json.loads((folder / CONFIG_FILE).read_text())
    train = metric_lines(folder / METRICS_FILE)
    prior = metric_lines(folder / PRIOR_FOLDER / METRICS_FILE)
    last = train[-1] if train else {}
    lines = [
        f"# Model card: {Path(config.out).name}",
        "",
        "An adversarially regularised autoencoder trained from scratch on CIFAR-10 (train split), with a",
        "class-conditional latent prior (rectified flow) over its codes. No pre-trained weights went into",
        "any network: the perceptual feature net of the training loss and the evaluator classifier that",
        "measures the results were also trained here on CIFAR-10, and they are two different networks.",
        "",
        "## How it was made",
        "",
        f"- Training: `python -m autoencoder.train --preset {run_config.get('preset', '?')} --data data "
        f"--out {config.run}` ({last.get('step', '?')} steps, "
        f"{last.get('elapsed_s', 0) / 3600:.2f} h of training time as logged by the run).",
        *([f"- Fine-tuned from the weights of `{run_config['init_from']}`"
           + (", its encoder frozen (every code as there)." if not run_config.get("train_encoder", True) else ".")]
          if run_config.get("init_from") else []),
        f"- Shipping: `python -m latent_ops.ship --run {config.run} --data data` (`make model`): fp16 weights, "
        f"the bank, concepts and a {config.prior_steps}-step prior of {config.prior_channels} channels "
        f"({record['prior_seconds'] / 60:.1f} min"
        + (f", trained when `{config.prior_from}` was shipped and taken from it: the same encoder, so the same codes"
           if config.prior_from else "") + "), "
        f"the last call {record['seconds'] / 60:.1f} min (a resumed call reuses what a killed one made), "
        f"on {record['machine']}.",
        f"- Data: CIFAR-10, SHA-256 of the uint8 images and labels, train `{record['data']['train'][:16]}...`, "
        f"test `{record['data']['test'][:16]}...` (full digests in `{DATA_FILE}`).",
        f"- Code: {run_config.get('latent_dim', '?')} numbers per image "
        f"({'x'.join(map(str, record['code_shape']))}), weights digest `{record['weights_digest']}`.",
        "",
        "## Measured",
        "",
    ]
    if "eval/psnr" in last:
        lines.append(f"- Held-out PSNR during training (2,000 test images): {last['eval/psnr']:.2f} dB.")
    if prior:
        lines.append(f"- Latent prior flow loss: train {prior[-1]['loss']:.4f}, held out "
                     f"{prior[-1]['held_out_loss']:.4f} (test-split codes).")
    if targets:
        lines += ["", "Release targets (`python bench/release_targets.py --run "
                  f"{targets.get('run', config.run)} --data data`, whole test split):", "",
                  "| target | measured | goal | met |", "|---|---|---|---|"]
        for name, v in targets["targets"].items():
            lines.append(target_line(name, v))
    if report:
        lines += report_lines(report)
    lines += ["", "## Files", "",
              f"- `{CONFIG_FILE}` (the training run's config), `model.safetensors` (fp16), `{METRICS_FILE}`;",
              f"- `{BANK_FILE}`: codes of the 10,000 test images (fp16), the sources compose draws from;",
              "- `concepts.npz`, `clusters.json`, `directions.json`, `clusters/`: clusters, directions with their "
              "calibration, the class probe and named sources;",
              f"- `{PRIOR_FOLDER}/`: the latent prior (moving-average weights, config, metrics);",
              "- `learned/<name>/`: concepts taught to a copy of the prior (`latent_ops.learn`): its weights, the "
              "expression and acceptance rule, the accepted codes;",
              "- `marks/<expression>/`: a judge of by-eye marks per expression (`latent_ops.learn_marks`, from blind "
              "counts of this model's composes), which `compose --mark_gate` ranks by, and for `pegasus` its judge of "
              "the perceptual net's features alone (`judge-features.npz`), which `compose --repel_reading marks` "
              "guides draws up;",
              "- `proxy/`: the feature proxy `compose --repel` pushes draws apart through (`latent_ops.learn_proxy`: a "
              "small net distilled from the decoder and the perceptual net);",
              "- `compose.json`: the compose recipe, the defaults of every compose of this model (`make pegasus`), "
              "written by `python -m latent_ops.compose ... --save_recipe true`;",
              "- the classifiers it uses are the committed ones: `autoencoder/weights/perceptual/` (the judge of "
              "learned concepts and the subject placer) and `autoencoder/weights/evaluator/` (ranking and "
              "measuring), each a `classifier.safetensors` with its config and card;",
              f"- `{DATA_FILE}`, `{SHIP_FILE}`: data checksums and shipping record.",
              f"- Size: {record['bytes'] / 2 ** 20:.1f} MiB.", ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += ["## Licence of the data", "",
              "CIFAR-10 (Krizhevsky, 2009, *Learning Multiple Layers of Features from Tiny Images*) is "
              "distributed by its authors for research without a formal licence; cite the report when "
              "using this model. The weights are derived from it.", ""]
    return "\n".join(lines)


def claim_model_folder(run: Path, out: Path, replace_learned: bool = False) -> Path:
    """--out, checked before any work: it is replaced whole, so it must be new, empty or a shipped model, and
    neither the run being shipped nor a folder holding it."""
    if run.resolve() == out.resolve() or out.resolve() in run.resolve().parents:
        raise ConfigError(f"--out {out} is the run being shipped or holds it ({run}); replacing it would delete "
                          f"the run: pass a new --out")
    if out.is_dir() and any(out.iterdir()) and not is_shipped(out):
        first = sorted(p.name for p in out.iterdir())[0]
        raise ConfigError(f"--out {out} is not a shipped model (no {SHIP_FILE}; it holds {first}) and it would be "
                          f"replaced whole; nothing was written: pass a new --out")
    if out.is_dir() and not out.is_symlink():
        names = {p.name for p in out.iterdir() if not is_temporary(p.name)}
        foreign = sorted(names - SHIPPED_NAMES - LATER_NAMES)
        if foreign:
            raise ConfigError(f"--out {out} holds {foreign[0]}, which shipping does not make and would delete when it "
                              f"replaces the folder; nothing was written: move it out, or pass a new --out")
        later = sorted(names & LATER_NAMES)
        if later and not replace_learned:
            raise ConfigError(f"--out {out} holds {' and '.join(later)} (made by latent_ops.learn and compose "
                              f"--save_recipe for its present weights), which shipping again would delete; nothing "
                              f"was written: pass --replace_learned true to ship anyway (then learn again), or a "
                              f"new --out")
    return claim_output(out, None, "a shipped model's")


def ship(config: ShipConfig, progress: bool = True) -> Path:
    """Build the model folder from ``config.run``; returns its path."""
    began = time.monotonic()
    run, out = Path(config.run), Path(config.out)
    if not model_file(run).exists():
        raise RunError(f"{run} has no trained weights to ship; train it with "
                       f"python -m autoencoder.train --preset release --out {run}")
    claim_model_folder(run, out, config.replace_learned)
    targets = read_json(config.targets, "targets record") if config.targets else None
    notes = Path(config.card_notes).read_text() if config.card_notes else ""
    staging = out.parent / f".{out.name}.partial"
    source = weights_digest(run)
    stamp = staging / SHIP_FILE
    if not (stamp.exists() and json.loads(stamp.read_text()).get("source_weights_digest") == source):
        shutil.rmtree(staging, ignore_errors=True)  # a partial folder of other weights is started again
        write_fp16_weights(run, staging)
        write_json({"source_weights_digest": source}, stamp)
    try:
        load_bank(staging)
    except RunError:
        encode_run(staging, config.data, config.cache_dir, progress=progress)
    try:
        load_concepts(staging)
    except RunError:
        fit_run_concepts(staging, config.data, config.cache_dir)
    checksums = data_checksums(config.data, config.cache_dir)
    if config.prior_from:
        adopt_prior(Path(config.prior_from), staging, config, checksums)
    lines = metric_lines(staging / PRIOR_FOLDER / METRICS_FILE)
    slimmed = not (staging / PRIOR_FOLDER / "checkpoint.json").exists()  # a finished, slimmed prior of a ship killed later
    if not (slimmed and lines and lines[-1]["step"] == config.prior_steps):
        train_prior(make_prior_config(run=str(staging), data=config.data, cache_dir=config.cache_dir,
                                      steps=config.prior_steps, channels=config.prior_channels,
                                      threads=config.prior_threads), progress=progress)
    # the seconds its log counts since the prior (last) started training
    prior_seconds = metric_lines(staging / PRIOR_FOLDER / METRICS_FILE)[-1]["seconds"]
    write_json(checksums, staging / DATA_FILE)
    test_split_bank(staging)
    slim_prior(staging)

    record = {"source_weights_digest": source, "source_run": str(run), "weights_digest": weights_digest(staging),
              "code_shape": list(load_run_config(staging).code_shape), "data": checksums,
              "prior_seconds": prior_seconds, "seconds": time.monotonic() - began,
              "machine": machine_name(torch.device("cpu")),
              "config": asdict(config)}
    record["bytes"] = folder_bytes(staging)
    write_json(record, stamp)
    write_text(model_card(staging, config, record, targets, notes), staging / CARD_FILE)
    size = folder_bytes(staging)
    if size > SIZE_LIMIT:
        raise RunError(f"{staging} holds {size / 2 ** 20:.1f} MiB, over the {SIZE_LIMIT / 2 ** 20:.0f} MiB "
                       f"a shipped model may take; nothing was replaced")
    put_in_place(staging, out)
    return out


def put_in_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an older ``out`` is moved aside first and removed only after."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def rewrite_card(config: ShipConfig) -> Path:
    """Write MODEL_CARD.md of the shipped folder ``config.out`` again (e.g. with new notes or targets);
    nothing else changes."""
    out = Path(config.out)
    if not is_shipped(out):
        raise RunError(f"{out} is not a shipped model (no {SHIP_FILE}); ship one with python -m latent_ops.ship")
    record = json.loads((out / SHIP_FILE).read_text())
    record["bytes"] = folder_bytes(out)  # as it is now: learned concepts and the compose recipe came after shipping
    targets = read_json(config.targets, "targets record") if config.targets else None
    notes = Path(config.card_notes).read_text() if config.card_notes else ""
    report = read_json(config.report, "report record") if config.report else None
    shipped = ShipConfig(**{**asdict(config), "run": record["source_run"],
                            "prior_steps": record["config"]["prior_steps"],
                            "prior_channels": record["config"].get("prior_channels", 128),
                            "prior_from": record["config"].get("prior_from", "")})
    return write_text(model_card(out, shipped, record, targets, notes, report), out / CARD_FILE)


def make_ship_config(**flags) -> ShipConfig:
    config = dataclass_from_flags(ShipConfig, {}, flags)
    if config.prior_steps < 1:
        raise ConfigError(f"--prior_steps must be at least 1, got {config.prior_steps}")
    if config.prior_channels < 8:
        raise ConfigError(f"--prior_channels must be at least 8, got {config.prior_channels}")
    return config


def main(card_only: bool = False, **flags) -> None:
    """Write the shipped model folder (default models/pegasus-cifar10) from --run; with --card_only,
    only its MODEL_CARD.md again (from --targets and --card_notes). Every field of ShipConfig is a flag."""
    if card_only:
        print(f"wrote {run_cli(lambda: rewrite_card(make_ship_config(**flags)))}")
        return
    out = run_cli(lambda: ship(make_ship_config(**flags)))
    record = json.loads((out / SHIP_FILE).read_text())
    print(f"wrote {out}: {record['bytes'] / 2 ** 20:.1f} MiB in {record['seconds'] / 60:.1f} min "
          f"(prior {record['prior_seconds'] / 60:.1f} min); card {out / CARD_FILE}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
