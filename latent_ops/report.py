"""The evaluation report of a run: every metric of autoencoder.metrics beside its real-vs-real floor, with figures.

For the run's reconstructions, for samples of its prior N(0, I), and for each composed
expression (default ``horse+wings``), it answers: how close, how realistic (Frechet and
kernel distances in the evaluator's features; NOT Inception FID/KID), how sharp, how new
(nearest training image, in pixels and features), how diverse, and for compositions how
recognisable (the evaluator's P(horse) and P(bird)+P(airplane)). Each number stands beside
the same number for real CIFAR-10 images, so it can be read without other references.

Writes ``<out>/report.md``, ``report.json``, figures (``architecture.png``/``.svg``, sample
grids, the best Pegasus and its neighbours) and the compose folders.

Example: ``python -m latent_ops.report --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from autoencoder import metrics
from autoencoder.atomic import save_tensors, write_json, write_text
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.classifier import SHIPPED, WEIGHTS_FILE, Evaluator, load_evaluator
from autoencoder.cli import ConfigError, check_ranges, claim_output, dataclass_from_flags, run_cli
from autoencoder.compute import autocast, machine_name
from autoencoder.data import ImageSet, load_cifar10, to_float, to_uint8
from autoencoder.diagram import draw_run
from autoencoder.grids import save_grid
from autoencoder.models import Networks
from autoencoder.roundtrip import reconstruct
from autoencoder.run_folder import RunConfig, load_run, weights_digest
from latent_ops.compose import compose, open_setting
from latent_ops.compose_config import DEFAULT_EXPRESSION, ComposeConfig, folder_name, make_compose_config, read_recipe
from latent_ops.compose_files import IMAGES_FILE
from latent_ops.encode import decode_codes
from latent_ops.expression import parse, term_parts
from latent_ops.flow import Schedule, sample
from latent_ops.runs import repository_path, resolve_run
from latent_ops.shipped_folder import is_shipped
from latent_ops.trained_prior import load_prior, prior_folder


def cached_features(evaluator: Evaluator, evaluator_dir: Path, images: torch.Tensor, what: str,
                    cache_dir: str) -> torch.Tensor:
    """Evaluator features of a data split, cached per (evaluator weights, images) in ``cache_dir``."""
    digest = hashlib.sha1()
    weights = evaluator_dir / WEIGHTS_FILE
    digest.update(weights.read_bytes() if weights.exists() else b"")
    digest.update(images[:: max(1, len(images) // 512)].numpy().tobytes())
    digest.update(str(tuple(images.shape)).encode())
    file = Path(cache_dir) / f"features-{what}-{digest.hexdigest()[:12]}.safetensors"
    if file.exists():
        first = evaluator.features(images[:1])  # the cache must hold these very features (width and values)
        try:
            cached = load_file(str(file))["features"]
            if cached.ndim == 2 and cached.shape == (len(images), first.shape[1]) and cached.isfinite().all() \
                    and torch.allclose(cached[:1].float(), first.float(), rtol=1e-2, atol=1e-3):
                return cached
        except Exception:  # a damaged cache file is computed again  # noqa: BLE001
            pass
        print(f"report: {file} is damaged, of another width or holds NaN; computing the features again")
    features = evaluator.features(images)
    save_tensors({"features": features.contiguous()}, file)  # atomic: a killed report leaves no half cache
    return features


def sample_set_metrics(name: str, images: torch.Tensor, features: torch.Tensor, reference_features: torch.Tensor,
                       train_floats: torch.Tensor, train_features: torch.Tensor, seed: int,
                       neighbour_count: int, kid_subset: int) -> dict:
    """Quality, sharpness, uniqueness and diversity of one set of images (uint8 (N, 3, 32, 32)),
    against the test features (``reference_features``) and the training images (float, [-1, 1])."""
    floats = to_float(images)
    row = {"name": name, "count": len(images)}
    if len(images) >= 2 and len(reference_features) >= 2:
        if len(images) > reference_features.shape[1]:  # a Frechet distance needs more samples than dimensions
            row["frechet"] = metrics.frechet_distance(features, reference_features)
        row["kid"], row["kid_std"] = metrics.kernel_distance(features, reference_features, subset_size=kid_subset,
                                                             seed=seed)
    row["sharpness"] = metrics.laplacian_variance(floats).mean().item()
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:neighbour_count]
    pixel_d, _ = metrics.nearest_distances(floats[pick], train_floats)
    feature_d, _ = metrics.nearest_distances(features[pick], train_features)
    row["nn_pixel_median"], row["nn_feature_median"] = pixel_d.median().item(), feature_d.median().item()
    diverse = pick[:64]
    if len(diverse) >= 2:
        row["diversity_feature"] = metrics.mean_pairwise_distance(features[diverse])
        row["diversity_pixel"] = metrics.mean_pairwise_distance(floats[diverse])
    return row


def _format(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def quality_table(rows: list[dict]) -> str:
    head = ("| images | n | Frechet (eval. features) | KID (eval. features) | sharpness (Laplacian var.) | "
            "NN train dist., pixels | NN train dist., features | diversity of 64, features | "
            "diversity of 64, pixels |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        kid = f"{_format(r['kid'])} +- {_format(r['kid_std'])}" if "kid" in r else "-"
        lines.append(f"| {r['name']} | {r['count']} | {_format(r.get('frechet'), 2)} | {kid} | "
                     f"{_format(r.get('sharpness'), 4)} | {_format(r.get('nn_pixel_median'))} | "
                     f"{_format(r.get('nn_feature_median'))} | {_format(r.get('diversity_feature'))} | "
                     f"{_format(r.get('diversity_pixel'))} |")
    return head + "\n".join(lines) + "\n"


@dataclass
class ReportConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs
    data: str = DATA_FOLDER  # CIFAR-10 folder (needed: every metric compares with real images)
    cache_dir: str = CACHE_FOLDER  # decoded data and evaluator features are cached here
    out: str = ""  # output folder; empty: outputs/report/<run>
    expressions: str = ""  # ';'-separated expressions to compose and score; empty: the run's compose recipe's
    #   expression (RUN/compose.json), else horse+wings. Each is composed with the run's recipe.
    seed: int = 0  # prior draws, subsets and compose seeds
    prior_samples: int = 10000  # N(0, I) samples decoded for the prior's row
    neighbour_count: int = 1000  # images per set searched for their nearest training image
    kid_subset: int = 1000  # subset size of the kernel distance
    pca_floor: bool = True  # also fit PCA with latent_dim components (the linear floor)
    evaluator: str = ""  # evaluator folder; empty: the committed one

    @property
    def expression_list(self) -> list[str]:
        return [e.strip() for e in self.expressions.split(";") if e.strip()]


REPORT_RANGES = {"seed": (0, 2**31 - 1), "prior_samples": (2, 10**6), "neighbour_count": (1, 10**6),
                 "kid_subset": (2, 10**5)}
REPORT_FILES = {"report.md", "report.json", "config.json", "architecture.png", "architecture.svg", "compose",
                "prior-samples.png", "latent-prior-samples.png", "reconstructions.png"}
COPIED_SUFFIXES = ("-best_x8.png", "-batch64.png", "-neighbours.png", "-refinement.png", "-evaluator-top8.png")
MIN_IMAGES = 8  # per split: fewer, and no metric means anything


def report_files(folder: Path) -> set[str]:
    """The names in ``folder`` that a report writes (its own files and the compose figures it copies)."""
    copied = {p.name for p in folder.glob("*.png") if p.name.endswith(COPIED_SUFFIXES)} if folder.is_dir() else set()
    return REPORT_FILES | copied


def make_report_config(**flags) -> ReportConfig:
    config = dataclass_from_flags(ReportConfig, {}, flags)
    check_ranges(config, REPORT_RANGES)
    for expression in config.expression_list:
        parse(expression)
    return config


def report_expressions(settings: ReportConfig, run: Path) -> list[str]:
    """The expressions to compose: the flag's, else the run's recipe's, else compose's default."""
    return settings.expression_list or [read_recipe(str(run)).get("expression", DEFAULT_EXPRESSION)]


def prior_schedule(run: Path) -> Schedule:
    """How the report samples the prior: the solver, steps and guidance interval of the run's compose recipe (its
    compose.json, else compose's defaults), so the prior's row is what compose draws."""
    recipe = {**dataclasses.asdict(ComposeConfig()), **read_recipe(str(run))}
    return Schedule(recipe["prior_steps"], recipe["solver"], recipe["guidance_from"], recipe["guidance_until"])


def latent_prior_samples(run_dir: Path, config, count: int, seed: int, device: torch.device,
                         guidance: float = 2.0, dtype: torch.dtype = torch.float32, chunk: int = 1024
                         ) -> torch.Tensor | None:
    """``count`` codes from the run's latent prior, the run's classes in turn (guidance ``guidance``), sampled with
    ``prior_schedule`` (bf16 autocast for ``dtype`` bf16); None when the run has no prior."""
    if not (prior_folder(run_dir) / "model.safetensors").exists():
        return None
    prior = load_prior(run_dir, device)
    if dtype == torch.bfloat16:
        prior = prior.to(memory_format=torch.channels_last)
    schedule = prior_schedule(run_dir)
    classes = torch.tensor([CIFAR10_CLASSES.index(c) for c in config.class_names])
    row_labels = classes[torch.arange(count) % len(classes)]  # the run's classes in turn
    generator = torch.Generator(device).manual_seed(seed)
    codes = torch.empty(count, prior.dim)
    with torch.inference_mode(), autocast(device, dtype):
        for label in classes.tolist():
            rows = (row_labels == label).nonzero().squeeze(1)
            for part in rows.split(chunk):
                codes[part] = sample(prior, len(part), [(label, guidance)], schedule, generator).cpu()
    return codes


def subject_of(weights: dict[str, float]) -> str | None:
    """The class an expression starts from (``horse`` for horse:2+wings and for 2*horse&3*airplane@top): its first
    positive class or cluster, in a conjunction the first part that holds everywhere."""
    for term, weight in weights.items():
        split = term_parts(term)
        for name, w in split.conjunction or ((term, 1.0),):
            base = name.split(":")[0]
            if weight * w > 0 and "@" not in name and base in CIFAR10_CLASSES:
                return base
    return None


@dataclass
class Evidence:
    """What every section of the report measures against: the run, the evaluator, the data and their features."""
    run: Path
    out: Path
    config: RunConfig  # the run's config
    nets: Networks
    device: torch.device
    dtype: torch.dtype
    judge: Evaluator
    train: ImageSet
    test: ImageSet
    train_floats: torch.Tensor  # (N, 3, 32, 32) in [-1, 1], once: every nearest-neighbour search reads it
    train_features: torch.Tensor
    test_features: torch.Tensor
    settings: ReportConfig
    say: Callable[..., None]

    def measure(self, name: str, images: torch.Tensor, features: torch.Tensor | None = None,
                reference: torch.Tensor | None = None, train_rows: torch.Tensor | None = None) -> dict:
        """sample_set_metrics of ``images`` against the test features (or ``reference``) and the training set
        (or its ``train_rows``)."""
        features = self.judge.features(images) if features is None else features
        floats = self.train_floats if train_rows is None else self.train_floats[train_rows]
        train_features = self.train_features if train_rows is None else self.train_features[train_rows]
        reference = self.test_features if reference is None else reference
        s = self.settings
        return sample_set_metrics(name, images, features, reference, floats, train_features, s.seed,
                                  s.neighbour_count, s.kid_subset)


def gather_evidence(settings: ReportConfig, run_dir: Path, out_dir: Path, say) -> Evidence:
    opened = load_run(run_dir)
    evaluator_dir = Path(settings.evaluator) if settings.evaluator else SHIPPED
    judge = load_evaluator(evaluator_dir, device=opened.device.type)
    classes = opened.config.classes
    train = load_cifar10(settings.data, "train", classes, cache_dir=settings.cache_dir)
    test = load_cifar10(settings.data, "test", classes, cache_dir=settings.cache_dir)
    small = [f"{name} has {len(split)}" for name, split in (("train", train), ("test", test)) if len(split) < MIN_IMAGES]
    if small:
        raise ConfigError(f"--data {settings.data} is too small for a report: its {' and '.join(small)} images of the "
                          f"run's classes; every metric needs at least {MIN_IMAGES} per split")
    say(f"evaluator features of {len(train)} train and {len(test)} test images (cached after the first time)")
    train_features = cached_features(judge, evaluator_dir, train.images, "train", settings.cache_dir)
    test_features = cached_features(judge, evaluator_dir, test.images, "test", settings.cache_dir)
    return Evidence(run_dir, out_dir, opened.config, opened.nets, opened.device, opened.dtype, judge, train, test,
                    to_float(train.images), train_features, test_features, settings, say)


def reconstruction_section(ev: Evidence, record: dict) -> torch.Tensor:
    """Reconstruction MSE and PSNR of the test split, beside the PCA floor; returns the reconstructions (uint8)."""
    ev.say("reconstructions of the test split")
    test_floats = to_float(ev.test.images)
    rec = reconstruct(ev.nets, ev.test.images, ev.device, ev.dtype)
    record["reconstruction"] = metrics.reconstruction(test_floats, rec)
    if ev.settings.pca_floor:
        components = min(ev.config.latent_dim, len(ev.train) - 1)
        ev.say(f"PCA floor with {components} components")
        pca = metrics.pca_reconstruction(ev.train_floats, test_floats, components, ev.settings.seed)
        record["pca_floor"] = {"components": components, **metrics.reconstruction(test_floats, pca)}
    rec_uint8 = to_uint8(rec)
    pairs = torch.stack([test_floats[:32], to_float(rec_uint8[:32])], 1).flatten(0, 1)
    save_grid(pairs, ev.out / "reconstructions.png", nrow=16, scale=3)
    return rec_uint8


def floor_rows(ev: Evidence, generator: torch.Generator) -> list[dict]:
    """The real-vs-real floors: a train subset against the test split, and the test split itself."""
    size = max(2, min(len(ev.test), ev.settings.prior_samples, len(ev.train) // 2))
    train_pick = torch.randperm(len(ev.train), generator=generator)[:size]
    held = torch.ones(len(ev.train), dtype=torch.bool)
    held[train_pick] = False  # the train subset is compared with the rest of train in the NN columns
    rows = [ev.measure("real: train subset vs test (the floor)", ev.train.images[train_pick],
                       ev.train_features[train_pick], train_rows=held),
            ev.measure("real: test images", ev.test.images, ev.test_features)]
    for key in ("frechet", "kid", "kid_std"):  # the test split against itself
        rows[1].pop(key, None)
    return rows


def sample_sets_section(ev: Evidence, record: dict, rec_uint8: torch.Tensor) -> None:
    """Quality, sharpness, uniqueness and diversity of reconstructions and prior samples, beside the real floors."""
    generator = torch.Generator().manual_seed(ev.settings.seed)
    ev.say("real-vs-real floors")
    rows = floor_rows(ev, generator)
    rows.append(ev.measure("model: reconstructions of test", rec_uint8))
    count = ev.settings.prior_samples
    ev.say(f"{count} prior samples")
    prior_codes = torch.randn(count, ev.config.latent_dim, generator=generator)
    prior = to_uint8(decode_codes(ev.nets, prior_codes.to(ev.device), dtype=ev.dtype).cpu())
    rows.append(ev.measure("model: prior samples N(0, I)", prior))
    learned = latent_prior_samples(ev.run, ev.config, count, ev.settings.seed, ev.device, dtype=ev.dtype)
    if learned is None:
        ev.say("no latent prior in the run (python -m latent_ops.prior trains one): its row is skipped")
    else:
        record["prior_schedule"] = {k: v for k, v in prior_schedule(ev.run)._asdict().items() if k != "progress"}
        ev.say(f"{count} latent prior samples")
        learned_images = to_uint8(decode_codes(ev.nets, learned.to(ev.device), dtype=ev.dtype).cpu())
        rows.append(ev.measure("model: latent prior samples (classes in turn)", learned_images))
        save_grid(to_float(learned_images[:64]), ev.out / "latent-prior-samples.png", nrow=8, scale=3)
    record["sets"] = rows
    prior_classes = torch.bincount(ev.judge.logits(prior).argmax(1), minlength=10) / len(prior)
    record["prior_class_shares"] = dict(zip(CIFAR10_CLASSES, prior_classes.tolist()))
    save_grid(to_float(prior[:64]), ev.out / "prior-samples.png", nrow=8, scale=3)


def composition_entry(ev: Evidence, expression: str) -> dict | None:
    """Compose ``expression`` with the run's recipe and measure it: recognisability, quality, uniqueness, diversity."""
    s = ev.settings
    ev.say(f"compose {expression}")
    folder = compose(expression, run=str(ev.run), data=s.data, seed=s.seed, cache_dir=s.cache_dir,
                     out=str(ev.out / "compose" / folder_name(expression, s.seed)), quiet=True)
    images = load_file(str(folder / IMAGES_FILE))["images"]  # ranked, best first (at most 1024)
    scores = json.loads((folder / "scores.json").read_text())
    subject = subject_of(scores.get("intent_weights", scores["weights"]))  # a learned concept: what it was learned from
    if subject is None:
        ev.say(f"{expression} starts from no class: recognisability skipped")
        return None
    features = ev.judge.features(images)
    recognised = metrics.recognisability(ev.judge.probabilities(images), CIFAR10_CLASSES, subject=subject)
    entry = {"expression": expression, "subject": subject, "folder": str(folder),
             "intent_source": scores["intent_source"], "critic_mean_after": scores["critic_mean_after"],
             "candidates_composed": scores["candidates_composed"], "pool": scores["pool"],
             "kept": scores["kept"], "best": scores["best"], "rank_gate": scores.get("rank_gate", 0.2),
             "best_rule": scores.get("best_rule", "rank"),
             "recognisability_best": {k: v[0].item() for k, v in recognised.items()},
             "recognisability_mean": {k: v.mean().item() for k, v in recognised.items()},
             "share_combined_over_half": (recognised["combined"] > 0.5).float().mean().item()}
    by_evaluator = recognised["combined"].argsort(descending=True)
    entry["evaluator_top"] = [{"rank_in_batch": int(i), **{k: v[i].item() for k, v in recognised.items()}}
                              for i in by_evaluator[:8]]
    save_grid(to_float(images[by_evaluator[:8]]), ev.out / f"{folder.name}-evaluator-top8.png", nrow=8, scale=4)
    kept_ranks = [c["rank"] for c in scores["candidates"] if c["kept"] and c["rank"] < len(images)]
    entry["sets"], real = composition_sets(ev, expression, subject, images, features, kept_ranks,
                                           json.loads((folder / "config.json").read_text())["pool"] > 0)
    real_recognised = metrics.recognisability(ev.judge.probabilities(real), CIFAR10_CLASSES, subject=subject)
    entry["recognisability_real_subject_mean"] = {k: v.mean().item() for k, v in real_recognised.items()}
    best_pixel, _ = metrics.nearest_distances(to_float(images[:1]), ev.train_floats)
    best_feature, _ = metrics.nearest_distances(features[:1], ev.train_features)
    entry["best_nn_pixel"], entry["best_nn_feature"] = best_pixel.item(), best_feature.item()
    for name in ("best_x8.png", "batch64.png", "neighbours.png", "refinement.png"):
        if (folder / name).exists():
            shutil.copyfile(folder / name, ev.out / f"{folder.name}-{name}")
    return entry


