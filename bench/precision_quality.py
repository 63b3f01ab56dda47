"""Does the fast default keep quality? Held-out PSNR after the same steps, fp32 eager NCHW vs the default.

For each seed, trains the same preset and number of steps twice (``--precision fp32
--channels_last false``, then the defaults) into ``outputs/runs/bench-precision-*`` and
prints both held-out PSNRs (the last ``eval/psnr`` of metrics.jsonl, on the same held-out
images) and their difference, then the mean difference over the seeds: one pair of runs
differs by a few tenths of a dB from seed noise alone, so the target (within 0.2 dB) is
judged on the mean. A run folder that already holds the finished run of the same config
is reused.

Example: ``python bench/precision_quality.py --data data --steps 600 --seeds 0,1,2``
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import DATA_FOLDER
from autoencoder.config import TrainConfig, load_train_config, make_config
from autoencoder.train import train


def final_psnr(run: Path) -> tuple[float, float]:
    """(held-out PSNR, images/s of the last interval) of a finished run."""
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last["eval/psnr"], last["images_per_s"]


def is_finished(run: Path, config: TrainConfig) -> bool:
    """Whether ``run`` holds the finished run of ``config``."""
    if not (run / "config.json").exists() or not (run / "metrics.jsonl").exists():
        return False
    lines = (run / "metrics.jsonl").read_text().splitlines()
    saved, wanted = dataclasses.asdict(load_train_config(run / "config.json")), dataclasses.asdict(config)
    saved.pop("out"), wanted.pop("out")
    return (saved == wanted
            and bool(lines) and json.loads(lines[-1])["step"] == config.steps)


@dataclass
class PrecisionQualityConfig:
    data: str = DATA_FOLDER  # CIFAR-10 folder
    preset: str = "cpu"  # the training preset measured
    steps: int = 600  # steps per measurement
    seeds: str = "0,1,2"  # comma-separated training seeds
    out: str = "outputs/runs/bench-precision"  # where the runs are written


def run_precision_quality(data: str, preset: str, steps: int, seeds: str, out: str) -> None:
    seed_list = [int(s) for s in str(seeds).strip("()[] ").split(",") if s.strip()]  # fire: "0,1,2" -> (0, 1, 2)
    differences = []
    for seed in seed_list:
        results = {}
        for name, flags in (("fp32 NCHW", dict(precision="fp32", channels_last=False)), ("default", {})):
            run = Path(f"{out}-{name.split()[0]}-s{seed}")
            config = make_config(preset, data=data, steps=steps, seed=seed, out=str(run), log_every=steps,
                                 sample_every=steps, checkpoint_every=steps, **flags)
            if not is_finished(run, config):
                shutil.rmtree(run, ignore_errors=True)
                train(config, progress=False)
            results[name] = final_psnr(run)
            print(f"seed {seed} {name:10s} ({config.precision}, channels_last={config.channels_last}): held-out "
                  f"PSNR {results[name][0]:.2f} dB after {steps} steps, {results[name][1]:.0f} images/s", flush=True)
        differences.append(results["default"][0] - results["fp32 NCHW"][0])
        print(f"seed {seed} default minus fp32: {differences[-1]:+.2f} dB", flush=True)
    mean = statistics.mean(differences)
    spread = f" (sd {statistics.stdev(differences):.2f})" if len(differences) > 1 else ""
    print(f"default minus fp32, mean of {len(differences)} seeds: {mean:+.2f} dB{spread} "
          f"({'within' if abs(mean) <= 0.2 else 'outside'} 0.2 dB)")
    write_record("precision_quality", {"preset": preset, "steps": steps, "differences_db": differences,
                                       "mean_difference_db": mean})


def main(**flags) -> None:
    """Run the precision quality bench. Every field of PrecisionQualityConfig is a flag."""
    bench_main(PrecisionQualityConfig, flags, run_precision_quality)


if __name__ == "__main__":
    fire.Fire(main)
