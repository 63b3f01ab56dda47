"""Loss terms on toy inputs whose answers are known."""
from __future__ import annotations

import math

import pytest
import torch

from autoencoder import losses, metrics


def test_reconstruction_zero_for_identical_and_known_value():
    x = torch.rand(2, 3, 4, 4)
    assert losses.reconstruction_loss(x, x).item() == 0
    assert math.isclose(losses.reconstruction_loss(x, x + 0.5).item(), 0.25, rel_tol=1e-6)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    # MSE 0.04 on a peak-to-peak range of 2: 10*log10(4/0.04) = 20 dB
    assert torch.allclose(metrics.psnr(x, x + 0.2), torch.full((2,), 20.0), atol=1e-4)
    assert metrics.psnr(x, x).min() > 90  # identical images: clamped, very high


def test_critic_loss_low_when_critic_is_right():
    right = losses.critic_loss_real_fake(torch.full((8,), 5.0), torch.full((8,), -5.0))
    wrong = losses.critic_loss_real_fake(torch.full((8,), -5.0), torch.full((8,), 5.0))
    unsure = losses.critic_loss_real_fake(torch.zeros(8), torch.zeros(8))
    assert right < unsure < wrong
    assert math.isclose(unsure.item(), 2 * math.log(2), rel_tol=1e-6)


def test_generator_loss_falls_as_fakes_fool_the_critic():
    values = [losses.generator_loss(torch.full((4,), t)).item() for t in (-3.0, 0.0, 3.0)]
    assert values[0] > values[1] > values[2]
    assert math.isclose(values[1], math.log(2), rel_tol=1e-6)


def test_acai_critic_loss_zero_for_perfect_critic():
    alpha = torch.tensor([0.1, 0.3, 0.5])
    assert losses.acai_critic_loss(alpha, alpha, torch.zeros(3)).item() == 0
    off = losses.acai_critic_loss(alpha + 0.1, alpha, torch.full((3,), 0.2)).item()
    assert math.isclose(off, 0.01 + 0.04, rel_tol=1e-5)


def test_acai_autoencoder_loss_is_mean_square_of_predicted_alpha():
    assert math.isclose(losses.acai_autoencoder_loss(torch.tensor([0.0, 0.2])).item(), 0.02, rel_tol=1e-6)


def test_total_weights_terms():
    terms = {"recon": torch.tensor(1.0), "latent": torch.tensor(2.0), "image": torch.tensor(4.0)}
    assert losses.total(terms, {"latent": 0.5, "image": 0.0}).item() == 2.0


def test_losses_give_gradients_through_bf16():
    logits = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    losses.generator_loss(logits).backward()
    assert logits.grad is not None and (logits.grad < 0).all()  # raising fake logits lowers the loss


def step_gradients(monkeypatch, scale_critic=1.0, scale_autoencoder_adversarial=1.0, constant_critics=False,
                   **recipe):
    """Gradients each optimiser sees in one fp32 smoke step, with the loss sides scaled as asked."""
    from autoencoder import losses as L
    from autoencoder.config import make_config
    from autoencoder.models import build_networks
    from autoencoder.step import make_optimisers, optimised_parameters, step_generator, train_step

    config = make_config("smoke", precision="fp32", channels_last=False, batch_size=8, **recipe)
    torch.manual_seed(0)
    nets = build_networks(config)
    if constant_critics:  # critics whose outputs do not depend on their inputs
        for name in ("latent_critic", "interp_critic", "image_critic"):
            critic = getattr(nets, name)
            bias = torch.nn.Parameter(torch.zeros(()))
            critic.register_parameter("constant", bias)
            monkeypatch.setattr(critic, "forward", lambda x, b=bias, **_: b.expand(len(x)) + 0 * x.sum() * 0)
    opt_ae, opt_critic = make_optimisers(nets, config)
    grads = {}
    for side, opt in (("autoencoder", opt_ae), ("critics", opt_critic)):
        params = optimised_parameters(opt)
        monkeypatch.setattr(opt, "step", lambda *a, side=side, params=params: grads.__setitem__(
            side, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]))
    real_ae, real_critic = L.autoencoder_terms, L.critic_terms
    monkeypatch.setattr(L, "critic_terms", lambda out: {k: scale_critic * v for k, v in real_critic(out).items()})
    monkeypatch.setattr(L, "autoencoder_terms", lambda x, x_rec, out, *rest: {
        k: v if k == "recon" else scale_autoencoder_adversarial * v
        for k, v in real_ae(x, x_rec, out, *rest).items()})
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    train_step(nets, batch, config, step_generator(0, 0), opt_ae, opt_critic, torch.device("cpu"), torch.float32)
    return grads


def same(a, b):
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


# The default recipe, and one whose perceptual term matches the image critic's own features:
# that term's gradient must reach the autoencoder and never the critic.
ROUTING_RECIPES = {"default": {}, "critic features": dict(perceptual_weight=1.0, perceptual_source="critic")}


@pytest.mark.parametrize("recipe", ROUTING_RECIPES.values(), ids=ROUTING_RECIPES.keys())
def test_gradient_routing_each_side_moves_only_its_own_networks(monkeypatch, recipe):
    base = step_gradients(monkeypatch, **recipe)
    monkeypatch.undo()
    critic_loud = step_gradients(monkeypatch, scale_critic=1e4, **recipe)
    monkeypatch.undo()
    autoencoder_loud = step_gradients(monkeypatch, scale_autoencoder_adversarial=1e4, **recipe)
    monkeypatch.undo()
    assert same(base["autoencoder"], critic_loud["autoencoder"]), "the critic loss moved autoencoder weights"
    assert not same(base["critics"], critic_loud["critics"])
    assert same(base["critics"], autoencoder_loud["critics"]), "the autoencoder loss moved critic weights"
    assert not same(base["autoencoder"], autoencoder_loud["autoencoder"]), "no adversarial gradient reached the AE"


