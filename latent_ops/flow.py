"""A class-conditional flow on codes: the network, its loss, and the ODE that samples and projects.

Rectified flow / flow matching (Liu et al. 2023, arXiv:2209.03003; Lipman et al. 2023,
arXiv:2210.02747): a code x1 (standardised by the bank's per-dimension mean and spread) and
noise x0 ~ N(0, I) are joined by the straight line x_t = (1 - t) x0 + t x1, and the net learns
the velocity x1 - x0 at x_t. Integrating dx/dt = v(x, t) from t = 0 to 1 turns noise into codes.

- **Conditions.** Labels 0..K-1 are classes; label K is "no condition". Training drops the
  label with probability ``label_dropout``, so one net models codes with and without a class
  (classifier-free guidance, Ho & Salimans 2022, arXiv:2207.12598).
- **Guidance and composition.** v = v(x, t, none) + sum_i w_i (v(x, t, c_i) - v(x, t, none)):
  one condition with w > 1 is guidance, several are an AND of conditions (Composable
  Diffusion, Liu et al. 2022, arXiv:2206.01714).
- **Projection.** A code taken part way back towards noise, x_t = t x + (1 - t) noise with
  t = 1 - ``noise``, then integrated to t = 1, lands on codes the flow makes while keeping the
  coarse content of x (SDEdit, Meng et al. 2022, arXiv:2108.01073).

Example::

    python -c "import torch; from latent_ops.flow import VelocityNet, sample; \
net = VelocityNet(8, 10, hidden=32, blocks=1); print(sample(net, 4, [(3, 2.0)], steps=8).shape)"
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Condition = tuple[int, float]  # (label, weight): a class index and its guidance weight


class TimeFeatures(nn.Module):
    """t in [0, 1] -> (B, 2F) sinusoidal features at geometric frequencies."""

    def __init__(self, count: int = 32):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, math.log(1000), count)), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies[None] * math.pi
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class Block(nn.Module):
    """x + MLP(LayerNorm(x) * (1 + scale) + shift), scale and shift from the condition (FiLM);
    the last layer starts at zero, so every block starts as the identity."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(condition).chunk(2, dim=1)
        return x + self.mlp(self.norm(x) * (1 + scale) + shift)


class VelocityNet(nn.Module):
    """v(x_t, t, label): (B, D), (B,), (B,) int -> (B, D), in standardised code space.

    ``mean`` and ``spread`` (buffers, saved with the weights) standardise codes per dimension.
    """

    def __init__(self, dim: int, classes: int, hidden: int = 512, blocks: int = 4):
        super().__init__()
        self.dim, self.classes = dim, classes
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("spread", torch.ones(dim))
        self.time = nn.Sequential(TimeFeatures(), nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(classes + 1, hidden)  # the last row: no condition
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    @property
    def unconditional(self) -> int:
        return self.classes

    def set_statistics(self, codes: torch.Tensor) -> None:
        """Per-dimension mean and spread of the training codes (N, D)."""
        self.mean.copy_(codes.mean(0))
        self.spread.copy_(codes.std(0).clamp_min(1e-6))

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.mean) / self.spread

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.spread + self.mean

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = F.silu(self.time(t) + self.label(labels))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, condition)
        return self.output(h)


def flow_matching_loss(net: VelocityNet, x1: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                       label_dropout: float = 0.1) -> torch.Tensor:
    """Mean squared error of the predicted velocity on straight noise-to-code paths.

    x1: (B, D) standardised codes; labels: (B,) classes. Each label is replaced by "no
    condition" with probability ``label_dropout``.
    """
    B = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = torch.rand(B, generator=generator, device=x1.device)
    dropped = torch.rand(B, generator=generator, device=x1.device) < label_dropout
    labels = torch.where(dropped, torch.full_like(labels, net.unconditional), labels)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    return F.mse_loss(net(x_t, t, labels), x1 - x0)


