"""Compose images from a concept expression: sample codes, decode, refine with the critic, rank, write.

``horse+wings`` draws horse codes (by default codes of real held-out test horses, the
empirical density; ``--source density`` samples the fitted Gaussian mixture instead)
and adds the calibrated wing step;
the codes are refined by the image critic (latent_ops.refine), decoded, scored for
realism (critic logit), intent (class probabilities of the decoded images from the
project's evaluator classifier, or with ``--intent probe`` from a linear class probe on
the codes: the expression's classes and, for wing directions, P(bird)+P(airplane),
combined by geometric mean so it is high only when every part is present) and uniqueness (RMS pixel distance to the nearest
CIFAR-10 training image, counted up to that of real test images), and ranked by the sum
of the three batch z-scores.

Writes to ``outputs/compose/<expr>-<seed>/``: best.png (+ best_x8.png), batch64.png,
neighbours.png, refinement.png, scores.json and images.safetensors
(the ranked batch as uint8, best first).

Examples:
    python -m latent_ops.compose horse+wings
    python -m latent_ops.compose "horse:2+0.8*wings" --seed 3 --refine-steps 30 --strength 1.2
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from autoencoder.checkpoint import RunError, load_run
from autoencoder.config import CIFAR10_CLASSES
from autoencoder.data import DataNotFoundError, load_split, to_uint8
from autoencoder.evaluator import SHIPPED, WEIGHTS_FILE, load_evaluator
from autoencoder.hardware import resolve_device
from latent_ops import ranking
from latent_ops.concepts import (DENSITIES_FILE, WINGED, Concepts, fit_run_concepts, heldout_members,
                                 load_concepts)
from latent_ops.encode import BANK_FILE, LatentBank, encode_run, load_bank
from latent_ops.expression import ExpressionError, parse
from latent_ops.images import save_grid, save_single
from latent_ops.metrics import mean_pairwise_distance
from latent_ops.refine import critic_scores, refine_codes
from latent_ops.runs import resolve_run

SOURCES = ("heldout", "density")
INTENTS = ("auto", "evaluator", "probe")


def resolve_intent(intent: str) -> str:
    """Where class probabilities for the intent score come from: the committed evaluator
    classifier on the decoded images ("auto" when it is there), or the latent class probe."""
    if intent not in INTENTS:
        raise ExpressionError(f"--intent must be one of {', '.join(INTENTS)}, got {intent!r}")
    if intent == "auto":
        return "evaluator" if (SHIPPED / WEIGHTS_FILE).exists() else "probe"
    if intent == "evaluator" and not (SHIPPED / WEIGHTS_FILE).exists():
        raise ExpressionError(f"--intent evaluator needs the evaluator in {SHIPPED}; train it with "
                              f"python -m autoencoder.evaluator --ship {SHIPPED}, or use --intent probe")
    return intent
IMAGES_FILE = "images.safetensors"  # the ranked batch, uint8 (n, 3, 32, 32), best first


def ensure_concepts(run: Path, data: str, cache_dir: str) -> Concepts:
    """The run's concepts, encoding the data set and fitting them first when missing."""
    if not (run / DENSITIES_FILE).exists():
        if not (run / BANK_FILE).exists():
            print(f"compose: encoding the data set into {run / BANK_FILE} (once)")
            encode_run(run, data, cache_dir)
        print(f"compose: fitting clusters and directions of {run} (once)")
        return fit_run_concepts(run, data, cache_dir)
    return load_concepts(run)


def uniqueness_reference(data: str, cache_dir: str, train_images: torch.Tensor, seed: int, count: int = 256) -> float:
    """Median distance from real held-out images to their nearest training image."""
    test = load_split(data, "test", cache_dir).images
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:count]
    distance, _ = ranking.nearest_neighbours(test[pick].float() / 127.5 - 1, train_images, k=1)
    return distance[:, 0].median().item()


