"""Codes for a parsed expression: draws of its classes, clusters and conjunctions, plus direction steps.

A term of the expression (``latent_ops.expression``) becomes codes as follows:

- a class or cluster (``horse``, ``horse:2``): codes of real held-out test images of it
  (``--source heldout``, the default), draws from its fitted Gaussian mixture (``density``),
  or draws from the latent prior (``prior``: a class under classifier-free guidance; a
  cluster as its held-out members taken half way to noise and brought back by the prior);
- a conjunction (``horse&bird``): draws from the prior under every part at once
  (Composable Diffusion, Liu et al. 2022, arXiv:2206.01714); it needs the prior. A part may
  hold a region (``horse&airplane@top``): it guides only those cells (``latent_ops.flow``);
  ``wings`` in a conjunction stands for the winged classes (WING_CLASSES), a direction such as
  ``white`` for a drift along it, a cluster or named source for its class, and a concept that
  ``latent_ops.learn`` taught the prior for its own label. A ``@back`` part is placed above each
  candidate's subject part way through sampling (``latent_ops.placement``);
- a direction (``wings``): its calibrated step; with a region (``wings@top``) only the cells of
  that region of a spatial code move, so the edit is local;
- a class or cluster in a region (``bird:flight@above``): a collage. Its codes replace the cells of
  that region of the codes drawn so far (a weight w < 1 blends: w of the pasted cells, 1 - w of
  the base), as in SDEdit's collage editing (Meng et al. 2022, arXiv:2108.01073), where
  ``--project`` then lets the prior make one picture of the parts.

With ``--start`` (``start_guides``) the codes come from real pictures instead: held-out codes of one class or
cluster go ``--project`` of the way to noise, and the prior brings them back under every term of the expression
read as one conjunction, so the batch keeps the pictures' poses, colours and backgrounds (SDEdit from real
pictures, Meng et al. 2022).

The terms are added with their weights. ``projection_conditions`` says which classes an edit is
projected back onto (``--project``): the expression's classes, and for a wing direction the
winged class ``bird``, so that ``horse+wings`` lands on codes that are horse AND winged.

Example: see ``latent_ops.compose`` (``--source prior``, ``--project 0.4``, ``horse&bird+wings@top``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from latent_ops.concepts import Concepts, Gaussian, heldout_members
from latent_ops.encode import LatentBank
from latent_ops.expression import FOLLOWING_REGIONS, ExpressionError, region_slices, term_parts
from latent_ops.flow import Baseline, Condition, Drift, FlowNet, Guide, Schedule, project, sample
from latent_ops.placement import SubjectPlacer

SOURCES = ("heldout", "density", "prior")
CLUSTER_PRIOR_NOISE = 0.5  # how far a cluster member goes towards noise before the prior brings it back
# What ``wings`` asks the prior for inside a conjunction: CIFAR-10's clearest wing shapes are its airplanes
# (spread, pale) and its birds in flight; per unit of the part's weight.
WING_CLASSES = {"airplane": 1.0, "bird": 0.5}


@dataclass
class Sources:
    """Everything codes can be drawn from, for one run."""
    concepts: Concepts
    bank: LatentBank | None = None  # held-out codes (``heldout`` source, clusters under ``prior``)
    prior: FlowNet | None = None  # the run's latent prior (``prior`` source, conjunctions, projection)
    code_shape: tuple[int, ...] = ()  # (D,) flat or (C, 4, 4) spatial
    decoder: torch.nn.Module | None = None  # the run's decoder: regions that follow the subject decode estimates
    perceptual: torch.nn.Module | None = None  # the perceptual classifier: where the subject is (never the evaluator)
    placed: torch.Tensor | None = None  # set by sample_expression: (N, rows, cols) cells a following region took


@dataclass
class DrawSettings:
    """How a draw is made (the compose flags that shape it)."""
    source: str = "heldout"
    strength: float = 1.0  # scales every direction's calibrated step
    temperature: float = 1.0  # spread of ``density`` draws and of the prior's starting noise
    guidance: float = 2.0  # classifier-free guidance of prior draws, per condition
    prior_steps: int = 32  # ODE steps of prior draws
    solver: str = "heun"  # the ODE solver of prior draws (latent_ops.flow.SOLVERS)
    guidance_from: float = 0.0  # guidance applies from this time of the flow (0: noise) ...
    guidance_until: float = 1.0  # ... until this one (1: the codes)
    progress: str = ""  # a label: prior draws show a progress bar on a terminal
    negative: str = ""  # a class guidance pushes prior draws away from, in place of "no condition" ("": none)
    repel: float = 0.0  # particle guidance: a batch of prior draws pushed apart from each other (0: independent)
    repel_until: float = 0.35  # ... for times of the flow up to this one
    repel_features: Callable[[torch.Tensor], torch.Tensor] | None = None  # ... in this space (``picture_features``)
    repel_reading: Callable[[torch.Tensor], torch.Tensor] | None = None  # ... never lowering this reading of them
    repel_toward: float = 0.0  # ... and drawn this many push lengths along its gradient

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.prior_steps, self.solver, self.guidance_from, self.guidance_until, self.progress,
                        self.repel, self.repel_until, self.repel_features, self.repel_reading, self.repel_toward)


def picture_features(sources: Sources) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable map of the prior's standardised codes (B, D) to the perceptual net's features (B, F) of
    their decoded pictures: the space particle guidance pushes draws apart in (never the evaluator's)."""
    prior, decoder, perceptual = sources.prior, sources.decoder, sources.perceptual
    if prior is None or decoder is None or perceptual is None:
        raise ValueError("pushing draws apart by their pictures needs the run's prior, decoder and perceptual net")
    return lambda codes: perceptual.features(decoder(prior.unstandardise(codes)))


