"""Speed and peak memory of the latent_ops commands on a trained run: encode (images/s) and compose.

encode: the test split through the encoder, per precision and layout, each in a fresh process.
compose: ``horse+wings``, 64 images with the default 10 refinement steps, in a fresh process
(after one warm-up call that fits nothing new), reporting compose's own seconds and the
process's peak RSS. Run it alone.

Example: ``python bench/latent_ops_speed.py --run outputs/runs/cpu-12k --data data``
"""
from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from dataclasses import dataclass

import fire
import torch
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB on Linux


def encode_speed(run: str, data: str, precision: str, channels_last: bool, cache_dir: str) -> tuple[float, float]:
    from autoencoder.data import load_cifar10
    from autoencoder.run_folder import load_run
    from latent_ops.encode import encode_images

    nets = load_run(run).nets
    if channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    images = load_cifar10(data, "test", cache_dir=cache_dir).images
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    encode_images(nets.encoder, images[:1000], torch.device("cpu"), dtype, progress=False)  # warm-up
    began = time.perf_counter()
    encode_images(nets.encoder, images, torch.device("cpu"), dtype, progress=False)
    return len(images) / (time.perf_counter() - began), _peak_rss_gib()


def compose_speed(run: str, data: str, cache_dir: str) -> tuple[float, float]:
    import json

    from latent_ops.compose import compose

    with tempfile.TemporaryDirectory() as out:
        folder = compose("horse+wings", run=run, data=data, n=64, seed=0, out=out, cache_dir=cache_dir, quiet=True)
        seconds = json.loads((folder / "scores.json").read_text())["seconds"]
    return seconds, _peak_rss_gib()


def _fresh(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


@dataclass
class LatentOpsSpeedConfig:
    run: str = ""  # the run (or shipped model) folder
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache


def run_latent_ops_speed(run: str, data: str, cache_dir: str) -> None:
    """Print encode images/s per precision and layout, and compose's seconds and peak RSS."""
    print(f"run {run}, threads {torch.get_num_threads()}")
    results = {}
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            ips, rss = _fresh(encode_speed, run, data, precision, channels_last, cache_dir)
            results[(precision, channels_last)] = ips
            print(f"encode {precision:5s} {'channels_last' if channels_last else 'NCHW':14s} {ips:8.0f} images/s   "
                  f"peak RSS {rss:.2f} GiB", flush=True)
    _fresh(compose_speed, run, data, cache_dir)  # fits the run's concepts when missing
    seconds, rss = _fresh(compose_speed, run, data, cache_dir)
    print(f"compose horse+wings, 64 images, 10 refinement steps: {seconds:.1f} s in compose, peak RSS {rss:.2f} GiB")
    print(f"encode speedup of bf16 over fp32 (NCHW): {results[('bf16', False)] / results[('fp32', False)]:.2f}x")
    write_record("latent_ops_speed", {"run": run, "compose_seconds": seconds, "compose_peak_rss_gib": rss,
                                      "encode_images_per_s": {f"{p} {'channels_last' if c else 'NCHW'}": v
                                                              for (p, c), v in results.items()}})


def main(**flags) -> None:
    """Print encode images/s per precision and layout, and compose's seconds and peak RSS. Every field of
    LatentOpsSpeedConfig is a flag."""
    bench_main(LatentOpsSpeedConfig, flags, run_latent_ops_speed)


if __name__ == "__main__":
    fire.Fire(main)