def sample_expression(weights: dict[str, float], concepts: Concepts, count: int, rng: np.random.Generator,
                      strength: float = 1.0, temperature: float = 1.0, source: str = "heldout",
                      bank: LatentBank | None = None) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(count, D) codes: the weighted sum of class/cluster draws plus calibrated direction steps.

    ``source`` "heldout" draws codes of real test images of each class or cluster (the
    empirical density; test images are not in the training set); "density" samples the
    fitted Gaussian mixture. Also returns, per concept, the test-split positions drawn.
    """
    densities = [n for n in weights if n in concepts.densities]
    if not densities:
        raise ExpressionError(f"the expression needs at least one class or cluster to start from "
                              f"(e.g. horse+wings); it has only {', '.join(weights)}")
    if source not in SOURCES:
        raise ExpressionError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    drawn: dict[str, list[int]] = {}
    codes = 0.0
    for name in densities:
        if source == "density":
            part = concepts.sample(name, count, rng, temperature)
        else:
            members = heldout_members(name, concepts, bank)
            pick = rng.choice(members, size=count, replace=len(members) < count)
            drawn[name] = [int(bank.indices["test"][i]) for i in pick]
            part = bank.codes["test"][pick]
        codes = codes + weights[name] * part
    for name in weights:
        if name in concepts.directions:
            d = concepts.directions[name]
            codes = codes + (weights[name] * strength * d.step) * d.vector[None, :]
    return codes.astype(np.float32), drawn


def intent_terms(weights: dict[str, float], concepts: Concepts, codes: torch.Tensor,
                 probs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per expression term, the probability (N,) that a code shows it (1 - that for negative terms).

    Class probabilities come from ``probs`` (class name -> (N,), e.g. the evaluator's on the
    decoded images) or else from the latent class probe on ``codes``.
    """
    if probs is None:
        probs = concepts.probe.probabilities(codes) if concepts.probe is not None else {}
    terms = {}
    for name, w in weights.items():
        base = name.split(":")[0]
        if name in concepts.densities and base in probs:
            p = probs[base]
        elif name.startswith("wings") and all(c in probs for c in WINGED):
            p = probs["bird"] + probs["airplane"]
        elif name in concepts.directions:
            d = concepts.directions[name]
            distance = torch.from_numpy(d.signed_distance(codes.cpu().numpy()))
            p = torch.sigmoid(4 * distance / max(d.step, 1e-6))
        else:
            continue
        terms[name] = p if w > 0 else 1 - p
    return terms


def folder_name(expression: str, seed: int) -> str:
    safe = expression.replace("*", "x").replace(":", "_").replace("/", "over").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9+.\-_x]", "", safe) + f"-{seed}"


