"""Fit the judge of by-eye marks (``latent_ops.mark_judge``) from a run's blind counts.

    python -m latent_ops.learn_marks --run models/pegasus-cifar10 --data data \\
        --sittings docs/pegasus-cifar10/blind/sittings.json

The sittings file lists blind counts (``latent_ops.blind_count``): each one's key and counts, and for each output it
counted the compose that remakes it (a seed and flags over the run's recipe; null where this code cannot remake it),
and, as ``counted_on``, the commit whose shipped model made them: a concept learned again since composes other
pictures, and the refusal names that commit to remake them with.
The outputs are composed again into ``--work`` (reused while their images still match) and checked against the
digests the key recorded: an output whose images differ is refused, since the marks would describe other pictures.
A sitting's own ``counted_on`` takes the place of the file's, for counts made with a later model.
A sitting that keeps its counted images (``"images": "NAME-counted.png"``, the blind count's ``counted.png``) is read
from them instead, on any machine: a compose remade on another CPU gives other pictures, which the digests refuse.
Its outputs still give each one's seed (the held-out split) and flags (what was counted); a null one is left out.
``--keep_images true`` writes each remade sitting's images beside its key (``NAME-counted.png``) and names them, with
their digest, in the sittings file: on the machine that counted, it makes the older sittings readable everywhere.

``--fit features`` fits only the judge of the perceptual net's features (``judge-features.npz``, which ``compose
--repel_reading marks`` guides draws up), ``--fit judge`` only the judge ``--mark_gate`` ranks by; the other is kept
as it was, and ``judge.json`` records both. The shipped judge of features came from
``--sittings docs/pegasus-cifar10/blind/sittings-all.json --fit features``.
Every counted image then becomes one row, marked or not; an image counted in several sittings gives a row for each.

Before the judge is fitted on every row, its held-out quality is measured: for each seed, a judge fitted on the other
seeds' rows orders that seed's rows (ROC AUC, and the marked share of the upper and lower half). These figures go into
``RUN/marks/<expression>/judge.json`` beside the judge, with the sittings used.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import write_json
from autoencoder.cli import (ConfigError, UserError, check_choice, check_ranges, claim_output, command, read_json,
                             save_config)
from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from latent_ops.blind_count import counted_digest, images_digest, read_counted, save_counted
from latent_ops.mark_judge import (FEATURES_FILE, RECORD_FILE, WEIGHTS_FILE, fit_judge, judge_folder,
                                   mark_features_both_ways, save_judge)
from latent_ops.runs import resolve_run
from latent_ops.showcase import kept_batch


@dataclass
class LearnMarksConfig:
    run: str = ""  # the run whose composes were counted (empty: the newest trained run, else the shipped model)
    sittings: str = "docs/pegasus-cifar10/blind/sittings.json"  # the blind counts, and how to remake what they counted
    data: str = DATA_FOLDER  # CIFAR-10, as the counted composes had it (uniqueness is part of their ranking)
    cache_dir: str = CACHE_FOLDER  # where the decoded data is cached
    work: str = "outputs/marks-sources"  # where the remade compose outputs are kept
    strength: float = 0.01  # the logistic regression's C (L2 strength 1 / C): best held out of 0.003, 0.01, 0.03
    fit: str = "both"  # judge (what --mark_gate ranks by), features (the judge of the perceptual net's features alone,
    #   which compose --repel_reading marks climbs) or both; the other file is kept as it was
    keep_images: bool = False  # write each remade sitting's counted images beside its key (NAME-counted.png) and name
    #   them in the sittings file, so that later fits read them on any machine


LEARN_MARKS_RANGES = {"strength": (1e-6, 1e6)}
FITS = ("judge", "features", "both")


@dataclass
class Rows:
    images: torch.Tensor  # (N, 3, 32, 32) uint8, each counted image once per sitting
    marked: np.ndarray  # (N,) bool
    seeds: np.ndarray  # (N,) the seed of the compose each came from


def remade(config: LearnMarksConfig, run: Path, expression: str, output: dict, model: str = "") -> Path:
    """The compose output ``output`` ({"seed", "flags"}) remade into --work (reused when already there). ``model``: a
    sitting's own ``counted_on``, which names its folders apart from those of the same flags with another model."""
    from latent_ops.compose import compose

    flags = dict(output.get("flags") or {})
    tag = hashlib.sha1((json.dumps(flags, sort_keys=True) + model).encode()).hexdigest()[:8]
    folder = Path(config.work) / f"{expression}-seed{int(output['seed'])}-{tag}"
    if not (folder / "images.safetensors").exists():
        print(f"learn_marks: composing {expression} --seed {output['seed']} {flags or ''} into {folder}")
        compose(expression, quiet=True, run=str(run), data=config.data, cache_dir=config.cache_dir,
                seed=int(output["seed"]), out=str(folder), **flags)
    return folder


