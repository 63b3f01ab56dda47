"""Images per second of one full training step (all networks, all losses), per precision and layout.

Runs on random uint8 images (the speed does not depend on the pixels), so it needs no data.
Run it alone: a second job on the same cores halves every figure.

Example: ``python bench/train_throughput.py --preset cpu --steps 20``
"""
from __future__ import annotations

import time

import fire
import torch

from autoencoder.config import make_config
from autoencoder.models import build_networks
from autoencoder.train import make_optimisers, resolve_device, step_generator, train_step


def measure(preset: str, precision: str, channels_last: bool, steps: int, warmup: int,
            **flags) -> float:
    config = make_config(preset, precision=precision, channels_last=channels_last, **flags)
    device = resolve_device(config)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    nets = build_networks(config).to(device)
    if channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    opt_ae, opt_critic = make_optimisers(nets, config)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        train_step(nets, images, config, step_generator(0, i), opt_ae, opt_critic, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - began)


def main(preset: str = "cpu", steps: int = 20, warmup: int = 3, **flags) -> None:
    """Print a table of images/s for fp32/bf16 x NCHW/channels_last."""
    print(f"preset {preset} {flags or ''} threads {torch.get_num_threads()}")
    results = {}
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            ips = measure(preset, precision, channels_last, steps, warmup, **flags)
            results[(precision, channels_last)] = ips
            print(f"{precision:5s} {'channels_last' if channels_last else 'NCHW':14s} {ips:8.1f} images/s")
    base = results[("fp32", False)]
    best = max(results, key=results.get)
    print(f"best: {best[0]} {'channels_last' if best[1] else 'NCHW'}, "
          f"{results[best] / base:.2f}x the fp32 NCHW baseline")


if __name__ == "__main__":
    fire.Fire(main)
