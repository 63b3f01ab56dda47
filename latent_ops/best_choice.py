"""Choosing the best image by agreement: two classifiers and the picture's regions, not one classifier's maximum.

Ranking puts first the candidate that the evaluator scores highest; the maximum of one classifier over a
thousand candidates is where that classifier is most wrong as often as where the picture is best (the
winner's curse of selecting on a noisy score; the "Goodhart" failure of optimising a proxy, Gao et al.
2023, arXiv:2210.10760). So the best image and the next three (``--best agreement``, the default) are
chosen among the refined candidates that passed the gate and whose critic realism is at least the median
of those, by

- **agreement**: for each intent term, the lower of the evaluator's and the perceptual net's reading
  (two classifiers trained apart, on different objectives), their geometric mean over the terms: a
  candidate is only as good as the reading that likes it less (the ensemble-minimum of Coste et al. 2024,
  arXiv:2310.02743, against reward over-optimisation);
- **rising mass**, when the expression asks for a subject with wings: the share of the middle third above
  the back that is figure (``latent_ops.subject.rising_mass``), a wing from the middle of the back rather
  than blades at the ends of a table-like body. It is 1 when the expression names no wings.

Among those, when the expression asks for a subject with wings, only the candidates that both classifiers read as
the subject at least as well as the median of them (the lower of the two P(horse)) are chosen from: the rising mass
favours a wing so strongly that a thin figure under crossed blades (P(horse) 0.22) came first on seed 0, where a brown
horse with one raised wing (0.46 and 0.54) now does (2026-12-05). The choice score is agreement x sqrt(rising
mass). Against the strict by-eye marks of the kept 64 of ``make pegasus`` seeds 0-2 before it shipped (docs/pegasus-cifar10/before-rise/marked-seed*.json; 192 images, 116 marked) it has ROC AUC
0.77; with the **regional reading** in its place (the perceptual net's class activation maps, Zhou et al.
2016, arXiv:1512.04150, on its 3 x 3 grid: the subject's share in the lower two rows times the winged
classes' share in the top row), the rule until 2026-12-05, 0.48, and agreement alone 0.43. The regional
reading is still recorded for each candidate read. ``--best rank`` keeps the ranking's order.

Example: ``python -c "import torch; from latent_ops.best_choice import agreement; print(agreement({'horse': torch.tensor([.9])}, {'horse': torch.tensor([.4])}))"``
"""
from __future__ import annotations

import torch

from autoencoder.cifar10 import CIFAR10_CLASSES

BEST_RULES = ("agreement", "rank")
SHOWN_BEST = 4  # the best and the next three, each shown with its scores
WINGED_CLASSES = ("bird", "airplane")


def subject_term(names) -> str | None:
    """The subject among intent-term or rule names: the first CIFAR-10 class that is not a winged one (None)."""
    return next((n for n in names if n in CIFAR10_CLASSES and n not in WINGED_CLASSES), None)


def agreement(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,): per term, the lower of the two readings (each (N,) in [0, 1]); their geometric mean over the terms
    both readings have. All ones when they share none."""
    shared = [name for name in first if name in second]
    if not shared:
        return torch.ones(len(next(iter(first.values()))) if first else 0)
    lows = torch.stack([torch.minimum(first[n].float(), second[n].float()) for n in shared], 1)
    return lows.clamp_min(1e-8).log().mean(1).exp()


def regional_reading(cams: torch.Tensor, subject: int, winged: list[int], top_rows: int = 1) -> torch.Tensor:
    """(N,) from class activation maps (N, classes, rows, cols): the share of the ``subject`` class's positive
    activation below the first ``top_rows`` rows, times the share of the ``winged`` classes' positive
    activation in them. 1 x 1 means: the body reads as the subject and only the cells above it read as wings."""
    body = cams[:, subject].clamp_min(0)
    wing = cams[:, winged].sum(1).clamp_min(0)
    body_share = body[:, top_rows:].sum((1, 2)) / body.sum((1, 2)).clamp_min(1e-8)
    wing_share = wing[:, :top_rows].sum((1, 2)) / wing.sum((1, 2)).clamp_min(1e-8)
    return body_share * wing_share


def choice_score(agree: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """(N,) the best-image score: agreement times the square root of ``support`` (the rising mass)."""
    return agree * support.clamp_min(0).sqrt()


def eligible(refined: torch.Tensor, gated: torch.Tensor, realism: torch.Tensor) -> torch.Tensor:
    """(N,) bool: refined, through the gate, and at least the median critic realism of those."""
    pool = refined & gated
    if not pool.any():
        return pool
    return pool & (realism >= realism[pool].median())


def reads_as_subject(allowed: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
    """(N,) bool: ``allowed`` (N,) bool and the subject reading ``subject`` (N,: the lower of the two classifiers'
    P(subject)) at least its median over the allowed, so the best is a horse before it is a wing."""
    if not allowed.any():
        return allowed
    return allowed & (subject >= subject[allowed].median())


def best_first(order: torch.Tensor, score: torch.Tensor, allowed: torch.Tensor, count: int = SHOWN_BEST
               ) -> torch.Tensor:
    """``order`` (positions, best first) with the ``count`` ``allowed`` (N,) bool candidates of the highest
    ``score`` (N,) moved to the front, highest first; every other candidate keeps its place in the order."""
    candidates = torch.nonzero(allowed).flatten()
    chosen = candidates[score[candidates].argsort(descending=True, stable=True)][:count]
    rest = order[~torch.isin(order, chosen)]
    return torch.cat([chosen, rest])
