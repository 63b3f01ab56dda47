"""The shipped model folder's format: the files shipping writes, the ones later commands add, and its size limit.

``latent_ops.ship`` writes the folder; ``latent_ops.learn`` adds ``learned/`` concepts to it and
``latent_ops.compose --save_recipe`` its ``compose.json``; both check it against the same limit, so
the format lives here, below the commands that use it.

Example: ``python -c "from latent_ops.shipped_folder import folder_bytes; print(folder_bytes('models/pegasus-cifar10'))"``
"""
from __future__ import annotations

from pathlib import Path

from autoencoder.run_folder import RunError

CARD_FILE = "MODEL_CARD.md"
SHIP_FILE = "ship.json"
SHIPPED_NAMES = {CARD_FILE, "clusters", "clusters.json", "concepts.npz", "config.json", "data.json",
                 "directions.json", "latents.npz", "metrics.jsonl", "model.safetensors", "prior", SHIP_FILE,
                 "encode-config.json", "concepts-config.json"}  # what shipping writes (and may replace)
# what later commands add to a shipped model: lost when shipped again
LATER_NAMES = {"learned", "compose.json", "marks", "proxy"}
SIZE_LIMIT = 28 * 2 ** 20  # bytes: the shipped folder must stay under 28 MiB (25.5 with two learned concepts)


def is_shipped(folder: str | Path) -> bool:
    """Whether ``folder`` is a shipped model (it holds the shipping record)."""
    return (Path(folder) / SHIP_FILE).is_file()


def folder_bytes(folder: str | Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def fix_for(folder: str | Path, fix: str) -> str:
    """What to do about a damaged derived file of ``folder``: ``fix`` for a trained run; for a shipped model, whose
    files are not made again piecemeal (its bank holds test codes only), restoring them."""
    if not is_shipped(folder):
        return fix
    return (f"{folder} is a shipped model, whose files are not made again one by one: restore its files (git checkout "
            f"{folder}), or ship the model again")


def refuse_remaking(folder: str | Path, what: str) -> None:
    """A shipped model's bank and concepts are made by shipping, from the run it shipped; a command that would
    make them again in place (and replace what was shipped) is refused, naming ``what`` it would have done."""
    if is_shipped(folder):
        raise RunError(f"{folder} is a shipped model: {what} would replace what was shipped; nothing was written: "
                       f"run it on the trained run it came from (--run outputs/runs/NAME), restore the model's files "
                       f"(git checkout {folder}), or ship it again")
