"""Compose's speed and pictures: the recipe shipped before against the model's recipe, on three seeds.

For each seed, alternating which goes first, one compose of the model's recipe (``RUN/compose.json``: the
multistep solver, refinement of the best candidates only, bf16 where native) and one of the recipe
before it (``OLD_RECIPE`` over it: Heun's method in 24 steps, every candidate refined, fp32), each in a
fresh process. For each it prints the seconds of every stage (setup, sampling, ranking, refinement,
writing) and in all, the call's wall time, and the quality figures compose measures:
the pool's share with every intent term >= the gate, mean P(horse) and P(wings) of the pool and of the
kept 64, and, with data, the kept 64's sharpness (variance of the Laplacian), feature diversity
(mean pairwise distance of the evaluator's features) and direction diversity (the same of the features scaled to
unit length: variety apart from how strongly the evaluator sees it) as ratios to real test horses, and the pool's
diversity ceiling (the same figure for a most varied 64 of the pool that the share counts, by the greedy of max-sum
dispersion: about the most any selection rule could keep). The new recipe's
figures are judged against the old one's mean minus its seed-to-seed spread (max - min over the seeds).

Then:
- the model's recipe with ``--refine_top 0`` (every candidate refined) on each seed: how many of the
  kept 64 are the same candidates, the evidence that refining only the best loses nothing;
- the model's recipe in fp32 on seed 0 (what runs on a CPU without native bf16);
- the fast paths the explorer uses, in one warm process: decoding one code, encoding one image, and
  composing a pool of 64 (keep 16) with the data opened once (``compose(..., reference=...)``).

With ``--against recipe`` the first side is the model's recipe itself and the flags given go to the second side
only: a variant of the recipe against the recipe (e.g. ``--repel 1``, particle guidance), with the same
speed and picture figures and judgements.

Writes ``outputs/bench/compose_speed.json``.

Examples: ``python bench/compose_speed.py --run models/pegasus-cifar10 --data data``;
``python bench/compose_speed.py --data data --against recipe --repel 1 --refine_all_check false``
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fire
import torch
from record import bench_main, write_record  # bench/record.py, beside this script

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import ConfigError

# The recipe the model shipped with before (its compose.json then): Heun's method in 24 steps, all candidates refined,
# fp32 networks, 256 candidates a chunk. Given over the model's recipe, so everything else is the same.
OLD_RECIPE = {"solver": "heun", "prior_steps": 24, "guidance_from": 0.0, "guidance_until": 1.0, "refine_top": 0,
              "precision": "fp32", "chunk": 256}
HIGHER_IS_BETTER = ("pool share", "pool P(horse)", "pool P(wings)", "kept P(horse)", "kept P(wings)",
                    "kept sharpness / real", "kept diversity / real", "kept direction diversity / real",
                    "ceiling diversity / real")


def compose_once(run: str, data: str, cache_dir: str, expression: str, flags: dict, out: str) -> dict:
    """One compose in this (fresh) process; its scores.json figures and the call's wall time (the worker imported
    torch before the call: ``make pegasus``'s wall time with imports is measured by timing the command)."""
    began = time.perf_counter()
    from latent_ops.compose import compose

    folder = compose(expression, run=run, data=data, cache_dir=cache_dir, out=out, quiet=True, **flags)
    scores = json.loads((folder / "scores.json").read_text())
    return {"seconds": scores["seconds"], "stages": scores["stage_seconds"], "precision": scores["precision"],
            "wall": time.perf_counter() - began, "folder": str(folder)}


