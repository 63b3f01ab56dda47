"""Each metric on inputs whose answer is known."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from autoencoder import metrics
from autoencoder.cifar10 import CIFAR10_CLASSES


def gaussian_features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale + shift


def test_reconstruction_known_values():
    x = torch.zeros(4, 3, 8, 8)
    r = metrics.reconstruction(x, x + 0.2)
    assert r["mse"] == pytest.approx(0.04)
    assert r["psnr_db"] == pytest.approx(20.0, abs=1e-4) and r["psnr_of_mean_mse_db"] == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        metrics.reconstruction(x, x[:2])


def test_pca_with_enough_components_reconstructs_the_span():
    basis = torch.rand(3, 3 * 4 * 4) * 2 - 1
    train = (torch.rand(40, 3) @ basis).view(40, 3, 4, 4) / 3
    test = (torch.rand(5, 3) @ basis).view(5, 3, 4, 4) / 3
    assert metrics.reconstruction(test, metrics.pca_reconstruction(train, test, 3))["mse"] < 1e-8
    assert metrics.reconstruction(test, metrics.pca_reconstruction(train, test, 1))["mse"] > 1e-4


def test_frechet_distance_identical_sets_is_zero_and_scaling_is_exact():
    a = gaussian_features(2000, 8, 0)
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    # b = 2a: covariances S and 4S, so FD = |mu|^2 + Tr(S + 4S - 2 * 2S) = |mu|^2 + Tr(S)
    cov = torch.cov(a.T.double())
    expected = a.double().mean(0).pow(2).sum() + cov.trace()
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(expected.item(), rel=1e-6)
    shifted = metrics.frechet_distance(a, a + 0.5)
    assert shifted == pytest.approx(8 * 0.25, rel=1e-6)
    assert metrics.frechet_distance(a, a + 0.5) == pytest.approx(metrics.frechet_distance(a + 0.5, a), rel=1e-6)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_kernel_distance_near_zero_for_one_distribution_and_positive_for_two():
    a, b = gaussian_features(600, 16, 1), gaussian_features(600, 16, 2)
    same, same_std = metrics.kernel_distance(a, b, subsets=20, subset_size=300)
    different, _ = metrics.kernel_distance(a, gaussian_features(600, 16, 3, shift=0.7), subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert different > 20 * abs(same) and different > 0.01
    assert metrics.kernel_distance(a, b, seed=4) == metrics.kernel_distance(a, b, seed=4)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kernel_distance(a[:1], b)


def test_recognisability_is_high_only_when_both_are_present():
    p = torch.zeros(3, 10)
    p[0, 7], p[0, 2], p[0, 0] = 0.5, 0.3, 0.2  # horse, bird, airplane
    p[1, 7] = 1.0  # a plain horse
    p[2, 2] = 1.0  # a plain bird
    r = metrics.recognisability(p, CIFAR10_CLASSES)
    assert r["horse"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert r["winged"].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert r["combined"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        metrics.recognisability(torch.zeros(2, 9), CIFAR10_CLASSES)
    with pytest.raises(ValueError, match="pegasus"):
        metrics.recognisability(p, CIFAR10_CLASSES, subject="pegasus")


def test_a_copied_training_image_has_zero_uniqueness():
    train = torch.rand(50, 3, 32, 32) * 2 - 1
    samples = torch.stack([train[17], train[3] + 0.1])
    d, i = metrics.nearest_neighbours(samples, train, chunk=7)
    d, i = d[:, 0], i[:, 0]
    assert d[0] == pytest.approx(0.0, abs=1e-5) and i[0] == 17
    assert d[1] == pytest.approx(0.1, abs=1e-4) and i[1] == 3
    with pytest.raises(ValueError, match="values each"):
        metrics.nearest_distances(samples, torch.zeros(4, 5))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 30), st.integers(1, 9), st.integers(0, 10_000))
def test_nearest_distances_match_brute_force_for_any_chunk(n, m, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    queries, reference = torch.randn(n, 6, generator=g), torch.randn(m, 6, generator=g)
    d, i = metrics.nearest_neighbours(queries, reference, chunk=chunk)
    d, i = d[:, 0], i[:, 0]
    full = torch.cdist(queries, reference)
    assert torch.allclose(d, full.min(1).values / 6 ** 0.5, atol=1e-5)
    assert torch.allclose(full[torch.arange(n), i], full.min(1).values, atol=1e-5)


def test_diversity_is_zero_for_copies_and_exact_for_two_points():
    assert metrics.mean_pairwise_distance(torch.ones(5, 4)) == 0.0
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert metrics.mean_pairwise_distance(two) == pytest.approx(5.0 / 2 ** 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_pairwise_distance(two[:1])


def test_blurred_images_are_less_sharp():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sharp, soft = metrics.laplacian_variance(images), metrics.laplacian_variance(blurred)
    assert sharp.shape == (6,) and (soft < sharp / 4).all()
    assert metrics.laplacian_variance(torch.full((2, 3, 8, 8), 0.3)).abs().max() < 1e-10
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        metrics.laplacian_variance(torch.zeros(3, 32, 32))


def test_the_bf16_shortlist_finds_the_exact_neighbours_of_uint8_images_and_of_vectors():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (3000, 3, 8, 8), generator=g, dtype=torch.uint8)
    near = train[torch.randint(0, 3000, (40,), generator=g)].float().div(127.5).sub(1)
    queries = torch.cat([near + 0.05 * torch.randn(near.shape, generator=g), torch.rand(24, 3, 8, 8, generator=g) * 2 - 1])
    exact_d, exact_i = metrics.nearest_neighbours(queries, train, k=3, chunk=700)
    index = metrics.shortlist_index(train, chunk=700)
    for reference in (train, index):  # the raw set, or prepared once
        d, i = metrics.nearest_neighbours(queries, reference, k=3, chunk=700, shortlist=16)
        assert torch.equal(i, exact_i) and torch.allclose(d, exact_d, atol=1e-5)
    vectors = torch.randn(500, 20, generator=g)
    d, i = metrics.nearest_neighbours(vectors[:30] + 0.01, vectors, k=2, shortlist=8)
    assert torch.equal(i[:, 0], torch.arange(30)) and (d[:, 0] < d[:, 1]).all()
    with pytest.raises(ValueError, match="queries have 12 values each, reference 192"):
        metrics.nearest_neighbours(torch.zeros(2, 12), index, shortlist=16)
