"""The latent prior: the flow learns a toy bank, samples by class, projects edits back; the CLI
trains, resumes exactly, and refuses a stale or mismatched prior."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import dies_on_call, fit_toy_flow
from safetensors.torch import load_file

from autoencoder.cli import ConfigError
from latent_ops import prior as prior_module
from latent_ops.encode import StaleError
from latent_ops.flow import VelocityNet, denoise, guided_velocity, prior_score, project, sample
from latent_ops.prior import make_prior_config, train_prior
from latent_ops.trained_prior import load_prior

CENTRES = torch.tensor([[3.0, 0, 0, 0], [-3.0, 0, 0, 0]])  # class 0 and class 1 of a 4-number toy code


def toy_bank(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    codes = CENTRES[labels] + 0.3 * torch.randn(n, 4, generator=g)
    return codes, labels


@pytest.fixture(scope="module")
def toy_flow():
    """A small flow trained on two well-separated classes: (net, held-out loss before, after)."""
    torch.manual_seed(0)
    codes, labels = toy_bank()
    net = VelocityNet(4, 10, hidden=64, blocks=2)
    before, after = fit_toy_flow(net, codes, labels, *toy_bank(1024, seed=9), steps=600)
    return net, before, after


def test_the_flow_loss_goes_down(toy_flow):
    _, before, after = toy_flow
    # Straight-path velocities have an irreducible spread (about 1 per Gaussian dimension, 3 of 4 here)
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("label", [0, 1])
def test_class_samples_land_nearer_their_own_class(toy_flow, label):
    net, _, _ = toy_flow
    codes = sample(net, 200, [(label, 1.0)], steps=16, generator=torch.Generator().manual_seed(1))
    distances = torch.cdist(codes, CENTRES)  # (200, 2)
    assert (distances[:, label] < distances[:, 1 - label]).float().mean() > 0.95
    unconditional = sample(net, 400, [], steps=16, generator=torch.Generator().manual_seed(2))
    share = (torch.cdist(unconditional, CENTRES).argmin(1) == 0).float().mean()
    assert 0.3 < share < 0.7  # without a condition, both classes


def test_the_temperature_scales_the_starting_noise(toy_flow):
    net, _, _ = toy_flow
    spreads = {}
    for temperature in (0.0, 0.5, 1.5):
        codes = sample(net, 200, [(0, 1.0)], steps=16, generator=torch.Generator().manual_seed(3),
                       temperature=temperature)
        spreads[temperature] = (codes - CENTRES[0]).norm(dim=1).mean().item()
        if temperature == 0:
            assert torch.allclose(codes, codes[:1].expand_as(codes))  # one start, one code
    assert spreads[0.0] < spreads[0.5] < spreads[1.5], spreads
    same = sample(net, 8, [(0, 1.0)], steps=16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, sample(net, 8, [(0, 1.0)], steps=16, generator=torch.Generator().manual_seed(3),
                                    temperature=1.0))  # 1 is the plain draw


def test_projection_brings_edited_codes_back_towards_the_data(toy_flow):
    net, _, _ = toy_flow
    codes, labels = toy_bank(64, seed=5)
    edited = codes[labels == 0] + torch.tensor([0, 2.5, 0, 0])  # off the data, along a direction it never varies
    projected = project(net, edited, 0.6, [(0, 1.0)], steps=16, generator=torch.Generator().manual_seed(3))
    data, _ = toy_bank()

    def nearest(x):
        return torch.cdist(x, data).min(1).values.mean()

    assert nearest(projected) < 0.5 * nearest(edited)
    assert (projected[:, 0] > 1).all()  # still class 0: the coarse content is kept
    assert torch.equal(project(net, edited, 0.0, [(0, 1.0)]), edited)
    score = prior_score(net, edited, [(0, 1.0)])
    assert (score[:, 1] < 0).float().mean() > 0.9  # the score points back down the edit
    pulled = denoise(net, edited, [(0, 1.0)])
    assert nearest(pulled) < nearest(edited)  # the denoiser pulls edits towards the data...
    real = codes[labels == 0]
    moved_real = (denoise(net, real, [(0, 1.0)]) - real).norm(dim=1).mean()
    assert moved_real < (pulled - edited).norm(dim=1).mean()  # ...and moves real codes less


def test_guidance_and_conditions_are_checked(toy_flow):
    net, _, _ = toy_flow
    x = torch.randn(3, 4)
    assert torch.allclose(guided_velocity(net, x, 0.5, [(0, 1.0)]),
                          net(x, torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long)), atol=1e-5)
    both = guided_velocity(net, x, 0.5, [(0, 1.0), (1, 1.0)])
    parts = [guided_velocity(net, x, 0.5, [(c, 1.0)]) for c in (0, 1)]
    assert torch.allclose(both, parts[0] + parts[1] - guided_velocity(net, x, 0.5, []), atol=1e-5)  # AND
    with pytest.raises(ValueError, match="label 11 is outside this prior's 10 labels"):
        guided_velocity(net, x, 0.5, [(11, 1.0)])
    with pytest.raises(ValueError, match="noise must be between 0 and 1"):
        project(net, x, 1.5, [])


TINY_PRIOR = dict(hidden=32, blocks=1, steps=20, batch_size=16, log_every=5, checkpoint_every=10)


@pytest.fixture()
def prior_run(smoke_run, folder_data, tmp_path):
    """A copy of the smoke run (the prior writes into it), with the flags that reach its data."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("prior", "latents.npz"))
    return run, dict(run=str(run), data=str(folder_data), cache_dir=str(tmp_path / "cache"))


def test_the_prior_cli_trains_resumes_exactly_and_refuses_stale_or_changed_priors(prior_run, tmp_path, monkeypatch):
    run, where = prior_run
    folder = train_prior(make_prior_config(**where, **TINY_PRIOR), progress=False)
    whole = load_file(str(folder / "model.safetensors"))
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20] and all(x["held_out_loss"] > 0 for x in lines)
    net = load_prior(run)
    assert net.dim == 16 and not net.training
    assert sample(net, 5, [(7, 2.0)], steps=4).shape == (5, 16)

    # The same prior killed during step 16 (last checkpoint 10, last log 15), then the same command again.
    shutil.rmtree(folder)
    monkeypatch.setattr(prior_module, "flow_matching_loss", dies_on_call(prior_module.flow_matching_loss, 16))
    with pytest.raises(KeyboardInterrupt):
        train_prior(make_prior_config(**where, **TINY_PRIOR), progress=False)
    monkeypatch.undo()
    train_prior(make_prior_config(**where, **TINY_PRIOR), progress=False)
    resumed = load_file(str(folder / "model.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15, 20]

    with pytest.raises(ConfigError, match="other --hidden"):
        train_prior(make_prior_config(**where, **{**TINY_PRIOR, "hidden": 64}), progress=False)
    source = json.loads((folder / "source.json").read_text())
    (folder / "source.json").write_text(json.dumps({**source, "weights_digest": "0" * 64}))
    with pytest.raises(StaleError, match="other weights"):
        load_prior(run)
    shutil.rmtree(folder)
    with pytest.raises(prior_module.RunError, match="python -m latent_ops.prior --run"):
        load_prior(run)