def composition_sets(ev: Evidence, expression: str, subject: str, images: torch.Tensor, features: torch.Tensor,
                     kept_ranks: list[int], pooled: bool) -> tuple[list[dict], torch.Tensor]:
    """The composed images' rows (the pool, the kept) beside real test images of the subject; and those images."""
    subject_test = ev.test.labels == CIFAR10_CLASSES.index(subject)
    real = ev.test.images[subject_test] if subject_test.any() else ev.test.images
    real_features = ev.test_features[subject_test] if subject_test.any() else ev.test_features
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(ev.settings.seed))[:len(images)]
    rows = [ev.measure(f"composed {expression}" + (f", the unselected pool of {len(images)}" if pooled else ""),
                       images, features, real_features)]
    if pooled:
        rows.append(ev.measure(f"composed {expression}, the kept {len(kept_ranks)}", images[kept_ranks],
                               features[kept_ranks], real_features))
    rows.append(ev.measure(f"real: {len(pick)} test {subject} images (the floor)", real[pick], real_features[pick],
                           real_features))
    return rows, real[pick]


def check_inputs(settings: ReportConfig, run_dir: Path) -> None:
    """Every file the report will read, read once before the first expensive step (minutes of features and
    samples): the run's prior and each expression's recipe; for a shipped model, whose files are never made again,
    also the concepts, bank and prior each expression's compose opens (a trained run's are fitted when missing)."""
    if (prior_folder(run_dir) / "model.safetensors").exists():
        load_prior(run_dir)
    for expression in report_expressions(settings, run_dir):
        config = make_compose_config(expression=expression, run=str(run_dir), data=settings.data,
                                     cache_dir=settings.cache_dir)
        if is_shipped(run_dir):
            open_setting(config)