def guided_velocity(net: VelocityNet, x: torch.Tensor, t: float, conditions: Sequence[Condition]) -> torch.Tensor:
    """v(x, t, none) + sum_i w_i (v(x, t, c_i) - v(x, t, none)), all in one batched call.

    No conditions: the unconditional velocity. One condition of weight 1: its conditional velocity.
    """
    B = x.shape[0]
    labels = [net.unconditional] + [label for label, _ in conditions]
    for label in labels:
        if not 0 <= label <= net.unconditional:
            raise ValueError(f"label {label} is outside this prior's {net.classes} classes")
    stacked = net(x.repeat(len(labels), 1), torch.full((B * len(labels),), float(t), device=x.device),
                  torch.tensor(labels, device=x.device).repeat_interleave(B))
    velocities = stacked.view(len(labels), B, -1)
    v = velocities[0]
    for (_, weight), conditional in zip(conditions, velocities[1:]):
        v = v + weight * (conditional - velocities[0])
    return v


@torch.no_grad()
def integrate(net: VelocityNet, x: torch.Tensor, start: float, conditions: Sequence[Condition],
              steps: int) -> torch.Tensor:
    """Solve dx/dt = v from t = ``start`` to 1 with Heun's method (second order) in ``steps`` steps."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    times = torch.linspace(start, 1.0, steps + 1).tolist()
    for t, t_next in zip(times, times[1:]):
        h = t_next - t
        v = guided_velocity(net, x, t, conditions)
        guess = x + h * v
        x = x + h * 0.5 * (v + guided_velocity(net, guess, t_next, conditions))
    return x


@torch.no_grad()
def sample(net: VelocityNet, n: int, conditions: Sequence[Condition], steps: int = 32,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """n codes (n, D) drawn from the flow under ``conditions`` (in code space, not standardised)."""
    device = net.mean.device
    x0 = torch.randn(n, net.dim, generator=generator, device=device)
    return net.unstandardise(integrate(net, x0, 0.0, conditions, steps))


@torch.no_grad()
def project(net: VelocityNet, codes: torch.Tensor, noise: float, conditions: Sequence[Condition],
            steps: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """SDEdit: take codes (N, D) to time 1 - ``noise`` on their noise paths, integrate back to t = 1.

    ``noise`` 0 returns the codes; 1 ignores them (a fresh sample); in between keeps their coarse
    content and lands on codes the flow makes. The integration takes about ``steps`` x ``noise`` steps.
    """
    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be between 0 and 1, got {noise}")
    if noise == 0:
        return codes.clone()
    start = 1.0 - noise
    x1 = net.standardise(codes)
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    x_t = start * x1 + (1 - start) * x0
    return net.unstandardise(integrate(net, x_t, start, conditions, max(1, round(steps * noise))))


def denoise(net: VelocityNet, codes: torch.Tensor, conditions: Sequence[Condition], t: float = 0.95) -> torch.Tensor:
    """The prior's denoised estimate of codes (N, D), in code space: each code is read as the point
    x_t = t x of its straight path at time ``t`` (its noise at its mean, zero), and the velocity gives
    E[x1 | x_t] = x_t + (1 - t) v(x_t, t) (Tweedie's formula for the flow's paths). Codes the prior
    finds likely come back almost unchanged; others move towards codes of the ``conditions``."""
    with torch.no_grad():
        x_t = t * net.standardise(codes)
        return net.unstandardise(x_t + (1 - t) * guided_velocity(net, x_t, t, conditions))


def prior_score(net: VelocityNet, codes: torch.Tensor, conditions: Sequence[Condition], t: float = 0.95
                ) -> torch.Tensor:
    """An estimate of grad log p(code) (N, D) in code space: the score of the codes' density smoothed by
    the noise of time ``t`` (std sigma = (1 - t) / t in standardised units),
    (E[x1 | x_t] - x) / sigma^2, from ``denoise``. Differentiable in nothing (a direction to step along)."""
    sigma = (1 - t) / t
    residual = net.standardise(denoise(net, codes, conditions, t)) - net.standardise(codes)
    return residual / sigma ** 2 / net.spread  # chain rule of the standardisation
