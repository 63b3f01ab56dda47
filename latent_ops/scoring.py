"""Scoring a compose's candidates: a first look at every one, refinement of the best, and the final order.

1. **First look.** Every candidate code is decoded (chunk by chunk, in the run's precision, no
   gradients) and judged: realism (the image critic's logit), sharpness (variance of the
   Laplacian), intent (the evaluator's class probabilities, or the latent probe) and, with data,
   uniqueness (the nearest training images). The batch is ranked.
2. **Refinement of the best.** Only the ``--refine_top`` best of that ranking go through the
   critic's refinement (``latent_ops.refine``: forward and backward through decoder and critic,
   the costly part), and are judged again. Refinement raises a candidate's realism and keeps its
   content, so one that is not among the best few times the kept count before refinement does not
   reach the kept set after it; ``bench/compose_speed.py`` checks that the kept images match those of
   refining every candidate. ``--refine_top 0`` refines every candidate.
3. **Final order.** The batch is ranked again with the refined scores (``latent_ops.ranking``), the refined
   candidates first, so the best image and the kept set are refined ones.

Images are held as uint8 (3 KB a candidate), so a large pool stays small in memory.

Example: see ``latent_ops.compose`` (``score`` is its third stage).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError
from autoencoder.data import to_uint8
from autoencoder.metrics import ShortlistIndex, laplacian_variance, nearest_neighbours
from latent_ops import best_choice, ranking
from latent_ops.flow import denoise
from latent_ops.intent import intent_terms
from latent_ops.mark_judge import judge_images
from latent_ops.refine import refine_codes
from latent_ops.sources import classifier_views
from latent_ops.subject import rising_mass
from latent_ops.sampling import projection_conditions
from latent_ops.timing import StageClock

if TYPE_CHECKING:
    from latent_ops.compose_config import ComposeConfig
    from latent_ops.compose_state import Drawn, Reference, Setting

NEIGHBOURS = 3  # nearest training images kept per candidate
SHORTLIST = 16  # bf16 shortlist of the nearest-neighbour search, ranked again exactly (autoencoder.metrics)


@dataclass
class Scored:
    found: dict[str, torch.Tensor]  # per candidate: z, image, image_before (uint8), realism_before, realism,
    #   sharpness, refined, intent/*, distance, neighbours
    history: list[float]  # mean critic logit of the refined candidates before each refinement step and after the last
    intents: dict[str, torch.Tensor]  # per intent term (N,)
    intent: torch.Tensor  # (N,) their geometric mean
    combined: torch.Tensor  # (N,) the ranking score
    gated: torch.Tensor  # (N,) bool: every intent term >= --rank_gate (and, with --rise_gate, rising mass above it)
    order: torch.Tensor  # candidates, best first


def judge(setting: Setting, z: torch.Tensor, images: torch.Tensor, train: ShortlistIndex | None, chunk: int
          ) -> dict[str, torch.Tensor]:
    """Per-candidate scores of decoded ``images`` (N, 3, 32, 32) float of codes ``z`` (N, D), on the CPU: the
    critic in chunks, the training set searched once for all."""
    with torch.no_grad(), setting.autocast():
        out = {"realism": torch.cat([setting.nets.image_critic(part.to(setting.device)).float().cpu()
                                     for part in images.split(chunk)])}
    out["sharpness"] = laplacian_variance(images).cpu()  # in fp32, outside autocast
    out["rise"] = rising_mass(images).cpu()  # figure above the middle of the back (--rise_gate)
    if setting.marks is not None:  # how likely a person is to mark it (--mark_gate)
        with setting.autocast():  # the perceptual net's pass in the run's precision (bf16 where native)
            out["mark"] = judge_images(setting.marks, to_uint8(images), setting.sources.perceptual)
    probs = None
    if setting.judge is not None:
        p = setting.judge.probabilities(images)  # (N, 10)
        probs = {name: p[:, i] for i, name in enumerate(CIFAR10_CLASSES)}
    for name, value in intent_terms(setting.intent_weights, setting.concepts, z, probs).items():
        out[f"intent/{name}"] = value.float().cpu()
    if train is not None:
        out["distance"], out["neighbours"] = nearest_neighbours(images, train, k=NEIGHBOURS,
                                                                shortlist=SHORTLIST)
    return out


def decode_images(setting: Setting, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, 3, 32, 32) float images of codes (N, D), ``chunk`` at a time in the run's precision, on the CPU."""
    with torch.no_grad(), setting.autocast():
        return torch.cat([setting.nets.decoder(part.to(setting.device)).float().clamp(-1, 1).cpu()
                          for part in z.split(chunk)])


