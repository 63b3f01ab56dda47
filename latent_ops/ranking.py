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