def report(quiet: bool = False, **flags) -> Path:
    """Write the report of a run into ``out`` (default outputs/report/<run>); returns the folder.

    ``flags``: the fields of ReportConfig, checked like command-line flags; the config is saved
    as ``config.json`` beside the report, which is stamped with the weights' hash.
    """
    settings = make_report_config(**flags)
    began = time.monotonic()
    say = (lambda *a: None) if quiet else (lambda *a: print("report:", *a, flush=True))
    run_dir = resolve_run(settings.run)
    out_dir = Path(settings.out) if settings.out else Path("outputs/report") / run_dir.name
    check_inputs(settings, run_dir)  # before the folder is claimed (made): a damaged input leaves nothing behind
    claim_output(out_dir, report_files(out_dir), "a report", settings)
    ev = gather_evidence(settings, run_dir, out_dir, say)
    record: dict = {"run": repository_path(run_dir), "weights_digest": weights_digest(run_dir), "seed": settings.seed,
                    "classes": list(ev.config.class_names), "evaluator": repository_path(settings.evaluator or SHIPPED),
                    "neighbour_count": settings.neighbour_count, "machine": machine_name(ev.device),
                    "evaluator_test_accuracy": ev.judge.accuracy(ev.test.images, ev.test.labels)}
    rec_uint8 = reconstruction_section(ev, record)
    sample_sets_section(ev, record, rec_uint8)
    entries = [composition_entry(ev, expression) for expression in report_expressions(settings, run_dir)]
    record["compositions"] = [entry for entry in entries if entry is not None]
    say("architecture diagram")
    files, layers = draw_run(run_dir, out_dir)
    record["diagram"] = [str(f) for f in files]
    record["seconds"] = time.monotonic() - began
    write_json(record, out_dir / "report.json")
    write_text(render(record, ev.config, run_dir, len(layers)), out_dir / "report.md")
    say(f"written {out_dir / 'report.md'} in {record['seconds']:.0f} s")
    return out_dir


