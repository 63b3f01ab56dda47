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

Writes ``outputs/compose/<run>/<expr>-<seed>/`` (a short hash is added when the expression has
characters a folder name cannot keep), built in a temporary folder and renamed into place
whole: best.png (+ best_x8.png), batch64.png, neighbours.png, refinement.png, showcase.png (the best x8,
its nearest training images and the kept batch in one figure),
scores.json, config.json (every setting) and images.safetensors (the best images as
uint8, best first, at most 1024).

A run may carry its compose recipe, ``RUN/compose.json`` (written by ``--save_recipe true``): its
values are the defaults of every compose of that run, and the report composes with it, so a
shipped model's flags are written once. Flags given on the command line win.

The pipeline is six named stages: ``open_setting`` (the run, its concepts, prior and judges),
``draw`` (codes for the expression, projected through the prior), ``score`` (refine, decode,
realism, intent, sharpness, uniqueness), ``rank`` (the gate, the order, a diverse kept set),
``summarise`` (scores.json) and ``write_outputs`` (``latent_ops/compose_files.py``).

Examples:
    python -m latent_ops.compose horse+wings
    python -m latent_ops.compose "horse:2+0.8*wings" --seed 3 --refine-steps 30 --strength 1.2
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.atomic import replace_folder
from autoencoder.classifier import load_evaluator, load_perceptual
from autoencoder.cli import (
    ConfigError,
    claim_output,
    read_json,
    release_folder,
    run_cli,
    save_config,
)
from autoencoder.data import DATA_FILE, DataNotFoundError, data_checksums, load_split, to_float
from autoencoder.metrics import ShortlistIndex, mean_pairwise_distance, nearest_neighbours, shortlist_index
from autoencoder.run_folder import load_run
from latent_ops import ranking
from latent_ops.compose_config import (RECIPE_FILE, REPEL_FIELDS, WHERE_FLAGS, ComposeConfig, folder_name, guards,
                                     make_compose_config, to_defaults)
from latent_ops.compose_files import BY_EYE_FILES, OUTPUT_FILES, print_summary, write_outputs
from latent_ops.compose_state import Drawn, Reference, Setting
from latent_ops.concepts import Concepts
from latent_ops.encode import load_bank
from latent_ops.expression import FOLLOWING_REGIONS, parse
from latent_ops.feature_proxy import FeatureProxy, has_proxy, load_proxy
from latent_ops.flow import project
from latent_ops.images import region_cells
from latent_ops.intent import (class_reading, expand_learned, expression_regions, needs_prior, open_prior,
                               resolve_intent, samples_the_prior, spreads_with_temperature)
from latent_ops.run_concepts import ensure_concepts
from latent_ops.runs import repository_path, resolve_run
from latent_ops.mark_judge import (FEATURES_FILE, MarkJudge, has_feature_judge, judged_expressions, load_judge,
                                   marks_reading)
from latent_ops.sampling import (DrawSettings, Sources, draw_density, picture_features, projection_conditions,
                                 sample_expression, start_guides, subject_placer)
from latent_ops.scoring import SHORTLIST, Scored, choose_best, score
from latent_ops.timing import StageClock
from latent_ops.trained_prior import learned_names

MAX_SAVED_IMAGES = 1024  # images.safetensors keeps at most this many (the batch is ranked in full)
PROJECTION_STRIP = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)  # noise levels of refinement.png's last row


def output_folder(config: ComposeConfig) -> Path:
    """Where compose writes, claimed before any work: writable, locked, and neither foreign nor holding a
    person's by-eye marks of the images it would replace."""
    out = Path(config.out) if config.out else \
        Path("outputs/compose") / resolve_run(config.run).name / folder_name(config.expression, config.seed)
    marks = [name for name in BY_EYE_FILES if (out / name).exists()]
    if marks:
        raise ConfigError(f"--out {out} holds {marks[0]}, a person's marks of the images there, which a new compose "
                          f"would replace; nothing was written: move the marks away or pass a new --out")
    return claim_output(out, OUTPUT_FILES, "a compose")


# --- stage 1: the setting ------------------------------------------------------------------------------------------