def learned_labels(prior: FlowNet | None) -> list[str]:
    """The concepts a prior learned beyond CIFAR-10's classes (``latent_ops.learn``)."""
    return list(getattr(prior, "label_names", CIFAR10_CLASSES)[len(CIFAR10_CLASSES):])


def class_label(concept: str, prior: FlowNet | None = None) -> int:
    """The prior's label of a class or cluster concept (``horse:2`` -> 7), or of a learned concept."""
    learned = getattr(prior, "label_names", CIFAR10_CLASSES)
    if concept in learned[len(CIFAR10_CLASSES):]:
        return learned.index(concept)
    name = concept.split(":")[0]
    if name not in CIFAR10_CLASSES:
        raise ExpressionError(f"{concept!r} is not a class or cluster; & joins classes and clusters, e.g. horse&bird")
    return CIFAR10_CLASSES.index(name)


def check_negative(name: str) -> None:
    """A ``--negative`` must be a CIFAR-10 class or a cluster of one ("" is none); else one clear error."""
    if name and name.split(":")[0] not in CIFAR10_CLASSES:
        raise ExpressionError(f"--negative {name!r} is not a CIFAR-10 class or cluster ({', '.join(CIFAR10_CLASSES)}); "
                              f"name the class guidance should push away from, e.g. --negative deer, or leave it out")


def negative_guides(settings: DrawSettings, prior: FlowNet | None) -> list[Baseline]:
    """The Baseline of ``settings.negative`` (a class or cluster: its class's label), or none. Guidance then
    extrapolates away from that class instead of from no condition: a negative prompt at no extra cost."""
    if not settings.negative:
        return []
    check_negative(settings.negative)
    return [Baseline(class_label(settings.negative, prior))]


def region_mask(region: str, code_shape: tuple[int, ...]) -> np.ndarray:
    """A flat (D,) 0/1 mask of the cells of ``region`` in a (C, H, W) code."""
    if len(code_shape) != 3:
        raise ExpressionError(f"@{region} moves one region of a spatial code, but this run's code is flat "
                              f"({code_shape[0] if code_shape else '?'} numbers): train a run with "
                              f"--spatial_channels (e.g. 8 with --latent_dim 128), or drop @{region}")
    rows, cols = region_slices(region, code_shape[1:])
    mask = np.zeros(code_shape, dtype=np.float32)
    mask[:, rows, cols] = 1
    return mask.reshape(-1)


def need_prior(sources: Sources, why: str) -> FlowNet:
    if sources.prior is None:
        raise ExpressionError(f"{why} needs the run's latent prior; train it with python -m latent_ops.prior --run RUN")
    return sources.prior


def prior_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2 ** 31)))


