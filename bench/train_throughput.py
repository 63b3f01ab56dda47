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
from dataclasses import dataclass

import fire
import torch
from record import bench_main, busy_warning, summarise, write_record  # bench/record.py, beside this script

from autoencoder.compute import resolve_device, resolve_precision
from autoencoder.config import make_config
from autoencoder.models import build_networks
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
    device = resolve_device(config.device)
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
        for name in nets.names:
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


def label(key: tuple[str, bool, bool]) -> str:
    precision, channels_last, compiled = key
    return f"{precision} {'channels_last' if channels_last else 'NCHW'} {'compiled' if compiled else 'eager'}"


@dataclass
class TrainThroughputConfig:
    preset: str = "cpu"  # the training preset measured
    steps: int = 20  # steps per measurement
    warmup: int = 3  # untimed steps before each measurement
    compile: bool = True  # also time torch.compile
    rounds: int = 3  # interleaved rounds of each measurement


def run_train_throughput(preset: str, steps: int, warmup: int, compile: bool, rounds: int, extra: dict | None = None) -> None:
    """Print images/s (median and spread over ``rounds``) and peak RSS for every combination, then the
    default's speedup. Rounds interleave the combinations, each round in a rotated order, so a
    passing load touches all of them alike; the spread says whether the machine was quiet."""
    config = make_config(preset, **(extra or {}))
    device = resolve_device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {preset} {extra or ''} on {name}; {rounds} interleaved rounds of {steps} steps")
    compile = str(compile).lower() not in ("false", "0", "no")  # fire reads --compile false as a string
    native_bf16 = resolve_precision("auto", device) == torch.bfloat16
    precisions = ("fp32", "bf16") if native_bf16 else ("fp32",)
    if not native_bf16:
        print("bf16 is not native on this machine (no AVX-512 bf16 / GPU bf16): emulated it is many times slower "
              "than fp32, and the default is fp32, so the bf16 rows are skipped")
    keys = [(precision, channels_last, compiled) for compiled in ((False, True) if compile else (False,))
            for precision in precisions for channels_last in (False, True)]
    samples: dict[tuple, list[float]] = {k: [] for k in keys}
    memory: dict[tuple, tuple[float, float]] = {}
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            precision, channels_last, compiled = key
            warm = warmup + (3 if compiled else 0)  # compilation happens in the first steps
            ips, rss, gpu_memory = _in_fresh_process((preset, precision, channels_last, compiled, steps, warm,
                                                      (extra or {})))
            samples[key].append(ips)
            memory[key] = (max(rss, memory.get(key, (0, 0))[0]), max(gpu_memory, memory.get(key, (0, 0))[1]))
            print(f"  round {r + 1}: {label(key):28s} {ips:8.1f} images/s", flush=True)
    summaries = {label(k): summarise(v) for k, v in samples.items()}
    print(f"{'combination':28s} {'median':>8s} {'min':>8s} {'max':>8s} images/s   peak RSS")
    for key in keys:
        s = summaries[label(key)]
        print(f"{label(key):28s} {s['median']:8.1f} {s['min']:8.1f} {s['max']:8.1f}   {memory[key][0]:.2f} GiB" +
              (f"   peak GPU memory {memory[key][1]:.2f} GiB" if device.type == "cuda" else ""))
    warning = busy_warning(summaries)
    if warning:
        print(warning)
    results = {k: summaries[label(k)]["median"] for k in keys}
    base = results[("fp32", False, False)]
    best = max(results, key=results.get)
    print(f"best: {label(best)}, {results[best] / base:.2f}x")
    default = ("bf16" if resolve_precision(config.precision, device) == torch.bfloat16 else "fp32", config.channels_last, False)
    flops = flops_per_image(preset, (extra or {}))
    achieved = flops * results[default]
    print(f"one step: {flops / 1e9:.2f} GFLOP per image; the default achieves {achieved / 1e12:.3f} TFLOP/s")
    share = None
    if device.type == "cuda":
        peak = bf16_peak(name)
        share = achieved / peak if peak else None
        print(f"share of the {name}'s dense bf16 peak ({peak / 1e12:.0f} TFLOP/s): {share:.1%}" if peak
              else f"bf16 peak of {name} unknown: add it to BF16_PEAK_TFLOPS")
    print(f"speedup of default over fp32 eager baseline: {results[default] / base:.2f}x")
    write_record("train_throughput", {
        "preset": preset, "steps": steps, "rounds": rounds, "images_per_s": summaries,
        "peak_rss_gib": {label(k): v[0] for k, v in memory.items()}, "default": label(default),
        "speedup_default_over_fp32_eager": results[default] / base, "gflop_per_image": flops / 1e9,
        "share_of_bf16_peak": share, "busy_warning": warning})


def main(**flags) -> None:
    """Print images/s (median and spread over ``rounds``) and peak RSS for every combination, then the Every field of
    TrainThroughputConfig is a flag (other flags go to the measured command)."""
    bench_main(TrainThroughputConfig, flags, run_train_throughput, passthrough=True)


if __name__ == "__main__":
    fire.Fire(main)