def render_header(record: dict, config, run_dir: Path, layer_count: int) -> list[str]:
    r = record["reconstruction"]
    lines = [f"# Report: run `{run_dir.name}`", "",
             f"Generated by `python -m latent_ops.report --run {run_dir} --data DATA --seed {record['seed']}` on "
             f"{record['machine']} in {record['seconds']:.0f} s. Classes: {', '.join(record['classes'])}. "
             f"Latent size {config.latent_dim}, width {config.width}, {config.steps} steps.", "",
             "Feature-space numbers use this project's own evaluator (a CIFAR-10 classifier trained from "
             f"scratch here, test accuracy {100 * record['evaluator_test_accuracy']:.2f}% with flip TTA as "
             "loaded here; see its card, `autoencoder/weights/evaluator/card.md`). **They are not Inception FID/KID "
             "numbers** and cannot be compared with published ones: compare each with the real-vs-real floor beside it.",
             "", "## Model", "", "![architecture](architecture.png)", "",
             f"`architecture.svg` / `architecture.png`: {layer_count} layers traced from the run's own networks, "
             "with their output shapes, the data flow between the networks and the compose pipeline.", "",
             "## Reconstruction (test split)", "",
             "| | MSE | mean PSNR (dB) | PSNR of mean MSE (dB) |", "|---|---|---|---|",
             f"| autoencoder | {r['mse']:.5f} | {r['psnr_db']:.2f} | {r['psnr_of_mean_mse_db']:.2f} |"]
    if "pca_floor" in record:
        p = record["pca_floor"]
        lines.append(f"| PCA, {p['components']} components (linear floor) | {p['mse']:.5f} | {p['psnr_db']:.2f} | "
                     f"{p['psnr_of_mean_mse_db']:.2f} |")
    return lines + ["", "![reconstructions](reconstructions.png)", "", "Pairs of columns: test image, then its "
                    "reconstruction.", ""]