def open_setting(config: ComposeConfig) -> Setting:
    run_dir = resolve_run(config.run)
    opened = load_run(run_dir, precision=config.precision)
    nets = opened.nets.to(memory_format=torch.channels_last)  # refinement 1.9x faster on this CPU (bench/compose_speed.py)
    concepts = ensure_concepts(run_dir, config.data, config.cache_dir)
    learned = learned_names(run_dir, concepts.names)
    weights = parse(config.expression, concepts.names + learned)
    if config.temperature != 1 and not spreads_with_temperature(config, weights, learned):
        raise ConfigError(f"--temperature {config.temperature} spreads density and prior draws, but {config.expression!r} "
                          f"draws only held-out codes of real images; add --source density or --source prior, or drop it")
    check_start(config.start, concepts, learned)
    negative = config.negative
    if negative and not (config.source == "prior" or config.start or samples_the_prior(weights, learned)):
        if not getattr(config, "negative_from_recipe", False):  # asked for on the command line: it would do nothing
            raise ConfigError(f"--negative {config.negative} steers draws from the prior, but {config.expression!r} "
                              f"draws none with --source {config.source}; add --source prior, or drop --negative")
        negative = ""  # the recipe's default steers prior draws, and this compose has none
    settle_recipe_repel(config, weights, learned, run_dir)
    check_repel(config, weights, learned)
    intent_source = resolve_intent(config.intent)
    judge = load_evaluator(device=opened.device.type) if intent_source == "evaluator" else None
    prior = open_prior(run_dir, weights, learned) if needs_prior(config, weights, learned) else None
    if prior is not None and opened.dtype == torch.bfloat16:
        prior = prior.to(memory_format=torch.channels_last)  # its convolutions: 1.3x faster in bf16 on this CPU
    regions = expression_regions(weights)
    marks = marks_judge(config, run_dir)
    following = set(regions) & set(FOLLOWING_REGIONS)
    proxy = repel_proxy(config, run_dir, opened.code_shape, opened.device)
    needs_perceptual = following or marks is not None or (config.repel > 0 and (proxy is None or guards(config)))
    perceptual = load_perceptual(device=opened.device) if needs_perceptual else None
    bank = load_bank(run_dir) if config.source != "density" or config.start else None
    sources = Sources(concepts, bank, prior, opened.code_shape, nets.decoder, perceptual)
    feature_marks = load_judge(run_dir, config.expression, FEATURES_FILE) if reads_marks(config) else None
    return Setting(run_dir, nets, opened.device, concepts, weights, expand_learned(weights, run_dir, learned),
                   intent_source, judge, prior, sources, regions, opened.dtype, negative, marks, proxy, feature_marks)


def repel_proxy(config: ComposeConfig, run_dir: Path, code_shape: tuple[int, ...], device: torch.device
                ) -> FeatureProxy | None:
    """The feature proxy ``--repel`` pushes draws apart through: the run's with --repel_through proxy (refused in one
    line when it has none) or auto (when it has one); None when the pictures are decoded and read instead."""
    if config.repel <= 0 or config.repel_through == "pictures":
        return None
    if config.repel_through == "auto" and not has_proxy(run_dir):
        return None
    return load_proxy(run_dir, code_shape).to(device)


def reads_marks(config: ComposeConfig) -> bool:
    """Whether the guard of --repel reads the judge of features of by-eye marks."""
    return guards(config) and "marks" in config.repel_reading


