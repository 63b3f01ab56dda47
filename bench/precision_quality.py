"""Does the fast default keep quality? Held-out PSNR after the same steps, fp32 eager NCHW vs the default.

Trains the same preset, seed and number of steps twice (``--precision fp32 --channels_last
false``, then the defaults) into ``outputs/runs/bench-precision-*`` and prints both
held-out PSNRs (the last ``eval/psnr`` of metrics.jsonl, on the same held-out images) and
their difference; the target is within 0.2 dB.

Example: ``python bench/precision_quality.py --data data --steps 600``
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import fire

from autoencoder.config import make_config
from autoencoder.train import train


def final_psnr(run: Path) -> tuple[float, float]:
    """(held-out PSNR, images/s of the last interval) of a finished run."""
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last["eval/psnr"], last["images_per_s"]


def main(data: str = "data", preset: str = "cpu", steps: int = 600, seed: int = 0,
         out: str = "outputs/runs/bench-precision") -> None:
    results = {}
    for name, flags in (("fp32 NCHW", dict(precision="fp32", channels_last=False)), ("default", {})):
        run = Path(f"{out}-{name.split()[0]}")
        shutil.rmtree(run, ignore_errors=True)
        config = make_config(preset, data=data, steps=steps, seed=seed, out=str(run), log_every=steps,
                             sample_every=steps, checkpoint_every=steps, **flags)
        train(config, progress=False)
        results[name] = final_psnr(run)
        print(f"{name:10s} ({config.precision}, channels_last={config.channels_last}): held-out PSNR "
              f"{results[name][0]:.2f} dB after {steps} steps, {results[name][1]:.0f} images/s", flush=True)
    difference = results["default"][0] - results["fp32 NCHW"][0]
    print(f"default minus fp32: {difference:+.2f} dB ({'within' if abs(difference) <= 0.2 else 'outside'} 0.2 dB)")


if __name__ == "__main__":
    fire.Fire(main)
