"""Loss terms as pure functions of tensors. Each returns a scalar tensor.

- reconstruction: mean squared error in [-1, 1] pixel space.
- adversarial (latent and image critics): the non-saturating GAN loss
  (Goodfellow et al. 2014), written with softplus: -log sigmoid(t) = softplus(-t).
- ACAI (Berthelot et al. 2018, arXiv:1807.07543): the critic regresses the mixing
  coefficient alpha in [0, 1/2] of a decoded mix and 0 for a blend of data and its
  reconstruction; the autoencoder is rewarded when the critic says 0 for its mixes.

Example (20 dB for an error of 0.2 everywhere)::

    python -c "import torch; from autoencoder.losses import generator_loss; print(generator_loss(torch.zeros(4)))"
"""
from __future__ import annotations

import functools

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels. x, x_rec: (B, 3, H, W) in [-1, 1]."""
    return F.mse_loss(x_rec.float(), x.float())


def critic_loss_real_fake(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: high logits for real, low for fake (softplus form of BCE)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: push the critic's logit for fakes up."""
    return F.softplus(-fake_logits.float()).mean()


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss (Lim & Ye 2017; Miyato et al. 2018): relu(1 - real) + relu(1 + fake)."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: raise the critic's logit for fakes, -mean(fake)."""
    return -fake_logits.float().mean()


def adaptive_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    limit: float = 1e4) -> torch.Tensor:
    """||grad_L reconstruction|| / (||grad_L adversarial|| + 1e-4) at the last layer's weight L, clamped to
    [0, limit] and detached: the factor that gives both terms equal pull on the decoder's output
    (VQGAN, Esser et al. 2021, arXiv:2012.09841, eq. 7). Both losses must still hold their graphs."""
    (g_rec,) = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, limit).detach()


def acai_critic_loss(alpha_pred_mix: torch.Tensor, alpha: torch.Tensor,
                     alpha_pred_blend: torch.Tensor) -> torch.Tensor:
    """ACAI critic: predict alpha for decoded mixes, and 0 for gamma-blends of data and reconstruction.

    alpha_pred_mix, alpha: (B,), alpha in [0, 1/2]; alpha_pred_blend: (B,).
    """
    return (alpha_pred_mix.float() - alpha.float()).pow(2).mean() + alpha_pred_blend.float().pow(2).mean()


def acai_autoencoder_loss(alpha_pred_mix: torch.Tensor) -> torch.Tensor:
    """ACAI autoencoder term: decoded mixes should look unmixed (critic output 0)."""
    return alpha_pred_mix.float().pow(2).mean()


