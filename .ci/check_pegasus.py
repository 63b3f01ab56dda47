"""CI: check what `make pegasus NO_DATA=1` wrote with the shipped model, without CIFAR-10.

Every image is a readable PNG of the expected size, scores.json holds the pool, kept and best
summaries with finite scores, no uniqueness (no data was given), and the printed output said the
uniqueness panels were skipped and where to look.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image

OUT = Path("outputs/compose/pegasus")
IMAGES = {"best.png": 32, "best_x8.png": 256, "batch64.png": None, "refinement.png": None, "showcase.png": None}


def main(log_file: str) -> None:
    problems = []
    for name, side in IMAGES.items():
        path = OUT / name
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        with Image.open(path) as image:
            image.load()
            if side and image.size != (side, side):
                problems.append(f"{path} is {image.size}, expected {side}x{side}")
    scores = json.loads((OUT / "scores.json").read_text())
    for part in ("pool", "kept", "best"):
        if part not in scores:
            problems.append(f"scores.json has no {part!r} summary")
    best = scores.get("best", {})
    for key in ("realism", "intent"):
        if not isinstance(best.get(key), (int, float)) or not math.isfinite(best[key]):
            problems.append(f"scores.json best {key} is {best.get(key)!r}")
    stages = scores.get("stage_seconds", {})
    if set(stages) != {"setup", "sampling", "ranking", "refinement", "writing"} or scores.get("precision") not in (
            "bf16", "fp32"):
        problems.append(f"scores.json lacks the stage timings or the precision (got {sorted(stages)})")
    if "uniqueness" in best:
        problems.append("scores.json has a uniqueness score, but make pegasus ran without data")
    log = Path(log_file).read_text()
    for said in ("uniqueness and neighbour panels skipped", "showcase.png", "best: realism", "seconds: setup"):
        if said not in log:
            problems.append(f"make pegasus did not print {said!r}")
    if problems:
        sys.exit("check_pegasus: " + "; ".join(problems))
    print(f"check_pegasus: {OUT} holds every file; best realism {best['realism']:.3f}, intent {best['intent']:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
