"""What every bench shares: the summary of repeated measurements and the JSON record beside the printout.

Example: ``python -c "from bench.record import summarise; print(summarise([100, 104, 98]))"``
"""
from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from autoencoder.atomic import write_json
from autoencoder.compute import machine_name

RECORDS = Path("outputs/bench")
_CONFIG: dict = {}  # the running bench's config, written into its record
BUSY_SPREAD = 0.15  # (max - min) / median above this: the machine was busy, the figure is unreliable


def summarise(samples: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    median = statistics.median(samples)
    return {"median": median, "min": min(samples), "max": max(samples), "rounds": len(samples),
            "spread": (max(samples) - min(samples)) / median if median else 0.0, "samples": list(samples)}


def busy_warning(summaries: dict[str, dict[str, float]]) -> str | None:
    """A warning line when any measurement swung more than BUSY_SPREAD between rounds."""
    worst = max(summaries, key=lambda k: summaries[k]["spread"])
    if summaries[worst]["spread"] > BUSY_SPREAD:
        return (f"WARNING: {worst} swung by {summaries[worst]['spread']:.0%} between rounds (over "
                f"{BUSY_SPREAD:.0%}): the machine was busy; run the bench alone before quoting it")
    return None


def write_record(name: str, record: dict, folder: Path = RECORDS) -> Path:
    """``folder/<name>.json`` with the record, the command line, the machine and the time."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    full = {"bench": name, "command": " ".join(sys.argv), "config": _CONFIG, "machine": machine_name(device),
            "python": platform.python_version(), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), **record}
    file = write_json(full, folder / f"{name}.json")
    print(f"record: {file}")
    return file


def bench_main(kind: type, flags: dict, body, passthrough: bool = False) -> None:
    """The command pattern for a bench: flags -> a ``kind`` config (unknown flags, wrong types and non-finite
    numbers refused in one line) -> ``body(**config)``; the config goes into the bench's record.

    ``passthrough``: flags that are not fields of ``kind`` go to ``body`` as ``extra``, for the command
    the bench measures, which checks them the same way.
    """
    from dataclasses import asdict, fields

    from autoencoder.cli import command

    own = {f.name for f in fields(kind)}
    extra = {k: v for k, v in flags.items() if k not in own} if passthrough else {}
    mine = {k: v for k, v in flags.items() if k not in extra}

    def run(config) -> None:
        _CONFIG.clear()
        _CONFIG.update(asdict(config), **({"extra": extra} if passthrough else {}))
        body(**asdict(config), **({"extra": extra} if passthrough else {}))
    command(kind, mine, run)