def perceptual_loss(features_x: list[torch.Tensor], features_y: list[torch.Tensor]) -> torch.Tensor:
    """Feature-matching distance of two images' feature maps, as in LPIPS without learned weights
    (Zhang et al. 2018, arXiv:1801.03924; learned similarity: Larsen et al. 2016, arXiv:1512.09300).

    Each layer's activations (B, C, H, W) are scaled to unit length over channels at every
    position, their squared difference summed over channels and averaged over positions and
    images; the layers are averaged. 0 for identical images; grows as one is blurred.
    """
    if len(features_x) != len(features_y) or not features_x:
        raise ValueError(f"need the same, non-zero number of feature maps, got {len(features_x)} and {len(features_y)}")
    distances = []
    for a, b in zip(features_x, features_y):
        a = a.float() / (a.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b.float() / (b.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        distances.append((a - b).pow(2).sum(1).mean())
    return torch.stack(distances).mean()


SPECTRUM_FLOOR = 1e-4  # added to each ring's power before the log: about the faintest finest-ring power of real CIFAR-10
#   images (in [-1, 1]), so that a ring the decoder left empty does not pull with a gradient of 1 / power


def radial_log_spectrum(images: torch.Tensor, rings: int = 16) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, R): the log of each channel's mean power in R rings of equal width around the
    centre of its 2-D Fourier spectrum, from the lowest frequencies (ring 0, the mean colour) to the highest;
    R = rings, or fewer for a small image (one ring per frequency step: min(H, W) / 2), so that none is empty.

    The spectrum's magnitude only: it says how much detail an image has at each scale, not where it lies.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    ring, counts = spectrum_rings(h, w, rings, images.device)
    power = torch.view_as_real(torch.fft.fft2(images.float(), norm="ortho")).pow(2).sum(-1)  # (B, C, H, W); no
    #   abs(), whose gradient at a zero coefficient is not a number
    sums = power.new_zeros(*power.shape[:2], len(counts)).index_add_(2, ring, power.flatten(2))
    return (sums / counts + SPECTRUM_FLOOR).log()


@functools.lru_cache(maxsize=8)
def spectrum_rings(h: int, w: int, rings: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ring of each frequency of an H x W spectrum (flattened, (H W,)) and the frequencies in each ring (R,):
    R = rings, or fewer for a small image (one per frequency step), so that none is empty. Made once per shape
    and device, not at every training step."""
    rings = max(1, min(rings, min(h, w) // 2))
    fy, fx = torch.fft.fftfreq(h, device=device), torch.fft.fftfreq(w, device=device)
    radius = (fy[:, None].pow(2) + fx[None, :].pow(2)).sqrt() / 0.5  # 1 at the Nyquist frequency of an axis
    ring = (radius * rings).long().clamp(max=rings - 1).flatten()  # corners beyond Nyquist join the last ring
    return ring, torch.bincount(ring, minlength=rings).float()


def spectral_loss(x: torch.Tensor, x_rec: torch.Tensor, rings: int = 16) -> torch.Tensor:
    """Mean absolute difference of the radial log power spectra of each image and its reconstruction (the
    spectral term of Durall et al. 2020, arXiv:2003.01826, taken per image; a frequency-domain loss as in Jiang et
    al. 2021, arXiv:2012.12821, but on magnitudes only). A blurred reconstruction lacks power in the outer rings;
    since phase is free, the decoder may put back detail of the right amount at each scale without having to
    place it exactly, which the pixel loss would otherwise average away. x, x_rec: (B, 3, H, W)."""
    return (radial_log_spectrum(x_rec, rings) - radial_log_spectrum(x, rings)).abs().mean()


def total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of named terms; a term whose weight is missing counts with weight 1."""
    return sum(weights.get(name, 1.0) * value for name, value in terms.items())


@dataclass
class CriticOutputs:
    """What the three critics said in one step, each called once on its real and fake inputs.

    A missing part (None) is a critic switched off by a zero weight.
    """
    latent_prior: torch.Tensor | None = None  # (B,) latent critic on N(0, I) draws (real)
    latent_codes: torch.Tensor | None = None  # (B,) latent critic on encoded codes (fake)
    alpha: torch.Tensor | None = None  # (B,) mixing coefficients of the decoded mixes, in [0, 1/2]
    alpha_mix: torch.Tensor | None = None  # (B,) interpolation critic on decoded mixes
    alpha_blend: torch.Tensor | None = None  # (B,) interpolation critic on blends of data and reconstruction
    image_real: torch.Tensor | None = None  # (B,) or (B, patches): image critic on data
    image_fake: torch.Tensor | None = None  # (n*B,) or (n*B, patches): image critic on decoded images (reconstructions, mixes, prior)
    image_r1: torch.Tensor | None = None  # () the R1 penalty on the image critic's real inputs, weighted (gamma / 2)
    hinge: bool = False  # the image critic plays the hinge game instead of the non-saturating one


def autoencoder_terms(x: torch.Tensor, x_rec: torch.Tensor, out: CriticOutputs,
                      features: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
                      classes: tuple[torch.Tensor, torch.Tensor] | None = None, spectral: bool = False
                      ) -> dict[str, torch.Tensor]:
    """The autoencoder's side, as named terms: reconstruction (in pixels and, given the feature
    maps of data and reconstruction, in features), the class head's cross-entropy (given its
    logits and the labels), the spectral term (with ``spectral``), and fooling each critic that is on."""
    terms = {"recon": reconstruction_loss(x, x_rec)}
    if spectral:
        terms["spectral"] = spectral_loss(x, x_rec)
    if features is not None:
        terms["perceptual"] = perceptual_loss(*features)
    if classes is not None:
        terms["class"] = F.cross_entropy(classes[0].float(), classes[1])
    if out.latent_codes is not None:
        terms["latent"] = generator_loss(out.latent_codes)
    if out.alpha_mix is not None:
        terms["interp"] = acai_autoencoder_loss(out.alpha_mix)
    if out.image_fake is not None:
        terms["image"] = (hinge_generator_loss if out.hinge else generator_loss)(out.image_fake)
    return terms


def critic_terms(out: CriticOutputs) -> dict[str, torch.Tensor]:
    """The critics' side, as named terms: each critic telling its real inputs from its fakes."""
    terms = {}
    if out.latent_codes is not None:
        terms["latent"] = critic_loss_real_fake(out.latent_prior, out.latent_codes)
    if out.alpha_mix is not None:
        terms["interp"] = acai_critic_loss(out.alpha_mix, out.alpha, out.alpha_blend)
    if out.image_fake is not None:
        terms["image"] = (hinge_critic_loss if out.hinge else critic_loss_real_fake)(out.image_real, out.image_fake)
    if out.image_r1 is not None:
        terms["image_r1"] = out.image_r1
    return terms


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images (Mescheder et al. 2018, arXiv:1801.04406): the critic's slope at the
    data, kept in the graph so that the critic's step lowers it. real_images must require grad and have made
    real_logits ((B,) or (B, patches))."""
    (slope,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return slope.float().pow(2).flatten(1).sum(1).mean()
