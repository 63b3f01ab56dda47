"""Speed of ``make pegasus``'s compose: the pool of 1024 with projection and refinement, against its 60 s budget.

Two parts, each in a fresh process, run alone:
- refinement's step (critic through the decoder, forward and backward, 256 codes) in the
  NCHW and channels_last layouts: why compose turns the networks channels_last;
- the whole compose (``--pool 1024 --project ... --refine_prior ...``, the Makefile's recipe),
  ``rounds`` times: compose's own seconds and the process's wall time with imports.

Example: ``python bench/compose_speed.py --run models/pegasus-cifar10 --data data``
"""
from __future__ import annotations

import json
import multiprocessing
import tempfile
import time

import fire
import torch
from record import summarise, write_record  # bench/record.py, beside this script

PEGASUS_FLAGS = dict(pool=1024, project=0.5, refine_prior=0.1)  # the Makefile's PEGASUS_FLAGS


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


def main(run: str, data: str = "data", cache_dir: str = "data/cache", expression: str = "horse+wings",
         rounds: int = 2, **flags) -> None:
    """Print the refinement step per layout and the pegasus compose's seconds (flags override PEGASUS_FLAGS)."""
    layout = {name: _fresh(refine_step_seconds, run, cl) for name, cl in (("NCHW", False), ("channels_last", True))}
    print(f"refinement step, 256 codes: NCHW {layout['NCHW']:.3f} s, channels_last {layout['channels_last']:.3f} s "
          f"({layout['NCHW'] / layout['channels_last']:.2f}x)")
    recipe = {**PEGASUS_FLAGS, **flags}
    inside, wall = zip(*[_fresh(compose_seconds, expression, run, data, cache_dir, recipe) for _ in range(rounds)])
    inside, wall = summarise(list(inside)), summarise(list(wall))
    print(f"compose {expression} {recipe}: {inside['median']:.1f} s in compose (min {inside['min']:.1f}, "
          f"max {inside['max']:.1f}), {wall['median']:.1f} s with imports; budget 60 s")
    write_record("compose_speed", {"run": run, "data": data, "expression": expression, "flags": recipe,
                                   "refine_step_seconds": layout, "compose_seconds": inside, "wall_seconds": wall})


if __name__ == "__main__":
    fire.Fire(main)