def draw_density(name: str, sources: Sources, count: int, rng: np.random.Generator, settings: DrawSettings
                 ) -> tuple[np.ndarray, list[int] | None]:
    """(count, D) codes of one class or cluster, and the test-split positions drawn (None when synthetic)."""
    concepts = sources.concepts
    if name in learned_labels(sources.prior):  # a concept the prior learned: always drawn from its label
        codes = sample(sources.prior, count, [(class_label(name, sources.prior), settings.guidance),
                                              *negative_guides(settings, sources.prior)],
                       settings.schedule, prior_generator(rng), temperature=settings.temperature)
        return codes.numpy(), None
    if settings.source == "density":
        return concepts.sample(name, count, rng, settings.temperature), None
    if settings.source == "prior" and ":" not in name:
        prior = need_prior(sources, "--source prior")
        codes = sample(prior, count, [(class_label(name), settings.guidance), *negative_guides(settings, prior)],
                       settings.schedule, prior_generator(rng), temperature=settings.temperature)
        return codes.numpy(), None
    if sources.bank is None:
        raise ExpressionError(f"drawing {name} needs the run's code bank (python -m latent_ops.encode)")
    members = heldout_members(name, concepts, sources.bank)
    if len(members) == 0:
        raise ExpressionError(f"{name} has no held-out members to draw from; pick another cluster")
    pick = rng.choice(members, size=count, replace=len(members) < count)
    codes = sources.bank.codes["test"][pick]
    drawn = [int(sources.bank.indices["test"][i]) for i in pick]
    if settings.source == "prior":  # a cluster: its members, varied by the prior
        prior = need_prior(sources, "--source prior")
        codes = project(prior, torch.from_numpy(codes), CLUSTER_PRIOR_NOISE,
                        [(class_label(name), settings.guidance), *negative_guides(settings, prior)],
                        settings.schedule, prior_generator(rng)).numpy()
    return codes, drawn


def mixture_mean(mixture: list[tuple[float, Gaussian]]) -> np.ndarray:
    """(D,) the mean of a Gaussian mixture [(weight, Gaussian), ...]."""
    total = sum(w for w, _ in mixture)
    return sum(w * g.mean for w, g in mixture) / total


def cluster_offset(name: str, concepts: Concepts) -> np.ndarray:
    """(D,) float32: how far a cluster or named source (``horse:white``) sits from its class (``horse``), mean to
    mean in code space."""
    return (mixture_mean(concepts.densities[name])
            - mixture_mean(concepts.densities[name.partition(":")[0]])).astype(np.float32)


def conjunction_guides(parts: tuple[tuple[str, float], ...], sources: Sources, settings: DrawSettings
                       ) -> list[Guide]:
    """The guides of a conjunction's parts: a class, cluster, named source or learned concept is a
    Condition on its label; ``wings`` the winged classes; a direction a Drift of its calibrated step.
    A part with a region applies only to the region's cells (a following region's until it is placed)."""
    prior = sources.prior
    guides: list[Guide] = []
    for name, weight in parts:
        concept, _, region = name.partition("@")
        mask = torch.from_numpy(region_mask(region, sources.code_shape)) if region else None
        if concept in sources.concepts.densities or concept in learned_labels(prior):
            guides.append(Condition(class_label(concept, prior), weight * settings.guidance, mask, region))
            if ":" in concept and concept.partition(":")[0] in sources.concepts.densities:
                # a cluster or named source has no label of its own: its class's label, and a push by its
                # offset from the class (without it, pegasus&horse:white drew the same codes as pegasus&horse)
                offset = cluster_offset(concept, sources.concepts)
                guides.append(Drift(torch.from_numpy(weight * settings.strength * offset).float(), mask, region))
        elif concept.startswith("wings"):
            guides += [Condition(CIFAR10_CLASSES.index(c), share * weight * settings.guidance, mask, region)
                       for c, share in WING_CLASSES.items()]
        elif concept in sources.concepts.directions:
            d = sources.concepts.directions[concept]
            vector = torch.from_numpy(weight * settings.strength * d.step * d.vector).float()
            guides.append(Drift(vector, mask, region))
        else:
            raise ExpressionError(f"{concept} in a conjunction is neither a class, a cluster, a learned concept "
                                  f"nor a direction of this run")
    return guides + negative_guides(settings, prior)


def subject_placer(guides: list[Guide], sources: Sources) -> SubjectPlacer | None:
    """A placer for the guides' following regions (None when there are none): the subject is the first
    condition that holds everywhere."""
    if not any(g.region in FOLLOWING_REGIONS for g in guides):
        return None
    if sources.decoder is None:
        raise ExpressionError(f"@{FOLLOWING_REGIONS[0]} follows the subject in each decoded candidate, so it needs "
                              f"the run's decoder")
    subject = next((g.label for g in guides if isinstance(g, Condition) and not g.region), None)
    if subject is None or subject >= len(CIFAR10_CLASSES):
        subject = None
    perceptual = sources.perceptual if subject is not None else None
    return SubjectPlacer(sources.decoder, perceptual, subject or 0, sources.code_shape)


