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
- **Regions.** A condition may carry a 0/1 mask over the code's numbers (its cells on a spatial
  code): v = v_none + sum_k w_k M_k (v_k - v_none), so each class is asked for only where it
  belongs (horse everywhere, a winged class above the back). This is Composable Diffusion with
  a spatial weight per condition, as in MultiDiffusion's region-wise guidance (Bar-Tal et al.
  2023, arXiv:2302.08113).
- **Drifts.** A code direction (e.g. ``white``) enters the velocity as a constant push inside its
  mask, so the flow moves a code along it over the integration while the learned velocity keeps
  it among likely codes (classifier guidance with a linear classifier, Dhariwal & Nichol 2021,
  arXiv:2105.05233).
- **Placement.** ``integrate`` may replace its conditions once, part way through, from the
  denoised estimate of the final codes (``latent_ops.placement`` finds the subject there and puts
  the wing cells just above its back, per candidate).
- **Nets.** ``VelocityNet`` is an MLP on the flat code; ``ConvVelocityNet`` a residual conv net
  on the (C, H, W) grid of a spatial code, so neighbouring cells inform each other.
- **Projection.** A code taken part way back towards noise, x_t = t x + (1 - t) noise with
  t = 1 - ``noise``, then integrated to t = 1, lands on codes the flow makes while keeping the
  coarse content of x (SDEdit, Meng et al. 2022, arXiv:2108.01073).

Example::

    python -c "import torch; from latent_ops.flow import VelocityNet, sample; \
net = VelocityNet(8, 10, hidden=32, blocks=1); print(sample(net, 4, [(3, 2.0)], steps=8).shape)"
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from latent_ops.timing import progress_bar


class Condition(NamedTuple):
    """A class (or learned concept) label, its guidance weight, and where it applies."""
    label: int
    weight: float
    mask: torch.Tensor | None = None  # (D,) or (B, D) 0/1 over the code's numbers; None: everywhere
    region: str = ""  # the region's name, for display and for regions placed per candidate ("" everywhere)


class Drift(NamedTuple):
    """A constant push along a code-space direction, inside a mask."""
    vector: torch.Tensor  # (D,) in code space: the total move over a whole integration
    mask: torch.Tensor | None = None  # (D,) or (B, D); None: everywhere
    region: str = ""  # as for Condition


class Baseline(NamedTuple):
    """The label guidance extrapolates from in place of "no condition": the guided velocity
    v(b) + sum_k w_k M_k (v(c_k) - v(b)) pushes away from class b at no extra evaluation of the net. This is the
    negative prompt of text-to-image practice (Ban et al. 2024, "Understanding the impact of negative prompts: when
    and how do they take effect?", ECCV)."""
    label: int
    region: str = ""  # always everywhere; the field lets every guide be asked for its region


Guide = Condition | Drift | Baseline
Placer = Callable[[torch.Tensor, Sequence[Guide]], Sequence[Guide]]  # (estimated codes (B, D), guides) -> guides


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