def fresh(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def real_horses(data: str, cache_dir: str, count: int = 64) -> dict | None:
    """Sharpness of the test split's horses and the feature diversity of ``count`` of them (None without data)."""
    from autoencoder.classifier import load_evaluator
    from autoencoder.data import DataNotFoundError, load_split, to_float
    from autoencoder.metrics import laplacian_variance, mean_pairwise_distance

    try:
        test = load_split(data, "test", cache_dir)
    except DataNotFoundError:
        return None
    horses = test.images[test.labels == 7]
    pick = torch.randperm(len(horses), generator=torch.Generator().manual_seed(0))[:count]
    features = load_evaluator().features(horses[pick])
    return {"sharpness": laplacian_variance(to_float(horses)).mean().item(),
            "diversity": mean_pairwise_distance(features), "direction_diversity": direction_diversity(features)}


def direction_diversity(features: torch.Tensor) -> float:
    """Mean pairwise distance of the features scaled to unit length: how varied the batch is in *what* the
    evaluator sees, apart from how strongly it sees it (a composite reads weakly, so its features are short
    and the plain mean pairwise distance is small even when the pictures differ)."""
    from autoencoder.metrics import mean_pairwise_distance

    return mean_pairwise_distance(features / features.norm(dim=1, keepdim=True).clamp_min(1e-8))


def diversity_ceiling(features: torch.Tensor, scores: dict, count: int = 64) -> float:
    """The feature diversity of a most varied ``count`` (``latent_ops.ranking.dispersed_subset``) of the pool's
    candidates whose every intent term is at least the gate (those the pool share counts), from the evaluator's
    ``features`` of the saved images (row r: rank r): about the most any selection rule could keep from this pool,
    so a target above it needs a more varied pool, not a better rule."""
    from autoencoder.metrics import mean_pairwise_distance
    from latent_ops.ranking import dispersed_subset

    ranks = [c["rank"] for c in scores["candidates"] if min(c["intent_terms"].values()) >= scores["rank_gate"]]
    share = features[[r for r in ranks if r < len(features)]]
    spread = dispersed_subset(share, count)
    return mean_pairwise_distance(share[spread]) if len(spread) > 1 else 0.0


def quality(folder: str, real: dict | None) -> dict:
    """The figures of one compose folder: shares and probabilities from scores.json, ratios to real horses."""
    from safetensors.torch import load_file

    from autoencoder.classifier import load_evaluator
    from autoencoder.metrics import mean_pairwise_distance

    scores = json.loads((Path(folder) / "scores.json").read_text())
    pool, kept = scores["pool"], scores["kept"]
    horse = next((t for t in pool["intent_terms"] if t.split(":")[0] == "horse"), "horse")  # horse:white reads horse
    figures = {"pool share": pool["share_every_intent_term_at_least_gate"],
               "pool P(horse)": pool["intent_terms"][horse], "pool P(wings)": pool["intent_terms"]["wings"],
               "kept P(horse)": kept["intent_terms"][horse], "kept P(wings)": kept["intent_terms"]["wings"]}
    kept_ranks = [c["rank"] for c in scores["candidates"] if c["kept"]]
    if real is not None:
        saved = load_evaluator().features(load_file(str(Path(folder) / "images.safetensors"))["images"])  # by rank
        features = saved[kept_ranks]
        figures["kept sharpness / real"] = kept["sharpness"] / real["sharpness"]
        figures["kept diversity / real"] = mean_pairwise_distance(features) / real["diversity"]
        figures["kept direction diversity / real"] = direction_diversity(features) / real["direction_diversity"]
        figures["ceiling diversity / real"] = diversity_ceiling(saved, scores) / real["diversity"]
    figures["kept candidates"] = sorted(c["candidate"] for c in scores["candidates"] if c["kept"])
    return figures


def fast_paths(run: str, data: str, cache_dir: str, expression: str, out: str, repeats: int = 20) -> dict:
    """Milliseconds to decode one code and encode one image, and seconds of a pool-64 compose, warm, in one process."""
    from autoencoder.compute import autocast
    from autoencoder.run_folder import load_run
    from latent_ops.compose import compose, open_reference
    from latent_ops.compose_config import make_compose_config

    opened = load_run(run)
    nets = opened.nets.to(memory_format=torch.channels_last)
    code = torch.randn((1, opened.config.latent_dim), generator=torch.Generator().manual_seed(0))
    image = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1

    def best_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return 1000 * statistics.median(times)

    with torch.inference_mode(), autocast(opened.device, opened.dtype):
        decode_ms = best_ms(lambda: nets.decoder(code))
        encode_ms = best_ms(lambda: nets.encoder(image))
    reference = open_reference(make_compose_config(run=run, data=data, cache_dir=cache_dir), opened.folder)
    pool = []  # the data opened once, as a long-lived process (the explorer) holds it
    for seed in range(4):  # the first warms the process up
        began = time.perf_counter()
        compose(expression, run=run, data=data, cache_dir=cache_dir, out=f"{out}/pool64-{seed}", pool=64, n=16,
                seed=seed, quiet=True, reference=reference)
        pool.append(time.perf_counter() - began)
    return {"decode_one_ms": decode_ms, "encode_one_ms": encode_ms, "compose_pool64_seconds": pool[1:],
            "precision": "bf16" if opened.dtype == torch.bfloat16 else "fp32"}


def verdicts(old: list[dict], new: list[dict]) -> dict:
    """Per figure: old and new means, the old seeds' spread, and whether new >= old mean - spread."""
    out = {}
    for name in HIGHER_IS_BETTER:
        if name not in old[0]:
            continue
        before, after = [q[name] for q in old], [q[name] for q in new]
        spread = max(before) - min(before)
        mean_old, mean_new = statistics.mean(before), statistics.mean(after)
        out[name] = {"old": before, "new": after, "old_mean": mean_old, "new_mean": mean_new, "old_spread": spread,
                     "held": mean_new >= mean_old - spread}
    return out


def stage_line(result: dict) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result["stages"].items())
    return f"{result['seconds']:.1f} s in compose ({stages}; {result['precision']}), {result['wall']:.1f} s in its process"


