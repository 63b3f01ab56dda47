"""Networks: shapes for every preset, output ranges, identity-initialised residual blocks."""
from __future__ import annotations

import pytest
import torch

from autoencoder.config import make_config
from autoencoder.models import ModelConfig, ResBlock, build_networks


@pytest.mark.parametrize("preset", ["smoke", "cpu", "release", "release-grid8", "gpu"])
def test_shapes(preset):
    config = make_config(preset)
    nets = build_networks(config)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = nets.encoder(x)
    assert z.shape == (3, config.latent_dim)
    x_rec = nets.decoder(z)
    assert x_rec.shape == (3, 3, 32, 32)
    assert x_rec.min() >= -1 and x_rec.max() <= 1
    assert nets.interp_critic(x).shape == (3,)
    assert nets.image_critic(x).shape == (3,)
    assert nets.latent_critic(z).shape == (3,)


def test_the_image_critic_gives_its_feature_maps_with_the_same_logits():
    critic = build_networks(make_config("smoke")).image_critic.eval()  # no power iteration between the calls
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    logits, maps = critic(x, features=True)
    assert torch.equal(logits, critic(x))
    width = make_config("smoke").critic_width
    assert [m.shape for m in maps] == [(3, c, s, s) for c, s in zip((width, 2 * width, 4 * width, 4 * width),
                                                                    (32, 16, 8, 4))]


def test_a_patch_critic_judges_each_patch_and_gives_the_image_their_mean():
    critic = build_networks(make_config("smoke", image_critic_patches=True)).image_critic.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    patches = critic(x, per_patch=True)
    assert patches.shape == (3, 64)
    assert torch.allclose(critic(x), patches.mean(1))
    logits, maps = critic(x, features=True)
    assert torch.allclose(logits, critic(x)) and [m.shape[-1] for m in maps] == [32, 16, 8]
    changed = x.clone()
    changed[:, :, :8, :8] = 1.0  # a white corner moves the corner's logits, not the far corner's
    moved = (critic(changed, per_patch=True) - patches).abs().view(3, 8, 8)
    assert moved[:, :2, :2].min() > 0 and torch.equal(moved[:, 6:, 6:], torch.zeros(3, 2, 2))
    whole = build_networks(make_config("smoke")).image_critic.eval()
    assert whole(x, per_patch=True).shape == (3, 1)


def test_latent_size_follows_config():
    nets = build_networks(make_config("smoke", latent_dim=7))
    assert nets.encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_resblock_starts_as_identity():
    block = ResBlock(4)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(x), x)


def test_parameter_groups_split_autoencoder_and_critics():
    nets = build_networks(make_config("smoke"))
    ae = {id(p) for p in nets.autoencoder_parameters()}
    critics = {id(p) for p in nets.critic_parameters()}
    assert ae and critics and not ae & critics
    assert ae | critics == {id(p) for p in nets.parameters()}
    assert {id(p) for p in nets.autoencoder_parameters(encoder=False)} == {id(p) for p in nets.decoder.parameters()}


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    nets = build_networks(make_config("smoke")).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = nets.decoder(nets.encoder(x))
    nets = nets.to(memory_format=torch.channels_last)
    fast = nets.decoder(nets.encoder(x.contiguous(memory_format=torch.channels_last)))
    assert torch.allclose(plain, fast, atol=1e-5)


def test_networks_take_their_own_model_config():
    import autoencoder.models as models_module

    train_config = make_config("smoke", latent_dim=9, width=4)
    model = ModelConfig.of(train_config)
    assert model == ModelConfig(latent_dim=9, width=4, res_blocks=0, critic_width=8, latent_critic_hidden=32)
    nets = build_networks(model)
    assert nets.encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 9)
    assert not hasattr(models_module, "TrainConfig"), "models.py should not depend on the training config"


def test_a_spatial_code_round_trips_and_its_cells_act_locally():
    from autoencoder.cli import ConfigError

    torch.manual_seed(0)
    nets = build_networks(make_config("smoke", latent_dim=32, spatial_channels=2)).eval()
    assert ModelConfig.of(make_config("smoke", latent_dim=32, spatial_channels=2)).code_shape == (2, 4, 4)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = nets.encoder(x)
    assert z.shape == (3, 32) and nets.decoder(z).shape == (3, 3, 32, 32)
    moved = z.clone().view(3, 2, 4, 4)
    moved[:, :, 0, 0] += 5.0  # the top-left cell only
    with torch.no_grad():
        change = (nets.decoder(moved.flatten(1)) - nets.decoder(z)).abs()
    assert change[..., :8, :8].mean() > 0 and change[..., 24:, 24:].max() == 0  # the far corner is untouched
    flat = build_networks(make_config("smoke", latent_dim=32)).eval()
    z_flat = flat.encoder(x)
    z_moved = z_flat.clone()
    z_moved[:, 0] += 5.0
    with torch.no_grad():
        assert (flat.decoder(z_moved) - flat.decoder(z_flat))[..., 24:, 24:].abs().max() > 0  # a flat code is global
    with pytest.raises(ConfigError, match="--latent_dim must be 32"):
        make_config("smoke", latent_dim=16, spatial_channels=2)