def test_adversarial_gradients_reach_the_autoencoder_only_through_the_critics(monkeypatch):
    quiet = step_gradients(monkeypatch, constant_critics=True)
    monkeypatch.undo()
    loud = step_gradients(monkeypatch, constant_critics=True, scale_autoencoder_adversarial=1e4)
    monkeypatch.undo()
    assert same(quiet["autoencoder"], loud["autoencoder"])  # blind critics pass no gradient back


def test_loss_sides_are_named_terms_of_what_is_switched_on():
    from autoencoder.losses import CriticOutputs, autoencoder_terms, critic_terms

    x = torch.zeros(4, 3, 8, 8)
    assert set(autoencoder_terms(x, x, CriticOutputs())) == {"recon"} and critic_terms(CriticOutputs()) == {}
    out = CriticOutputs(image_real=torch.full((4,), 10.0), image_fake=torch.full((8,), -10.0))
    assert set(autoencoder_terms(x, x, out)) == {"recon", "image"} and set(critic_terms(out)) == {"image"}
    assert critic_terms(out)["image"] < 1e-3 < autoencoder_terms(x, x, out)["image"]  # a confident critic wins


def blurred(images, sigma):
    import torchvision.transforms.functional as TF

    return images if sigma == 0 else TF.gaussian_blur(images, kernel_size=9, sigma=sigma)


def test_perceptual_loss_is_zero_for_an_image_and_grows_with_blur():
    from autoencoder.classifier import EvaluatorNet
    from autoencoder.losses import perceptual_loss

    torch.manual_seed(0)
    net = EvaluatorNet((8, 16, 16)).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    net.set_whitening(images)
    with torch.no_grad():
        reference = net.feature_maps(images)
        assert len(reference) == 4
        assert perceptual_loss(reference, net.feature_maps(images.clone())) == 0
        distances = [perceptual_loss(reference, net.feature_maps(blurred(images, s))).item() for s in (0.5, 1, 2, 4)]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    with pytest.raises(ValueError, match="same, non-zero number"):
        perceptual_loss(reference, reference[:2])


def test_hinge_losses_on_known_logits():
    from autoencoder.losses import hinge_critic_loss, hinge_generator_loss

    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert hinge_critic_loss(real, fake) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_generator_loss(fake) == pytest.approx(1.5)


def test_adaptive_weight_balances_the_gradients_at_the_last_layer():
    from autoencoder.losses import adaptive_weight

    layer = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    reconstruction = (3 * layer).sum()  # gradient (3, 3), norm 3 sqrt(2)
    adversarial = (layer ** 2).sum()  # gradient (2, 4), norm sqrt(20)
    factor = adaptive_weight(reconstruction, adversarial, layer)
    assert factor == pytest.approx(3 * 2 ** 0.5 / (20 ** 0.5 + 1e-4)) and not factor.requires_grad
    (g_balanced,) = torch.autograd.grad(factor * adversarial, layer)
    assert g_balanced.norm() == pytest.approx(3 * 2 ** 0.5, rel=1e-4)  # equal pull on the layer
    silent = 0 * (layer ** 2).sum()
    assert adaptive_weight(reconstruction, silent, layer) == 1e4  # clamped when the critic is silent


def test_the_r1_penalty_is_the_squared_slope_of_the_critic_at_the_data():
    from autoencoder.losses import r1_penalty

    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)  # a linear critic: its slope is w everywhere
    assert r1_penalty(logits, x).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
    quadratic = x.pow(2).flatten(1).sum(1)  # slope 2x: the penalty is kept in the graph, so it can be lowered
    penalty = r1_penalty(quadratic, x)
    penalty.backward()
    assert penalty.item() == pytest.approx(4 * x.detach().pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_spectral_loss_grows_with_blur_and_ignores_where_detail_lies():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert losses.spectral_loss(images, images).item() == 0
    values = [losses.spectral_loss(images, blurred(images, s)).item() for s in (0.5, 1, 2)]
    assert 0 < values[0] < values[1] < values[2], values
    outer = losses.radial_log_spectrum(blurred(images, 1)) - losses.radial_log_spectrum(images)
    assert outer[..., -4:].mean() < -1 < outer[..., 1:4].mean()  # the fine scales lose power, the coarse ones keep it
    shifted = images.roll(5, dims=-1)  # the same detail elsewhere: a large pixel error, no spectral one
    assert losses.spectral_loss(images, shifted).item() < 1e-4 < losses.reconstruction_loss(images, shifted).item()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        losses.radial_log_spectrum(images[0])


def test_the_spectral_loss_sharpens_a_blurred_image_by_gradient_descent():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    guess = blurred(images, 1.5).clone().requires_grad_(True)
    opt = torch.optim.Adam([guess], lr=0.01)
    start = losses.spectral_loss(images, guess).item()
    for _ in range(50):
        opt.zero_grad()
        losses.spectral_loss(images, guess).backward()
        opt.step()
    assert losses.spectral_loss(images, guess).item() < start / 2
    assert metrics.laplacian_variance(guess.detach()).mean() > metrics.laplacian_variance(blurred(images, 1.5)).mean()


def test_the_spectral_term_is_named_only_when_switched_on():
    from autoencoder.losses import CriticOutputs, autoencoder_terms

    x = torch.rand(2, 3, 8, 8)
    assert "spectral" not in autoencoder_terms(x, x, CriticOutputs())
    assert set(autoencoder_terms(x, x * 0.5, CriticOutputs(), spectral=True)) == {"recon", "spectral"}
