"""Blind by-eye counts: the kept images of several compose outputs shuffled together into numbered sheets, so
whoever counts cannot tell which recipe made an image; then the marked numbers are unblinded into a count per output.

A by-eye count of one recipe against another is only fair when the counter does not know which image came from
which (blinding, as in trials: Schulz and Grimes 2002, "Blinding in randomised trials: hiding who got what",
The Lancet 359). Counted unblinded, a recipe the counter hopes for gains: on this project's white Pegasi a stricter
rise gate looked better at 6x when its batch was looked at alone and counted 15 of 64 against the shipped recipe's
24 when the two were shuffled together (docs/regions.md).

    python -m latent_ops.blind_count --composes outputs/compose/a,outputs/compose/b --out outputs/blind/ab
    # look at outputs/blind/ab/sheet-*.png and note the numbers where you see what you count, then
    python -m latent_ops.blind_count --out outputs/blind/ab --marked 3,17,40 --what "a pale wing above the back"

The first call writes ``sheet-K.png`` (16 images a sheet, each enlarged ``--scale`` times and numbered), ``key.json``
(which output and which kept position, in ``batch64.png``'s order, each number shows, and a digest of each output's
images), ``counted.png`` and ``config.json``. ``counted.png`` holds every counted image once, at 1x and losslessly,
number N as the N-th tile of 16 a row, with its digest in the key. A sitting kept with it is a set of marked pictures
on any machine, where a compose remade on another CPU gives other pictures; the judge of marks
(``latent_ops.learn_marks``) reads it in their place. The second call writes ``counts.json``: per output, how many of
its kept images were marked, and their positions in its ``batch64.png`` (what ``python -m latent_ops.showcase
--marked`` takes). It refuses when an output's images changed since the sheets were made.

A finished sitting's marks are never lost: making the sheets again in a folder that holds ``counts.json`` is refused
(the new shuffle would orphan them), and so is unblinding other marks over it, unless ``--replace true`` says that the
marks before were a slip (the same marks again are accepted as they are).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoencoder.atomic import replace_atomically, write_json
from autoencoder.cli import ConfigError, UserError, check_ranges, claim_output, command, read_json
from latent_ops.showcase import kept_batch, parse_marked

KEY_FILE, COUNTS_FILE, COUNTED_FILE = "key.json", "counts.json", "counted.png"
MAX_SHEETS = 64  # 16 outputs of 64 kept images at 16 a sheet
OWN_FILES = {KEY_FILE, COUNTS_FILE, COUNTED_FILE} | {f"sheet-{k}.png" for k in range(MAX_SHEETS)}
PER_SHEET = 16  # 4 x 4: large enough to judge at 6x, few enough to hold in mind
PER_ROW = 16  # tiles a row of counted.png


@dataclass
class BlindCountConfig:
    composes: str = ""  # compose output folders, comma-separated: make the sheets (leave --marked out)
    out: str = ""  # the blind count's folder (required)
    marked: str = ""  # the numbers marked on the sheets, e.g. 3,17,40: unblind them (leave --composes out)
    what: str = "a winged horse"  # what was counted, recorded beside the counts
    seed: int = 0  # the shuffle
    scale: int = 6  # each image enlarged this many times (nearest neighbour)
    replace: bool = False  # unblind other marks over this folder's counts.json (the marks before are lost)


BLIND_RANGES = {"seed": (0, 2 ** 32 - 1), "scale": (1, 16)}


def folder_list(composes) -> list[Path]:
    """Folders from the command line (``a,b``, or a tuple from fire)."""
    items = composes if isinstance(composes, (list, tuple)) else str(composes).split(",")
    return [Path(str(f).strip()) for f in items if str(f).strip()]


def images_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "images.safetensors").read_bytes()).hexdigest()[:16]


def kept_images(folder: Path) -> np.ndarray:
    """(K, 32, 32, 3) uint8: the kept images of a compose output, in ``batch64.png``'s order."""
    return kept_batch(folder).permute(0, 2, 3, 1).numpy()