def repel_reading(setting: Setting, config: ComposeConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the guard of --repel keeps, read from the features --repel pushes in: the perceptual net's reading of the
    expression (``class_reading``; refused in one line for an expression with no class or wing term to read), the
    judge of features' log probability of a mark (``marks_reading``), or their sum."""
    readings = []
    if "class" in config.repel_reading:
        perceptual = setting.sources.perceptual
        reading = class_reading(setting.intent_weights, setting.concepts,
                                lambda features: perceptual.head(features.float()) * perceptual.logit_scale)
        if reading is None:
            raise ConfigError(f"--repel_keep and --repel_toward keep the perceptual net's reading of the expression's "
                              f"classes, and {' + '.join(setting.weights)!r} names none; drop them, or give "
                              f"--repel_reading marks")
        readings.append(reading)
    if "marks" in config.repel_reading:
        if setting.feature_marks is None:
            raise ConfigError(f"--repel_reading {config.repel_reading} reads the judge of features of "
                              f"{config.expression!r}, which this setting was opened without; open it with this config")
        readings.append(marks_reading(setting.feature_marks))
    if len(readings) == 1:
        return readings[0]
    by_class, by_marks = readings
    return lambda features: config.repel_class * by_class(features) + by_marks(features)


def repel_through(setting: Setting) -> str:
    """What read the draws' features for --repel: proxy or pictures."""
    return "proxy" if setting.proxy is not None else "pictures"


def check_start(start: str, concepts: Concepts, learned: list[str]) -> None:
    """``--start`` must name a class or cluster of the run, whose held-out pictures the candidates start from."""
    if not start or start in concepts.densities:
        return
    why = "is a learned concept, which has no pictures" if start in learned else "is not a class or cluster of this run"
    raise ConfigError(f"--start {start} {why}; name the class or cluster whose held-out pictures the candidates start "
                      f"from, e.g. --start horse or --start horse:white")


def settle_recipe_repel(config: ComposeConfig, weights: dict[str, float], learned: list[str], run_dir: Path) -> None:
    """The recipe's --repel (none of its flags given) is a default for the expressions it can push: where nothing is
    drawn from the prior, or its reading needs a judge of features the expression has not, every --repel flag goes
    back to its default (draws not pushed apart), so other expressions compose as they did without it."""
    if not getattr(config, "repel_from_recipe", False) or config.repel <= 0:
        return
    judged = not reads_marks(config) or has_feature_judge(run_dir, config.expression)
    if not (draws_from_prior(config, weights, learned) and judged):
        to_defaults(config, REPEL_FIELDS)


def draws_from_prior(config: ComposeConfig, weights: dict[str, float], learned: list[str]) -> bool:
    """Whether the compose draws codes from the prior (the ones --repel can push apart)."""
    return bool(config.source == "prior" or config.start or config.project > 0 or samples_the_prior(weights, learned))


def check_repel(config: ComposeConfig, weights: dict[str, float], learned: list[str]) -> None:
    """``--repel`` pushes draws from the prior apart: an expression of held-out codes has none to push."""
    if config.repel > 0 and not draws_from_prior(config, weights, learned):
        raise ConfigError(f"--repel {config.repel} pushes draws from the prior apart, but {config.expression!r} draws "
                          f"none with --source {config.source}; add --source prior or --project, or drop --repel")


def marks_judge(config: ComposeConfig, run_dir: Path) -> MarkJudge | None:
    """The run's judge of by-eye marks for the expression when --mark_gate asks for it. A judge knows only the
    expression whose composes were counted: where there is none, the recipe's gate is dropped and one asked for on
    the command line is refused."""
    if config.mark_gate <= 0:
        return None
    judged = judged_expressions(run_dir)
    if config.expression not in judged:
        if getattr(config, "mark_gate_from_recipe", False):  # the recipe's default, for the expressions judged
            return None
        raise ConfigError(f"--mark_gate: {run_dir} has no judge of by-eye marks for {config.expression!r} (judged: "
                          f"{', '.join(judged) or 'none'}); fit one with python -m latent_ops.learn_marks, or drop "
                          f"--mark_gate")
    return load_judge(run_dir, config.expression)


# --- stage 2: draw -------------------------------------------------------------------------------------------------


def draw_settings(config: ComposeConfig, progress: bool = False, negative: str = "") -> DrawSettings:
    return DrawSettings(config.source, config.strength, config.temperature, config.guidance, config.prior_steps,
                        config.solver, config.guidance_from, config.guidance_until, "sampling" if progress else "",
                        negative, config.repel, config.repel_until)


def draw(config: ComposeConfig, setting: Setting, progress: bool = False,
         features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Drawn:
    """The candidates' codes. ``features``: what --repel reads the draws with, in place of the setting's proxy or
    pictures (``latent_ops.learn_proxy`` records through it)."""
    rng = np.random.default_rng(config.seed)
    settings = draw_settings(config, progress, setting.negative)
    if config.repel > 0:
        features = features or setting.proxy or picture_features(setting.sources)
        settings = dataclasses.replace(settings, repel_features=features, repel_toward=config.repel_toward,
                                       repel_reading=repel_reading(setting, config) if guards(config) else None)
    with torch.inference_mode(), setting.autocast():
        if config.start:  # real pictures of --start, carried to the whole expression by the prior
            edited, positions = draw_density(config.start, setting.sources, config.candidates, rng,
                                             dataclasses.replace(settings, source="heldout"))
            drawn, (guides, placer) = {config.start: positions}, start_guides(setting.weights, setting.sources, settings)
        else:
            edited, drawn = sample_expression(setting.weights, setting.sources, config.candidates, rng, settings)
            guides, placer = None, None
        codes, conditions = edited, []
        if config.project > 0:
            conditions = projection_conditions(setting.weights, setting.concepts, config.guidance, setting.prior)
            codes = project(setting.prior, torch.from_numpy(edited), config.project, guides or conditions,
                            settings.schedule, torch.Generator().manual_seed(config.seed), placer).numpy()
            if placer is not None:
                setting.sources.placed = placer.cells
    return Drawn(edited, codes, drawn, conditions, guides)


# --- the data uniqueness is measured against -----------------------------------------------------------------------


def uniqueness_reference(test: torch.Tensor, train: torch.Tensor | ShortlistIndex, seed: int,
                         count: int = 256) -> float:
    """Median distance from real held-out images ``test`` (N, 3, 32, 32) uint8 to their nearest training image
    (``train``: the images or their ``shortlist_index``)."""
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:count]
    distance, _ = nearest_neighbours(to_float(test[pick]), train, k=1, shortlist=SHORTLIST)
    return distance[:, 0].median().item()


def add_start_distances(config: ComposeConfig, drawn: Drawn, found: dict[str, torch.Tensor],
                        reference: Reference) -> None:
    """With ``--start`` and data, ``found["start_distance"]``: each candidate's RMS pixel distance (on [-1, 1], as
    uniqueness) to the real picture it started from, so what SDEdit kept of that picture is measured."""
    test = reference.test
    if not config.start or test is None:  # without data open_reference has said that such measures are skipped
        return
    row_of = {int(index): row for row, index in enumerate(test.indices)}
    starts = test.images[[row_of[int(i)] for i in drawn.sources[config.start]]]
    found["start_distance"] = (to_float(found["image"]) - to_float(starts)).pow(2).flatten(1).mean(1).sqrt()


def data_matches_run(run: Path, data: str, cache_dir: str) -> bool | None:
    """Whether ``data`` is the data set the run recorded in data.json (a shipped model does); None without a record."""
    if not (run / DATA_FILE).exists():
        return None
    matches = read_json(run / DATA_FILE, "data checksum record") == data_checksums(data, cache_dir)
    if not matches:
        print(f"compose: --data {data} is not the data {run} was trained on (its checksums differ from "
              f"{run / DATA_FILE}); uniqueness is measured against {data}")
    return matches


def open_reference(config: ComposeConfig, run: Path) -> Reference:
    try:
        train_images = load_split(config.data, "train", config.cache_dir).images
    except DataNotFoundError:
        print(f"compose: uniqueness and neighbour panels skipped: no CIFAR-10 at --data {config.data}. To enable "
              f"them, unpack CIFAR-10 there (make data) or pass --data PATH")
        return Reference(None, None, None, None)
    index = shortlist_index(train_images)
    test = load_split(config.data, "test", config.cache_dir)
    distance = uniqueness_reference(test.images, index, config.seed)
    return Reference(train_images, index, distance, data_matches_run(run, config.data, config.cache_dir), test)


# --- stage 4: rank -------------------------------------------------------------------------------------------------

@dataclass
class Kept:
    saved: torch.Tensor  # the candidates whose images are saved, best first (at most MAX_SAVED_IMAGES)
    ranked: torch.Tensor  # (k, 3, 32, 32) their images
    shown: torch.Tensor  # the kept candidates (a diverse set of the best), best first
    before: torch.Tensor  # their images before refinement
    after: torch.Tensor  # and after
    strip: torch.Tensor | None  # the best edit projected at every noise level of PROJECTION_STRIP


@torch.no_grad()
def projection_strip(config: ComposeConfig, setting: Setting, drawn: Drawn, best: int) -> torch.Tensor:
    """The best candidate's edit, projected at every noise level of PROJECTION_STRIP, decoded."""
    prior, device = setting.prior.to(setting.device), setting.device
    edit = torch.from_numpy(drawn.edited)[best:best + 1].to(device)
    schedule = draw_settings(config).schedule
    with setting.autocast():  # a following region is placed again on this one candidate at each level
        codes = [project(prior, edit, level, drawn.guides or drawn.conditions, schedule,
                         torch.Generator(device).manual_seed(0),
                         subject_placer(drawn.guides, setting.sources) if drawn.guides else None)
                 for level in PROJECTION_STRIP]
        return torch.cat([setting.nets.decoder(code).float().cpu() for code in codes])


def rank(config: ComposeConfig, setting: Setting, drawn: Drawn, scored: Scored) -> Kept:
    """The saved images (best first), a diverse kept set of the best, and the kept images before refinement."""
    saved = scored.order[:MAX_SAVED_IMAGES]
    ranked = to_float(scored.found["image"][saved])  # best first
    if config.select == "dpp":  # on the perceptual net's features: the evaluator never selects
        perceptual = setting.sources.perceptual or load_perceptual(device=setting.device)
        with torch.inference_mode():
            features = torch.cat([perceptual.features(part.to(setting.device)).float().cpu()
                                  for part in ranked.split(256)])
        picked = ranking.quality_diversity_subset(features, config.kept, config.dpp_quality, config.dpp_bandwidth)
    else:
        picked = ranking.diverse_subset(ranked, config.kept, config.dedup)  # positions in ranked, best first
    shown = saved[picked]
    before = to_float(scored.found["image_before"][shown])
    strip = None
    if setting.prior is not None and config.project > 0:
        strip = projection_strip(config, setting, drawn, int(scored.order[0]))
    return Kept(saved, ranked, shown, before, ranked[picked], strip)


# --- stage 5: summarise --------------------------------------------------------------------------------------------

def group_summary(scored: Scored, rows: torch.Tensor, reference: Reference, gate: float) -> dict:
    """Means of every score over the candidates ``rows``, and the share where every intent term is >= ``gate``."""
    found = scored.found
    summary = {"count": len(rows), "realism": found["realism"][rows].mean().item(),
               "sharpness": found["sharpness"][rows].mean().item(), "intent": scored.intent[rows].mean().item(),
               "intent_terms": {k: v[rows].mean().item() for k, v in scored.intents.items()}}
    if scored.intents:
        every = torch.stack([v[rows] for v in scored.intents.values()], 1).min(1).values
        summary["gate"] = gate
        summary["share_every_intent_term_at_least_gate"] = (every >= gate).float().mean().item()
    if reference.distance is not None:
        summary["uniqueness_median"] = found["distance"][rows, 0].median().item()
    if "start_distance" in found:
        summary["start_distance_median"] = found["start_distance"][rows].median().item()
    return summary


def candidate_rows(setting: Setting, drawn: Drawn, scored: Scored, kept: Kept, reference: Reference) -> list[dict]:
    """One entry per candidate, best first, with every score that ranked it."""
    found, kept_set, rows = scored.found, set(kept.shown.tolist()), []
    wings = setting.concepts.directions.get("wings")
    signed = wings.signed_distance(found["z"].numpy()) if wings is not None else None
    for rank_, i in enumerate(scored.order.tolist()):
        entry = {"rank": rank_, "candidate": i, "kept": i in kept_set, "combined": scored.combined[i].item(),
                 "refined": bool(found["refined"][i]), "realism_before_refinement": found["realism_before"][i].item(),
                 "realism": found["realism"][i].item(), "intent": scored.intent[i].item(),
                 "sharpness": found["sharpness"][i].item(), "rise": found["rise"][i].item(),
                 **({"mark": found["mark"][i].item()} if "mark" in found else {}),
                 "passed_gate": bool(scored.gated[i]),
                 **({"best_chosen": bool(found["best_chosen"][i])} if "best_chosen" in found else {}),
                 "intent_terms": {k: v[i].item() for k, v in scored.intents.items()}}
        if reference.distance is not None:
            entry.update(uniqueness=found["distance"][i, 0].item(),
                         nearest_train_indices=found["neighbours"][i].tolist(),
                         nearest_train_distances=found["distance"][i].tolist())
        if drawn.sources:
            entry["source_test_indices"] = {name: idx[i] for name, idx in drawn.sources.items()}
        if "start_distance" in found:
            entry["start_distance"] = found["start_distance"][i].item()
        if signed is not None:
            entry["wings_signed_distance"] = float(signed[i])
        if "agreement" in found and not found["agreement"][i].isnan():
            entry.update(second_reading={k.split("/", 1)[1]: v[i].item() for k, v in found.items()
                                         if k.startswith("second/")},
                         agreement=found["agreement"][i].item(), regional_reading=found["regional"][i].item(),
                         best_score=found["best_score"][i].item())
        rows.append(entry)
    return rows


SCORE_TEXT = ("combined = z(realism) + rank_intent * z(intent) + rank_sharpness * z(sharpness) + "
              "z(min(uniqueness, uniqueness_reference)), z-scores within this batch (uniqueness only with data); "
              "intent is the geometric mean of the intent terms, weighted by rank_terms (a negative term counts the "
              "absence of its class); "
              "candidates whose every intent term is >= rank_gate come before the rest; uniqueness_reference is the "
              "median nearest-training-image distance of real test images; the kept images are the best-ranked "
              "ones, each at least dedup times the median pairwise distance of the best from every one kept before it")


def summarise(config: ComposeConfig, setting: Setting, drawn: Drawn, scored: Scored, kept: Kept,
              reference: Reference) -> dict:
    found, order, gate = scored.found, scored.order, config.rank_gate
    diverse = len(kept.shown) > 1
    refined = found["refined"] if found["refined"].any() else torch.ones_like(found["refined"])
    return {
        "precision": setting.precision, "solver": config.solver, "prior_steps": config.prior_steps,
        "guidance_interval": [config.guidance_from, config.guidance_until], "refine_top": config.refine_top,
        "repel": [config.repel, config.repel_until], "repel_through": repel_through(setting) if config.repel else "",
        "repel_guard": {"keep": True, "toward": config.repel_toward, "reading": config.repel_reading,
                        **({"class_weight": config.repel_class} if config.repel_reading == "class+marks" else {})}
        if guards(config) else None,
        "expression": config.expression, "weights": setting.weights, "intent_weights": setting.intent_weights,
        "seed": config.seed, "run": repository_path(setting.run), "candidates_composed": config.candidates,
        "strength": config.strength, "temperature": config.temperature, "source": config.source,
        "negative": setting.negative,
        "guidance": config.guidance, "project": config.project, "start": config.start,
        "projection_conditions": {setting.label_names[label]: w for label, w in drawn.conditions},
        "projection_strip_noise": list(PROJECTION_STRIP) if kept.strip is not None else [],
        "regions": setting.regions, "intent_source": setting.intent_source, "refine_steps": config.refine_steps,
        "refine_step_size": config.refine_step_size, "refine_anchor": config.refine_anchor,
        "refine_prior": config.refine_prior, "refined": int(refined.sum()),
        "critic_mean_per_refine_step": scored.history, "critic_means_of": f"the {int(refined.sum())} refined",
        "critic_mean_before": found["realism_before"][refined].mean().item(),
        "critic_mean_after": found["realism"][refined].mean().item(),
        "diversity_before": mean_pairwise_distance(kept.before) if diverse else 0.0,
        "diversity_after": mean_pairwise_distance(kept.after) if diverse else 0.0,
        "diversity_of": f"the kept {len(kept.shown)} before and after refinement",
        "pool": group_summary(scored, order, reference, gate), "kept": group_summary(scored, kept.shown, reference, gate),
        "best": group_summary(scored, order[:1], reference, gate),
        "uniqueness_reference": reference.distance, "data_matches_run": reference.data_matches_run,
        "rank_sharpness": config.rank_sharpness, "rank_intent": config.rank_intent,
        "rank_terms": config.rank_terms, "rank_gate": gate, "rise_gate": config.rise_gate,
        "mark_gate": config.mark_gate if setting.marks is not None else 0.0, "score": SCORE_TEXT, "best_rule": config.best,
        "images_saved": len(kept.saved), "candidates": candidate_rows(setting, drawn, scored, kept, reference),
    }


# --- the pipeline --------------------------------------------------------------------------------------------------

def candidate_cells(regions: list[str], sources: Sources, count: int) -> torch.Tensor | None:
    """(count, rows, cols) bool: the cells each candidate's regions took (fixed regions, and those placed
    above its subject); None when the expression names no region."""
    grid = sources.code_shape[1:] if len(sources.code_shape) == 3 else (4, 4)
    fixed = region_cells([r for r in regions if r not in FOLLOWING_REGIONS], grid)[None]
    if sources.placed is not None:
        return sources.placed | fixed
    return fixed.expand(count, -1, -1) if regions else None


def run_compose(config: ComposeConfig, quiet: bool = False, reference: Reference | None = None) -> Path:
    """Claim the output folder, then the six stages; returns the folder. ``reference``: the data opened once by
    ``open_reference`` for many composes (a long-lived process), else opened here."""
    clock = StageClock()
    out = output_folder(config)
    try:
        return compose_into(out, config, clock, quiet, reference)
    finally:
        release_folder(out)


def compose_into(out: Path, config: ComposeConfig, clock: StageClock, quiet: bool,
                 reference: Reference | None = None) -> Path:
    """The stages, each timed (scores.json's ``stage_seconds``); the files are written into a temporary folder
    and put in place whole."""
    with clock("setup"):
        setting = open_setting(config)
        reference = reference or open_reference(config, setting.run)
    with clock("sampling"):
        drawn = draw(config, setting, progress=not quiet)
    scored = score(config, setting, drawn, reference, clock, progress=not quiet)
    with clock("writing"):
        add_start_distances(config, drawn, scored.found, reference)
    with clock("ranking"):
        scored = choose_best(config, setting, scored)
        kept = rank(config, setting, drawn, scored)
    with clock("writing"):
        summary = summarise(config, setting, drawn, scored, kept, reference)
        cells = candidate_cells(setting.regions, setting.sources, config.candidates)

    def stamp(summary: dict) -> None:  # the last moment before scores.json is written
        summary["stage_seconds"], summary["seconds"] = clock.snapshot(), clock.total()

    with clock("writing"):
        replace_folder(lambda folder: write_outputs(folder, config, kept, scored, reference, summary, cells, stamp),
                       out)
    summary["stage_seconds"], summary["seconds"] = clock.snapshot(), clock.total()
    if config.save_recipe:
        save_recipe(config, setting.run)
    if not quiet:
        print_summary(config, summary, out)
    return out


def save_recipe(config: ComposeConfig, run: Path) -> Path:
    """Store ``config``'s settings (not where it read and wrote) as the run's compose recipe."""
    recipe = dataclasses.replace(config, **{k: getattr(ComposeConfig, k) for k in WHERE_FLAGS})
    save_config(recipe, run / RECIPE_FILE)
    print(f"compose: saved these settings as {run / RECIPE_FILE}, the defaults of every compose of {run}")
    return run / RECIPE_FILE


def compose(expression: str = "", quiet: bool = False, reference: Reference | None = None, **flags) -> Path:
    """Compose images for ``expression`` (empty: the run's recipe's, else horse+wings); returns the output folder.

    ``flags``: the fields of ComposeConfig (run, data, n, seed, ...), checked like flags. ``reference``: the
    data of ``open_reference``, opened once by a process that composes many times (it must be of ``--data``).
    """
    if expression:
        flags["expression"] = expression
    return run_compose(make_compose_config(**flags), quiet, reference)


def main(expression: str = "", **flags) -> None:
    """Compose images for EXPRESSION (e.g. horse+wings; default: the run's recipe's) with a trained run.

    Every field of ComposeConfig is a flag: --run, --data, --n, --seed, --refine_steps, --strength, ...
    """
    run_cli(lambda: compose(str(expression), **flags))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
