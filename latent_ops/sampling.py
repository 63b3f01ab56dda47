"""Codes for a parsed expression: draws of its classes, clusters and conjunctions, plus direction steps.

A term of the expression (``latent_ops.expression``) becomes codes as follows:

- a class or cluster (``horse``, ``horse:2``): codes of real held-out test images of it
  (``--source heldout``, the default), draws from its fitted Gaussian mixture (``density``),
  or draws from the latent prior (``prior``: a class under classifier-free guidance; a
  cluster as its held-out members taken half way to noise and brought back by the prior);
- a conjunction (``horse&bird``): draws from the prior under every part at once
  (Composable Diffusion, Liu et al. 2022, arXiv:2206.01714); it needs the prior;
- a direction (``wings``): its calibrated step; with a region (``wings@top``) only the cells of
  that region of a spatial code move, so the edit is local;
- a class or cluster in a region (``bird:flight@above``): a collage. Its codes replace the cells of
  that region of the codes drawn so far (a weight w < 1 blends: w of the pasted cells, 1 - w of
  the base), as in SDEdit's collage editing (Meng et al. 2022, arXiv:2108.01073), where
  ``--project`` then lets the prior make one picture of the parts.

The terms are added with their weights. ``projection_conditions`` says which classes an edit is
projected back onto (``--project``): the expression's classes, and for a wing direction the
winged class ``bird``, so that ``horse+wings`` lands on codes that are horse AND winged.

Example: see ``latent_ops.compose`` (``--source prior``, ``--project 0.4``, ``horse&bird+wings@top``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autoencoder.config import CIFAR10_CLASSES
from latent_ops.concepts import Concepts, heldout_members
from latent_ops.encode import LatentBank
from latent_ops.expression import REGIONS, ExpressionError, term_parts
from latent_ops.flow import Condition, VelocityNet, project, sample

SOURCES = ("heldout", "density", "prior")
CLUSTER_PRIOR_NOISE = 0.5  # how far a cluster member goes towards noise before the prior brings it back


@dataclass
class Sources:
    """Everything codes can be drawn from, for one run."""
    concepts: Concepts
    bank: LatentBank | None = None  # held-out codes (``heldout`` source, clusters under ``prior``)
    prior: VelocityNet | None = None  # the run's latent prior (``prior`` source, conjunctions, projection)
    code_shape: tuple[int, ...] = ()  # (D,) flat or (C, 4, 4) spatial


@dataclass
class DrawSettings:
    """How a draw is made (the compose flags that shape it)."""
    source: str = "heldout"
    strength: float = 1.0  # scales every direction's calibrated step
    temperature: float = 1.0  # spread of ``density`` draws
    guidance: float = 2.0  # classifier-free guidance of prior draws, per condition
    prior_steps: int = 32  # ODE steps of prior draws


def class_label(concept: str) -> int:
    """The CIFAR-10 label of a class or cluster concept (``horse:2`` -> 7)."""
    name = concept.split(":")[0]
    if name not in CIFAR10_CLASSES:
        raise ExpressionError(f"{concept!r} is not a class or cluster; & joins classes and clusters, e.g. horse&bird")
    return CIFAR10_CLASSES.index(name)


def region_mask(region: str, code_shape: tuple[int, ...]) -> np.ndarray:
    """A flat (D,) 0/1 mask of the cells of ``region`` in a (C, 4, 4) code."""
    if len(code_shape) != 3:
        raise ExpressionError(f"@{region} moves one region of a spatial code, but this run's code is flat "
                              f"({code_shape[0] if code_shape else '?'} numbers): train a run with "
                              f"--spatial_channels (e.g. 8 with --latent_dim 128), or drop @{region}")
    (r0, r1), (c0, c1) = REGIONS[region]
    mask = np.zeros(code_shape, dtype=np.float32)
    mask[:, r0:r1, c0:c1] = 1
    return mask.reshape(-1)


def need_prior(sources: Sources, why: str) -> VelocityNet:
    if sources.prior is None:
        raise ExpressionError(f"{why} needs the run's latent prior; train it with python -m latent_ops.prior --run RUN")
    return sources.prior


def prior_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2 ** 31)))


def draw_density(name: str, sources: Sources, count: int, rng: np.random.Generator, settings: DrawSettings
                 ) -> tuple[np.ndarray, list[int] | None]:
    """(count, D) codes of one class or cluster, and the test-split positions drawn (None when synthetic)."""
    concepts = sources.concepts
    if settings.source == "density":
        return concepts.sample(name, count, rng, settings.temperature), None
    if settings.source == "prior" and ":" not in name:
        prior = need_prior(sources, "--source prior")
        codes = sample(prior, count, [(class_label(name), settings.guidance)], settings.prior_steps,
                       prior_generator(rng))
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
        codes = project(prior, torch.from_numpy(codes), CLUSTER_PRIOR_NOISE, [(class_label(name), settings.guidance)],
                        settings.prior_steps, prior_generator(rng)).numpy()
    return codes, drawn


def sample_expression(weights: dict[str, float], sources: Sources, count: int, rng: np.random.Generator,
                      settings: DrawSettings = DrawSettings()) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(count, D) float32 codes for the expression, and per drawn concept the test-split positions used."""
    if settings.source not in SOURCES:
        raise ExpressionError(f"--source must be one of {', '.join(SOURCES)}, got {settings.source!r}")
    concepts = sources.concepts
    parts = {term: term_parts(term) for term in weights}
    starts = [t for t, p in parts.items() if (p.conjunction or p.concept in concepts.densities) and not p.region]
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
            conditions: list[Condition] = [(class_label(n), w * settings.guidance) for n, w in split.conjunction]
            part = sample(prior, count, conditions, settings.prior_steps, prior_generator(rng)).numpy()
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


def projection_conditions(weights: dict[str, float], concepts: Concepts, guidance: float) -> list[Condition]:
    """The classes an edited code is projected onto: each positive class, cluster or conjunction part
    of the expression, and ``bird`` for a positive wing direction (horse+wings: horse AND winged)."""
    conditions: dict[int, float] = {}
    for term, weight in weights.items():
        split = term_parts(term)
        if weight <= 0:
            continue
        for name, w in split.conjunction or ((split.concept, 1.0),):
            if name in concepts.densities:
                label = class_label(name)
            elif name.startswith("wings"):
                label = CIFAR10_CLASSES.index("bird")
            else:
                continue
            conditions[label] = conditions.get(label, 0.0) + w * weight * guidance
    return list(conditions.items())
