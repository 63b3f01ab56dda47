"""What compose writes: the figures, scores.json and images.safetensors of one compose, built in a temporary
folder and put in place whole, and the lines it prints.

Example: see ``latent_ops.compose`` (``write_outputs`` is its last stage).
"""
from __future__ import annotations

from pathlib import Path

import torch

from autoencoder.atomic import save_tensors, write_json
from autoencoder.cli import save_config
from autoencoder.data import to_float, to_uint8
from autoencoder.grids import save_grid, save_single
from latent_ops.images import save_region, save_region_grid
from latent_ops.best_choice import SHOWN_BEST
from latent_ops.showcase import save_showcase

IMAGES_FILE = "images.safetensors"  # the best images, uint8 (k, 3, 32, 32), best first
OUTPUT_FILES = {"best.png", "best_x8.png", "batch64.png", "neighbours.png", "refinement.png", "region.png",
                "regions64.png", "showcase.png", "scores.json", "config.json", IMAGES_FILE}
BY_EYE_FILES = ("marked.json", "contact-sheet.png", "showcase-config.json")  # a person's marks of the images (latent_ops.showcase)


def cell_pictures(cells: torch.Tensor, side: int = 32) -> torch.Tensor:
    """(N, 3, side, side) in [-1, 1]: each (rows, cols) bool cell mask, white where set, black elsewhere."""
    pictures = torch.nn.functional.interpolate(cells[:, None].float(), size=(side, side), mode="nearest")
    return pictures.expand(-1, 3, -1, -1) * 2 - 1


def showcase_caption(expression: str, seed: int, best: dict, summary: dict, kept: int) -> str:
    """The showcase's caption: what was composed, the best image's scores, and what was kept."""
    terms = ", ".join(f"{k} {v:.2f}" for k, v in best["intent_terms"].items())
    unique = (f", nearest training image {best['uniqueness']:.3f} away (RMS pixels; real test images: "
              f"{summary['uniqueness_reference']:.3f})" if "uniqueness" in best else
              "; uniqueness not measured (no CIFAR-10 given)")
    return (f"{expression}, seed {seed}: {summary['candidates_composed']} composed, {kept} kept. "
            f"Best: critic realism {best['realism']:.2f}, intent {best['intent']:.2f} ({terms}){unique}.")


def leader_note(row: dict) -> str:
    """One of the best four's scores, for the showcase: critic realism (and the rising mass and the regional reading
    when taken), then a line per intent term: the evaluator's reading, and the perceptual net's beside it when taken. A line per term
    keeps the note narrow enough not to run into its neighbour's with three terms or more."""
    second = row.get("second_reading", {})
    head = f"realism {row['realism']:.2f}"
    if second:
        head += f"\nrise {row['rise']:.2f}, regional {row['regional_reading']:.2f}\nevaluator | perceptual"
    lines = [f"{k} {v:.2f}" + (f" | {second[k]:.2f}" if k in second else "") for k, v in row["intent_terms"].items()]
    return "\n".join([head, *lines])


