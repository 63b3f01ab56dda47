"""What an expression asks for: the probability that each candidate shows each of its terms, the learned
concepts it names (and what they were learned from), the regions it names, and whether it needs the prior.

Class probabilities come from the evaluator on the decoded images when it is shipped (ranking
is allowed to use it; guidance and acceptance never do), or from the latent class probe.

Example: ``python -c "from latent_ops.intent import expression_regions; from latent_ops.expression import parse; print(expression_regions(parse('horse&wings@top')))"``
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import SHIPPED, WEIGHTS_FILE
from latent_ops.concepts import WINGED, Concepts
from latent_ops.expression import ExpressionError, parse, term_parts
from latent_ops.trained_prior import learned_expression, load_learned, load_prior

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
                              f"python -m autoencoder.train_evaluator --ship {SHIPPED}, or use --intent probe")
    return intent


def intent_terms(weights: dict[str, float], concepts: Concepts, codes: torch.Tensor | None,
                 probs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per concept of the expression, the probability (N,) that a code shows it (1 - that for negative
    terms); a conjunction counts each of its parts, a region its direction (left out without ``codes``).

    A negative term is scored by its absence and keyed ``not NAME``. Class probabilities come from ``probs`` (class name -> (N,), e.g. the evaluator's on the
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
            elif name in concepts.directions and codes is not None:
                d = concepts.directions[name]
                distance = torch.from_numpy(d.signed_distance(codes.cpu().numpy()))
                p = torch.sigmoid(4 * distance / max(d.step, 1e-6))
            else:
                continue
            if w * weight > 0:
                terms[name] = p
            else:  # scored by its absence, and named so: "not horse" is not P(horse)
                terms[f"not {name}"] = 1 - p
    return terms


def class_reading(weights: dict[str, float], concepts: Concepts, classify: Callable[[torch.Tensor], torch.Tensor]
                  ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A differentiable reading of features (B, F) -> (B,): the sum of the log probabilities of the expression's
    class and wing terms (``intent_terms``), with ``classify`` (features -> (B, 10) logits: the perceptual net's
    head, never the evaluator) giving the class probabilities. None when the expression has no such term."""
    def reading(features: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(classify(features).float(), dim=1)
        by_class = {name: probabilities[:, i] for i, name in enumerate(CIFAR10_CLASSES)}
        terms = intent_terms(weights, concepts, None, by_class).values()
        return sum(torch.log(p.clamp_min(1e-6)) for p in terms)

    probe = {name: torch.full((1,), 0.5) for name in CIFAR10_CLASSES}
    return reading if intent_terms(weights, concepts, None, probe) else None


def samples_the_prior(weights: dict[str, float], learned: list[str]) -> bool:
    """Whether the expression itself draws codes from the prior: a conjunction or a learned concept."""
    return any(term_parts(t).conjunction for t in weights) or bool(named_learned(weights, learned))


def needs_prior(config, weights: dict[str, float], learned: list[str]) -> bool:
    """Whether a compose of ``config`` (its source, --project, --refine_prior) and ``weights`` draws on the prior."""
    return (config.source == "prior" or config.project > 0 or config.refine_prior > 0
            or samples_the_prior(weights, learned))


def spreads_with_temperature(config, weights: dict[str, float], learned: list[str]) -> bool:
    """Whether ``--temperature`` shapes a compose of ``config`` and ``weights``: it spreads density draws and the
    prior's starting noise (its source, conjunctions, learned concepts), not held-out codes of real images."""
    return config.source != "heldout" or samples_the_prior(weights, learned)


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
