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


@torch.no_grad()
def nearest_neighbours(images: torch.Tensor, bank: torch.Tensor, k: int = 3, chunk: int = 5000
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS pixel distance (N, k) and index (N, k) of the k nearest bank images.

    images: (N, 3, 32, 32) float in [-1, 1]; bank: (M, 3, 32, 32) uint8.
    """
    query = images.flatten(1).float()
    best_d, best_i = [], []
    for start in range(0, len(bank), chunk):
        part = bank[start:start + chunk].flatten(1).float().div(127.5).sub(1)
        d = torch.cdist(query, part)  # (N, chunk)
        top = d.topk(min(k, d.shape[1]), largest=False)
        best_d.append(top.values)
        best_i.append(top.indices + start)
    d, i = torch.cat(best_d, 1), torch.cat(best_i, 1)
    order = d.argsort(1)[:, :k]
    dims = query.shape[1]
    return d.gather(1, order) / dims ** 0.5, i.gather(1, order)


def combined_score(terms: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted sum of the batch z-scores of the named terms (higher is better)."""
    weights = weights or {}
    return sum(weights.get(name, 1.0) * zscore(values.float()) for name, values in terms.items())


def capped_uniqueness(distance: torch.Tensor, reference: float) -> torch.Tensor:
    """Nearest-training-image distance counted up to ``reference`` (that of real held-out images).

    A sample as far from the training set as a real test image is as new as one can ask;
    going further only means leaving the data (artefacts), which must not raise its rank.
    """
    return distance.clamp(max=reference)
