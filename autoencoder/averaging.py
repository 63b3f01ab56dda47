"""An exponential moving average of the autoencoder's weights: what a run decodes with, saves and ships.

Each step the average moves towards the current weights of the encoder, decoder and class head
(Polyak averaging, Polyak & Juditsky 1992; the exponential form used to sample GANs, Karras et al.
2018, arXiv:1710.10196, and diffusion models). Its share at step t is (1 - d) / (1 - d^t), the
bias correction of Adam (Kingma & Ba 2015, arXiv:1412.6980): the average after t steps is the
exponential average of the weights of steps 1..t alone, normalised, with no part of the random
initial weights (plain ``1 - d`` steps keep d^t of them: 18% after 1,700 steps at d = 0.999). Training steps the raw weights; the
held-out PSNR, the sample grids and ``model.safetensors`` use the average, and the checkpoint keeps
the raw weights in ``train_state.pt`` so that a killed run resumes exactly.

Example: ``python -m autoencoder.train --preset smoke --ema 0.99``
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from autoencoder.models import Networks

AVERAGED = ("encoder.", "decoder.", "class_head.")  # the autoencoder's networks; the critics are not averaged


class WeightAverage:
    """The moving average of ``nets``' autoencoder weights, started at their current values."""

    def __init__(self, nets: Networks, decay: float):
        self.decay = decay
        state = nets.state_dict()
        self.names = [n for n, t in state.items() if n.startswith(AVERAGED) and t.is_floating_point()]
        self.average = {n: state[n].detach().clone() for n in self.names}

    def share(self, step: int) -> float:
        """How far the update of training step ``step`` (counted from 1) moves the average: bias-corrected."""
        return (1 - self.decay) / (1 - self.decay ** step)

    @torch.no_grad()
    def update(self, nets: Networks, step: int) -> None:
        """The average after training step ``step`` (counted from 1): the first one takes the weights whole."""
        if step < 1:
            raise ValueError(f"the average counts steps from 1, got {step}")
        state = nets.state_dict()
        torch._foreach_lerp_([self.average[n] for n in self.names], [state[n] for n in self.names], self.share(step))

    def raw(self, nets: Networks) -> dict[str, torch.Tensor]:
        """The current (trained, not averaged) autoencoder weights, on the CPU: what a checkpoint keeps."""
        state = nets.state_dict()
        return {n: state[n].detach().cpu().clone() for n in self.names}

    @torch.no_grad()
    def load_raw(self, nets: Networks, raw: dict[str, torch.Tensor]) -> None:
        """Put a checkpoint's raw weights back into ``nets`` (the average stays as loaded)."""
        state = nets.state_dict()
        missing = [n for n in self.names if n not in raw]
        if missing:
            raise KeyError(f"the checkpoint has no raw weights for {missing[0]}")
        for n in self.names:
            state[n].copy_(raw[n])

    @contextlib.contextmanager
    def swapped_in(self, nets: Networks) -> Iterator[None]:
        """``nets`` with the averaged weights for the duration (evaluation, grids, saving)."""
        raw = self.raw(nets)
        state = nets.state_dict()
        with torch.no_grad():
            for n in self.names:
                state[n].copy_(self.average[n])
        try:
            yield
        finally:
            self.load_raw(nets, raw)


def averaged(average: WeightAverage | None, nets: Networks):
    """``average.swapped_in(nets)``, or nothing when the run keeps no average."""
    return average.swapped_in(nets) if average is not None else contextlib.nullcontext()