@dataclass
class ComposeSpeedConfig:
    run: str = "models/pegasus-cifar10"  # the shipped model (or run) whose compose.json is the new recipe
    data: str = DATA_FOLDER  # CIFAR-10 folder: uniqueness in compose and the ratios to real horses
    cache_dir: str = CACHE_FOLDER  # decoded data cache
    expression: str = ""  # the expression composed; empty: the recipe's
    seeds: int = 3  # seeds 0 .. seeds-1, the old and new recipes alternating
    refine_all_check: bool = True  # also compose each seed with every candidate refined (the kept-set check)
    recipes: bool = True  # compare the recipes; false: only the fast paths (record compose_speed_fast_paths.json)
    against: str = "old"  # the first side: old (OLD_RECIPE over the flags given) or recipe (the model's recipe alone)


def print_fast_paths(fast: dict) -> None:
    print(f"fast paths ({fast['precision']}): decode one code {fast['decode_one_ms']:.1f} ms, encode one image "
          f"{fast['encode_one_ms']:.1f} ms, compose a pool of 64 (keep 16) "
          + ", ".join(f"{s:.2f}" for s in fast["compose_pool64_seconds"]) + " s")


def run_compose_speed(run: str, data: str, cache_dir: str, expression: str, seeds: int, refine_all_check: bool,
                      recipes: bool, against: str = "old", extra: dict | None = None) -> None:
    """Old recipe against new on each seed, the refine-all check, fp32, and the explorer's fast paths."""
    if against not in ("old", "recipe"):
        raise ConfigError(f"--against must be old or recipe, got {against!r}")
    if not recipes:
        with tempfile.TemporaryDirectory() as scratch:
            fast = fresh(fast_paths, run, data, cache_dir, expression, scratch)
        print_fast_paths(fast)
        write_record("compose_speed_fast_paths", {"run": run, "data": data, "fast_paths": fast})
        return
    real = real_horses(data, cache_dir)
    new_flags = dict(extra or {})
    old_flags = {**new_flags, **OLD_RECIPE} if against == "old" else {}
    record: dict = {"run": run, "data": data, "against": against, "old_flags": old_flags, "new_flags": new_flags,
                    "real_horses": real, "seeds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(seeds):
            order = [("old", old_flags), ("new", new_flags)]
            if seed % 2:
                order.reverse()  # alternate which goes first, so a drift in the machine's load falls on both
            row = {}
            for name, flags in order:
                result = fresh(compose_once, run, data, cache_dir, expression, {**flags, "seed": seed},
                               f"{scratch}/{name}-{seed}")
                result["quality"] = quality(result["folder"], real)
                row[name] = result
                print(f"seed {seed} {name}: {stage_line(result)}")
            row["ratio"] = row["new"]["seconds"] / row["old"]["seconds"]
            print(f"seed {seed}: new / old = {row['ratio']:.3f} ({1 / row['ratio']:.1f}x faster)")
            if refine_all_check:
                every = fresh(compose_once, run, data, cache_dir, expression, {**new_flags, "seed": seed,
                              "refine_top": 0}, f"{scratch}/every-{seed}")
                same = set(quality(every["folder"], None)["kept candidates"]) & set(row["new"]["quality"]["kept candidates"])
                row["refine_all"] = {"seconds": every["seconds"], "same_kept": len(same)}
                print(f"seed {seed}: refining every candidate: {every['seconds']:.1f} s; {len(same)} of the kept "
                      f"64 are the same candidates")
            record["seeds"][seed] = row
        fp32 = fresh(compose_once, run, data, cache_dir, expression, {**new_flags, "seed": 0, "precision": "fp32"},
                     f"{scratch}/fp32")
        print(f"new recipe in fp32, seed 0: {stage_line(fp32)}")
        record["new_fp32_seed0"] = {k: fp32[k] for k in ("seconds", "stages", "wall")}
        record["fast_paths"] = fresh(fast_paths, run, data, cache_dir, expression, scratch)
    rows = list(record["seeds"].values())
    record["verdicts"] = verdicts([r["old"]["quality"] for r in rows], [r["new"]["quality"] for r in rows])
    print("| figure | old (seeds) | new (seeds) | old mean - spread | held |\n|---|---|---|---|---|")
    for name, v in record["verdicts"].items():
        print(f"| {name} | {', '.join(f'{x:.3f}' for x in v['old'])} | {', '.join(f'{x:.3f}' for x in v['new'])} | "
              f"{v['old_mean'] - v['old_spread']:.3f} | {'yes' if v['held'] else 'NO'} |")
    print_fast_paths(record["fast_paths"])
    write_record("compose_speed", record)


def main(**flags) -> None:
    """Old recipe against new (speed and pictures), the refine-all check, fp32 and the fast paths. Every field of
    ComposeSpeedConfig is a flag; other flags go to both composes (the new recipe's values over the model's)."""
    bench_main(ComposeSpeedConfig, flags, run_compose_speed, passthrough=True)


if __name__ == "__main__":
    fire.Fire(main)