class ConvBlock(nn.Module):
    """x + conv(SiLU(conv(SiLU(GroupNorm(x) * (1 + scale) + shift)))), FiLM from the condition; the last
    conv starts at zero, so the block starts as the identity."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels, affine=False)
        self.film = nn.Linear(hidden, 2 * channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(condition)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm(x) * (1 + scale) + shift)
        return x + self.conv2(F.silu(self.conv1(h)))


class ConvVelocityNet(nn.Module):
    """v(x_t, t, label) on the (C, H, W) grid of a spatial code, taking and giving flat (B, D) codes
    like ``VelocityNet``: a residual conv net with FiLM on time and label and a learned embedding of
    each cell's place (the top of a picture is not its bottom). With 3 x 3 convs, ``blocks`` >= 2
    lets every cell of a 4 x 4 grid see every other, and ``blocks`` >= 3 every cell of an 8 x 8 grid."""

    def __init__(self, code_shape: Sequence[int], classes: int, channels: int = 128, blocks: int = 4,
                 hidden: int = 256):
        super().__init__()
        if len(code_shape) != 3:
            raise ValueError(f"a convolutional prior needs a spatial (C, H, W) code, got shape {tuple(code_shape)}")
        self.code_shape = tuple(int(n) for n in code_shape)
        self.dim, self.classes = math.prod(self.code_shape), classes
        C, H, W = self.code_shape
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("spread", torch.ones(self.dim))
        self.time = nn.Sequential(TimeFeatures(), nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(classes + 1, hidden)  # the last row: no condition
        self.input = nn.Conv2d(C, channels, 3, padding=1)
        self.place = nn.Parameter(torch.zeros(1, channels, H, W))
        self.blocks = nn.ModuleList(ConvBlock(channels, hidden) for _ in range(blocks))
        self.output = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, C, 3, padding=1))

    unconditional = VelocityNet.unconditional
    set_statistics = VelocityNet.set_statistics
    standardise = VelocityNet.standardise
    unstandardise = VelocityNet.unstandardise

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = F.silu(self.time(t) + self.label(labels))
        h = self.input(x.view(-1, *self.code_shape)) + self.place
        for block in self.blocks:
            h = block(h, condition)
        return self.output(h).flatten(1)


FlowNet = VelocityNet | ConvVelocityNet


def with_extra_label(net: FlowNet) -> FlowNet:
    """A copy of ``net`` that knows one more label (numbered ``net.classes``; "no condition" moves one
    up). The new label starts as the unconditional one, so the copy's velocities equal the original's."""
    grown = copy.deepcopy(net)
    rows = net.label.weight.data
    grown.label = nn.Embedding(net.classes + 2, rows.shape[1]).to(rows.device)
    grown.label.weight.data.copy_(torch.cat([rows[:-1], rows[-1:], rows[-1:]]))
    grown.classes = net.classes + 1
    return grown


def flow_matching_loss(net: FlowNet, x1: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
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


def as_guides(guides: Sequence) -> list[Guide]:
    """Guides as Condition, Drift and Baseline tuples; a plain (label, weight) pair is a Condition everywhere."""
    return [g if isinstance(g, (Condition, Drift, Baseline)) else Condition(*g) for g in guides]


NET_CHUNK = 512  # rows per call of the velocity net: 2x faster than 2,048 at once on a 2-core CPU (caches, allocation)


def chunked_velocity(net: FlowNet, x: torch.Tensor, t: float, labels: torch.Tensor) -> torch.Tensor:
    """net(x, t, labels) (B, D) in calls of at most NET_CHUNK rows, as fp32 (the ODE's state stays fp32)."""
    times = torch.full((len(x),), t, device=x.device)
    return torch.cat([net(x[i:i + NET_CHUNK], times[i:i + NET_CHUNK], labels[i:i + NET_CHUNK]).float()
                      for i in range(0, len(x), NET_CHUNK)])


def guided_velocity(net: FlowNet, x: torch.Tensor, t: float, conditions: Sequence[Guide]) -> torch.Tensor:
    """v(x, t, b) + sum_k w_k M_k (v(x, t, c_k) - v(x, t, b)) + sum_j M_j d_j, in one batched call.

    ``conditions``: Condition (label, weight, mask) and Drift (vector, mask) tuples; a mask of None is
    the whole code. The baseline b is "no condition", or the label of a Baseline among them (a negative
    prompt: pushed away from, at no extra cost). No conditions: the baseline's velocity. One unmasked
    condition of weight 1: its conditional velocity.
    """
    guides = as_guides(conditions)
    classes = [g for g in guides if isinstance(g, Condition)]
    baseline = next((g.label for g in guides if isinstance(g, Baseline)), net.unconditional)
    B = x.shape[0]
    if len(classes) == 1 and classes[0].mask is None and classes[0].weight == 1:
        classes = []  # the conditional velocity alone: the baseline's is not needed
        labels = [next(g for g in guides if isinstance(g, Condition)).label]
    else:
        labels = [baseline] + [c.label for c in classes]
    for label in labels:
        if not 0 <= label <= net.unconditional:
            raise ValueError(f"label {label} is outside this prior's {net.classes} labels")
    stacked = chunked_velocity(net, x.repeat(len(labels), 1), float(t),
                               torch.tensor(labels, device=x.device).repeat_interleave(B))
    velocities = stacked.view(len(labels), B, -1)
    v = velocities[0]
    for condition, conditional in zip(classes, velocities[1:]):
        push = condition.weight * (conditional - velocities[0])
        v = v + (push if condition.mask is None else condition.mask.to(x.device) * push)
    for drift in (g for g in guides if isinstance(g, Drift)):
        push = drift.vector.to(x.device) / net.spread  # code units -> standardised units
        v = v + (push if drift.mask is None else drift.mask.to(x.device) * push)
    return v


SOLVERS = ("heun", "ab2", "dpmpp2m")  # Heun (2 evaluations a step), Adams-Bashforth 2 and DPM-Solver++(2M) (1 each)


class Schedule(NamedTuple):
    """How the flow ODE is solved: the solver, its steps, and the times at which guidance applies.

    - ``heun``: Heun's method, second order, two evaluations of the velocity a step.
    - ``ab2``: the Adams-Bashforth two-step method, second order with one evaluation a step: each step
      extrapolates the last two velocities (the first step is Euler's). A training-free multistep solver
      (the family of DPM-Solver++(2M), Lu et al. 2022, arXiv:2211.01095, and UniPC, Zhao et al. 2023,
      arXiv:2302.04867, which reuse earlier evaluations).
    - ``dpmpp2m``: DPM-Solver++(2M) (Lu et al. 2022) on the flow's straight paths x_t = t x1 + (1 - t) x0
      (alpha_t = t, sigma_t = 1 - t): an exponential integrator in lambda = log(t / (1 - t)) of the
      denoised estimate x + (1 - t) v, extrapolated from the last two; its first order is Euler's step.
    - ``guidance_from``, ``guidance_until``: guidance (weights above 1, the AND of several conditions)
      applies only for times in [from, until]; outside, the conditions' weights are scaled to sum to 1
      (one condition: its plain conditional velocity, one evaluation instead of two). Guidance in a
      limited interval (Kynkaenniemi et al. 2024, arXiv:2404.07724): early guidance costs diversity and
      late guidance does little.
    - ``progress``: a label shows a progress bar on a terminal (none when output is not a terminal).
    - ``repel``, ``repel_until``, ``repel_features``: at each step after the first (at t = 0 every estimate is the
      same mean) while the time is at most ``repel_until``, each code of the batch is pushed apart from the others
      by ``repel`` neighbour distances per unit of time (``repulsion``; particle guidance, Corso et al. 2024,
      arXiv:2310.13102), in the space of ``repel_features`` (None: code space), within blocks of ``REPEL_BLOCK``
      rows. 0: independent draws.
    - ``repel_reading``, ``repel_toward``: a reading of those features (B, F) -> (B,) (the perceptual net's log
      probability of the expression): the part of each push that would lower it is dropped, and ``repel_toward``
      push lengths along its gradient are added (``guarded_push``). None: the push alone.
    """
    steps: int = 32
    solver: str = "heun"
    guidance_from: float = 0.0
    guidance_until: float = 1.0
    progress: str = ""
    repel: float = 0.0
    repel_until: float = 0.35
    repel_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    repel_reading: Callable[[torch.Tensor], torch.Tensor] | None = None
    repel_toward: float = 0.0

    def evaluations(self) -> int:
        """Velocity evaluations of one integration (each may batch several conditions)."""
        return self.steps * (2 if self.solver == "heun" else 1)


def as_schedule(steps: int | Schedule) -> Schedule:
    """A Schedule; a plain step count is Heun's method with guidance throughout."""
    schedule = steps if isinstance(steps, Schedule) else Schedule(int(steps))
    if schedule.steps < 1:
        raise ValueError(f"steps must be at least 1, got {schedule.steps}")
    if schedule.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {schedule.solver!r}")
    if not 0 <= schedule.repel < math.inf or not 0 <= schedule.repel_until <= 1:
        raise ValueError(f"repel must be a finite number at least 0 and repel_until a time in [0, 1], got "
                         f"{schedule.repel} and {schedule.repel_until}")
    if not 0 <= schedule.repel_toward < math.inf or (schedule.repel_reading is not None
                                                     and schedule.repel_features is None):
        raise ValueError(f"repel_toward must be a finite number at least 0 and a reading needs features to read, got "
                         f"{schedule.repel_toward} and features {schedule.repel_features}")
    if not 0 <= schedule.guidance_from <= schedule.guidance_until <= 1:
        raise ValueError(f"the guidance interval must satisfy 0 <= from <= until <= 1, got "
                         f"[{schedule.guidance_from}, {schedule.guidance_until}]")
    return schedule


def unguided(guides: Sequence[Guide]) -> list[Guide]:
    """The guides with the conditions' weights scaled to sum to 1 (no extrapolation) and no Baseline (nothing is
    pushed away from); drifts unchanged."""
    guides = [g for g in guides if not isinstance(g, Baseline)]
    total = sum(g.weight for g in guides if isinstance(g, Condition))
    if total <= 0:
        return list(guides)
    return [g._replace(weight=g.weight / total) if isinstance(g, Condition) else g for g in guides]


class Velocity:
    """v(x, t) under the guides and the schedule's guidance interval, counting its evaluations."""

    def __init__(self, net: FlowNet, guides: Sequence[Guide], schedule: Schedule):
        self.net, self.schedule, self.calls = net, schedule, 0
        self.set_guides(guides)

    def set_guides(self, guides: Sequence[Guide]) -> None:
        self.guides = as_guides(guides)
        self.plain = unguided(self.guides)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        inside = self.schedule.guidance_from <= t <= self.schedule.guidance_until
        v = guided_velocity(self.net, x, t, self.guides if inside else self.plain)
        if self.schedule.repel > 0 and 0 < t <= self.schedule.repel_until and len(x) > 1:
            v = v + self.schedule.repel * repulsion(x + (1 - t) * v, self.schedule.repel_features,
                                                    self.schedule.repel_reading, self.schedule.repel_toward)
        return v


def away_from_neighbours(points: torch.Tensor) -> torch.Tensor:
    """(B, D): each row's offset from the kernel-weighted mean of the other rows, sum_j w_ij (x_i - x_j) with
    w_ij proportional to an RBF kernel: the direction in which the batch's kernel density falls fastest (its
    negative score, up to the bandwidth), at the scale of a neighbour's distance. The bandwidth is the median
    squared distance over log(B + 1) (the SVGD heuristic, Liu & Wang 2016, arXiv:1608.04471), so the push adapts
    to how spread the batch already is."""
    x = points.float()
    squared = torch.cdist(x, x).square()
    B = len(x)
    off = ~torch.eye(B, dtype=torch.bool, device=x.device)
    bandwidth = squared[off].median().clamp_min(1e-12) / math.log(B + 1)
    kernel = torch.exp(-squared / bandwidth) * off
    weights = kernel / kernel.sum(1, keepdim=True).clamp_min(1e-30)
    return x - weights @ x


REPEL_BLOCK = 1024  # rows pushed apart together: a pool's kernel (B x B) and decoder gradient stay in memory


def repulsion(estimates: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
              reading: Callable[[torch.Tensor], torch.Tensor] | None = None, toward: float = 0.0) -> torch.Tensor:
    """``block_repulsion`` of each block of ``REPEL_BLOCK`` consecutive rows (B, D): a larger batch is pushed apart
    block by block."""
    return torch.cat([block_repulsion(block, features, reading, toward) if len(block) > 1 else torch.zeros_like(block)
                      for block in estimates.split(REPEL_BLOCK)])


def guarded_push(push: torch.Tensor, keep: torch.Tensor, toward: float = 0.0) -> torch.Tensor:
    """(B, D) pushes with the part that points against ``keep`` (B, D: the gradient of what must not fall) dropped,
    as gradient surgery drops the part of one task's gradient that conflicts with another's (PCGrad, Yu et al. 2020,
    arXiv:2001.06782), plus ``toward`` push lengths along ``keep`` (guidance by that reading, Dhariwal & Nichol
    2021, arXiv:2105.05233). A push that does not lower it is left as it was."""
    squared = keep.square().sum(1, keepdim=True).clamp_min(1e-24)
    against = (push * keep).sum(1, keepdim=True).clamp(max=0)
    guarded = push - against / squared * keep
    if toward > 0:
        guarded = guarded + toward * keep * (push.norm(dim=1, keepdim=True) / squared.sqrt())
    return guarded


def block_repulsion(estimates: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    reading: Callable[[torch.Tensor], torch.Tensor] | None = None, toward: float = 0.0
                    ) -> torch.Tensor:
    """(B, D) particle guidance (Corso et al. 2024, arXiv:2310.13102): a push on each denoised estimate (B, D,
    standardised) away from the others, added to the velocity so that a batch covers more of the distribution
    than independent draws.

    ``features``: a differentiable map of the estimates to (B, F) features (the decoded pictures read by the
    perceptual net): each estimate moves along the gradient that carries its features away from its neighbours'
    in feature space, scaled to its code-space neighbour distance. None: away from its neighbours in code space
    (in pixels' terms mostly texture, so a decoder and a feature net are what compose uses).

    ``reading``: a map of the features to (B,) (the perceptual net's log probability of the expression) that the
    push may not lower, and ``toward`` push lengths along whose gradient are added (``guarded_push``)."""
    code_push = away_from_neighbours(estimates)
    if features is None:
        return code_push
    with torch.inference_mode(False), torch.enable_grad():
        x = estimates.detach().float().clone().requires_grad_(True)
        read = features(x).float()
        away = away_from_neighbours(read.detach())
        gradient, = torch.autograd.grad((read * away).sum(), x, retain_graph=reading is not None)
        keep = torch.autograd.grad(reading(read).sum(), x)[0] if reading is not None else None
    scale = code_push.norm(dim=1, keepdim=True) / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
    push = gradient * scale
    return push if keep is None else guarded_push(push, keep, toward)


@torch.no_grad()
def integrate(net: FlowNet, x: torch.Tensor, start: float, conditions: Sequence[Guide], steps: int | Schedule,
              placer: Placer | None = None, place_at: float = 0.4) -> torch.Tensor:
    """Solve dx/dt = v from t = ``start`` to 1 with the schedule's solver (an int: Heun's, in that many steps).

    ``placer``, when given, is called once, at the first step at or after time ``place_at``, with the
    denoised estimate of the final codes (B, D) in code space (x + (1 - t) v, unstandardised) and the
    guides; the guides it returns are used from then on (e.g. wing cells placed above each subject).
    """
    schedule = as_schedule(steps)
    velocity = Velocity(net, conditions, schedule)
    times = torch.linspace(start, 1.0, schedule.steps + 1).tolist()
    previous = None  # (t, v or the denoised estimate) of the last step, for the multistep solvers
    for i in progress_bar(schedule.steps, schedule.progress):
        t, t_next = times[i], times[i + 1]
        v = velocity(x, t)
        if placer is not None and t >= place_at:
            velocity.set_guides(placer(net.unstandardise(x + (1 - t) * v), velocity.guides))
            placer, previous = None, None  # the guides changed: no older velocity to extrapolate from
            v = velocity(x, t)
        if schedule.solver == "heun":
            x = x + (t_next - t) * 0.5 * (v + velocity(x + (t_next - t) * v, t_next))
        elif schedule.solver == "ab2":
            x, previous = adams_bashforth_step(x, v, t, t_next, previous), (t, v)
        else:
            x, previous = dpm_solver_2m_step(x, v, t, t_next, previous), (t, x + (1 - t) * v)
    return x


def adams_bashforth_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float,
                         previous: tuple[float, torch.Tensor] | None) -> torch.Tensor:
    """x at ``t_next`` from the velocity ``v`` at t and ``previous`` (its time and velocity): variable-step AB2."""
    h = t_next - t
    if previous is None:
        return x + h * v
    ratio = h / (t - previous[0])
    return x + h * ((1 + 0.5 * ratio) * v - 0.5 * ratio * previous[1])


