"""One training step of all five networks, and the optimisers it uses.

The step reads (1) update the critics, (2) update the autoencoder: encode a batch, decode
the codes, pairwise mixes and prior draws in one decoder call, show each critic its real
and fake inputs in one call, take both gradients from that one forward pass, then step.
Every network runs once per step, as DistributedDataParallel needs (see distributed.py).

Example (one step of the smoke preset on random images)::

    python -c "import torch; from autoencoder import config, models, step; c = config.make_config('smoke'); \
nets = models.build_networks(c); opts = step.make_optimisers(nets, c); \
print(step.train_step(nets, torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), c, \
step.step_generator(0, 0), *opts, torch.device('cpu'), torch.float32))"
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from autoencoder import losses
from autoencoder.compute import autocast
from autoencoder.config import TrainConfig
from autoencoder.data import mirror, to_float
from autoencoder.distributed import SINGLE, Shard
from autoencoder.models import Networks
from autoencoder.schedule import cosine_decay


def step_generator(seed: int, step: int, device: torch.device = torch.device("cpu")) -> torch.Generator:
    """The generator for the randomness of one step (flips, mixing coefficients, prior draws).

    It lives on the training device, so that a GPU step draws on the GPU and copies nothing
    from the host (a host-to-device copy of pageable memory waits for the GPU's queue).
    """
    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)


def pair_partners(z: torch.Tensor) -> torch.Tensor:
    """Each row's partner for mixing: rows (0, 1), (2, 3), ... swapped. z: (B, D), B even.

    Pairs never straddle two ranks' shares, so a multi-process step mixes the same pairs
    as a one-process step.
    """
    return z.view(-1, 2, *z.shape[1:]).flip(1).reshape(z.shape)


def optimised_parameters(optimiser: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimiser.param_groups for p in group["params"]]


def critic_outputs(nets: Any, config: TrainConfig, x: torch.Tensor, z: torch.Tensor, z_prior: torch.Tensor,
                   alpha: torch.Tensor, decoded: torch.Tensor, perceptual: torch.nn.Module | None):
    """Each critic on real and fake in one call (one forward per network per step), and the feature maps the
    perceptual term compares: (CriticOutputs, (data maps, reconstruction maps) or None)."""
    B = x.shape[0]
    x_rec = decoded[:B]
    out = losses.CriticOutputs(hinge=config.gan_loss == "hinge")
    if config.latent_weight > 0:
        out.latent_prior, out.latent_codes = nets.latent_critic(torch.cat([z_prior[0], z])).split(B)
    if config.interp_weight > 0:
        g = config.interp_gamma
        blend = g * x + (1 - g) * x_rec.detach()
        out.alpha = alpha
        out.alpha_mix, out.alpha_blend = nets.interp_critic(torch.cat([decoded[B:2 * B], blend])).split(B)
    features = None
    critic_features = config.perceptual_weight > 0 and config.perceptual_source == "critic"
    if config.image_weight > 0:
        real = x.detach().requires_grad_(True) if config.r1_weight > 0 else x  # the R1 slope is taken at the data
        if critic_features:  # the same one call also gives the feature maps of data and reconstruction
            logits, maps = nets.image_critic(torch.cat([real, decoded]), features=True, per_patch=True)
            features = ([m[:B].detach() for m in maps], [m[B:2 * B] for m in maps])
        else:
            logits = nets.image_critic(torch.cat([real, decoded]), per_patch=True)  # (N, patches): each judged
        out.image_real, out.image_fake = logits[:B], logits[B:]
        if config.r1_weight > 0:
            out.image_r1 = config.r1_weight / 2 * losses.r1_penalty(out.image_real, real)
    if perceptual is not None and config.perceptual_weight > 0 and not critic_features:
        with torch.no_grad():
            target = perceptual.feature_maps(x)
        features = (target, perceptual.feature_maps(x_rec))
    return out, features


def loss_weights(nets: Any, config: TrainConfig, ae_terms: dict[str, torch.Tensor]):
    """The autoencoder terms' weights, the image term's scaled by the adaptive balance when it is on
    (VQGAN, Esser et al. 2021); returns (weights, balance or None)."""
    weights = {"latent": config.latent_weight, "interp": config.interp_weight, "image": config.image_weight,
               "perceptual": config.perceptual_weight, "class": config.class_weight, "spectral": config.spectral_weight}
    if not (config.adaptive_image_weight and "image" in ae_terms):
        return weights, None
    reconstruction = losses.total({k: v for k, v in ae_terms.items() if k in ("recon", "perceptual", "spectral")}, weights)
    decoder = getattr(nets.decoder, "module", nets.decoder)  # the network inside a DDP replica
    balance = losses.adaptive_weight(reconstruction, ae_terms["image"], decoder.last_layer)
    weights["image"] = config.image_weight * balance
    return weights, balance


def train_step(nets: Any, batch: torch.Tensor, config: TrainConfig, generator: torch.Generator,
               opt_ae: torch.optim.Optimizer, opt_critic: torch.optim.Optimizer,
               device: torch.device, dtype: torch.dtype, shard: Shard = SINGLE,
               perceptual: torch.nn.Module | None = None, labels: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """One optimisation step of all networks; returns the loss terms (detached).

    ``nets``: the five networks (``Networks``, or their DDP replicas under torchrun), each
    called once. ``batch``: this rank's share of the global batch; the step's randomness
    is drawn for the whole global batch and this rank keeps its share. ``generator`` lives on
    ``device``. ``perceptual``: the frozen feature net of the perceptual term (when its weight is on and its
    source is ``net``; with ``critic`` the image critic's own features are matched, and the
    autoencoder's backward never reaches the critic's weights);
    ``labels``: this rank's CIFAR-10 labels of ``batch`` (for the class head, when it is on).
    """
    global_batch = config.batch_size
    part = shard.part(global_batch)
    flips = (torch.rand(global_batch, generator=generator, device=device) < 0.5)[part]
    alpha = (torch.rand(global_batch, generator=generator, device=device) / 2)[part]  # in [0, 1/2], as ACAI
    z_prior = torch.randn(2, global_batch, config.latent_dim, generator=generator, device=device)[:, part]
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    x = to_float(mirror(batch, flips)).to(device, memory_format=fmt)  # (B, 3, 32, 32), B = this rank's share
    B = x.shape[0]
    use_mix = config.interp_weight > 0 or config.image_weight > 0
    use_prior = config.image_weight > 0

    with autocast(device, dtype):
        with contextlib.nullcontext() if config.train_encoder else torch.no_grad():  # a frozen encoder: no graph
            z = nets.encoder(x)  # (B, D)
        codes = [z]
        if use_mix:
            codes.append(alpha[:, None] * z + (1 - alpha[:, None]) * pair_partners(z))
        if use_prior:
            codes.append(z_prior[1])
        decoded = nets.decoder(torch.cat(codes)).float()  # (len(codes)*B, 3, 32, 32)
        x_rec = decoded[:B]

        out, features = critic_outputs(nets, config, x, z, z_prior, alpha, decoded, perceptual)
        classes = None
        if config.class_weight > 0 and labels is not None:
            classes = (nets.class_head(z), labels.to(device))
        ae_terms = losses.autoencoder_terms(x, x_rec, out, features, classes, config.spectral_weight > 0)
        critic_terms = losses.critic_terms(out)

    weights, balance = loss_weights(nets, config, ae_terms)
    opt_critic.zero_grad(set_to_none=True)
    opt_ae.zero_grad(set_to_none=True)
    # Both losses share one forward pass and each backward reaches only its own networks'
    # parameters; both gradients are taken before either step changes a weight, then
    # (1) the critics and (2) the autoencoder step.
    if critic_terms:
        sum(critic_terms.values()).backward(inputs=optimised_parameters(opt_critic), retain_graph=True)
    losses.total(ae_terms, weights).backward(inputs=optimised_parameters(opt_ae))
    if critic_terms:
        opt_critic.step()
    opt_ae.step()
    terms = {f"loss/{k}": v.detach() for k, v in ae_terms.items()}
    terms.update({f"critic/{k}": v.detach() for k, v in critic_terms.items()})
    if balance is not None:
        terms["loss/image_balance"] = balance
    return terms


def make_optimisers(nets: Networks, config: TrainConfig, device: torch.device = torch.device("cpu")
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the autoencoder and for the critics; on a GPU the fused kernels (one launch per step)."""
    fused = True if device.type == "cuda" else None
    opt_ae = torch.optim.Adam(nets.autoencoder_parameters(config.train_encoder), lr=config.lr, betas=(config.beta1, config.beta2),
                              fused=fused)
    opt_critic = torch.optim.Adam(nets.critic_parameters(), lr=config.critic_lr,
                                  betas=(config.critic_beta1, config.beta2), fused=fused)
    return opt_ae, opt_critic


def lr_factor(step: int, config: TrainConfig) -> float:
    """Cosine decay from 1 at step 0 to lr_min_ratio at the schedule's last step (Loshchilov & Hutter 2017).

    The schedule spans ``schedule_steps`` (the steps the run started with), so resuming with
    more ``--steps`` continues at the final rate instead of sending it back up, and with fewer
    stops early on the same curve: the rate never rises during a run.
    """
    return cosine_decay(step, config.schedule_steps or config.steps, config.lr_min_ratio)


def set_learning_rates(opt_ae, opt_critic, step: int, config: TrainConfig) -> None:
    factor = lr_factor(step, config)
    for group in opt_ae.param_groups:
        group["lr"] = config.lr * factor
    for group in opt_critic.param_groups:
        group["lr"] = config.critic_lr * factor
