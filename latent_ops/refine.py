"""Refine codes with the image critic: gradient steps in latent space towards what it finds real.

Energy of a code z started at z0: E(z) = -D(G(z)) + (anchor/2) * ||z - z0||^2, where D is
the image critic's logit and G the decoder. Steps follow -grad E, with optional Langevin
noise. This follows discriminator-driven latent sampling (DDLS, Che et al. 2020,
arXiv:2003.06060), whose energy adds the critic's logit to the prior's; here the prior
term is replaced by a pull towards the starting code, so that an edit (horse+wings) is
polished, not replaced by whatever the critic likes best. With the latent prior
(``latent_ops.prior``) DDLS's prior term comes back in proximal form: after each critic step the
code moves ``prior_weight`` of the way towards the prior's denoised estimate of it
(``latent_ops.flow.denoise``, a step along the prior's score scaled so that 1 lands on the estimate).

Each step's length is capped at ``MAX_STEP`` times the typical length of a code (sqrt(D)), a trust
region: a large ``--refine_step_size`` then takes long steps instead of diverging to NaN.

Example: see ``latent_ops.compose`` (``--refine_steps``, ``--refine_step_size``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from autoencoder.models import Networks
from latent_ops.timing import progress_bar

MAX_STEP = 0.25  # a step moves a code by at most this times sqrt(D), the length of a typical N(0, I) code


def capped(step: torch.Tensor, limit: float) -> torch.Tensor:
    """``step`` (N, D) with each row's length cut to at most ``limit``; non-finite rows become zero."""
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    length = step.flatten(1).norm(dim=1).clamp_min(1e-12)
    return step * (limit / length).clamp(max=1.0).view(-1, *[1] * (step.dim() - 1))


def critic_scores(nets: Networks, codes: torch.Tensor) -> torch.Tensor:
    """The image critic's logit of each decoded code. codes: (N, D) -> (N,)."""
    return nets.image_critic(nets.decoder(codes))


def refine_codes(nets: Networks, z0: torch.Tensor, steps: int, step_size: float = 0.05, anchor: float = 0.1,
                 noise: float = 0.0, generator: torch.Generator | None = None,
                 prior_denoise: Callable[[torch.Tensor], torch.Tensor] | None = None, prior_weight: float = 0.0,
                 progress: str = "") -> tuple[torch.Tensor, list[float]]:
    """Refined codes (N, D) and the mean critic logit before each step and after the last.

    ``prior_denoise(z)``: a prior's denoised estimate of codes (N, D); after each step the codes move
    ``prior_weight`` (0 to 1) of the way towards it. ``progress``: a label shows a bar on a terminal.
    Under bf16 autocast the networks run in bf16 and the codes and their steps stay fp32.
    """
    was_training = nets.training
    nets.eval()  # spectral norm keeps its stored estimate; nothing is updated
    z = z0.detach().clone()
    history = []
    for _ in progress_bar(steps, progress):
        z.requires_grad_(True)
        score = critic_scores(nets, z)
        energy = -score.float().sum() + 0.5 * anchor * (z - z0).pow(2).sum()
        (grad,) = torch.autograd.grad(energy, z)
        history.append(score.float().mean().item())
        with torch.no_grad():
            z = z - capped(step_size * grad, MAX_STEP * z[0].numel() ** 0.5)
            if prior_denoise is not None and prior_weight > 0:
                z = z + prior_weight * (prior_denoise(z) - z)
            if noise > 0:
                z = z + noise * (2 * step_size) ** 0.5 * torch.randn(z.shape, generator=generator).to(z.device)
    with torch.no_grad():
        history.append(critic_scores(nets, z).float().mean().item())
    nets.train(was_training)
    return z.detach(), history
