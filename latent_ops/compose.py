"""Compose images from a concept expression: sample codes, refine with the critic, decode, rank, write.

``horse+wings`` draws horse codes (by default codes of real held-out test horses, the
empirical density; ``--source density`` samples the fitted Gaussian mixture instead) and
adds the calibrated wing step; the codes are refined by the image critic
(latent_ops.refine), decoded, scored for realism (critic logit), intent (class
probabilities of the decoded images from the project's evaluator classifier, or with
``--intent probe`` from a linear class probe on the codes: the expression's classes and,
for wing directions, P(bird)+P(airplane), combined by geometric mean so it is high only
when every part is present) and uniqueness (RMS pixel distance to the nearest CIFAR-10
training image, counted up to that of real test images) and sharpness (variance of the
Laplacian), and ranked by the sum of their batch z-scores (sharpness weighted by
``--rank_sharpness``: without it a blurred blob that the critic and the evaluator accept
can come first). Candidates are processed ``--chunk`` at a time, so memory stays
bounded for any ``--n``.

Writes ``outputs/compose/<expr>-<seed>/`` (a short hash is added when the expression has
characters a folder name cannot keep), built in a temporary folder and renamed into place
whole: best.png (+ best_x8.png), batch64.png, neighbours.png, refinement.png, showcase.png (the best x8,
its nearest training images and the kept batch in one figure),
scores.json, config.json (every setting) and images.safetensors (the best images as
uint8, best first, at most 1024).

Examples:
    python -m latent_ops.compose horse+wings
    python -m latent_ops.compose "horse:2+0.8*wings" --seed 3 --refine-steps 30 --strength 1.2
"""
from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import replace_folder, save_tensors, write_json
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import SHIPPED, WEIGHTS_FILE, load_evaluator, load_perceptual
from autoencoder.cli import ConfigError, check_ranges, dataclass_from_flags, run_cli, save_config
from autoencoder.data import DataNotFoundError, load_split, to_float, to_uint8
from autoencoder.metrics import laplacian_variance, mean_pairwise_distance, nearest_neighbours
from autoencoder.models import ModelConfig
from autoencoder.run_folder import RunError, load_run
from latent_ops import ranking
from latent_ops.concepts import DENSITIES_FILE, WINGED, Concepts, fit_run_concepts, load_concepts
from latent_ops.encode import BANK_FILE, encode_run, load_bank
from latent_ops.expression import FOLLOWING_REGIONS, ExpressionError, parse, term_parts
from latent_ops.flow import denoise, project
from latent_ops.images import region_cells, save_grid, save_region, save_region_grid, save_single
from latent_ops.refine import critic_scores, refine_codes
from latent_ops.runs import refuse_foreign_folder, resolve_run
from latent_ops.sampling import SOURCES, DrawSettings, Sources, projection_conditions, sample_expression
from latent_ops.showcase import save_showcase
from latent_ops.trained_prior import learned_expression, learned_names, load_learned, load_prior

INTENTS = ("auto", "evaluator", "probe")
IMAGES_FILE = "images.safetensors"  # the best images, uint8 (k, 3, 32, 32), best first
MAX_SAVED_IMAGES = 1024  # images.safetensors keeps at most this many (the batch is ranked in full)
SHOWN = 64  # batch64.png: the best 64
OUTPUT_FILES = {"best.png", "best_x8.png", "batch64.png", "neighbours.png", "refinement.png", "region.png",
                "regions64.png", "showcase.png", "scores.json", "config.json", IMAGES_FILE, "contact-sheet.png", "marked.json"}
PROJECTION_STRIP = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)  # noise levels of refinement.png's last row
MAX_NAME = 80  # characters of the expression kept in a folder name


