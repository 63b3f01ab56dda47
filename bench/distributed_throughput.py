"""Images per second of real training runs under torchrun, for 1, 2, ... processes.

Each count runs ``torchrun --standalone --nproc_per_node N -m autoencoder.train`` for a
few steps on the real data into a scratch folder, with the machine's cores shared out
(``--threads cores // N`` per process on CPU), and reports the ``images_per_s`` of the
last logged interval (the first interval holds the warm-up). The global batch is the
preset's in every case, so the runs compute the same steps.

Example: ``python bench/distributed_throughput.py --data data --processes 1,2 --steps 40``
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import DATA_FOLDER


def run(processes: int, preset: str, data: str, steps: int, threads: int, flags: dict) -> dict:
    """The last logged record of a short run with ``processes`` processes."""
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as scratch:
        out = Path(scratch) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), "-m", "autoencoder.train", "--preset", preset,
                   "--data", data, "--out", str(out), "--steps", str(steps), "--log_every", str(steps // 2),
                   "--sample_every", str(10 * steps), "--checkpoint_every", str(10 * steps),
                   "--eval_images", "100", "--threads", str(threads)]
        command += [f"--{k}={v}" for k, v in flags.items()]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


@dataclass
class DistributedThroughputConfig:
    data: str = DATA_FOLDER  # CIFAR-10 folder
    preset: str = "cpu"  # the training preset measured
    processes: str = "1,2"  # comma-separated process counts
    steps: int = 40  # steps per measurement


def run_distributed_throughput(data: str, preset: str, processes: str, steps: int, extra: dict | None = None) -> None:
    """Print images/s for each process count, and each count's speed relative to one process."""
    counts = [int(n) for n in str(processes).strip("()[] ").split(",") if n.strip()]  # fire: "1,2" -> (1, 2)
    cores = os.cpu_count() or 1
    print(f"preset {preset}, {steps} steps, {cores} cores {extra or ''}")
    results = {}
    for n in counts:
        threads = max(1, cores // n)
        record = run(n, preset, data, steps, threads, (extra or {}))
        results[n] = record["images_per_s"]
        print(f"{n} process(es) x {threads} thread(s): {results[n]:8.1f} images/s   "
              f"loss/recon {record['loss/recon']:.4f}", flush=True)
    base = results[counts[0]]
    for n in counts[1:]:
        print(f"{n} processes vs {counts[0]}: {results[n] / base:.2f}x")
    write_record("distributed_throughput", {"preset": preset, "steps": steps, "images_per_s": results})


def main(**flags) -> None:
    """Print images/s for each process count, and each count's speed relative to one process. Every field of
    DistributedThroughputConfig is a flag (other flags go to the measured command)."""
    bench_main(DistributedThroughputConfig, flags, run_distributed_throughput, passthrough=True)


if __name__ == "__main__":
    fire.Fire(main)
