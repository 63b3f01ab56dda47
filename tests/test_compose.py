"""compose end to end on the tiny smoke run: every output file, refinement, determinism, errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from PIL import Image

from autoencoder.checkpoint import load_run
from autoencoder.config import CIFAR10_CLASSES
from autoencoder.data import load_split, to_float
from latent_ops import ranking
from latent_ops.compose import compose, intent_terms, main as compose_main, resolve_intent
from latent_ops.expression import ExpressionError
from latent_ops.concepts import heldout_members, load_concepts
from latent_ops.encode import encode_run, load_bank
from latent_ops.refine import refine_codes


@pytest.fixture(scope="module")
def composed_run(smoke_run, folder_data, tmp_path_factory):
    """A copy of the smoke run with its latent bank, so the shared run stays as trained."""
    run = tmp_path_factory.mktemp("compose") / "run"
    shutil.copytree(smoke_run, run)
    encode_run(run, str(folder_data), cache_dir=str(smoke_run.parent / "cache"), progress=False)
    return run


def test_bank_holds_both_splits(composed_run):
    bank = load_bank(composed_run)
    config, _ = load_run(composed_run)
    assert bank.codes["train"].shape == (48, config.latent_dim) and bank.codes["test"].shape == (24, config.latent_dim)
    assert set(bank.labels["train"].tolist()) == {2, 3, 7}


def test_compose_writes_every_output(composed_run, folder_data, tmp_path, smoke_run):
    out = compose("horse+wings", run=str(composed_run), data=str(folder_data), n=16, seed=0, refine_steps=5,
                  cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "hw"), quiet=True)
    sizes = {"best.png": (32, 32), "best_x8.png": (256, 256), "batch64.png": (3 * (8 * 34 + 2), 3 * (2 * 34 + 2)),
             "neighbours.png": (3 * (4 * 34 + 2), 3 * (8 * 34 + 2)),
             "refinement.png": (3 * (8 * 34 + 2), 3 * (4 * 34 + 2))}
    for name, size in sizes.items():
        with Image.open(out / name) as image:
            assert image.size == size, name
    scores = json.loads((out / "scores.json").read_text())
    assert scores["expression"] == "horse+wings" and scores["seed"] == 0 and scores["n"] == 16
    assert [c["rank"] for c in scores["candidates"]] == list(range(16))
    for key in ("realism", "realism_before_refinement", "intent", "uniqueness", "combined", "intent_terms",
                "nearest_train_indices", "wings_signed_distance"):
        assert key in scores["candidates"][0], key
    combined = [c["combined"] for c in scores["candidates"]]
    assert combined == sorted(combined, reverse=True)
    assert (composed_run / "clusters.json").exists() and (composed_run / "directions.json").exists()
    assert list((composed_run / "clusters").glob("*.png"))
    assert "wings" in load_concepts(composed_run).directions
    images = load_file(str(out / "images.safetensors"))["images"]
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    with Image.open(out / "best.png") as best:
        assert torch.equal(torch.from_numpy(np.array(best.convert("RGB"))).permute(2, 0, 1), images[0])


def test_intent_reads_class_probabilities_of_the_decoded_images(composed_run):
    concepts = load_concepts(composed_run)
    probs = {name: torch.zeros(2) for name in CIFAR10_CLASSES}
    probs["horse"], probs["bird"], probs["airplane"] = torch.tensor([0.5, 1.0]), torch.tensor([0.3, 0.0]), \
        torch.tensor([0.2, 0.0])
    codes = torch.zeros(2, len(concepts.directions["wings"].vector))
    terms = intent_terms({"horse": 1.0, "wings": 1.0, "bird": -1.0}, concepts, codes, probs)
    assert terms["horse"].tolist() == pytest.approx([0.5, 1.0])
    assert terms["wings"].tolist() == pytest.approx([0.5, 0.0])
    assert terms["bird"].tolist() == pytest.approx([0.7, 1.0])  # a negative term counts its absence
    with pytest.raises(ExpressionError, match="--intent must be one of"):
        resolve_intent("oracle")
    assert resolve_intent("probe") == "probe"


def test_intent_source_is_recorded(composed_run, folder_data, tmp_path, smoke_run):
    out = compose("horse+wings", run=str(composed_run), data=str(folder_data), n=4, seed=0, refine_steps=1,
                  cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "probe"), quiet=True, intent="probe")
    assert json.loads((out / "scores.json").read_text())["intent_source"] == "probe"


def test_same_seed_same_images(composed_run, folder_data, tmp_path, smoke_run):
    kw = dict(run=str(composed_run), data=str(folder_data), n=4, refine_steps=3,  # 4 of the 8 test horses
              cache_dir=str(smoke_run.parent / "cache"), quiet=True)
    a = compose("horse+0.8*wings", seed=5, out=str(tmp_path / "a"), **kw)
    b = compose("horse+0.8*wings", seed=5, out=str(tmp_path / "b"), **kw)
    c = compose("horse+0.8*wings", seed=6, out=str(tmp_path / "c"), **kw)
    assert (a / "batch64.png").read_bytes() == (b / "batch64.png").read_bytes()
    assert (a / "batch64.png").read_bytes() != (c / "batch64.png").read_bytes()
    d = compose("horse+0.8*wings", seed=5, source="density", out=str(tmp_path / "d"), **kw)
    e = compose("horse+0.8*wings", seed=5, source="density", out=str(tmp_path / "e"), **kw)
    assert (d / "batch64.png").read_bytes() == (e / "batch64.png").read_bytes()
    assert json.loads((d / "scores.json").read_text())["source"] == "density"


def test_heldout_source_draws_real_test_codes_of_the_class(composed_run):
    import numpy as np

    from latent_ops.compose import sample_expression

    bank, concepts = load_bank(composed_run), load_concepts(composed_run)
    codes, drawn = sample_expression({"horse": 1.0}, concepts, 5, np.random.default_rng(0), bank=bank)
    test_positions = {int(i): row for row, i in enumerate(bank.indices["test"])}
    for code, index in zip(codes, drawn["horse"]):
        row = test_positions[index]
        assert bank.labels["test"][row] == 7 and np.allclose(code, bank.codes["test"][row])
    clusters = [n for n in concepts.names if n.startswith("horse:")]
    assert len(clusters) >= 2
    cluster_rows = [heldout_members(name, concepts, bank) for name in clusters]
    assert sorted(np.concatenate(cluster_rows).tolist()) == heldout_members("horse", concepts, bank).tolist()


def test_refinement_raises_the_critic_score(composed_run):
    _, nets = load_run(composed_run)
    torch.manual_seed(0)
    z0 = torch.randn(32, nets.decoder.project.in_features)
    z, history = refine_codes(nets, z0, steps=10, step_size=0.05, anchor=0.1)
    assert len(history) == 11 and history[-1] > history[0]
    assert (z - z0).norm(dim=1).mean() > 0  # the codes moved...
    assert torch.cdist(z, z).mean() > 0.5 * torch.cdist(z0, z0).mean()  # ...without collapsing together


def test_unknown_concept_is_one_clear_error(composed_run, folder_data, smoke_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compose_main("horse+wigns", run=str(composed_run), data=str(folder_data),
                     cache_dir=str(smoke_run.parent / "cache"))
    message = str(exit_info.value)
    assert message.startswith("error: unknown concept 'wigns' at column 7") and "horse:0" in message


def test_a_copied_training_image_has_zero_uniqueness(folder_data, smoke_run):
    bank = load_split(folder_data, "train", smoke_run.parent / "cache").images
    copies = to_float(bank[[3, 17]])
    distance, index = ranking.nearest_neighbours(copies, bank, k=3, chunk=10)
    assert torch.allclose(distance[:, 0], torch.zeros(2), atol=1e-6) and index[:, 0].tolist() == [3, 17]
    assert (distance[:, 1] > 0).all() and (distance[:, 1:] >= distance[:, :-1]).all()


def test_ranking_helpers():
    assert torch.allclose(ranking.zscore(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(ranking.zscore(torch.ones(3)), torch.zeros(3))
    g = ranking.geometric_mean(torch.tensor([[0.5, 0.5], [1.0, 0.01]]))
    assert g[0] > g[1]  # both parts present beats one strong, one absent
    score = ranking.combined_score({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 1.0])})
    assert score[1] > score[0]


def test_strength_and_weight_scale_the_calibrated_step(composed_run):
    import numpy as np

    from latent_ops.compose import sample_expression

    bank, concepts = load_bank(composed_run), load_concepts(composed_run)
    wings = concepts.directions["wings"]

    def codes(weights, strength):
        return sample_expression(weights, concepts, 3, np.random.default_rng(1), strength, bank=bank)[0]

    base = codes({"horse": 1.0, "wings": 1.0}, 0.0)
    moved = codes({"horse": 1.0, "wings": 0.5}, 2.0)  # 0.5 * 2 = one calibrated step
    assert np.allclose(moved - base, wings.step * wings.vector, atol=1e-5)


def test_newest_run_is_the_default(tmp_path, smoke_run):
    import os

    from autoencoder.checkpoint import RunError
    from latent_ops.runs import resolve_run

    with pytest.raises(RunError, match="no trained run"):
        resolve_run("", tmp_path)
    for name, age in (("old", 100), ("new", 0)):
        shutil.copytree(smoke_run, tmp_path / name)
        os.utime(tmp_path / name / "model.safetensors", (1e9 - age, 1e9 - age))
    assert resolve_run("", tmp_path) == tmp_path / "new"
    with pytest.raises(RunError, match="has no model.safetensors"):
        resolve_run(tmp_path / "missing")
