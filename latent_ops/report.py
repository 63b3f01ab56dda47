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

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from autoencoder import metrics
from autoencoder.atomic import save_tensors, write_json, write_text
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import SHIPPED, WEIGHTS_FILE, Evaluator, load_evaluator
from autoencoder.cli import ConfigError, check_ranges, dataclass_from_flags, run_cli, save_config
from autoencoder.compute import machine_name
from autoencoder.data import load_cifar10, to_float, to_uint8
from autoencoder.diagram import draw_run
from autoencoder.evaluate import reconstruct
from autoencoder.run_folder import load_run, weights_digest
from latent_ops.compose import IMAGES_FILE, compose, folder_name
from latent_ops.encode import decode_codes
from latent_ops.expression import parse, term_parts
from latent_ops.images import save_grid
from latent_ops.runs import resolve_run


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
        return load_file(str(file))["features"]
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
    data: str = "data"  # CIFAR-10 folder (needed: every metric compares with real images)
    cache_dir: str = "data/cache"  # decoded data and evaluator features are cached here
    out: str = ""  # output folder; empty: outputs/report/<run>
    expressions: str = "horse+wings"  # ';'-separated expressions to compose and score
    seed: int = 0  # prior draws, subsets and compose seeds
    prior_samples: int = 10000  # N(0, I) samples decoded for the prior's row
    neighbour_count: int = 1000  # images per set searched for their nearest training image
    kid_subset: int = 1000  # subset size of the kernel distance
    pca_floor: bool = True  # also fit PCA with latent_dim components (the linear floor)
    evaluator: str = ""  # evaluator folder; empty: the committed one
    compose_n: int = 64  # images composed per expression (without a pool)
    compose_pool: int = 0  # with N > 0: compose a pool of N, keep a diverse 64; rows for the pool and the kept
    compose_project: float = 0.0  # compose's --project (SDEdit noise level through the latent prior)
    compose_refine_prior: float = 0.0  # compose's --refine_prior (the prior's weight in the refinement)
    compose_guidance: float = 2.0  # compose's --guidance (the latent prior's guidance per condition)

    @property
    def expression_list(self) -> list[str]:
        return [e.strip() for e in self.expressions.split(";") if e.strip()]


REPORT_RANGES = {"seed": (0, 2**31 - 1), "prior_samples": (2, 10**6), "neighbour_count": (1, 10**6),
                 "kid_subset": (2, 10**5), "compose_n": (2, 10**5), "compose_pool": (0, 10**5),
                 "compose_project": (0, 1), "compose_refine_prior": (0, 1), "compose_guidance": (0, 100)}


def make_report_config(**flags) -> ReportConfig:
    config = dataclass_from_flags(ReportConfig, {}, flags)
    check_ranges(config, REPORT_RANGES)
    if not config.expression_list:
        raise ConfigError("--expressions is empty; give one or more, ';'-separated, e.g. horse+wings")
    for expression in config.expression_list:
        parse(expression)
    return config


