"""Figures made from a compose output: the showcase (best x8, its nearest training images, the kept batch)
and a numbered contact sheet of the batch with the cells a person marked.

compose writes ``showcase.png`` itself. The contact sheet records a by-eye count: look at
``batch64.png``, list the positions (0-63, row by row) where you see what you were counting (e.g. a
horse carrying a wing-like shape), and

    python -m latent_ops.showcase --compose outputs/compose/pegasus-cifar10/horse+wings-0 --marked 3,17,40 --what "wing-like shape"

writes ``contact-sheet.png`` (every cell numbered, the marked ones framed) and ``marked.json``
(the positions, the count and what was counted) into that folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from autoencoder.atomic import replace_atomically, write_json
from autoencoder.cli import UserError, check_writable, command, save_config
from autoencoder.data import to_float
from autoencoder.grids import tile, to_unit


def _figure_to_png(figure, file: Path) -> Path:
    import matplotlib.pyplot as plt

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")

    try:
        return replace_atomically(write, file)
    finally:
        plt.close(figure)


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    return tile(to_unit(images), nrow).permute(1, 2, 0).numpy()


def save_showcase(best: torch.Tensor, neighbours: torch.Tensor | None, batch: torch.Tensor, caption: str,
                  file: str | Path, leaders: torch.Tensor | None = None, leader_notes: list[str] | None = None
                  ) -> Path:
    """One figure: the best image (3, 32, 32) large, its nearest training images (k, 3, 32, 32) or None,
    and the batch (N, 3, 32, 32), all in [-1, 1], with ``caption`` under it. With ``leaders`` (the best and
    the next few, (m, 3, 32, 32)), a second row shows each at 4x over its ``leader_notes`` (its scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [2.2, 0.8, 3.0] if neighbours is not None else [2.2, 3.0]
    rows = 2 if leaders is not None and len(leaders) else 1
    heights = [4.6, 4.0][:rows]
    figure = plt.figure(figsize=(12, sum(heights)))
    grid = figure.add_gridspec(rows, len(columns), width_ratios=columns, height_ratios=heights)
    axes = [figure.add_subplot(grid[0, i]) for i in range(len(columns))]
    axes[0].imshow(to_unit(best).permute(1, 2, 0).numpy(), interpolation="nearest")
    axes[0].set_title("best, 8x")
    if neighbours is not None:
        axes[1].imshow(_grid(neighbours, 1), interpolation="nearest")
        axes[1].set_title("nearest\ntraining images", fontsize=9)
    axes[-1].imshow(_grid(batch, 8), interpolation="nearest")
    axes[-1].set_title(f"the kept {len(batch)}, best first")
    if rows == 2:
        row = grid[1, :].subgridspec(1, len(leaders))
        for i, image in enumerate(leaders):
            axis = figure.add_subplot(row[0, i])
            axis.imshow(to_unit(image).permute(1, 2, 0).numpy(), interpolation="nearest")
            note = leader_notes[i] if leader_notes else ""
            axis.set_title(("best" if i == 0 else f"next {i}") + (f"\n{note}" if note else ""), fontsize=8)
            axes.append(axis)
    for axis in axes:
        axis.axis("off")
    figure.text(0.5, 0.0, caption, ha="center", va="top", fontsize=9, wrap=True)
    return _figure_to_png(figure, Path(file))


def save_contact_sheet(batch: torch.Tensor, marked: list[int], what: str, file: str | Path) -> Path:
    """The batch (N, 3, 32, 32) in [-1, 1], 8 per row, each cell numbered, the ``marked`` ones framed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    figure, axis = plt.subplots(figsize=(9, 9.6))
    axis.imshow(_grid(batch, 8), interpolation="nearest")
    for i in range(len(batch)):
        row, column = divmod(i, 8)
        x, y = 2 + column * 34, 2 + row * 34
        axis.text(x + 1, y + 5, str(i), color="white", fontsize=7, bbox={"facecolor": "black", "pad": 0.5,
                                                                          "alpha": 0.6, "linewidth": 0})
        if i in marked:
            axis.add_patch(Rectangle((x - 1.5, y - 1.5), 34, 34, fill=False, edgecolor="lime", linewidth=2.5))
    axis.set_title(f"{len(marked)} of {len(batch)} marked by eye: {what} (green frames)")
    axis.axis("off")
    return _figure_to_png(figure, Path(file))


def parse_marked(marked, count: int) -> list[int]:
    """Positions from the command line (``3,17,40``, a tuple from fire, or empty) checked against ``count``."""
    if marked in ("", None):
        return []
    items = marked if isinstance(marked, (list, tuple)) else [m for m in str(marked).split(",") if m.strip()]
    try:
        numbers = [int(m) for m in items]
    except ValueError:
        raise UserError(f"--marked takes positions like 3,17,40, got {marked!r}") from None
    twice = sorted({p for p in numbers if numbers.count(p) > 1})
    if twice:
        raise UserError(f"--marked names {twice[0]} more than once: a slip for another number? give each position once")
    positions = sorted(numbers)
    wrong = [p for p in positions if not 0 <= p < count]
    if wrong:
        raise UserError(f"--marked position {wrong[0]} is outside the batch of {count} (0 to {count - 1})")
    return positions


def kept_batch(folder: Path) -> torch.Tensor:
    """(K, 3, 32, 32) uint8: the kept images of a compose output, in ``batch64.png``'s order (by rank)."""
    from safetensors.torch import load_file

    scores_file = folder / "scores.json"
    if not scores_file.exists() or not (folder / "images.safetensors").exists():
        raise UserError(f"{folder} is not a compose output (no scores.json or images.safetensors); run "
                        f"python -m latent_ops.compose first")
    scores = json.loads(scores_file.read_text())
    ranks = sorted(c["rank"] for c in scores["candidates"] if c.get("kept", c["rank"] < 64))
    return load_file(str(folder / "images.safetensors"))["images"][ranks]  # saved images are in rank order


def contact_sheet(compose: str, marked="", what: str = "wing-like shape") -> Path:
    """Write ``contact-sheet.png`` and ``marked.json`` into the compose folder ``compose``."""
    folder = Path(compose)
    images = to_float(kept_batch(folder))
    positions = parse_marked(marked, len(images))
    write_json({"what": what, "marked": positions, "count": len(positions), "of": len(images)},
               folder / "marked.json")
    return save_contact_sheet(images, positions, what, folder / "contact-sheet.png")


@dataclass
class ShowcaseConfig:
    compose: str = ""  # the compose output folder whose batch64.png was looked at (required)
    marked: str = ""  # positions (0-63, row by row) where the counted thing was seen, e.g. 3,17,40
    what: str = "wing-like shape"  # what was counted


def showcase_command(config: ShowcaseConfig) -> Path:
    """contact-sheet.png and marked.json into the compose folder, and this config as showcase-config.json."""
    if not config.compose:
        raise UserError("--compose is required: the compose output folder whose batch was looked at")
    check_writable(Path(config.compose))
    file = contact_sheet(config.compose, config.marked, config.what)
    save_config(config, Path(config.compose) / "showcase-config.json")
    return file


def main(**flags) -> None:
    """Write the numbered contact sheet of COMPOSE's batch with the --marked positions framed; every field of
    ShowcaseConfig is a flag."""
    print(f"wrote {command(ShowcaseConfig, flags, showcase_command)}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