def check_sitting(sitting, index: int, file: Path) -> None:
    """A sitting of the sittings file: its key, its counts and one remaking (or null) per output, else one line."""
    outputs = sitting.get("outputs") if isinstance(sitting, dict) else None
    if not (isinstance(sitting, dict) and isinstance(sitting.get("key"), str) and isinstance(sitting.get("counts"), str)
            and isinstance(outputs, list) and all(o is None or (isinstance(o, dict) and isinstance(o.get("seed"), int)
                                                                and isinstance(o.get("flags", {}), dict))
                                                  for o in outputs)
            and isinstance(sitting.get("counted_on", ""), str)
            and isinstance(sitting.get("images", ""), str) and isinstance(sitting.get("images_digest", ""), str)):
        raise ConfigError(f"sitting {index} of {file} is not {{\"key\": FILE, \"counts\": FILE, \"outputs\": "
                          f"[{{\"seed\": N, \"flags\": {{...}}}} or null, ...], optionally \"counted_on\": COMMIT, "
                          f"\"images\": FILE and \"images_digest\": DIGEST}}; see "
                          f"docs/pegasus-cifar10/blind/sittings.json")


def sitting_rows(config: LearnMarksConfig, run: Path, expression: str, sitting: dict, base: Path,
                 counted_on: str = "") -> Rows | None:
    """The counted images of one sitting, with their marks (None when none can be had): read from the sitting's
    ``images`` (its counted.png) where it keeps them, else remade. ``counted_on``: the commit whose shipped model made
    the counted composes, named when a remade one differs."""
    key = read_json(base / sitting["key"], "blind count key")
    counts = read_json(base / sitting["counts"], "blind count")
    outputs = sitting["outputs"]
    if len(outputs) != len(key["composes"]):
        raise UserError(f"{base / sitting['key']} counted {len(key['composes'])} outputs, but the sittings file gives "
                        f"{len(outputs)} ways to remake them; give one for each (null where it cannot be remade)")
    if sitting.get("images"):
        digest = str(sitting.get("images_digest") or key.get("counted_digest", ""))
        counted = torch.from_numpy(read_counted(base / sitting["images"], len(key["numbers"]), digest))
        counted = counted.permute(0, 3, 1, 2)
        tiles = {number: counted[number] for number, (o, _) in enumerate(key["numbers"]) if outputs[o] is not None}
    else:
        batches = remade_batches(config, run, expression, sitting, key, counted_on)
        if config.keep_images and batches:
            keep_counted(base, sitting, key, batches)
        tiles = {number: batches[o][p] for number, (o, p) in enumerate(key["numbers"]) if o in batches}
    marked = set(counts["marked_numbers"])
    rows = [(tile, number in marked, int(outputs[key["numbers"][number][0]]["seed"])) for number, tile in tiles.items()]
    if not rows:
        return None
    return Rows(torch.stack([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def remade_batches(config: LearnMarksConfig, run: Path, expression: str, sitting: dict, key: dict,
                   counted_on: str) -> dict[int, torch.Tensor]:
    """Per output that can be remade, its kept images composed again, checked against the digest the key recorded."""
    batches = {}
    for index, (output, digest) in enumerate(zip(sitting["outputs"], key["images_digests"])):
        if output is None:
            continue
        folder = remade(config, run, expression, output, str(sitting.get("counted_on", "")))
        if images_digest(folder) != digest:
            raise UserError(f"{folder} (remade for {sitting['key']}) holds other images than the ones counted (digest "
                            f"{images_digest(folder)}, counted {digest}), so the marks would describe other pictures; "
                            + (f"they were composed with the model of commit {counted_on[:12]} (git worktree add DIR "
                               f"{counted_on[:12]}, then --run DIR/models/pegasus-cifar10), " if counted_on else "")
                            + "remake it on the machine that counted (another CPU composes other pictures), or set "
                              "that output to null")
        batches[index] = kept_batch(folder)
    return batches


def keep_counted(base: Path, sitting: dict, key: dict, batches: dict[int, torch.Tensor]) -> None:
    """Write a remade sitting's counted images beside its key (an output left null: black tiles, never read) and name
    them, with their digest, in ``sitting``. A file already there must hold the images its key or the remakes say
    (else one line)."""
    counted = np.zeros((len(key["numbers"]), 32, 32, 3), np.uint8)
    for number, (o, p) in enumerate(key["numbers"]):
        if o in batches:
            counted[number] = batches[o][p].permute(1, 2, 0).numpy()
    name, digest = sitting["key"].removesuffix("key.json") + "counted.png", counted_digest(counted)
    if (base / name).exists():  # the blind count's own (every output's images), or one kept before
        digest = str(key.get("counted_digest") or digest)
        read_counted(base / name, len(counted), digest)
    else:
        save_counted(counted, base / name)
    sitting.update(images=name, images_digest=digest)


def held_out(features: tuple[np.ndarray, np.ndarray], rows: Rows, strength: float) -> dict:
    """Per seed: a judge fitted on the other seeds' rows (both orientations) orders this seed's rows."""
    from sklearn.metrics import roc_auc_score

    plain, mirrored = features
    figures = {}
    for seed in sorted(set(rows.seeds.tolist())):
        test = rows.seeds == seed
        if test.all() or len(set(rows.marked[test].tolist())) < 2:
            continue
        train = np.concatenate([plain[~test], mirrored[~test]])
        judge = fit_judge(train, np.concatenate([rows.marked[~test]] * 2), strength, "", "")
        score = (judge.probability(plain[test]) + judge.probability(mirrored[test])) / 2
        upper = score >= np.median(score)
        figures[str(seed)] = {"rows": int(test.sum()), "auc": round(float(roc_auc_score(rows.marked[test], score)), 4),
                              "marked share": round(float(rows.marked[test].mean()), 4),
                              "marked share of the upper half": round(float(rows.marked[test][upper].mean()), 4),
                              "marked share of the lower half": round(float(rows.marked[test][~upper].mean()), 4)}
    return figures


def learn_marks(config: LearnMarksConfig) -> str:
    from autoencoder.classifier import load_perceptual

    check_ranges(config, LEARN_MARKS_RANGES)
    check_choice("fit", config.fit, FITS)
    sittings_file = Path(config.sittings)
    spec = read_json(sittings_file, "sittings file")
    if not isinstance(spec, dict) or not spec.get("sittings") or not spec.get("expression"):
        raise ConfigError(f"{sittings_file} lists no sittings (it needs \"expression\" and \"sittings\"); see "
                          f"docs/pegasus-cifar10/blind/sittings.json")
    for index, sitting in enumerate(spec["sittings"]):
        check_sitting(sitting, index, sittings_file)
    as_read = json.dumps(spec)
    run = resolve_run(config.run)
    out = claim_output(judge_folder(run, str(spec["expression"])), {WEIGHTS_FILE, RECORD_FILE, FEATURES_FILE,
                                                                    "config-features.json"},
                       "a judge of marks'")  # its config: saved at the end, with the judge
    parts = [part for part in (sitting_rows(config, run, spec["expression"], s, sittings_file.parent,
                                            str(s.get("counted_on", spec.get("counted_on", ""))))
                               for s in spec["sittings"]) if part is not None]
    if config.keep_images and json.dumps(spec) != as_read:
        write_json(spec, sittings_file)  # each remade sitting now names the images it counted
    if not parts:
        raise UserError(f"no output that {sittings_file} lists can be remade (every one is null); nothing was fitted")
    rows = Rows(torch.cat([p.images for p in parts]), np.concatenate([p.marked for p in parts]),
                np.concatenate([p.seeds for p in parts]))
    if len(set(rows.marked.tolist())) < 2:
        raise UserError(f"every counted image in {sittings_file} is {'marked' if rows.marked[0] else 'unmarked'}: a "
                        f"judge needs both")
    perceptual = load_perceptual()
    features = mark_features_both_ways(rows.images, perceptual)
    unique = len({bytes(image.numpy()) for image in rows.images})
    what, expression = str(spec.get("what", "marked")), str(spec["expression"])
    record = {"sittings": [s["key"] for s in spec["sittings"]], "rows": len(rows.marked), "unique images": unique,
              "marked share": round(float(rows.marked.mean()), 4), "strength": config.strength}
    said = []
    for fitted in ("judge", "features"):
        if config.fit not in (fitted, "both"):
            continue
        # the judge reads every mark feature; the judge of features only those the feature proxy predicts
        seen = features if fitted == "judge" else tuple(part[:, :perceptual.feature_dim] for part in features)
        figures = held_out(seen, rows, config.strength)
        judge = fit_judge(np.concatenate(seen), np.concatenate([rows.marked] * 2), config.strength, what, expression)
        earlier = read_json(out / RECORD_FILE, "judge record") if (out / RECORD_FILE).exists() else {}
        earlier = {k: v for k, v in earlier.items() if k not in ("what", "expression")}  # the other judge's, kept
        this = {**record, "held out by seed": figures}
        if fitted == "judge":
            save_judge(judge, out, {**earlier, **this})
        else:
            save_judge(judge, out, {**earlier, "features judge": this}, FEATURES_FILE)
        written = f"{out / WEIGHTS_FILE}" if fitted == "judge" else \
            f"{out / FEATURES_FILE} (the perceptual net's features alone)"
        said.append(f"{written}; held-out ROC AUC: {auc_line(figures)}")
    save_config(config, out / config_name(config))
    return (f"learn_marks: {len(rows.marked)} counted images ({unique} different, {rows.marked.mean():.0%} marked) -> "
            + "; and ".join(said))


def auc_line(figures: dict) -> str:
    return ", ".join(f"seed {s} {f['auc']:.3f}" for s, f in figures.items()) or "no seed to hold out"


def config_name(config: LearnMarksConfig) -> str:
    """Where the config is saved: config.json for the judge (or both), config-features.json for the features alone."""
    return "config-features.json" if config.fit == "features" else "config.json"


def main(**flags) -> None:
    """Fit the judge of by-eye marks of a run from its blind counts; every field of LearnMarksConfig is a flag."""
    print(command(LearnMarksConfig, flags, learn_marks))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