def refinement_rows(kept, cells: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """refinement.png's rows: kept images before and after refinement, their region cells, the projection strip."""
    count = len(kept.shown)
    rows = [torch.cat([kept.before[i:i + 8], kept.after[i:i + 8]]) for i in range(0, min(16, count), 8)]
    if cells is not None:  # the first eight kept images' region cells, white on black
        rows.append(cell_pictures(cells[kept.shown[:8]]))
    if kept.strip is not None:
        rows.append(kept.strip)
    return torch.cat(rows), min(8, count) if kept.strip is None else 8


def write_outputs(folder: Path, config, kept, scored, reference, summary: dict, cells: torch.Tensor | None,
                  stamp=None) -> None:
    """Every file of one compose into ``folder`` (a temporary folder that is then put in place whole);
    ``stamp(summary)`` is called just before scores.json, the last file, is written (its timings)."""
    best_image = kept.ranked[0]
    save_config(config, folder / "config.json")
    save_single(best_image, folder / "best.png")
    save_single(best_image, folder / "best_x8.png", scale=8)
    save_grid(kept.after, folder / "batch64.png", nrow=8, scale=3)
    save_tensors({"images": to_uint8(kept.ranked).contiguous()}, folder / IMAGES_FILE)
    rows, per_row = refinement_rows(kept, cells)
    save_grid(rows, folder / "refinement.png", nrow=per_row, scale=3)
    if cells is not None:
        save_region(best_image, cells[scored.order[0]], folder / "region.png")
        save_region_grid(kept.after, cells[kept.shown], folder / "regions64.png")
    nearest = None
    if reference.distance is not None:
        neighbours = scored.found["neighbours"]
        rows = [torch.cat([kept.ranked[r:r + 1], to_float(reference.train_images[neighbours[i]])])
                for r, i in enumerate(scored.order[:8].tolist())]
        save_grid(torch.cat(rows), folder / "neighbours.png", nrow=4, scale=3)
        nearest = to_float(reference.train_images[neighbours[scored.order[0]]])
    caption = showcase_caption(config.expression, config.seed, summary["candidates"][0], summary, len(kept.shown))
    leaders = kept.ranked[:SHOWN_BEST]
    notes = [leader_note(row) for row in summary["candidates"][:len(leaders)]]
    save_showcase(best_image, nearest, kept.after, caption, folder / "showcase.png", leaders, notes)
    if stamp is not None:
        stamp(summary)
    write_json(summary, folder / "scores.json")


def guard_words(guard: dict) -> str:
    """What the guard of --repel climbs (``scores.json``'s ``repel_guard``), in words."""
    if guard["reading"] == "class+marks":
        return f"judge of marks and {guard.get('class_weight', 1):g} x the perceptual net's reading"
    return {"class": "perceptual net's reading", "marks": "judge of marks"}.get(guard["reading"], guard["reading"])


def print_summary(config, summary: dict, out: Path) -> None:
    """What a compose found, in five lines."""
    best, pool, gate = summary["candidates"][0], summary["pool"], config.rank_gate
    print(f"{config.expression}: {summary['candidates_composed']} candidates in {summary['seconds']:.1f} s -> {out}/")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["stage_seconds"].items())
          + f" ({summary['precision']}; prior: {summary['solver']}, {summary['prior_steps']} steps"
          + (f", away from {summary['negative']}" if summary.get("negative") else "")
          + (f", draws pushed apart x{summary['repel'][0]:g} until t {summary['repel'][1]:g}"
             if summary.get("repel", [0])[0] else "")
          + (f" and up the {guard_words(summary['repel_guard'])} x{summary['repel_guard']['toward']:g}"
             if (summary.get("repel_guard") or {}).get("toward") else "")
          + f"; {summary['refined']} refined)")
    print(f"  critic mean of the refined {summary['critic_mean_before']:.3f} -> {summary['critic_mean_after']:.3f} "
          f"after {config.refine_steps} steps; diversity of the kept {summary['kept']['count']} "
          f"{summary['diversity_before']:.3f} -> {summary['diversity_after']:.3f} (mean pairwise RMS pixel distance)")
    if "share_every_intent_term_at_least_gate" in pool:
        print(f"  whole pool: {pool['share_every_intent_term_at_least_gate']:.0%} have every intent term >= {gate:g} "
              f"(" + ", ".join(f"{k} {v:.2f}" for k, v in pool["intent_terms"].items()) + " on average)")
    print(f"  best: realism {best['realism']:.3f}, intent {best['intent']:.3f} ("
          + ", ".join(f"{k} {v:.2f}" for k, v in best["intent_terms"].items()) + ")"
          + (f", uniqueness {best['uniqueness']:.3f}" if "uniqueness" in best else ""))
    if "start_distance_median" in summary["kept"]:
        print(f"  started from held-out {config.start} pictures: the kept lie "
              f"{summary['kept']['start_distance_median']:.3f} from them (median RMS; the best "
              f"{best['start_distance']:.3f})")
    if summary.get("data_matches_run") is False:
        print(f"  note: uniqueness was measured against --data {config.data}, not the data the run was trained on")
    print(f"  look at {out / 'showcase.png'} (best x8, its neighbours, the kept batch); scores in {out / 'scores.json'}")
