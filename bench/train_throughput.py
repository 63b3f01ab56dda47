"""Images per second of one full training step (all networks, all losses): precision x layout x compile.

Every combination of fp32 / bf16 autocast, NCHW / channels_last and eager / torch.compile
(each network compiled) runs in its own fresh process, which also gives its peak RSS.
Runs on random uint8 images (the speed does not depend on the pixels), so it needs no
data. Run it alone: a second job on the same cores halves every figure. The last line is
``speedup of default over fp32 eager baseline: N.NNx``, the default being what
``python -m autoencoder.train`` uses on this machine.

Example: ``python bench/train_throughput.py --preset cpu --steps 20``
"""
from __future__ import annotations

import multiprocessing
import resource
import time

import fire
import torch

from autoencoder.config import make_config
from autoencoder.models import NETWORK_NAMES, build_networks
from autoencoder.hardware import resolve_device, resolve_precision
from autoencoder.step import make_optimisers, step_generator, train_step


# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from NVIDIA's data sheets, by a
# part of the name torch.cuda.get_device_name() gives; the first match counts.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1,
                    "L4": 121.0}


def flops_per_image(preset: str, flags: dict) -> float:
    """Floating-point operations of one training step per image (forward and backward of every
    network, all losses), counted by torch's FlopCounterMode on a small fp32 batch on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    config = make_config(preset, **{**flags, "precision": "fp32", "device": "cpu", "batch_size": 16})
    torch.manual_seed(0)
    nets = build_networks(config)
    opt_ae, opt_critic = make_optimisers(nets, config)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        train_step(nets, images, config, step_generator(0, 0), opt_ae, opt_critic, torch.device("cpu"),
                   torch.float32)
    return counter.get_total_flops() / config.batch_size


def bf16_peak(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, when its name is in BF16_PEAK_TFLOPS."""
    for part, tflops in BF16_PEAK_TFLOPS.items():
        if part in device_name:
            return tflops * 1e12
    return None


def measure(preset: str, precision: str, channels_last: bool, compiled: bool, steps: int, warmup: int,
            flags: dict) -> tuple[float, float, float]:
    """(images per second, peak RSS in GiB of this process, peak GPU memory in GiB or 0) for one combination."""
    config = make_config(preset, precision=precision, channels_last=channels_last, **flags)
    device = resolve_device(config)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    nets = build_networks(config).to(device)
    if channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    opt_ae, opt_critic = make_optimisers(nets, config, device)  # built on the eager modules: same parameters
    if compiled:
        # train_step backpropagates twice through one graph (retain_graph), which compiled
        # backwards allow only without buffer donation
        torch._functorch.config.donated_buffer = False
        for name in NETWORK_NAMES:
            setattr(nets, name, torch.compile(getattr(nets, name)))
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        train_step(nets, images, config, step_generator(0, i, device), opt_ae, opt_critic, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ips = steps * config.batch_size / (time.perf_counter() - began)
    gpu_memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0.0
    return ips, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, gpu_memory  # KiB -> GiB on Linux


def _in_fresh_process(args: tuple) -> tuple[float, float, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main(preset: str = "cpu", steps: int = 20, warmup: int = 3, compile: bool = True, **flags) -> None:
    """Print a table of images/s and peak RSS for every combination, then the default's speedup."""
    config = make_config(preset, **flags)
    device = resolve_device(config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {preset} {flags or ''} on {name}")
    results = {}
    compile = str(compile).lower() not in ("false", "0", "no")  # fire reads --compile false as a string
    for compiled in ((False, True) if compile else (False,)):
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                warm = warmup + (3 if compiled else 0)  # compilation happens in the first steps
                ips, rss, gpu_memory = _in_fresh_process((preset, precision, channels_last, compiled, steps,
                                                          warm, flags))
                results[(precision, channels_last, compiled)] = ips
                print(f"{precision:5s} {'channels_last' if channels_last else 'NCHW':14s} "
                      f"{'compiled' if compiled else 'eager':9s} {ips:8.1f} images/s   peak RSS {rss:.2f} GiB" +
                      (f"   peak GPU memory {gpu_memory:.2f} GiB" if device.type == "cuda" else ""), flush=True)
    base = results[("fp32", False, False)]
    best = max(results, key=results.get)
    print(f"best: {best[0]} {'channels_last' if best[1] else 'NCHW'} {'compiled' if best[2] else 'eager'}, "
          f"{results[best] / base:.2f}x")
    default = ("bf16" if resolve_precision(config, device) == torch.bfloat16 else "fp32", config.channels_last, False)
    flops = flops_per_image(preset, flags)
    achieved = flops * results[default]
    print(f"one step: {flops / 1e9:.2f} GFLOP per image; the default achieves {achieved / 1e12:.3f} TFLOP/s")
    if device.type == "cuda":
        peak = bf16_peak(name)
        print(f"share of the {name}'s dense bf16 peak ({peak / 1e12:.0f} TFLOP/s): {achieved / peak:.1%}" if peak
              else f"bf16 peak of {name} unknown: add it to BF16_PEAK_TFLOPS")
    print(f"speedup of default over fp32 eager baseline: {results[default] / base:.2f}x")


if __name__ == "__main__":
    fire.Fire(main)
