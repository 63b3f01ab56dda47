"""Clusters, densities and directions on toy codes whose answers are known."""
from __future__ import annotations

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from latent_ops import concepts as C
from latent_ops import run_concepts
from latent_ops.encode import LatentBank

D = 12


def blobs(sizes, centres, rng, spread=0.3):
    return np.concatenate([c + spread * rng.standard_normal((n, D)) for n, c in zip(sizes, centres)])


def test_bic_finds_three_separated_clusters_named_by_size():
    rng = np.random.default_rng(0)
    centres = [np.eye(D)[0] * 6, np.eye(D)[1] * 6, -np.eye(D)[2] * 6]
    codes = blobs([300, 200, 100], centres, rng)
    assignment, search = C.fit_clusters(codes, max_clusters=6, pca_dims=6)
    assert search["chosen"] == 3
    truth = np.repeat([0, 1, 2], [300, 200, 100])
    assert (assignment == truth).mean() > 0.98  # cluster 0 is the largest


def test_gaussian_samples_match_the_fitted_density():
    rng = np.random.default_rng(1)
    codes = rng.standard_normal((2000, D)) * np.linspace(0.5, 2, D) + 3
    concepts = C.Concepts(densities={"toy": [(1.0, C.fit_gaussian(codes))]})
    samples = concepts.sample("toy", 4000, np.random.default_rng(2))
    assert samples.shape == (4000, D) and samples.dtype == np.float32
    assert np.allclose(samples.mean(0), 3, atol=0.15)
    assert np.allclose(samples.std(0), np.linspace(0.5, 2, D), rtol=0.1)
    cooler = concepts.sample("toy", 4000, np.random.default_rng(2), temperature=0.5)
    assert np.allclose(cooler.std(0), 0.5 * np.linspace(0.5, 2, D), rtol=0.1)


def test_directions_recover_the_separating_axis():
    rng = np.random.default_rng(3)
    axis = np.zeros(D)
    axis[4] = 1.0
    pos = rng.standard_normal((500, D)) + 2 * axis
    neg = rng.standard_normal((500, D)) - 2 * axis
    for vector, offset in (C.linear_direction(pos, neg), C.meandiff_direction(pos, neg)):
        assert vector @ axis > 0.97 and abs(np.linalg.norm(vector) - 1) < 1e-6
        assert abs(offset) < 0.3  # the boundary passes near the origin
        assert ((pos @ vector + offset) > 0).mean() > 0.95


def test_crossing_step_is_the_quantile_of_distances_to_the_boundary():
    vector = np.eye(D)[0]
    negatives = np.zeros((10, D))
    negatives[:, 0] = -np.arange(1, 11)  # 1 to 10 units below the boundary at 0
    assert np.isclose(C.crossing_step(vector, 0.0, negatives, 1.0), 10)
    assert np.isclose(C.crossing_step(vector, 0.0, negatives, 0.5), 5.5)
    assert C.crossing_step(vector, 0.0, -negatives, 0.9) == 0  # already on the positive side


def test_orthogonal_to():
    a, b = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    v = C.orthogonal_to(a, b)
    assert abs(v @ b) < 1e-12 and np.allclose(v, [0, 1, 0])


def toy_bank(rng):
    """Four classes: birds and airplanes on the + side of axis 0, cats and horses on the - side."""
    names = ["airplane", "bird", "cat", "horse"]
    codes, labels = {}, {}
    for split, n in (("train", 200), ("test", 80)):
        parts = []
        for i, name in enumerate(names):
            centre = np.zeros(D)
            centre[0] = 2.0 if name in C.WINGED else -2.0
            centre[1 + i] = 3.0
            parts.append(centre + rng.standard_normal((n, D)))
        codes[split] = np.concatenate(parts).astype(np.float32)
        labels[split] = np.repeat([CIFAR10_CLASSES.index(nm) for nm in names], n)
    return LatentBank(codes, labels, {s: np.arange(len(labels[s])) for s in labels})


def test_fit_concepts_on_a_toy_bank_and_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    bank = toy_bank(rng)
    white = {s: bank.codes[s][:, 5] > 1.5 for s in ("train", "test")}  # the cats' own axis is "white"
    concepts, record = C.fit_concepts(bank, white["train"], white["test"], max_clusters=3)
    assert {"airplane", "bird", "cat", "horse", "horse:0", "horse:1"} <= set(concepts.names)
    for name in ("wings", "wings_linear", "wings_meandiff", "wings_flight", "white"):
        assert name in concepts.directions, name
    assert concepts.directions["wings"].held_out_accuracy > 0.95
    wings = concepts.directions["wings"].vector  # axis 0 dominates; the class axes help separate too
    assert np.argmax(np.abs(wings)) == 0 and wings[0] > 0.5 and wings[1] > 0 and wings[3] < 0
    assert abs(concepts.directions["white"].vector @ concepts.directions["wings"].vector) < 1e-5
    assert concepts.probe.held_out_accuracy > 0.9
    search = record["horse"]["bic_search"]
    assert sorted(search["bic"]) == [2, 3] and search["chosen"] == min(search["bic"], key=search["bic"].get)
    assert sum(c["size"] for c in record["horse"]["clusters"]) == 200  # the clusters partition the class
    edits = concepts.horse_edit_probe  # one wing step moves held-out horses towards the winged classes
    assert set(edits) == {"linear", "meandiff", "flight"}
    base = concepts.probe.probabilities(torch.from_numpy(bank.codes["test"][-80:]))
    assert edits["linear"]["winged"] > float((base["bird"] + base["airplane"]).mean())

    run_concepts.save_concepts(concepts, record, tmp_path)
    loaded = run_concepts.load_concepts(tmp_path)
    assert loaded.names == concepts.names
    assert np.array_equal(loaded.directions["white"].vector, concepts.directions["white"].vector)
    a = loaded.sample("horse", 5, np.random.default_rng(0))
    b = concepts.sample("horse", 5, np.random.default_rng(0))
    assert np.allclose(a, b)
    for name in ("horse", "horse:0", "horse:1"):  # a named cluster is its class's component, stored once
        for (w, g), (w2, g2) in zip(concepts.densities[name], loaded.densities[name]):
            assert w == w2 and np.array_equal(g.mean, g2.mean) and np.allclose(g.chol, g2.chol, rtol=1e-6, atol=1e-7)
            assert g2.chol.dtype == np.float64
    stored = np.load(tmp_path / run_concepts.DENSITIES_FILE, allow_pickle=False)
    shared = {k: str(stored[k]) for k in stored.files if k.endswith("/same_as")}
    assert shared.get("density/horse/0/same_as") == "density/horse:0/0" or shared.get("density/horse:0/0/same_as") == "density/horse/0"
    assert all(stored[f"{target}/chol"].dtype == np.float32 for target in shared.values())
    p = loaded.probe.probabilities(torch.from_numpy(bank.codes["test"][-80:]))  # the test horses
    assert (p["horse"] > 0.5).float().mean() > 0.9


def test_a_mixture_component_that_no_code_falls_in_is_dropped(monkeypatch):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    codes = blobs([50, 50], [np.eye(D)[0] * 6, -np.eye(D)[0] * 6], rng)
    real_predict = GaussianMixture.predict
    monkeypatch.setattr(GaussianMixture, "predict", lambda self, x: np.where(real_predict(self, x) == 1, 0,
                                                                            real_predict(self, x)))
    assignment, search = C.fit_clusters(codes, max_clusters=3, pca_dims=4)
    assert search["chosen"] == len(np.unique(assignment)) and set(assignment) == set(range(search["chosen"]))
