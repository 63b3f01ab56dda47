"""The composition targets, read from a report made with a compose pool, each with its verdict.

Make the report first (the evaluator measures; the pool is composed with the Makefile's recipe):
``python -m latent_ops.report --run models/pegasus-cifar10 --data data`` (it composes with the model's
recipe, ``compose.json``, a pool of 1,024). Then this script reads its ``report.json`` for the
first composed expression and compares:

- the unselected pool: at least half with P(horse) >= 0.2 and P(bird)+P(airplane) >= 0.2;
- the best image: P(horse) >= 0.35 and P(bird)+P(airplane) >= 0.35;
- the kept 64: sharpness >= 0.9x real horses, feature diversity >= 0.8x 64 real horses,
  nearest-training-image feature distance above the median of real test images;
- the learned latent prior's samples: Frechet at most half that of N(0, I) samples.

Writes ``outputs/bench/manifold_targets.json``.

Example: ``python bench/manifold_targets.py --report outputs/report/pegasus-cifar10``
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fire
from record import bench_main, write_record  # bench/record.py, beside this script


def find_set(sets: list[dict], starts: str, contains: str = "") -> dict:
    for row in sets:
        if row["name"].startswith(starts) and contains in row["name"]:
            return row
    raise KeyError(f"no row named {starts!r}...{contains!r}; was the report's compose recipe a pool (compose.json with pool > 0)?")


def targets_of(record: dict) -> dict[str, dict]:
    """Each target: measured value, goal, and whether it is met (higher is better unless said)."""
    c = record["compositions"][0]
    subject = c["subject"]
    kept = find_set(c["sets"], "composed", "kept")
    real_subject = find_set(c["sets"], "real:")
    real_test = find_set(record["sets"], "real: test images")
    normal = find_set(record["sets"], "model: prior samples N(0, I)")
    learned = find_set(record["sets"], "model: latent prior samples")
    best = c["recognisability_best"]
    rows = {
        "pool share with both terms >= 0.2": (c["pool"]["share_every_intent_term_at_least_gate"], 0.5, True),
        f"best P({subject})": (best[subject], 0.35, True),
        "best P(bird)+P(airplane)": (best["winged"], 0.35, True),
        f"kept sharpness / real {subject}s": (kept["sharpness"] / real_subject["sharpness"], 0.9, True),
        f"kept diversity / 64 real {subject}s": (kept["diversity_feature"] / real_subject["diversity_feature"], 0.8,
                                                 True),
        "kept NN feature distance - real test median": (kept["nn_feature_median"] - real_test["nn_feature_median"],
                                                        0.0, True),
        "latent prior Frechet / N(0, I) Frechet": (learned["frechet"] / normal["frechet"], 0.5, False),
    }
    out = {}
    for name, (value, goal, higher) in rows.items():
        met = value >= goal if higher else value <= goal
        out[name] = {"value": value, "target": goal, "higher_is_better": higher, "met": met,
                     "missed_by": 0.0 if met else abs(value - goal)}
    return out


@dataclass
class ManifoldTargetsConfig:
    report: str = ""  # a report folder (python -m latent_ops.report)


def run_manifold_targets(report: str) -> None:
    """Print each target's verdict for the report folder REPORT."""
    record = json.loads((Path(report) / "report.json").read_text())
    result = targets_of(record)
    print(f"{record['compositions'][0]['expression']}, {record['compositions'][0]['candidates_composed']} composed")
    print("| target | measured | goal | met |\n|---|---|---|---|")
    for name, v in result.items():
        goal = f"{'>=' if v['higher_is_better'] else '<='} {v['target']:g}"
        print(f"| {name} | {v['value']:.4g} | {goal} | {'yes' if v['met'] else 'no, by %.3g' % v['missed_by']} |")
    write_record("manifold_targets", {"report": report, "targets": result}, Path("outputs/bench"))


def main(**flags) -> None:
    """Print each target's verdict for the report folder REPORT. Every field of ManifoldTargetsConfig is a flag."""
    bench_main(ManifoldTargetsConfig, flags, run_manifold_targets)


if __name__ == "__main__":
    fire.Fire(main)
