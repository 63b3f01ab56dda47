"""Running a trained autoencoder on images: encode, then decode, in chunks, at the run's precision.

Training (its held-out figures), evaluation, the report and the benches all reconstruct images the
same way, so the seven lines live here, below all of them.

Example: ``python -c "import torch; from autoencoder.run_folder import load_run; from autoencoder.roundtrip import \
reconstruct; r = load_run('models/pegasus-cifar10'); print(reconstruct(r.nets, torch.zeros(2, 3, 32, 32, \
dtype=torch.uint8), r.device, r.dtype).shape)"``
"""
from __future__ import annotations

import torch

from autoencoder.compute import autocast
from autoencoder.data import to_float


@torch.no_grad()
def reconstruct(nets, images: torch.Tensor, device: torch.device, dtype: torch.dtype,
                batch_size: int = 500) -> torch.Tensor:
    """Reconstructions (N, 3, 32, 32) float in [-1, 1], on the CPU, of uint8 images (N, 3, 32, 32)."""
    out = []
    for chunk in images.split(batch_size):
        with autocast(device, dtype):
            out.append(nets.decoder(nets.encoder(to_float(chunk).to(device))).float().cpu())
    return torch.cat(out)