def latent_prior_samples(run_dir: Path, config, count: int, seed: int, device: torch.device,
                         guidance: float = 2.0, steps: int = 32, chunk: int = 1000) -> torch.Tensor | None:
    """``count`` codes from the run's latent prior, the run's classes in turn (guidance ``guidance``);
    None when the run has no prior."""
    from latent_ops.flow import sample
    from latent_ops.trained_prior import load_prior, prior_folder

    if not (prior_folder(run_dir) / "model.safetensors").exists():
        return None
    prior = load_prior(run_dir, device)
    classes = torch.tensor([CIFAR10_CLASSES.index(c) for c in config.class_names])
    row_labels = classes[torch.arange(count) % len(classes)]  # the run's classes in turn
    generator = torch.Generator(device).manual_seed(seed)
    codes = torch.empty(count, prior.dim)
    for label in classes.tolist():
        rows = (row_labels == label).nonzero().squeeze(1)
        for part in rows.split(chunk):
            codes[part] = sample(prior, len(part), [(label, guidance)], steps, generator).cpu()
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
    data, cache_dir, seed, compose_n = settings.data, settings.cache_dir, settings.seed, settings.compose_n
    prior_samples, neighbour_count, kid_subset = settings.prior_samples, settings.neighbour_count, settings.kid_subset
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(settings, out_dir / "config.json")
    opened = load_run(run_dir)
    config, nets = opened.config, opened.nets
    device = opened.device
    dtype = opened.dtype
    nets = nets.to(device)
    evaluator_dir = Path(settings.evaluator) if settings.evaluator else SHIPPED
    judge = load_evaluator(evaluator_dir, device=device.type)
    expressions = settings.expression_list

    train = load_cifar10(data, "train", config.classes, cache_dir=cache_dir)
    test = load_cifar10(data, "test", config.classes, cache_dir=cache_dir)
    say(f"evaluator features of {len(train)} train and {len(test)} test images (cached after the first time)")
    train_features = cached_features(judge, evaluator_dir, train.images, "train", cache_dir)
    test_features = cached_features(judge, evaluator_dir, test.images, "test", cache_dir)
    generator = torch.Generator().manual_seed(seed)
    record: dict = {"run": str(run_dir), "weights_digest": weights_digest(run_dir), "seed": seed, "classes": list(config.class_names),
                    "evaluator": str(evaluator_dir), "neighbour_count": neighbour_count, "machine": machine_name(device)}
    accuracy = judge.accuracy(test.images, test.labels)
    record["evaluator_test_accuracy"] = accuracy

    # --- reconstruction ---
    say("reconstructions of the test split")
    rec = reconstruct(nets, test.images, device, dtype)
    record["reconstruction"] = metrics.reconstruction(to_float(test.images), rec)
    if settings.pca_floor:
        say(f"PCA floor with {config.latent_dim} components")
        pca = metrics.pca_reconstruction(to_float(train.images), to_float(test.images), config.latent_dim, seed)
        record["pca_floor"] = {"components": config.latent_dim, **metrics.reconstruction(to_float(test.images), pca)}
    rec_uint8 = to_uint8(rec)

    # --- real floors and model sets ---
    say("real-vs-real floors")
    size = min(len(test), prior_samples)
    train_pick = torch.randperm(len(train), generator=generator)[:size]
    held = torch.ones(len(train), dtype=torch.bool)
    held[train_pick] = False  # the train subset is compared with the rest of train in the NN columns
    train_floats = to_float(train.images)  # (N, 3, 32, 32), once: every NN search reads it
    rows = [sample_set_metrics("real: train subset vs test (the floor)", train.images[train_pick],
                               train_features[train_pick], test_features, train_floats[held],
                               train_features[held], seed, neighbour_count, kid_subset),
            sample_set_metrics("real: test images", test.images, test_features, test_features,
                               train_floats, train_features, seed, neighbour_count, kid_subset)]
    rows[1].pop("frechet", None), rows[1].pop("kid", None), rows[1].pop("kid_std", None)  # test vs itself
    rec_features = judge.features(rec_uint8)
    rows.append(sample_set_metrics("model: reconstructions of test", rec_uint8, rec_features, test_features,
                                   train_floats, train_features, seed, neighbour_count, kid_subset))
    say(f"{prior_samples} prior samples")
    prior_codes = torch.randn(prior_samples, config.latent_dim, generator=generator)
    prior = to_uint8(decode_codes(nets, prior_codes.to(device), dtype=dtype).cpu())
    prior_features = judge.features(prior)
    rows.append(sample_set_metrics("model: prior samples N(0, I)", prior, prior_features, test_features,
                                   train_floats, train_features, seed, neighbour_count, kid_subset))
    learned = latent_prior_samples(run_dir, config, prior_samples, seed, device)
    if learned is None:
        say("no latent prior in the run (python -m latent_ops.prior trains one): its row is skipped")
    else:
        say(f"{prior_samples} latent prior samples")
        learned_images = to_uint8(decode_codes(nets, learned.to(device), dtype=dtype).cpu())
        rows.append(sample_set_metrics("model: latent prior samples (classes in turn)", learned_images,
                                       judge.features(learned_images), test_features, train_floats, train_features,
                                       seed, neighbour_count, kid_subset))
        save_grid(to_float(learned_images[:64]), out_dir / "latent-prior-samples.png", nrow=8, scale=3)
    record["sets"] = rows
    prior_classes = torch.bincount(judge.logits(prior).argmax(1), minlength=10) / len(prior)
    record["prior_class_shares"] = dict(zip(CIFAR10_CLASSES, prior_classes.tolist()))
    save_grid(to_float(prior[:64]), out_dir / "prior-samples.png", nrow=8, scale=3)
    pairs = torch.stack([to_float(test.images[:32]), to_float(rec_uint8[:32])], 1).flatten(0, 1)
    save_grid(pairs, out_dir / "reconstructions.png", nrow=16, scale=3)

    # --- composed expressions ---
    record["compositions"] = []
    for expression in expressions:
        say(f"compose {expression}")
        folder = compose(expression, run=str(run_dir), data=data, n=compose_n, seed=seed, cache_dir=cache_dir,
                         out=str(out_dir / "compose" / folder_name(expression, seed)), quiet=True,
                         pool=settings.compose_pool, project=settings.compose_project,
                         refine_prior=settings.compose_refine_prior, guidance=settings.compose_guidance)
        images = load_file(str(folder / IMAGES_FILE))["images"]  # ranked, best first (at most 1024)
        scores = json.loads((folder / "scores.json").read_text())
        kept_ranks = [c["rank"] for c in scores["candidates"] if c["kept"] and c["rank"] < len(images)]
        subject = subject_of(scores.get("intent_weights", scores["weights"]))  # a learned concept: what it was learned from
        if subject is None:
            say(f"{expression} starts from no class: recognisability skipped")
            continue
        subject_test = test.labels == CIFAR10_CLASSES.index(subject)
        features = judge.features(images)
        recognised = metrics.recognisability(judge.probabilities(images), CIFAR10_CLASSES, subject=subject)
        entry = {"expression": expression, "subject": subject, "folder": str(folder),
                 "intent_source": scores["intent_source"], "critic_mean_after": scores["critic_mean_after"],
                 "candidates_composed": scores["candidates_composed"], "pool": scores["pool"],
                 "kept": scores["kept"], "best": scores["best"]}
        entry["recognisability_best"] = {k: v[0].item() for k, v in recognised.items()}
        entry["recognisability_mean"] = {k: v.mean().item() for k, v in recognised.items()}
        entry["share_combined_over_half"] = (recognised["combined"] > 0.5).float().mean().item()
        by_evaluator = recognised["combined"].argsort(descending=True)
        entry["evaluator_top"] = [{"rank_in_batch": int(i), **{k: v[i].item() for k, v in recognised.items()}}
                                  for i in by_evaluator[:8]]
        save_grid(to_float(images[by_evaluator[:8]]), out_dir / f"{folder.name}-evaluator-top8.png", nrow=8, scale=4)
        real_horses = test.images[subject_test] if subject_test.any() else test.images
        horse_features = test_features[subject_test] if subject_test.any() else test_features
        pick = torch.randperm(len(real_horses), generator=torch.Generator().manual_seed(seed))[:len(images)]
        pooled = settings.compose_pool > 0
        entry["sets"] = [
            sample_set_metrics(f"composed {expression}" + (f", the unselected pool of {len(images)}" if pooled else ""),
                               images, features, horse_features, train_floats, train_features, seed,
                               neighbour_count, kid_subset),
            *([sample_set_metrics(f"composed {expression}, the kept {len(kept_ranks)}", images[kept_ranks],
                                  features[kept_ranks], horse_features, train_floats, train_features, seed,
                                  neighbour_count, kid_subset)] if pooled else []),
            sample_set_metrics(f"real: {len(pick)} test {subject} images (the floor)", real_horses[pick],
                               horse_features[pick], horse_features, train_floats, train_features, seed,
                               neighbour_count, kid_subset),
        ]
        real_recognised = metrics.recognisability(judge.probabilities(real_horses[pick]), CIFAR10_CLASSES, subject=subject)
        entry["recognisability_real_subject_mean"] = {k: v.mean().item() for k, v in real_recognised.items()}
        best_pixel, _ = metrics.nearest_distances(to_float(images[:1]), train_floats)
        best_feature, _ = metrics.nearest_distances(features[:1], train_features)
        entry["best_nn_pixel"], entry["best_nn_feature"] = best_pixel.item(), best_feature.item()
        for name in ("best_x8.png", "batch64.png", "neighbours.png", "refinement.png"):
            shutil.copyfile(folder / name, out_dir / f"{folder.name}-{name}")
        record["compositions"].append(entry)

    say("architecture diagram")
    files, layers = draw_run(run_dir, out_dir)
    record["diagram"] = [str(f) for f in files]
    record["seconds"] = time.monotonic() - began
    write_json(record, out_dir / "report.json")
    write_text(render(record, config, run_dir, out_dir, len(layers)), out_dir / "report.md")
    say(f"written {out_dir / 'report.md'} in {record['seconds']:.0f} s")
    return out_dir