@dataclass
class ComposeConfig:
    expression: str = "horse+wings"  # the concept expression (the first argument on the command line)
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs
    data: str = "data"  # CIFAR-10 folder, for uniqueness and neighbour panels (skipped when absent)
    cache_dir: str = "data/cache"  # where the decoded data is cached
    out: str = ""  # output folder; empty: outputs/compose/<expression>-<seed>
    n: int = 64  # candidates to compose and rank
    seed: int = 0  # draws of source codes and density samples
    refine_steps: int = 10  # critic refinement steps (0: none)
    refine_step_size: float = 0.02  # gradient step size of the refinement
    refine_anchor: float = 1.0  # pull towards the starting code during refinement
    strength: float = 1.0  # scales every direction's calibrated step
    temperature: float = 1.0  # spread of --source density samples
    source: str = "heldout"  # heldout (codes of real test images), density (the fitted Gaussian mixture)
    #   or prior (the run's latent prior, latent_ops.prior)
    guidance: float = 2.0  # classifier-free guidance of the latent prior per condition (prior draws, a&b, --project)
    prior_steps: int = 32  # ODE steps of the latent prior
    project: float = 0.0  # SDEdit: edited codes go this far towards noise and the prior brings them back; 0: off
    refine_prior: float = 0.0  # each refinement step moves this share (0-1) of the way to the prior's denoised code
    pool: int = 0  # candidates to compose and rank (0: --n); a diverse 64 of the best are kept and shown
    dedup: float = 0.5  # no two kept images closer than this fraction of the pool's median pairwise distance
    intent: str = "auto"  # auto (the evaluator when shipped), evaluator or probe
    rank_sharpness: float = 1.0  # weight of sharpness (Laplacian variance) in the ranking, beside realism, intent
    #   and uniqueness (each weight 1): blurred blobs that the critic and evaluator accept sink; 0: off
    rank_gate: float = 0.2  # candidates with every intent term >= this rank above the rest (0: no gate), so
    #   the best shows every part of the expression (a sharp horse without wings does not come first)
    chunk: int = 256  # candidates refined and decoded at once: memory stays bounded for any --n

    @property
    def candidates(self) -> int:
        return self.pool or self.n


COMPOSE_RANGES = {"n": (1, 10**6), "seed": (0, 2**32 - 1), "refine_steps": (0, 10**4),
                  "refine_step_size": (0, 100), "refine_anchor": (0, 1e4), "strength": (0, 100),
                  "temperature": (1e-6, 100), "chunk": (1, 65536), "guidance": (0, 100), "prior_steps": (1, 1000),
                  "project": (0, 1), "refine_prior": (0, 1), "pool": (0, 10**6), "dedup": (0, 10),
                  "rank_sharpness": (0, 100), "rank_gate": (0, 1)}


def validate_compose_config(config: ComposeConfig) -> None:
    check_ranges(config, COMPOSE_RANGES)
    if config.source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {config.source!r}")
    if config.intent not in INTENTS:
        raise ConfigError(f"--intent must be one of {', '.join(INTENTS)}, got {config.intent!r}")
    parse(config.expression)  # grammar, length and numbers checked before any work


def make_compose_config(**flags) -> ComposeConfig:
    config = dataclass_from_flags(ComposeConfig, {}, flags)
    validate_compose_config(config)
    return config


def resolve_intent(intent: str) -> str:
    """Where class probabilities for the intent score come from: the committed evaluator
    classifier on the decoded images ("auto" when it is there), or the latent class probe."""
    if intent not in INTENTS:
        raise ExpressionError(f"--intent must be one of {', '.join(INTENTS)}, got {intent!r}")
    if intent == "auto":
        return "evaluator" if (SHIPPED / WEIGHTS_FILE).exists() else "probe"
    if intent == "evaluator" and not (SHIPPED / WEIGHTS_FILE).exists():
        raise ExpressionError(f"--intent evaluator needs the evaluator in {SHIPPED}; train it with "
                              f"python -m autoencoder.train_evaluator --ship {SHIPPED}, or use --intent probe")
    return intent