def counted_digest(images: np.ndarray) -> str:
    """A digest of the counted images (N, 32, 32, 3) uint8, in the order of their numbers."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()[:16]


def save_counted(images: np.ndarray, file: Path) -> Path:
    """The counted images (N, 32, 32, 3) uint8 as one lossless PNG, PER_ROW tiles a row (the last row padded black)."""
    from PIL import Image

    rows = -(-len(images) // PER_ROW)
    grid = np.zeros((rows * PER_ROW, 32, 32, 3), np.uint8)
    grid[:len(images)] = images
    grid = grid.reshape(rows, PER_ROW, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 32, PER_ROW * 32, 3)
    return replace_atomically(lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"), file)


def read_counted(file: Path, count: int, digest: str) -> np.ndarray:
    """The ``count`` images of a sitting's counted.png, checked against the digest its key recorded, else one line."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as picture:
            grid = np.array(picture.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"{file} cannot be read as the counted images of a blind count ({error}); take it again from "
                        f"the sitting's folder, or drop the sitting's \"images\" to remake its outputs") from None
    rows = -(-count // PER_ROW)
    if grid.shape != (rows * 32, PER_ROW * 32, 3):
        raise UserError(f"{file} is {grid.shape[1]}x{grid.shape[0]}, not the {PER_ROW * 32}x{rows * 32} grid of "
                        f"{count} counted images its key lists; take it again from the sitting's folder")
    images = grid.reshape(rows, 32, PER_ROW, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3)[:count]
    if counted_digest(images) != digest:
        raise UserError(f"{file} holds other images than the ones counted (digest {counted_digest(images)}, counted "
                        f"{digest or 'none recorded'}), so the marks would describe other pictures; take it again "
                        f"from the sitting's folder")
    return images


def shuffled_key(counts: list[int], seed: int) -> list[tuple[int, int]]:
    """(output, kept position) for each number on the sheets: every kept image of every output once, shuffled."""
    key = [(output, position) for output, count in enumerate(counts) for position in range(count)]
    order = np.random.default_rng(seed).permutation(len(key))
    return [key[i] for i in order]


def save_sheet(tiles: list[np.ndarray], first: int, scale: int, file: Path) -> Path:
    """Up to PER_SHEET images (32, 32, 3) on a 4 x 4 sheet, each ``scale`` times, numbered from ``first``."""
    from PIL import Image, ImageDraw

    side, gap = 32 * scale, 6
    sheet = Image.new("RGB", (4 * (side + gap), 4 * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, tile in enumerate(tiles):
        y, x = (j // 4) * (side + gap), (j % 4) * (side + gap)
        sheet.paste(Image.fromarray(tile).resize((side, side), Image.NEAREST), (x, y))
        draw.rectangle((x, y, x + 26, y + 14), fill="black")
        draw.text((x + 2, y + 2), str(first + j), fill="white")
    return replace_atomically(lambda tmp: sheet.save(tmp, format="PNG"), file)


def make_sheets(config: BlindCountConfig) -> Path:
    folders = folder_list(config.composes)
    if len(folders) < 2 or len(set(folders)) < len(folders):
        raise ConfigError(f"--composes needs two or more different compose outputs to hide among each other, got "
                          f"{len(set(folders))}; e.g. --composes outputs/compose/a,outputs/compose/b")
    if (Path(config.out) / COUNTS_FILE).exists():
        raise UserError(f"{config.out} holds a finished sitting ({COUNTS_FILE}); new sheets would lose its marks: "
                        f"pass a new --out")
    batches = [kept_images(f) for f in folders]
    key = shuffled_key([len(b) for b in batches], config.seed)
    if len(key) > MAX_SHEETS * PER_SHEET:
        raise ConfigError(f"{len(key)} images would take more than {MAX_SHEETS} sheets; count fewer outputs at once")
    out = claim_output(config.out, OWN_FILES, "a blind count's", config)
    for name in OWN_FILES - {"config.json"}:  # the sheets of an earlier making in this folder (never its counts)
        (out / name).unlink(missing_ok=True)
    for first in range(0, len(key), PER_SHEET):
        tiles = [batches[o][p] for o, p in key[first:first + PER_SHEET]]
        save_sheet(tiles, first, config.scale, out / f"sheet-{first // PER_SHEET}.png")
    counted = np.stack([batches[o][p] for o, p in key])
    save_counted(counted, out / COUNTED_FILE)
    write_json({"composes": [str(f) for f in folders], "images_digests": [images_digest(f) for f in folders],
                "kept": [len(b) for b in batches], "seed": config.seed, "counted_digest": counted_digest(counted),
                "numbers": [[o, p] for o, p in key]}, out / KEY_FILE)
    return out


def unblind(config: BlindCountConfig) -> dict:
    """Per output: how many of its kept images were marked, and their positions in its batch64.png."""
    out = Path(config.out)
    if not (out / KEY_FILE).exists():
        raise UserError(f"{out} holds no {KEY_FILE}: make the sheets first, with --composes A,B --out {out}")
    key = read_json(out / KEY_FILE, "blind count key")
    numbers = key["numbers"]
    marked = parse_marked(config.marked, len(numbers))
    for folder, digest in zip(key["composes"], key["images_digests"]):
        if (Path(folder) / "images.safetensors").exists() and images_digest(Path(folder)) != digest:
            raise UserError(f"{folder}'s images changed since the sheets in {out} were made, so the marks no longer "
                            f"say what they show; make the sheets again")
    earlier = out / COUNTS_FILE
    if earlier.exists() and not config.replace:
        before = read_json(earlier, "blind counts").get("marked_numbers")
        if before != marked:
            raise UserError(f"{earlier} already holds {len(before or [])} other marks; pass --replace true to replace "
                            f"them, or copy the folder first")
    counts = {}
    for index, folder in enumerate(key["composes"]):
        positions = sorted(p for o, p in (numbers[m] for m in marked) if o == index)
        counts[folder] = {"marked": len(positions), "of": key["kept"][index], "positions": positions}
    claim_output(out, OWN_FILES, "a blind count's")
    write_json({"what": config.what, "marked_numbers": marked, "counts": counts}, out / COUNTS_FILE)
    return counts


def blind_count(config: BlindCountConfig) -> str:
    check_ranges(config, BLIND_RANGES)
    if not config.out:
        raise ConfigError("--out is required: the folder the sheets go to, and whose key unblinds the marks")
    if config.composes and config.marked:
        raise ConfigError("give --composes to make the sheets, or --marked to unblind them, not both")
    if config.composes:
        out = make_sheets(config)
        return f"look at {out}/sheet-*.png, note the numbers that show {config.what}, then unblind them with " \
               f"python -m latent_ops.blind_count --out {out} --marked N,N,..."
    if not config.marked:
        raise ConfigError("nothing to do: give --composes A,B to make the sheets, or --marked N,N,... to unblind")
    counts = unblind(config)
    return "\n".join(f"{folder}: {c['marked']} of {c['of']} marked ({config.what})" for folder, c in counts.items())


def main(**flags) -> None:
    """Make blind sheets of several compose outputs' kept images (--composes), or unblind marks (--marked); every
    field of BlindCountConfig is a flag."""
    print(command(BlindCountConfig, flags, blind_count))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