def render(record: dict, config, run_dir: Path, out_dir: Path, layer_count: int) -> str:
    r = record["reconstruction"]
    lines = [f"# Report: run `{run_dir.name}`", "",
             f"Generated by `python -m latent_ops.report --run {run_dir} --data DATA --seed {record['seed']}` on "
             f"{record['machine']} in {record['seconds']:.0f} s. Classes: {', '.join(record['classes'])}. "
             f"Latent size {config.latent_dim}, width {config.width}, {config.steps} steps.", "",
             "Feature-space numbers use this project's own evaluator (a CIFAR-10 classifier trained from "
             f"scratch here, test accuracy {100 * record['evaluator_test_accuracy']:.2f}% with flip TTA as "
             "loaded here; see its card, `autoencoder/weights/evaluator/card.md`). **They are not Inception FID/KID numbers** and cannot be compared with "
             "published ones: compare each with the real-vs-real floor beside it.", "",
             "## Model", "", "![architecture](architecture.png)", "",
             f"`architecture.svg` / `architecture.png`: {layer_count} layers traced from the run's own networks, "
             "with their output shapes, the data flow between the networks and the compose pipeline.", "",
             "## Reconstruction (test split)", "",
             "| | MSE | mean PSNR (dB) | PSNR of mean MSE (dB) |", "|---|---|---|---|",
             f"| autoencoder | {r['mse']:.5f} | {r['psnr_db']:.2f} | {r['psnr_of_mean_mse_db']:.2f} |"]
    if "pca_floor" in record:
        p = record["pca_floor"]
        lines.append(f"| PCA, {p['components']} components (linear floor) | {p['mse']:.5f} | {p['psnr_db']:.2f} | "
                     f"{p['psnr_of_mean_mse_db']:.2f} |")
    lines += ["", "![reconstructions](reconstructions.png)", "",
              "Pairs of columns: test image, then its reconstruction.", "",
              "## Samples: quality, sharpness, uniqueness, diversity", "",
              "Frechet distance and KID against the test split's evaluator features; sharpness is the mean "
              "variance of the Laplacian (higher is sharper); NN columns give the median RMS distance to the "
              f"nearest training image (over up to {record['neighbour_count']} images of each set; a copy of a "
              "training image scores 0); diversity is the mean pairwise RMS "
              "distance within 64 images.", "",
              quality_table(record["sets"]),
              "![prior samples](prior-samples.png)", "",
              "Samples of N(0, I), the prior the latent critic pulls codes towards."
              + (" Below: samples of the learned latent prior (`latent_ops.prior`), the run's classes in turn."
                 if any("latent prior" in r["name"] for r in record["sets"]) else ""), "",
              *(["![latent prior samples](latent-prior-samples.png)", ""]
                if any("latent prior" in r["name"] for r in record["sets"]) else []),
              "Prior samples, as the evaluator classifies them: " + ", ".join(
                  f"{k} {100 * v:.0f}%" for k, v in sorted(record["prior_class_shares"].items(),
                                                          key=lambda kv: -kv[1])) + ".", ""]
    for c in record["compositions"]:
        best, mean, real = c["recognisability_best"], c["recognisability_mean"], c["recognisability_real_subject_mean"]
        stem, subject = Path(c["folder"]).name, c["subject"]
        intent = ("the evaluator's class probabilities of the decoded images" if c["intent_source"] == "evaluator"
                  else "a linear class probe on the codes")
        lines += [f"## Composed: `{c['expression']}`", "",
                  f"![best]({stem}-best_x8.png)", "",
                  f"The best-ranked image (compose's ranking: candidates with every intent term at least "
                  f"--rank_gate first, then the sum of the z-scores of critic realism, intent from {intent}, "
                  "sharpness and capped uniqueness).", "",
                  f"| recognisability | P({subject}) | P(bird)+P(airplane) | combined 2 sqrt(P(s) P(w)) |",
                  "|---|---|---|---|",
                  f"| best image | {best[subject]:.3f} | {best['winged']:.3f} | {best['combined']:.3f} |",
                  f"| batch mean | {mean[subject]:.3f} | {mean['winged']:.3f} | {mean['combined']:.3f} |",
                  f"| real test {subject} images (mean) | {real[subject]:.3f} | {real['winged']:.3f} | "
                  f"{real['combined']:.3f} |",
                  "", *([f"Of the whole unselected pool of {c['candidates_composed']}, "
                        f"{100 * c['pool']['share_every_intent_term_at_least_0.2']:.0f}% have every intent term "
                        f"(P({subject}), P(bird)+P(airplane)) at least 0.2; of the kept {c['kept']['count']}, "
                        f"{100 * c['kept']['share_every_intent_term_at_least_0.2']:.0f}%.", ""]
                       if "share_every_intent_term_at_least_0.2" in c.get("pool", {}) else []),
                  f"{100 * c['share_combined_over_half']:.0f}% of the saved images score a combined value over 0.5. "
                  f"The best image's nearest training image is {c['best_nn_pixel']:.3f} away in pixels (RMS) and "
                  f"{c['best_nn_feature']:.3f} in features.", "",
                  f"![neighbours]({stem}-neighbours.png)", "",
                  "Each row: a top-ranked composed image, then its three nearest training images (pixels).", "",
                  quality_table(c["sets"]),
                  f"![batch]({stem}-batch64.png)", "",
                  "The batch of 64, ranked best first.", "",
                  f"![evaluator top 8]({stem}-evaluator-top8.png)", "",
                  f"The 8 the evaluator finds most {subject}-and-winged (combined score, highest first): "
                  + ", ".join(f"{t['combined']:.2f}" for t in c["evaluator_top"]) + ". Chosen by the same "
                  "classifier that scores them, so these scores are optimistic.", ""]
    return "\n".join(lines) + "\n"


def main(**flags) -> None:
    """Write outputs/report/<run>/report.md for RUN (default: the newest run); every field of ReportConfig
    is a flag. Expressions: ';'-separated."""
    run_cli(lambda: report(**flags))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