def first_look(config: ComposeConfig, setting: Setting, codes: np.ndarray, train: ShortlistIndex | None
               ) -> dict[str, torch.Tensor]:
    """Every candidate decoded and judged, before refinement."""
    z = torch.from_numpy(codes)
    images = decode_images(setting, z, config.chunk)
    found = judge(setting, z, images, train, config.chunk)
    pictures = to_uint8(images)
    found.update(z=z, image=pictures, image_before=pictures.clone(), realism_before=found["realism"].clone(),
                 refined=torch.zeros(len(z), dtype=torch.bool))
    return found


def refine_chosen(config: ComposeConfig, setting: Setting, z0: torch.Tensor, train: ShortlistIndex | None,
                  pull, progress: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The chosen candidates' codes (k, D) refined by the critic ``chunk`` at a time and judged again, and the
    critic's mean logit before each step and after the last."""
    parts, history = [], torch.zeros(config.refine_steps + 1)
    for z in z0.split(config.chunk):
        with setting.autocast():
            refined, steps = refine_codes(setting.nets, z.to(setting.device), config.refine_steps,
                                          config.refine_step_size, config.refine_anchor, prior_denoise=pull,
                                          prior_weight=config.refine_prior, progress=progress)
        history += torch.tensor(steps) * len(z)
        parts.append(refined.float().cpu())
    z = torch.cat(parts)
    images = decode_images(setting, z, config.chunk)
    found = judge(setting, z, images, train, config.chunk)
    found.update(z=z, image=to_uint8(images))
    return found, (history / max(1, len(z0))).tolist()


def prior_pull(config: ComposeConfig, setting: Setting, drawn: Drawn):
    """The prior's denoiser that refinement steps towards (``--refine_prior``), or None."""
    if setting.prior is None or config.refine_prior <= 0:
        return None
    conditions = drawn.conditions or projection_conditions(setting.weights, setting.concepts, config.guidance,
                                                           setting.prior)
    return functools.partial(denoise, setting.prior.to(setting.device), conditions=conditions)


def passes_gate(intents: dict[str, torch.Tensor], gate: float, count: int) -> torch.Tensor:
    """(count,) bool: every intent term >= ``gate`` (all True without terms or with gate 0)."""
    if not intents or gate <= 0:
        return torch.ones(count, dtype=torch.bool)
    return torch.stack(list(intents.values()), 1).min(1).values >= gate


def ranked(config: ComposeConfig, found: dict[str, torch.Tensor], history: list[float],
           reference_distance: float | None) -> Scored:
    """The batch's combined scores, gate and order (best first) from the per-candidate scores ``found``."""
    count = len(found["z"])
    intents = {k.split("/", 1)[1]: v for k, v in found.items() if k.startswith("intent/")}
    intent = ranking.geometric_mean(torch.stack(list(intents.values()), 1)) if intents else torch.ones(count)
    try:
        leaning = ranking.parse_term_weights(config.rank_terms)
        ranked_intent = ranking.term_weighted_intent(intents, leaning) if leaning else intent
    except ValueError as error:
        raise ConfigError(str(error)) from None
    terms = {"realism": found["realism"], "intent": ranked_intent, "sharpness": found["sharpness"]}
    if reference_distance is not None:
        terms["uniqueness"] = ranking.capped_uniqueness(found["distance"][:, 0], reference_distance)
    combined = ranking.combined_score(terms, {"sharpness": config.rank_sharpness, "intent": config.rank_intent})
    rise_gate = config.rise_gate if "wings" in intents else 0.0  # a wing to rise: only when the expression asks one
    gated = passes_gate(intents, config.rank_gate, count) & ranking.at_least_quantile(found["rise"], rise_gate)
    if "mark" in found:
        gated &= ranking.at_least_quantile(found["mark"], config.mark_gate)
    refined = found["refined"] if found["refined"].any() else None
    return Scored(found, history, intents, intent, combined, gated, ranking.gated_order(combined, gated, refined))


def score(config: ComposeConfig, setting: Setting, drawn: Drawn, reference: Reference, clock: StageClock,
          progress: bool = False) -> Scored:
    """First look and ranking of every candidate, refinement of the best, the final ranking."""
    with clock("ranking"):
        found = first_look(config, setting, drawn.codes, reference.index)
        first = ranked(config, found, [], reference.distance)
    if config.refine_steps == 0:
        return first
    with clock("refinement"):
        chosen = first.order[:config.refine_top] if config.refine_top else first.order
        refined, history = refine_chosen(config, setting, found["z"][chosen], reference.index,
                                         prior_pull(config, setting, drawn), "refining" if progress else "")
        for key, values in refined.items():
            found[key][chosen] = values.to(found[key].dtype)
        found["refined"][chosen] = True
    with clock("ranking"):
        return ranked(config, found, history, reference.distance)


def second_reading(setting: Setting, found: dict[str, torch.Tensor], rows: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The perceptual net's reading of the candidates ``rows``: its intent terms, each (k,), the regional
    reading (k,) and the rising mass (k,) (each 1 where the expression asks for no subject with wings)."""
    from autoencoder.classifier import load_perceptual

    perceptual = setting.sources.perceptual or load_perceptual(device=setting.device)
    probabilities, cams = classifier_views(perceptual, found["image"][rows].to(setting.device))
    probs = {name: probabilities[:, i].cpu() for i, name in enumerate(CIFAR10_CLASSES)}
    terms = intent_terms(setting.intent_weights, setting.concepts, found["z"][rows], probs)
    subject = best_choice.subject_term(terms)
    regional, rise = torch.ones(len(rows)), torch.ones(len(rows))
    if subject is not None and "wings" in terms:
        winged = [CIFAR10_CLASSES.index(c) for c in best_choice.WINGED_CLASSES]
        regional = best_choice.regional_reading(cams.cpu(), CIFAR10_CLASSES.index(subject), winged)
        rise = found["rise"][rows]
    return {k: v.float() for k, v in terms.items()}, regional.float(), rise.float()


def choose_best(config: ComposeConfig, setting: Setting, scored: Scored) -> Scored:
    """The order with the best image and the next three chosen by ``--best`` (latent_ops.best_choice): among the
    refined candidates (every one when none was refined) that read as the subject at least as well as their median,
    by the evaluator's and the perceptual net's agreement and the rising mass (the regional reading is recorded
    beside). Their readings are added to ``found`` (NaN for the candidates not read)."""
    if config.best == "rank" or not scored.intents:
        return scored
    found, count = scored.found, len(scored.order)
    considered = found["refined"] if found["refined"].any() else torch.ones(count, dtype=torch.bool)
    rows = torch.nonzero(considered).flatten()
    terms, regional, rise = second_reading(setting, found, rows)
    agree = best_choice.agreement({k: v[rows] for k, v in scored.intents.items()}, terms)
    for key, values in [*((f"second/{k}", v) for k, v in terms.items()), ("agreement", agree),
                        ("regional", regional), ("best_score", best_choice.choice_score(agree, rise))]:
        found[key] = torch.full((count,), float("nan"))
        found[key][rows] = values
    allowed = best_choice.eligible(considered, scored.gated, found["realism"])
    subject = best_choice.subject_term(terms)
    if subject in scored.intents and "wings" in terms:  # a horse before a wing: both readings of the subject
        reading = torch.full((count,), -1.0)
        reading[rows] = torch.minimum(scored.intents[subject][rows].float(), terms[subject])
        allowed = best_choice.reads_as_subject(allowed, reading)
    order = best_choice.best_first(scored.order, found["best_score"].nan_to_num(-1.0), allowed)
    found["best_chosen"] = torch.zeros(count, dtype=torch.bool)  # moved to the front by the rule
    found["best_chosen"][order[:min(best_choice.SHOWN_BEST, int(allowed.sum()))]] = True
    return dataclasses.replace(scored, order=order)