def start_guides(weights: dict[str, float], sources: Sources, settings: DrawSettings
                 ) -> tuple[list[Guide], SubjectPlacer | None]:
    """The guides that carry ``--start``'s codes to the expression, and their subject placer (None without a
    following region): every term read as a part of one conjunction (``a+b`` as ``a&b``, a conjunction's parts
    weighted by its term's weight), so a class, cluster or learned concept is a condition on its label, ``wings``
    the winged classes, a direction a drift, each in its region; and the negative."""
    parts: list[tuple[str, float]] = []
    for term, weight in weights.items():
        split = term_parts(term)
        parts += [(name, w * weight) for name, w in split.conjunction] if split.conjunction else [(term, weight)]
    guides = conjunction_guides(tuple(parts), sources, settings)
    return guides, subject_placer(guides, sources)


def sample_expression(weights: dict[str, float], sources: Sources, count: int, rng: np.random.Generator,
                      settings: DrawSettings = DrawSettings()) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(count, D) float32 codes for the expression, and per drawn concept the test-split positions used."""
    if settings.source not in SOURCES:
        raise ExpressionError(f"--source must be one of {', '.join(SOURCES)}, got {settings.source!r}")
    concepts = sources.concepts
    parts = {term: term_parts(term) for term in weights}
    learned = learned_labels(sources.prior)
    starts = [t for t, p in parts.items()
              if (p.conjunction or p.concept in concepts.densities or p.concept in learned) and not p.region]
    pastes = [t for t, p in parts.items() if p.concept in concepts.densities and p.region]
    if not starts:
        raise ExpressionError(f"the expression needs at least one class, cluster or conjunction to start from "
                              f"(e.g. horse+wings); it has only {', '.join(weights)}")
    drawn: dict[str, list[int]] = {}
    codes: np.ndarray | float = 0.0
    for term in starts:
        split = parts[term]
        if split.conjunction:
            prior = need_prior(sources, f"the conjunction {term}")
            guides = conjunction_guides(split.conjunction, sources, settings)
            placer = subject_placer(guides, sources)
            part = sample(prior, count, guides, settings.schedule, prior_generator(rng), placer,
                          settings.temperature).numpy()
            if placer is not None:
                sources.placed = placer.cells
        else:
            part, positions = draw_density(split.concept, sources, count, rng, settings)
            if positions is not None:
                drawn[term] = positions
        codes = codes + weights[term] * part
    for term in pastes:  # collages: after every start, so that they paste onto the whole base
        split = parts[term]
        if weights[term] <= 0:
            raise ExpressionError(f"{term}: a pasted region needs a positive weight (the share of its cells)")
        mask = min(weights[term], 1.0) * region_mask(split.region, sources.code_shape)[None, :]
        part, positions = draw_density(split.concept, sources, count, rng, settings)
        if positions is not None:
            drawn[term] = positions
        codes = codes * (1 - mask) + part * mask
    for term, split in parts.items():
        if term in starts or term in pastes:
            continue
        if split.concept not in concepts.directions:
            raise ExpressionError(f"{term} is neither a class, a cluster nor a direction of this run")
        d = concepts.directions[split.concept]
        vector = d.vector * region_mask(split.region, sources.code_shape) if split.region else d.vector
        codes = codes + (weights[term] * settings.strength * d.step) * vector[None, :]
    return np.asarray(codes, dtype=np.float32), drawn


def projection_conditions(weights: dict[str, float], concepts: Concepts, guidance: float,
                          prior: FlowNet | None = None) -> list[tuple[int, float]]:
    """The labels an edited code is projected onto: each positive class, cluster, learned concept or
    conjunction part that holds everywhere, and ``bird`` for a positive wing direction (horse+wings:
    horse AND winged)."""
    learned = learned_labels(prior)
    conditions: dict[int, float] = {}
    for term, weight in weights.items():
        split = term_parts(term)
        if weight <= 0:
            continue
        for name, w in split.conjunction or ((split.concept, 1.0),):
            if name in concepts.densities or name in learned:
                label = class_label(name, prior)
            elif name.startswith("wings"):
                label = CIFAR10_CLASSES.index("bird")
            else:
                continue
            conditions[label] = conditions.get(label, 0.0) + w * weight * guidance
    return list(conditions.items())