def ensure_concepts(run: Path, data: str, cache_dir: str) -> Concepts:
    """The run's concepts; the data set is encoded and the concepts fitted again when either is
    missing, damaged or was made from other weights than the run's current ones."""
    def why(file: Path, problem: RunError) -> str:
        return "(once)" if not file.exists() else f"again: {problem}"

    try:
        return load_concepts(run)
    except RunError as problem:
        try:
            load_bank(run)
        except RunError as bank_problem:
            print(f"compose: encoding the data set into {run / BANK_FILE} {why(run / BANK_FILE, bank_problem)}")
            encode_run(run, data, cache_dir)
        print(f"compose: fitting clusters and directions of {run} {why(run / DENSITIES_FILE, problem)}")
        return fit_run_concepts(run, data, cache_dir)


def uniqueness_reference(data: str, cache_dir: str, train_images: torch.Tensor, seed: int, count: int = 256) -> float:
    """Median distance from real held-out images to their nearest training image."""
    test = load_split(data, "test", cache_dir).images
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:count]
    distance, _ = nearest_neighbours(to_float(test[pick]), train_images, k=1)
    return distance[:, 0].median().item()


def intent_terms(weights: dict[str, float], concepts: Concepts, codes: torch.Tensor,
                 probs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per concept of the expression, the probability (N,) that a code shows it (1 - that for negative
    terms); a conjunction counts each of its parts, a region its direction.

    Class probabilities come from ``probs`` (class name -> (N,), e.g. the evaluator's on the
    decoded images) or else from the latent class probe on ``codes``.
    """
    if probs is None:
        probs = concepts.probe.probabilities(codes) if concepts.probe is not None else {}
    terms = {}
    for term, weight in weights.items():
        split = term_parts(term)
        for part, w in split.conjunction or ((split.concept, 1.0),):
            name, _, region = part.partition("@")
            base = name.split(":")[0]
            if region and (base in WINGED or name.startswith("wings")):
                name = "wings"  # a winged part in a region asks for a wing, not a whole bird or plane
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
            terms[name] = p if w * weight > 0 else 1 - p
    return terms


def folder_name(expression: str, seed: int) -> str:
    """A folder name for an expression and seed; two different expressions never share one.

    Expressions made only of letters, digits, ``+ - . _ :`` keep a readable name (``:``
    becomes ``~``, which the grammar never contains); any other character (``*``, ``/``,
    parentheses, spaces) adds a hash of the exact expression, and so does a name cut short.
    """
    safe = expression.replace(":", "~")
    plain = re.fullmatch(r"[A-Za-z0-9+.\-_~]+", safe) is not None and len(safe) <= MAX_NAME
    if plain:
        return f"{safe}-{seed}"
    readable = re.sub(r"[^A-Za-z0-9+.\-_~]", "", safe.replace("*", "x").replace("/", "over"))[:MAX_NAME]
    digest = hashlib.sha1(expression.encode()).hexdigest()[:8]
    return f"{readable}-{digest}-{seed}"


def output_folder(config: ComposeConfig) -> Path:
    """Where compose writes; an existing folder that is not a compose output is refused before any work."""
    out = Path(config.out) if config.out else Path("outputs/compose") / folder_name(config.expression, config.seed)
    refuse_foreign_folder(out, OUTPUT_FILES, "a compose")
    return out


@torch.no_grad()
def _decode(nets, codes: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([nets.decoder(part).float().cpu() for part in codes.split(chunk)])


def score_chunk(nets, z0: torch.Tensor, config: ComposeConfig, weights: dict, concepts: Concepts, judge,
                train_images: torch.Tensor | None, prior_denoise=None) -> dict[str, torch.Tensor]:
    """Refine, decode and score one chunk of candidate codes; returns per-candidate tensors on the CPU."""
    z, history = refine_codes(nets, z0, config.refine_steps, config.refine_step_size, config.refine_anchor,
                              prior_denoise=prior_denoise, prior_weight=config.refine_prior)
    with torch.no_grad():
        after = nets.decoder(z).float()  # (c, 3, 32, 32)
        out = {"z": z.cpu(), "realism_before": critic_scores(nets, z0).float().cpu(),
               "realism": nets.image_critic(after).float().cpu(),
               "sharpness": laplacian_variance(after).cpu(),
               "history": torch.tensor(history) * len(z)}
    probs = None
    if judge is not None:
        p = judge.probabilities(after.cpu())  # (c, 10)
        probs = {name: p[:, i] for i, name in enumerate(CIFAR10_CLASSES)}
    for name, value in intent_terms(weights, concepts, z, probs).items():
        out[f"intent/{name}"] = value.float().cpu()
    if train_images is not None:
        distance, index = nearest_neighbours(after.cpu(), train_images, k=3)
        out["distance"], out["neighbours"] = distance, index
    return out


def compose(expression: str, quiet: bool = False, **flags) -> Path:
    """Compose ``flags["n"]`` images for ``expression``; returns the output folder.

    ``flags``: the fields of ComposeConfig (run, data, n, seed, ...), checked like flags.
    """
    return run_compose(make_compose_config(expression=expression, **flags), quiet)


def needs_prior(config: ComposeConfig, weights: dict[str, float], learned: list[str]) -> bool:
    return (config.source == "prior" or config.project > 0 or config.refine_prior > 0
            or any(term_parts(t).conjunction for t in weights) or bool(named_learned(weights, learned)))


def named_learned(weights: dict[str, float], learned: list[str]) -> list[str]:
    """The learned concepts an expression names, anywhere in it."""
    named = set()
    for term in weights:
        split = term_parts(term)
        for part, _ in split.conjunction or ((split.concept, 1.0),):
            if part.partition("@")[0] in learned:
                named.add(part.partition("@")[0])
    return sorted(named)


def open_prior(run: Path, weights: dict[str, float], learned: list[str]):
    """The run's prior, or the one that learned the concept the expression names (one at most)."""
    named = named_learned(weights, learned)
    if len(named) > 1:
        raise ExpressionError(f"the expression names the learned concepts {' and '.join(named)}; each was learned "
                              f"by its own prior, so an expression may use one of them")
    return load_learned(run, named[0]) if named else load_prior(run)


def expand_learned(weights: dict[str, float], run: Path, learned: list[str]) -> dict[str, float]:
    """The expression with each learned concept replaced by the expression it was learned from, for the
    intent score (``pegasus`` should show what ``horse&wings@back`` asked for)."""
    if not named_learned(weights, learned):
        return weights
    expanded: dict[str, float] = {}
    for term, weight in weights.items():
        split = term_parts(term)
        for part, w in split.conjunction or ((term, 1.0),):
            name = part.partition("@")[0]
            pieces = parse(learned_expression(run, name)) if name in learned else {part: 1.0}
            for piece, v in pieces.items():
                expanded[piece] = expanded.get(piece, 0.0) + v * w * weight
    return expanded


def expression_regions(weights: dict[str, float]) -> list[str]:
    """Every region named in the expression, in its terms and inside its conjunctions."""
    names = {term_parts(t).region for t in weights}
    for term in weights:
        names |= {name.partition("@")[2] for name, _ in term_parts(term).conjunction}
    return sorted(names - {""})


def candidate_cells(regions: list[str], sources: Sources, count: int) -> torch.Tensor | None:
    """(count, rows, cols) bool: the cells each candidate's regions took (fixed regions, and those placed
    above its subject); None when the expression names no region."""
    grid = sources.code_shape[1:] if len(sources.code_shape) == 3 else (4, 4)
    fixed = region_cells([r for r in regions if r not in FOLLOWING_REGIONS], grid)[None]
    if sources.placed is not None:
        return sources.placed | fixed
    return fixed.expand(count, -1, -1) if regions else None


def cell_pictures(cells: torch.Tensor, side: int = 32) -> torch.Tensor:
    """(N, 3, side, side) in [-1, 1]: each (rows, cols) bool cell mask, white where set, black elsewhere."""
    pictures = torch.nn.functional.interpolate(cells[:, None].float(), size=(side, side), mode="nearest")
    return pictures.expand(-1, 3, -1, -1) * 2 - 1


def group_summary(found: dict[str, torch.Tensor], intent: torch.Tensor, intents: dict[str, torch.Tensor],
                  rows: torch.Tensor, reference: float | None) -> dict:
    """Means of every score over the candidates ``rows``, and the share where every intent term is >= 0.2."""
    summary = {"count": len(rows), "realism": found["realism"][rows].mean().item(),
               "sharpness": found["sharpness"][rows].mean().item(),
               "intent": intent[rows].mean().item(),
               "intent_terms": {k: v[rows].mean().item() for k, v in intents.items()}}
    if intents:
        every = torch.stack([v[rows] for v in intents.values()], 1).min(1).values
        summary["share_every_intent_term_at_least_0.2"] = (every >= 0.2).float().mean().item()
    if reference is not None:
        summary["uniqueness_median"] = found["distance"][rows, 0].median().item()
    return summary


def showcase_caption(config: ComposeConfig, best: dict, summary: dict, shown: torch.Tensor) -> str:
    """The showcase's caption: what was composed, the best image's scores, and what was kept."""
    terms = ", ".join(f"{k} {v:.2f}" for k, v in best["intent_terms"].items())
    unique = (f", nearest training image {best['uniqueness']:.3f} away (RMS pixels; real test images: "
              f"{summary['uniqueness_reference']:.3f})" if "uniqueness" in best else
              "; uniqueness not measured (no CIFAR-10 given)")
    return (f"{config.expression}, seed {config.seed}: {summary['candidates_composed']} composed, {len(shown)} kept. "
            f"Best: critic realism {best['realism']:.2f}, intent {best['intent']:.2f} ({terms}){unique}.")


def run_compose(config: ComposeConfig, quiet: bool = False) -> Path:
    began = time.monotonic()
    run_dir = resolve_run(config.run)
    out_dir = output_folder(config)
    opened = load_run(run_dir)
    run_config, nets = opened.config, opened.nets
    device = opened.device
    nets = nets.to(device, memory_format=torch.channels_last)  # refinement 1.9x faster on this CPU (bench/compose_speed.py)
    concepts = ensure_concepts(run_dir, config.data, config.cache_dir)
    learned = learned_names(run_dir)
    weights = parse(config.expression, concepts.names + learned)
    intent_source = resolve_intent(config.intent)
    judge = load_evaluator(device=device.type) if intent_source == "evaluator" else None
    prior = open_prior(run_dir, weights, learned) if needs_prior(config, weights, learned) else None
    label_names = getattr(prior, "label_names", CIFAR10_CLASSES)
    intent_weights = expand_learned(weights, run_dir, learned)
    sources = Sources(concepts, load_bank(run_dir) if config.source != "density" else None, prior,
                      ModelConfig.of(run_config).code_shape, nets.decoder,
                      load_perceptual(device=device) if set(expression_regions(weights)) & set(FOLLOWING_REGIONS) else None)
    count = config.candidates

    rng = np.random.default_rng(config.seed)
    settings = DrawSettings(config.source, config.strength, config.temperature, config.guidance, config.prior_steps)
    edited, drawn = sample_expression(weights, sources, count, rng, settings)
    codes, conditions = edited, []
    if config.project > 0:
        conditions = projection_conditions(weights, concepts, config.guidance, prior)
        codes = project(prior, torch.from_numpy(edited), config.project, conditions, config.prior_steps,
                        torch.Generator().manual_seed(config.seed)).numpy()
    reference = train_images = None
    try:
        train_images = load_split(config.data, "train", config.cache_dir).images
        reference = uniqueness_reference(config.data, config.cache_dir, train_images, config.seed)
    except DataNotFoundError:
        print(f"compose: uniqueness and neighbour panels skipped: no CIFAR-10 at --data {config.data}. To enable "
              f"them, unpack CIFAR-10 there (make data) or pass --data PATH")

    pull = None  # the prior's denoiser, which the refinement steps towards
    if prior is not None and config.refine_prior > 0:
        pull = functools.partial(denoise, prior.to(device),
                                 conditions=conditions or projection_conditions(weights, concepts, config.guidance, prior))
    parts = [score_chunk(nets, torch.from_numpy(chunk).to(device), config, intent_weights, concepts, judge,
                         train_images, pull) for chunk in np.array_split(codes, range(config.chunk, count, config.chunk))]
    found = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "history"}
    history = (sum(p["history"] for p in parts) / count).tolist()
    intents = {k.split("/", 1)[1]: v for k, v in found.items() if k.startswith("intent/")}
    intent = ranking.geometric_mean(torch.stack(list(intents.values()), 1)) if intents else torch.ones(count)
    terms = {"realism": found["realism"], "intent": intent, "sharpness": found["sharpness"]}
    if reference is not None:
        terms["uniqueness"] = ranking.capped_uniqueness(found["distance"][:, 0], reference)
    combined = ranking.combined_score(terms, {"sharpness": config.rank_sharpness})
    gated = (torch.stack(list(intents.values()), 1).min(1).values >= config.rank_gate if intents and config.rank_gate > 0
             else torch.ones(count, dtype=torch.bool))
    order = ranking.gated_order(combined, gated)

    best_ranked = order[:MAX_SAVED_IMAGES]
    with torch.no_grad():
        ranked = _decode(nets, found["z"][best_ranked].to(device), config.chunk)  # (k, 3, 32, 32), best first
    picked = ranking.diverse_subset(ranked, SHOWN, config.dedup)  # positions in ranked, best first
    shown = best_ranked[picked]
    with torch.no_grad():
        before_shown = _decode(nets, torch.from_numpy(codes)[shown].to(device), config.chunk)
        strip = None
        if prior is not None and config.project > 0:  # the best candidate's edit at every noise level
            best_edit = torch.from_numpy(edited)[order[:1]].to(device)
            strip = torch.cat([_decode(nets, project(prior.to(device), best_edit, level, conditions,
                                                     config.prior_steps, torch.Generator(device).manual_seed(0)), 1)
                               for level in PROJECTION_STRIP])
    after_shown = ranked[picked]
    kept_set = set(shown.tolist())

    candidates = []
    for rank, i in enumerate(order.tolist()):
        entry = {"rank": rank, "candidate": i, "kept": i in kept_set, "combined": combined[i].item(),
                 "realism_before_refinement": found["realism_before"][i].item(),
                 "realism": found["realism"][i].item(), "intent": intent[i].item(),
                 "sharpness": found["sharpness"][i].item(), "passed_gate": bool(gated[i]),
                 "intent_terms": {k: v[i].item() for k, v in intents.items()}}
        if reference is not None:
            entry.update(uniqueness=found["distance"][i, 0].item(),
                         nearest_train_indices=found["neighbours"][i].tolist(),
                         nearest_train_distances=found["distance"][i].tolist())
        if drawn:
            entry["source_test_indices"] = {name: idx[i] for name, idx in drawn.items()}
        if "wings" in concepts.directions:
            entry["wings_signed_distance"] = float(
                concepts.directions["wings"].signed_distance(found["z"][i:i + 1].numpy())[0])
        candidates.append(entry)
    regions = expression_regions(weights)
    cells = candidate_cells(regions, sources, count)
    summary = {
        "expression": config.expression, "weights": weights, "intent_weights": intent_weights, "seed": config.seed,
        "run": str(run_dir),
        "candidates_composed": count, "strength": config.strength, "temperature": config.temperature,
        "source": config.source, "guidance": config.guidance, "project": config.project,
        "projection_conditions": {label_names[label]: w for label, w in conditions},
        "projection_strip_noise": list(PROJECTION_STRIP) if strip is not None else [],
        "regions": regions, "intent_source": intent_source, "refine_steps": config.refine_steps,
        "refine_step_size": config.refine_step_size, "refine_anchor": config.refine_anchor,
        "refine_prior": config.refine_prior, "critic_mean_per_refine_step": history,
        "critic_mean_before": found["realism_before"].mean().item(), "critic_mean_after": found["realism"].mean().item(),
        "diversity_before": mean_pairwise_distance(before_shown) if len(shown) > 1 else 0.0,
        "diversity_after": mean_pairwise_distance(after_shown) if len(shown) > 1 else 0.0,
        "diversity_of": f"the kept {len(shown)} before and after refinement",
        "pool": group_summary(found, intent, intents, order, reference),
        "kept": group_summary(found, intent, intents, shown, reference),
        "best": group_summary(found, intent, intents, order[:1], reference),
        "uniqueness_reference": reference,
        "score": ("combined = z(realism) + z(intent) + z(min(uniqueness, uniqueness_reference)), z-scores "
                  "within this batch; uniqueness_reference is the median nearest-training-image distance of "
                  "real test images; the kept images are the best-ranked ones, each at least --dedup times "
                  "the median pairwise distance of the best from every one kept before it"),
        "images_saved": len(best_ranked), "candidates": candidates,
    }

    def build(folder: Path) -> None:
        save_config(config, folder / "config.json")
        save_single(ranked[0], folder / "best.png")
        save_single(ranked[0], folder / "best_x8.png", scale=8)
        save_grid(after_shown, folder / "batch64.png", nrow=8, scale=3)
        save_tensors({"images": to_uint8(ranked).contiguous()}, folder / IMAGES_FILE)
        pairs = [torch.cat([before_shown[i:i + 8], after_shown[i:i + 8]]) for i in range(0, min(16, len(shown)), 8)]
        if cells is not None:  # the first eight kept images' region cells, white on black
            pairs.append(cell_pictures(cells[shown[:8]]))
        if strip is not None:
            pairs.append(strip)
        save_grid(torch.cat(pairs), folder / "refinement.png", nrow=min(8, len(shown)) if strip is None else 8,
                  scale=3)
        if cells is not None:
            save_region(ranked[0], cells[order[0]], folder / "region.png")
            save_region_grid(after_shown, cells[shown], folder / "regions64.png")
        if reference is not None:
            rows = [torch.cat([ranked[r:r + 1], to_float(train_images[found["neighbours"][i]])])
                    for r, i in enumerate(order[:8].tolist())]
            save_grid(torch.cat(rows), folder / "neighbours.png", nrow=4, scale=3)
        best = candidates[0]
        nearest = to_float(train_images[found["neighbours"][order[0]]]) if reference is not None else None
        save_showcase(ranked[0], nearest, after_shown, showcase_caption(config, best, summary, shown), folder / "showcase.png")
        summary["seconds"] = time.monotonic() - began
        write_json(summary, folder / "scores.json")

    replace_folder(build, out_dir)
    if not quiet:
        best, pool = candidates[0], summary["pool"]
        print(f"{config.expression}: {count} candidates in {summary['seconds']:.1f} s -> {out_dir}/")
        print(f"  critic mean {summary['critic_mean_before']:.3f} -> {summary['critic_mean_after']:.3f} after "
              f"{config.refine_steps} refinement steps; diversity of the kept {len(shown)} "
              f"{summary['diversity_before']:.3f} -> {summary['diversity_after']:.3f} (mean pairwise RMS pixel distance)")
        if "share_every_intent_term_at_least_0.2" in pool:
            print(f"  whole pool: {pool['share_every_intent_term_at_least_0.2']:.0%} have every intent term >= 0.2 "
                  f"(" + ", ".join(f"{k} {v:.2f}" for k, v in pool["intent_terms"].items()) + " on average)")
        print(f"  best: realism {best['realism']:.3f}, intent {best['intent']:.3f} ("
              + ", ".join(f"{k} {v:.2f}" for k, v in best["intent_terms"].items()) + ")"
              + (f", uniqueness {best['uniqueness']:.3f}" if "uniqueness" in best else ""))
        print(f"  look at {out_dir / 'showcase.png'} (best x8, its neighbours, the kept batch); scores in "
              f"{out_dir / 'scores.json'}")
    return out_dir


def main(expression: str = "horse+wings", **flags) -> None:
    """Compose images for EXPRESSION (e.g. horse+wings) with a trained run (default: the newest).

    Every field of ComposeConfig is a flag: --run, --data, --n, --seed, --refine-steps, --strength, ...
    """
    run_cli(lambda: compose(str(expression), **flags))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
