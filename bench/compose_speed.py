"""Speed of ``make pegasus``'s compose: the model's recipe (its compose.json), against its 60 s budget.

Two parts, each in a fresh process, run alone:
- refinement's step (critic through the decoder, forward and backward, 256 codes) in the
  NCHW and channels_last layouts: why compose turns the networks channels_last;
- the whole compose with the run's recipe (``RUN/compose.json``; other flags go over it),
  ``rounds`` times: compose's own seconds and the process's wall time with imports.

Example: ``python bench/compose_speed.py --run models/pegasus-cifar10 --data data``
"""
from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from dataclasses import dataclass

import fire
import torch
from record import bench_main, summarise, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER


def refine_step_seconds(run: str, channels_last: bool, count: int = 256, rounds: int = 3) -> float:
    from autoencoder.run_folder import load_run
    from latent_ops.refine import critic_scores

    opened = load_run(run)
    config, nets = opened.config, opened.nets
    if channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    z = torch.randn((count, config.latent_dim), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(rounds + 1):  # the first is a warm-up
        began = time.perf_counter()
        code = z.clone().requires_grad_(True)
        torch.autograd.grad(critic_scores(nets, code).sum(), code)
        times.append(time.perf_counter() - began)
    return min(times[1:])


def compose_seconds(expression: str, run: str, data: str, cache_dir: str, flags: dict) -> tuple[float, float]:
    began = time.perf_counter()
    from latent_ops.compose import compose

    with tempfile.TemporaryDirectory() as out:
        folder = compose(expression, run=run, data=data, cache_dir=cache_dir, out=out, quiet=True, **flags)
        inside = json.loads((folder / "scores.json").read_text())["seconds"]
    return inside, time.perf_counter() - began


def _fresh(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


@dataclass
class ComposeSpeedConfig:
    run: str = ""  # the run (or shipped model) folder
    data: str = DATA_FOLDER  # CIFAR-10 folder
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    expression: str = ""  # the expression composed; empty: the run's recipe's
    rounds: int = 2  # interleaved rounds of each measurement


def run_compose_speed(run: str, data: str, cache_dir: str, expression: str, rounds: int, extra: dict | None = None) -> None:
    """Print the refinement step per layout and the seconds of a compose with the run's recipe (``extra``: compose
    flags over it)."""
    layout = {name: _fresh(refine_step_seconds, run, cl) for name, cl in (("NCHW", False), ("channels_last", True))}
    print(f"refinement step, 256 codes: NCHW {layout['NCHW']:.3f} s, channels_last {layout['channels_last']:.3f} s "
          f"({layout['NCHW'] / layout['channels_last']:.2f}x)")
    recipe = dict(extra or {})
    inside, wall = zip(*[_fresh(compose_seconds, expression, run, data, cache_dir, recipe) for _ in range(rounds)])
    inside, wall = summarise(list(inside)), summarise(list(wall))
    print(f"compose {expression} {recipe}: {inside['median']:.1f} s in compose (min {inside['min']:.1f}, "
          f"max {inside['max']:.1f}), {wall['median']:.1f} s with imports; budget 60 s")
    write_record("compose_speed", {"run": run, "data": data, "expression": expression, "flags": recipe,
                                   "refine_step_seconds": layout, "compose_seconds": inside, "wall_seconds": wall})


def main(**flags) -> None:
    """Print the refinement step per layout and the pegasus compose's seconds (with the run's compose recipe). Every
    field of ComposeSpeedConfig is a flag (other flags go to the measured command)."""
    bench_main(ComposeSpeedConfig, flags, run_compose_speed, passthrough=True)


if __name__ == "__main__":
    fire.Fire(main)
