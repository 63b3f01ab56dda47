"""The evaluator classifier: whitening, augmentation, schedule, training, resume, loading, errors."""
from __future__ import annotations

import json

import fire
import pytest
import torch
from conftest import tiny_evaluator_config as tiny_config
from safetensors.torch import load_file

import autoencoder.train_evaluator as evaluator_module
from autoencoder.classifier import SHIPPED, EvaluatorNet, load_evaluator, patch_whitening
from autoencoder.cli import ConfigError
from autoencoder.train_evaluator import (
    EvaluatorConfig,
    learning_rate,
    main,
    make_evaluator_config,
    random_translate,
    train_evaluator,
)


def test_patch_whitening_whitens_patches():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)
    images = torch.einsum("nchw,cd->ndhw", torch.randn(64, 3, 16, 16, generator=g), mix)
    filters = patch_whitening(images, eps=1e-8)  # (24, 3, 2, 2): 12 filters and their negatives
    assert filters.shape == (24, 3, 2, 2)
    assert torch.allclose(filters[12:], -filters[:12])
    out = torch.nn.functional.conv2d(images - images.mean((0, 2, 3), keepdim=True), filters[:12])
    covariance = torch.cov(out.permute(1, 0, 2, 3).flatten(1))
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)


def test_random_translate_shifts_within_the_reflected_border():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    assert torch.equal(random_translate(images, 0, torch.Generator()), images)
    out = random_translate(images, 1, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect").byte()
    for b in range(2):
        crops = [padded[b, :, dy:dy + 6, dx:dx + 6] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[b], c) for c in crops)
    again = random_translate(images, 1, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_learning_rate_warms_up_then_decays_to_zero():
    config = EvaluatorConfig(lr=0.4, warmup=0.2)
    rates = [learning_rate(s, 100, config) for s in range(100)]
    assert rates[0] == pytest.approx(0.4 / 20) and max(rates) == pytest.approx(0.4) and rates.index(0.4) == 19
    assert all(a <= b for a, b in zip(rates[:20], rates[1:20])) and all(a >= b for a, b in zip(rates[20:], rates[21:]))
    assert rates[-1] == pytest.approx(0.4 / 80)


def test_training_lowers_the_loss_and_writes_a_finished_evaluator(tiny_evaluator, folder_data):
    out, result = tiny_evaluator
    losses = [e["train_loss"] for e in result["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    for name in ("classifier.safetensors", "config.json", "card.md", "result.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    assert all(t.dtype == torch.float16 for t in load_file(str(out / "classifier.safetensors")).values()
               if t.is_floating_point())
    assert "from scratch" in (out / "card.md").read_text() and "not** Inception" in (out / "card.md").read_text()
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    evaluator = load_evaluator(out)
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    assert evaluator.features(images).shape == (5, 16)
    p = evaluator.probabilities(images)
    assert p.shape == (5, 10) and torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    uint8 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(evaluator.features(uint8), evaluator.features(uint8.float() / 127.5 - 1))


def test_a_killed_run_resumes_to_the_same_weights(tiny_evaluator, folder_data, tmp_path, monkeypatch):
    whole, _ = tiny_evaluator
    calls = {"n": 0}
    real_accuracy = evaluator_module.Evaluator.accuracy

    def dying_accuracy(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # during epoch 2, before its checkpoint
            raise KeyboardInterrupt
        return real_accuracy(self, *args, **kwargs)

    monkeypatch.setattr(evaluator_module.Evaluator, "accuracy", dying_accuracy)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_evaluator(tiny_config(folder_data, killed), progress=False)
    monkeypatch.setattr(evaluator_module.Evaluator, "accuracy", real_accuracy)
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ConfigError, match="--resume true"):
        train_evaluator(tiny_config(folder_data, killed), progress=False)
    with pytest.raises(ConfigError, match="--epochs"):
        train_evaluator(tiny_config(folder_data, killed, epochs=4), resume=True, progress=False)
    train_evaluator(tiny_config(folder_data, killed), resume=True, progress=False)
    a, b = load_file(str(whole / "classifier.safetensors")), load_file(str(killed / "classifier.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(l)["epoch"] for l in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_bad_flags_name_the_flag(folder_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--widths"):
        make_evaluator_config(widths="8,16")
    with pytest.raises(ConfigError, match="--epochs"):
        make_evaluator_config(epochs=0)
    with pytest.raises(ConfigError, match="unknown flag.*--colour"):
        make_evaluator_config(colour=3)
    with pytest.raises(SystemExit) as exit_info:
        fire.Fire(main, command=["--out", str(tmp_path / "e"), "--data", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: data folder")
    with pytest.raises(FileNotFoundError, match="no evaluator network in"):
        load_evaluator(tmp_path)


def test_the_shipped_evaluator_loads_and_its_card_comes_from_its_result(tmp_path):
    from autoencoder.cli import load_config
    from autoencoder.run_folder import weights_metadata
    from autoencoder.train_evaluator import validate_evaluator_config, write_card

    evaluator = load_evaluator()
    assert isinstance(evaluator.net, EvaluatorNet)
    result = json.loads((SHIPPED / "result.json").read_text())
    assert evaluator.features(torch.zeros(2, 3, 32, 32)).shape == (2, result["feature_dim"])
    # the weights are the ones the result describes, and the card is what write_card makes of it
    assert float(weights_metadata(SHIPPED / "classifier.safetensors")["test_accuracy"]) == pytest.approx(
        result["test_accuracy"], abs=1e-4)
    write_card(tmp_path, load_config(SHIPPED / "config.json", EvaluatorConfig, validate_evaluator_config), result)
    assert (tmp_path / "card.md").read_text() == (SHIPPED / "card.md").read_text(), "card.md was edited by hand"


def test_the_shipped_perceptual_net_is_a_different_network_that_only_trains():
    from autoencoder.classifier import SHIPPED_PERCEPTUAL, load_perceptual
    from autoencoder.run_folder import RunError

    net = load_perceptual()
    assert not any(p.requires_grad for p in net.parameters())
    assert len(net.feature_maps(torch.zeros(1, 3, 32, 32))) == 4
    assert net.widths != load_evaluator().net.widths  # another architecture than the evaluator
    with pytest.raises(RunError, match="holds the perceptual network"):
        load_evaluator(SHIPPED_PERCEPTUAL)
    with pytest.raises(RunError, match="holds the evaluator network"):
        load_perceptual(SHIPPED)
