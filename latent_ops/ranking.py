"""Scores that rank composed images: realism, closeness to the expression's intent, uniqueness.

Pure functions of tensors and arrays; each returns one value per image.

Example: ``python -c "import torch; from latent_ops.ranking import zscore; print(zscore(torch.tensor([1., 2., 3.])))"``
"""
from __future__ import annotations

import torch


def zscore(values: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std within the batch; all zeros when the values do not vary."""
    std = values.std()
    return torch.zeros_like(values) if not torch.isfinite(std) or std == 0 else (values - values.mean()) / std


def geometric_mean(probabilities: torch.Tensor) -> torch.Tensor:
    """(N, T) probabilities -> (N,): high only when every one of the T is high."""
    return probabilities.clamp_min(1e-8).log().mean(1).exp()


def weighted_geometric_mean(probabilities: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, T) probabilities, (T,) non-negative weights -> (N,): exp(sum w log p / sum w); equal weights give
    ``geometric_mean``, a larger weight makes that term count more."""
    w = weights.to(probabilities.dtype)
    return (probabilities.clamp_min(1e-8).log() @ w / w.sum()).exp()


def parse_term_weights(text: str) -> dict[str, float]:
    """``"horse=2,wings=0.5"`` -> {"horse": 2.0, "wings": 0.5}; "" -> {}. Refuses, naming the part, a part that is
    not NAME=NUMBER or a weight outside 0-100."""
    weights = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not name.strip() or not 0 <= weight <= 100:
            raise ValueError(f"--rank_terms part {part!r} is not NAME=WEIGHT with a weight from 0 to 100 "
                             f"(e.g. --rank_terms horse=2)")
        weights[name.strip()] = weight
    return weights


def term_weighted_intent(intents: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The intent of each candidate: the geometric mean of its intent terms (N,) each, weighted by ``weights``
    (terms not named: 1). Refuses a named term that is not among them, naming the ones there are."""
    unknown = sorted(set(weights) - set(intents))
    if unknown:
        raise ValueError(f"--rank_terms names {', '.join(unknown)}, not an intent term of this expression; "
                         f"its terms are {', '.join(intents) or 'none'}")
    if sum(weights.get(name, 1.0) for name in intents) <= 0:
        raise ValueError("--rank_terms gives every intent term weight 0; give at least one a positive weight")
    w = torch.tensor([weights.get(name, 1.0) for name in intents])
    return weighted_geometric_mean(torch.stack(list(intents.values()), 1).float(), w)


def combined_score(terms: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted sum of the batch z-scores of the named terms (higher is better)."""
    weights = weights or {}
    return sum(weights.get(name, 1.0) * zscore(values.float()) for name, values in terms.items())


def gated_order(combined: torch.Tensor, passed: torch.Tensor, refined: torch.Tensor | None = None) -> torch.Tensor:
    """Positions best first: every candidate that ``passed`` (N,) bool the gate, by ``combined`` (N,) score,
    then the rest by score. With ``refined`` (N,) bool, the refined candidates come first (each group ordered
    so), so the best and the kept images are refined ones."""
    tier = passed.int() + (2 * refined.int() if refined is not None else 0)
    by_score = combined.argsort(descending=True, stable=True)
    return by_score[tier[by_score].argsort(descending=True, stable=True)]  # stable: keeps the score order


def capped_uniqueness(distance: torch.Tensor, reference: float) -> torch.Tensor:
    """Nearest-training-image distance counted up to ``reference`` (that of real held-out images).

    A sample as far from the training set as a real test image is as new as one can ask;
    going further only means leaving the data (artefacts), which must not raise its rank.
    """
    return distance.clamp(max=reference)


def diverse_subset(images: torch.Tensor, count: int, dedup: float) -> torch.Tensor:
    """Positions of up to ``count`` images (N, 3, H, W), taken in order (best first), skipping any closer
    (pixel distance) to one already taken than ``dedup`` x the median pairwise distance of the first
    ``4 count`` images: no two near-duplicates. Fewer than ``count`` only when the pool runs out."""
    flat = images.flatten(1).float()
    head = flat[:4 * count]
    pairs = torch.triu_indices(len(head), len(head), 1)
    threshold = dedup * torch.cdist(head, head)[pairs[0], pairs[1]].median().item() if len(head) > 1 else 0.0
    taken: list[int] = []
    for i in range(len(flat)):
        if len(taken) == count:
            break
        if not taken or torch.cdist(flat[i:i + 1], flat[taken]).min().item() >= threshold:
            taken.append(i)
    return torch.tensor(taken, dtype=torch.long)


def greedy_dpp(kernel: torch.Tensor, count: int) -> list[int]:
    """Greedy MAP of a determinantal point process with the positive semi-definite ``kernel`` (N, N): up to
    ``count`` rows, each the one that most raises the log-determinant of the chosen block (Chen, Zhang and Zhou
    2018, "Fast greedy MAP inference for determinantal point process", incremental Cholesky). Stops early when
    no row adds volume."""
    n = len(kernel)
    rows = torch.zeros(min(count, n), n, dtype=kernel.dtype)
    gain = kernel.diagonal().clone()  # the squared new volume each row would add
    chosen: list[int] = []
    for j in range(min(count, n)):
        masked = gain.clone()
        if chosen:
            masked[chosen] = -1.0
        pick = int(masked.argmax())
        if masked[pick] <= 1e-10:
            break
        chosen.append(pick)
        e = (kernel[pick] - rows[:j].T @ rows[:j, pick]) / masked[pick].sqrt()
        rows[j] = e
        gain = gain - e ** 2
    return chosen


def quality_diversity_subset(features: torch.Tensor, count: int, quality_decay: float,
                             bandwidth: float) -> torch.Tensor:
    """Positions of ``count`` rows of ``features`` (N, F; rows best first) chosen for quality and diversity
    together: the L-ensemble L = diag(q) S diag(q) of Kulesza and Taskar (2012, "Determinantal point processes
    for machine learning", section 3.1), with quality q_i = exp(-quality_decay * i / count) from the rank i and
    similarity S a Gaussian kernel whose width is ``bandwidth`` x the median pairwise distance. Returned best first
    (by rank). When the kernel runs out of volume (duplicates, or quality that vanishes down the ranking), the
    best-ranked of the rest fill the set, so it has min(count, N) rows."""
    flat = features.flatten(1).double()
    distances = torch.cdist(flat, flat)
    pairs = torch.triu_indices(len(flat), len(flat), 1)
    width = bandwidth * distances[pairs[0], pairs[1]].median().clamp_min(1e-12) if len(flat) > 1 else 1.0
    similarity = torch.exp(-(distances / width) ** 2 / 2)
    quality = torch.exp(-quality_decay * torch.arange(len(flat), dtype=torch.float64) / max(1, count))
    chosen = greedy_dpp(quality[:, None] * similarity * quality[None, :], count)
    taken = set(chosen)
    rest = [i for i in range(len(flat)) if i not in taken]  # when no row adds volume: the best of the rest
    return torch.tensor(sorted(chosen + rest[:count - len(chosen)]), dtype=torch.long)


def dispersed_subset(features: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of ``min(count, N)`` rows of ``features`` (N, F) with a large mean pairwise distance: the farthest
    pair, then each time the row whose distances to those chosen sum highest (the greedy of max-sum dispersion,
    within a factor 2 of the best set; Ravi, Rosenkrantz and Tayi 1994, "Heuristic and special case algorithms for
    dispersion problems"). Near the most varied set a selection could keep from these rows: an estimate of the
    ceiling on the diversity any rule can reach."""
    flat = features.flatten(1).double()
    if len(flat) <= min(count, 2):
        return torch.arange(len(flat))
    distances = torch.cdist(flat, flat)
    first, second = divmod(int(distances.argmax()), len(flat))
    chosen = [first, second]
    total = distances[first] + distances[second]
    for _ in range(min(count, len(flat)) - 2):
        total[chosen] = -1.0
        pick = int(total.argmax())
        chosen.append(pick)
        total = total + distances[pick]
    return torch.tensor(chosen, dtype=torch.long)


def at_least_quantile(values: torch.Tensor, quantile: float, parts: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: each value (the rising mass, the judge of marks' probability, critic realism...) at least ``quantile``
    of the values of its own part (of them all without ``parts``); all True at quantile 0."""
    if quantile <= 0:
        return torch.ones(len(values), dtype=torch.bool)
    if parts is None:
        return values >= torch.quantile(values.float(), quantile)
    passed = torch.zeros(len(values), dtype=torch.bool)
    for part in parts.unique():
        mine = parts == part
        passed[mine] = values[mine] >= torch.quantile(values[mine].float(), quantile)
    return passed