def render_samples(record: dict) -> list[str]:
    latent = any("latent prior" in r["name"] for r in record["sets"])
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(record["prior_class_shares"].items(),
                                                                key=lambda kv: -kv[1]))
    return ["## Samples: quality, sharpness, uniqueness, diversity", "",
            "Frechet distance and KID against the test split's evaluator features; sharpness is the mean "
            "variance of the Laplacian (higher is sharper); NN columns give the median RMS distance to the "
            f"nearest training image (over up to {record['neighbour_count']} images of each set; a copy of a "
            "training image scores 0); diversity is the mean pairwise RMS distance within 64 images.", "",
            quality_table(record["sets"]), "![prior samples](prior-samples.png)", "",
            "Samples of N(0, I), the prior the latent critic pulls codes towards."
            + (" Below: samples of the learned latent prior (`latent_ops.prior`), the run's classes in turn."
               if latent else ""), "",
            *(["![latent prior samples](latent-prior-samples.png)", ""] if latent else []),
            f"Prior samples, as the evaluator classifies them: {shares}.", ""]


def render_composition(c: dict) -> list[str]:
    best, mean, real = c["recognisability_best"], c["recognisability_mean"], c["recognisability_real_subject_mean"]
    stem, subject, gate = Path(c["folder"]).name, c["subject"], c.get("rank_gate", 0.2)
    intent = ("the evaluator's class probabilities of the decoded images" if c["intent_source"] == "evaluator"
              else "a linear class probe on the codes")
    share = ([f"Of the whole unselected pool of {c['candidates_composed']}, "
              f"{100 * c['pool']['share_every_intent_term_at_least_gate']:.0f}% have every intent term "
              f"(P({subject}), P(bird)+P(airplane)) at least {gate:g}; of the kept {c['kept']['count']}, "
              f"{100 * c['kept']['share_every_intent_term_at_least_gate']:.0f}%.", ""]
             if "share_every_intent_term_at_least_gate" in c.get("pool", {}) else [])
    return [f"## Composed: `{c['expression']}`", "", f"![best]({stem}-best_x8.png)", "",
            ("The best image, chosen among the refined candidates that passed the gate by the agreement of the "
             "evaluator and the perceptual net and by the rising mass above the back (latent_ops.best_choice), after "
             "compose's ranking (" if c.get("best_rule") == "agreement" else "The best-ranked image (compose's ranking: ")
            + f"candidates with every intent term at least {gate:g} first, "
            f"then the sum of the z-scores of critic realism, intent from {intent}, sharpness and capped "
            "uniqueness).", "",
            f"| recognisability | P({subject}) | P(bird)+P(airplane) | combined 2 sqrt(P(s) P(w)) |", "|---|---|---|---|",
            f"| best image | {best[subject]:.3f} | {best['winged']:.3f} | {best['combined']:.3f} |",
            f"| batch mean | {mean[subject]:.3f} | {mean['winged']:.3f} | {mean['combined']:.3f} |",
            f"| real test {subject} images (mean) | {real[subject]:.3f} | {real['winged']:.3f} | "
            f"{real['combined']:.3f} |", "", *share,
            f"{100 * c['share_combined_over_half']:.0f}% of the saved images score a combined value over 0.5. "
            f"The best image's nearest training image is {c['best_nn_pixel']:.3f} away in pixels (RMS) and "
            f"{c['best_nn_feature']:.3f} in features.", "",
            f"![neighbours]({stem}-neighbours.png)", "",
            "Each row: a top-ranked composed image, then its three nearest training images (pixels).", "",
            quality_table(c["sets"]), f"![batch]({stem}-batch64.png)", "", "The batch of 64, ranked best first.", "",
            f"![evaluator top 8]({stem}-evaluator-top8.png)", "",
            f"The 8 the evaluator finds most {subject}-and-winged (combined score, highest first): "
            + ", ".join(f"{t['combined']:.2f}" for t in c["evaluator_top"]) + ". Chosen by the same "
            "classifier that scores them, so these scores are optimistic.", ""]


def render(record: dict, config, run_dir: Path, layer_count: int) -> str:
    lines = render_header(record, config, run_dir, layer_count) + render_samples(record)
    for c in record["compositions"]:
        lines += render_composition(c)
    return "\n".join(lines) + "\n"


def main(**flags) -> None:
    """Write outputs/report/<run>/report.md for RUN (default: the newest run); every field of ReportConfig
    is a flag. Expressions: ';'-separated."""
    run_cli(lambda: report(**flags))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