def compose(expression: str, run: str = "", data: str = "data", n: int = 64, seed: int = 0,
            refine_steps: int = 10, refine_step_size: float = 0.02, refine_anchor: float = 1.0,
            strength: float = 1.0, temperature: float = 1.0, source: str = "heldout", out: str = "",
            cache_dir: str = "data/cache", quiet: bool = False, intent: str = "auto") -> Path:
    """Compose ``n`` images for ``expression``; returns the output folder."""
    began = time.monotonic()
    run_dir = resolve_run(run)
    config, nets = load_run(run_dir)
    device = resolve_device(config)
    nets = nets.to(device)
    concepts = ensure_concepts(run_dir, data, cache_dir)
    weights = parse(expression, concepts.names)

    rng = np.random.default_rng(seed)
    bank = load_bank(run_dir) if source == "heldout" else None
    codes, drawn = sample_expression(weights, concepts, n, rng, strength, temperature, source, bank)
    z0 = torch.from_numpy(codes).to(device)
    generator = torch.Generator().manual_seed(seed)
    z, history = refine_codes(nets, z0, refine_steps, refine_step_size, refine_anchor, generator=generator)
    with torch.no_grad():
        before, after = nets.decoder(z0).float(), nets.decoder(z).float()  # (n, 3, 32, 32)
        realism_before = critic_scores(nets, z0).float().cpu()
        realism = critic_scores(nets, z).float().cpu()

    intent_source = resolve_intent(intent)
    probs = None
    if intent_source == "evaluator":
        p = load_evaluator(device=device.type).probabilities(after.cpu())  # (n, 10)
        probs = {name: p[:, i] for i, name in enumerate(CIFAR10_CLASSES)}
    intents = intent_terms(weights, concepts, z, probs)
    intent = ranking.geometric_mean(torch.stack(list(intents.values()), 1)) if intents else torch.ones(n)
    terms = {"realism": realism, "intent": intent}
    reference = None
    try:
        train_images = load_split(data, "train", cache_dir).images
        distance, neighbour_index = ranking.nearest_neighbours(after.cpu(), train_images, k=3)
        reference = uniqueness_reference(data, cache_dir, train_images, seed)
        terms["uniqueness"] = ranking.capped_uniqueness(distance[:, 0], reference)
    except DataNotFoundError as error:
        train_images, distance, neighbour_index = None, None, None
        print(f"compose: uniqueness skipped, no training images to compare with ({error})")
    combined = ranking.combined_score(terms)
    order = combined.argsort(descending=True)

    out_dir = Path(out) if out else Path("outputs/compose") / folder_name(expression, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = after[order.to(after.device)].cpu()
    save_single(ranked[0], out_dir / "best.png")
    save_single(ranked[0], out_dir / "best_x8.png", scale=8)
    save_grid(ranked, out_dir / "batch64.png", nrow=8, scale=3)
    save_file({"images": to_uint8(ranked).contiguous()}, str(out_dir / IMAGES_FILE))  # for metrics and reports
    shown = min(16, n)
    pairs = torch.cat([torch.cat([before[i:i + 8], after[i:i + 8]]) for i in range(0, shown, 8)]).cpu()
    save_grid(pairs, out_dir / "refinement.png", nrow=min(8, n), scale=3)
    if train_images is not None:
        rows = []
        for i in order[:8].tolist():
            nn = train_images[neighbour_index[i]].float() / 127.5 - 1
            rows.append(torch.cat([after[i:i + 1].cpu(), nn]))
        save_grid(torch.cat(rows), out_dir / "neighbours.png", nrow=4, scale=3)

    wings = concepts.directions.get("wings")
    candidates = []
    for rank, i in enumerate(order.tolist()):
        entry = {"rank": rank, "candidate": i, "combined": combined[i].item(),
                 "realism_before_refinement": realism_before[i].item(), "realism": realism[i].item(),
                 "intent": intent[i].item(), "intent_terms": {k: v[i].item() for k, v in intents.items()}}
        if distance is not None:
            entry.update(uniqueness=distance[i, 0].item(), nearest_train_indices=neighbour_index[i].tolist(),
                         nearest_train_distances=distance[i].tolist())
        if drawn:
            entry["source_test_indices"] = {name: idx[i] for name, idx in drawn.items()}
        if wings is not None:
            entry["wings_signed_distance"] = float(wings.signed_distance(z[i:i + 1].cpu().numpy())[0])
        candidates.append(entry)
    summary = {
        "expression": expression, "weights": weights, "seed": seed, "run": str(run_dir), "n": n,
        "strength": strength, "temperature": temperature, "source": source, "intent_source": intent_source,
        "refine_steps": refine_steps,
        "refine_step_size": refine_step_size, "refine_anchor": refine_anchor,
        "critic_mean_per_refine_step": history,
        "critic_mean_before": realism_before.mean().item(), "critic_mean_after": realism.mean().item(),
        "diversity_before": mean_pairwise_distance(before.cpu()) if n > 1 else 0.0,
        "diversity_after": mean_pairwise_distance(after.cpu()) if n > 1 else 0.0,
        "uniqueness_reference": reference,
        "score": ("combined = z(realism) + z(intent) + z(min(uniqueness, uniqueness_reference)), z-scores "
                  "within this batch; uniqueness_reference is the median nearest-training-image distance of "
                  "real test images"),
        "seconds": time.monotonic() - began, "candidates": candidates,
    }
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not quiet:
        best = candidates[0]
        print(f"{expression}: {n} images in {summary['seconds']:.1f} s -> {out_dir}/")
        print(f"  critic mean {summary['critic_mean_before']:.3f} -> {summary['critic_mean_after']:.3f} after "
              f"{refine_steps} refinement steps; diversity {summary['diversity_before']:.3f} -> "
              f"{summary['diversity_after']:.3f} (mean pairwise RMS pixel distance)")
        print(f"  best: realism {best['realism']:.3f}, intent {best['intent']:.3f}"
              + (f", uniqueness {best['uniqueness']:.3f}" if "uniqueness" in best else ""))
    return out_dir


def main(expression: str, run: str = "", data: str = "data", n: int = 64, seed: int = 0, refine_steps: int = 10,
         refine_step_size: float = 0.02, refine_anchor: float = 1.0, strength: float = 1.0,
         temperature: float = 1.0, source: str = "heldout", out: str = "", cache_dir: str = "data/cache",
         intent: str = "auto") -> None:
    """Compose images for EXPRESSION (e.g. horse+wings) with a trained run (default: the newest)."""
    try:
        compose(str(expression), run, data, n, seed, refine_steps, refine_step_size, refine_anchor, strength,
                temperature, source, out, cache_dir, intent=intent)
    except (ExpressionError, RunError, DataNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    import fire

    fire.Fire(main)
