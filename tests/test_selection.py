"""Selecting the kept images for quality and diversity together (latent_ops.ranking's DPP), on small inputs, and
compose --select dpp run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from latent_ops.learn import rarity_weights
from latent_ops.ranking import dispersed_subset, greedy_dpp, quality_diversity_subset

ROOT = Path(__file__).resolve().parent.parent


def test_the_greedy_dpp_takes_the_distinct_rows_before_a_second_copy():
    a, b, c = torch.eye(3, dtype=torch.float64)
    features = torch.stack([a, a, a, b, c])
    kernel = features @ features.T  # rank 3: a fourth row adds no volume
    chosen = greedy_dpp(kernel, 4)
    assert len(chosen) == 3, "no row adds volume once a, b and c are taken"
    assert {3, 4} <= set(chosen) and len(set(chosen) & {0, 1, 2}) == 1


def test_the_dispersed_subset_spreads_wider_than_any_of_many_random_ones():
    from itertools import combinations

    from autoencoder.metrics import mean_pairwise_distance

    g = torch.Generator().manual_seed(0)
    points = torch.cat([0.1 * torch.randn(20, 2, generator=g), torch.tensor([[10.0, 0], [-10.0, 0], [0, 10.0]])])
    chosen = dispersed_subset(points, 3)
    assert sorted(chosen.tolist()) == [20, 21, 22]  # the three far points
    best = max(mean_pairwise_distance(points[list(c)]) for c in combinations(range(23), 3))
    assert mean_pairwise_distance(points[chosen]) == best
    spread = dispersed_subset(torch.randn(200, 8, generator=g), 16)
    assert len(set(spread.tolist())) == 16
    many = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    randoms = [mean_pairwise_distance(many[torch.randperm(200, generator=g)[:16]]) for _ in range(200)]
    assert mean_pairwise_distance(many[dispersed_subset(many, 16)]) > max(randoms)
    assert dispersed_subset(torch.ones(1, 3), 4).tolist() == [0]


def test_the_greedy_dpp_maximises_the_determinant_on_a_small_kernel():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    kernel = torch.exp(-torch.cdist(x, x) ** 2)
    first = greedy_dpp(kernel, 1)
    assert first == [int(kernel.diagonal().argmax())]
    two = greedy_dpp(kernel, 2)
    best = max(((i, j) for i in range(6) for j in range(i + 1, 6)),
               key=lambda p: torch.det(kernel[list(p)][:, list(p)]).item())
    assert two[0] == first[0] and torch.det(kernel[two][:, two]) >= 0.5 * torch.det(kernel[list(best)][:, list(best)])


def test_strong_quality_keeps_the_ranking_and_none_trades_it_for_diversity():
    features = torch.cat([torch.zeros(8, 4), torch.eye(4) * 5])  # 8 near-duplicates ranked first, 4 distinct after
    features[:8] += 0.01 * torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    assert quality_diversity_subset(features, 4, quality_decay=100.0, bandwidth=1.0).tolist() == [0, 1, 2, 3]
    diverse = quality_diversity_subset(features, 4, quality_decay=0.0, bandwidth=0.2).tolist()
    assert sum(i < 8 for i in diverse) == 1 and diverse == sorted(diverse)


def test_compose_select_dpp_keeps_a_varied_set_as_a_process(tmp_path):
    out = tmp_path / "dpp"
    done = subprocess.run([sys.executable, "-m", "latent_ops.compose", "horse+wings", "--run", "models/pegasus-cifar10",
                           "--data", "no-data", "--pool", "96", "--n", "16", "--refine_top", "16", "--refine_steps", "1",
                           "--select", "dpp", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-800:]
    scores = json.loads((out / "scores.json").read_text())
    kept = [c["rank"] for c in scores["candidates"] if c["kept"]]
    assert len(kept) == 16 and kept == sorted(kept)
    assert json.loads((out / "config.json").read_text())["select"] == "dpp"
    bad = subprocess.run([sys.executable, "-m", "latent_ops.compose", "horse", "--select", "best"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--select" in bad.stderr and "dpp" in bad.stderr


def test_rarity_weights_favour_the_look_that_no_other_shares():
    crowd = 0.01 * torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    features = torch.cat([crowd, torch.full((1, 4), 3.0)])  # nine alike, one apart
    weights = rarity_weights(features, power=1.0, k=3)
    assert torch.isclose(weights.sum(), torch.tensor(1.0)) and weights.argmax() == 9
    assert weights[9] > 0.5, "the lone look is drawn more often than the nine alike together"
    even = rarity_weights(features, power=0.0)
    assert torch.allclose(even, torch.full((10,), 0.1))
    assert rarity_weights(features[:1], power=1.0).tolist() == [1.0]