def log_snr(t: float) -> float:
    """lambda = log(alpha / sigma) = log(t / (1 - t)) on the straight paths, clamped away from 0 and 1."""
    t = min(max(t, 1e-6), 1 - 1e-6)
    return math.log(t / (1 - t))


def dpm_solver_2m_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float,
                       previous: tuple[float, torch.Tensor] | None) -> torch.Tensor:
    """DPM-Solver++(2M)'s step from t to ``t_next`` with the denoised estimate x + (1 - t) v and the last one
    (``previous``: its time and estimate); first order (Euler's step) without one and into t = 1."""
    denoised = x + (1 - t) * v
    if t_next >= 1.0:
        return denoised  # sigma = 0: the estimate itself (the solver's lower order at the last step)
    h = log_snr(t_next) - log_snr(t)
    if previous is not None:
        ratio = (log_snr(t) - log_snr(previous[0])) / h
        denoised = (1 + 0.5 / ratio) * denoised - (0.5 / ratio) * previous[1]
    return (1 - t_next) / (1 - t) * x + t_next * (-math.expm1(-h)) * denoised


@torch.no_grad()
def sample(net: FlowNet, n: int, conditions: Sequence[Guide], steps: int | Schedule = 32,
           generator: torch.Generator | None = None, placer: Placer | None = None, temperature: float = 1.0
           ) -> torch.Tensor:
    """n codes (n, D) drawn from the flow under ``conditions`` (in code space, not standardised), starting from
    noise of standard deviation ``temperature`` (the sampling temperature of Glow, Kingma & Dhariwal 2018,
    arXiv:1807.03039: below 1 nearer the modes, above 1 further out)."""
    device = net.mean.device
    x0 = temperature * torch.randn(n, net.dim, generator=generator, device=device)
    return net.unstandardise(integrate(net, x0, 0.0, conditions, steps, placer))


