"""Loss terms on toy inputs whose answers are known."""
from __future__ import annotations

import math

import torch

from autoencoder import losses


def test_reconstruction_zero_for_identical_and_known_value():
    x = torch.rand(2, 3, 4, 4)
    assert losses.reconstruction_loss(x, x).item() == 0
    assert math.isclose(losses.reconstruction_loss(x, x + 0.5).item(), 0.25, rel_tol=1e-6)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    # MSE 0.04 on a peak-to-peak range of 2: 10*log10(4/0.04) = 20 dB
    assert torch.allclose(losses.psnr(x, x + 0.2), torch.full((2,), 20.0), atol=1e-4)
    assert losses.psnr(x, x).min() > 90  # identical images: clamped, very high


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