@torch.no_grad()
def project(net: FlowNet, codes: torch.Tensor, noise: float, conditions: Sequence[Guide],
            steps: int | Schedule = 32, generator: torch.Generator | None = None, placer: Placer | None = None
            ) -> torch.Tensor:
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
    schedule = as_schedule(steps)
    schedule = schedule._replace(steps=max(1, round(schedule.steps * noise)))
    return net.unstandardise(integrate(net, x_t, start, conditions, schedule, placer, place_at=max(start, 0.4)))


def denoise(net: FlowNet, codes: torch.Tensor, conditions: Sequence[Guide], t: float = 0.95) -> torch.Tensor:
    """The prior's denoised estimate of codes (N, D), in code space: each code is read as the point
    x_t = t x of its straight path at time ``t`` (its noise at its mean, zero), and the velocity gives
    E[x1 | x_t] = x_t + (1 - t) v(x_t, t) (Tweedie's formula for the flow's paths). Codes the prior
    finds likely come back almost unchanged; others move towards codes of the ``conditions``."""
    with torch.no_grad():
        x_t = t * net.standardise(codes)
        return net.unstandardise(x_t + (1 - t) * guided_velocity(net, x_t, t, conditions))


def prior_score(net: FlowNet, codes: torch.Tensor, conditions: Sequence[Guide], t: float = 0.95
                ) -> torch.Tensor:
    """An estimate of grad log p(code) (N, D) in code space: the score of the codes' density smoothed by
    the noise of time ``t`` (std sigma = (1 - t) / t in standardised units),
    (E[x1 | x_t] - x) / sigma^2, from ``denoise``. Differentiable in nothing (a direction to step along)."""
    sigma = (1 - t) / t
    residual = net.standardise(denoise(net, codes, conditions, t)) - net.standardise(codes)
    return residual / sigma ** 2 / net.spread  # chain rule of the standardisation
