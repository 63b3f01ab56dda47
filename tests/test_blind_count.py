"""Blind by-eye counts: every kept image of every output on the sheets once, shuffled by the seed, marks unblinded to
the right output and batch position, and what it cannot use refused in one line without losing anything."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from autoencoder.cli import ConfigError, UserError
from latent_ops.blind_count import BlindCountConfig, blind_count, counted_digest, read_counted, shuffled_key

ROOT = Path(__file__).resolve().parent.parent


def fake_compose(folder: Path, shade: int, saved: int = 30, kept_ranks=(0, 2, 3, 5, 8, 9, 11, 20, 21, 29)) -> Path:
    """A compose output whose saved image of rank r is flat grey ``shade + r`` (so a tile tells where it came
    from); ``kept_ranks`` are kept. Candidate ids differ from ranks, as in compose."""
    folder.mkdir(parents=True)
    images = np.stack([np.full((3, 32, 32), shade + r, np.uint8) for r in range(saved)])
    save_file({"images": images}, str(folder / "images.safetensors"))
    candidates = [{"rank": r, "candidate": (7 * r) % saved, "kept": r in kept_ranks} for r in range(saved)]
    (folder / "scores.json").write_text(json.dumps({"candidates": candidates[::-1]}))
    return folder


def tile_value(sheet: Path, j: int, scale: int = 6) -> int:
    side = 32 * scale + 6
    with Image.open(sheet) as picture:
        pixels = np.array(picture)
    y, x = (j // 4) * side, (j % 4) * side
    return int(pixels[y + 20, x + 20, 0])  # under the number's label


def test_the_sheets_show_each_kept_image_once_and_the_marks_unblind_to_their_output(tmp_path):
    a, b = fake_compose(tmp_path / "a", 0), fake_compose(tmp_path / "b", 100, kept_ranks=(1, 4, 6, 7))
    out = tmp_path / "blind"
    blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out), seed=3))
    key = json.loads((out / "key.json").read_text())
    numbers = key["numbers"]
    assert sorted(map(tuple, numbers)) == [(0, p) for p in range(10)] + [(1, p) for p in range(4)]
    assert sorted(p.name for p in out.glob("sheet-*.png")) == ["sheet-0.png"]
    kept = {0: [0, 2, 3, 5, 8, 9, 11, 20, 21, 29], 1: [101, 104, 106, 107]}
    for j, (output, position) in enumerate(numbers):
        assert tile_value(out / "sheet-0.png", j) == kept[output][position]  # batch64's order, by rank
    assert numbers != [[0, p] for p in range(10)] + [[1, p] for p in range(4)]  # shuffled
    counted = read_counted(out / "counted.png", len(numbers), key["counted_digest"])  # every number's image, exactly
    assert [int(counted[n, 5, 5, 0]) for n in range(len(numbers))] == [kept[o][p] for o, p in numbers]
    assert counted_digest(counted) == key["counted_digest"] and (out / "counted.png").stat().st_size < 4000

    picks = [j for j, (output, position) in enumerate(numbers) if output == 1 or position == 2]
    message = blind_count(BlindCountConfig(out=str(out), marked=",".join(map(str, picks)), what="grey"))
    counts = json.loads((out / "counts.json").read_text())["counts"]
    assert counts[str(a)] == {"marked": 1, "of": 10, "positions": [2]}
    assert counts[str(b)] == {"marked": 4, "of": 4, "positions": [0, 1, 2, 3]}
    assert f"{a}: 1 of 10 marked (grey)" in message and f"{b}: 4 of 4 marked (grey)" in message


def test_the_shuffle_is_seeded_and_covers_everything():
    key = shuffled_key([64, 64, 3], seed=0)
    assert key == shuffled_key([64, 64, 3], seed=0) and key != shuffled_key([64, 64, 3], seed=1)
    assert sorted(key) == [(o, p) for o, n in enumerate([64, 64, 3]) for p in range(n)]


def test_what_a_blind_count_cannot_use_is_refused_and_nothing_is_lost(tmp_path):
    a, b = fake_compose(tmp_path / "a", 0), fake_compose(tmp_path / "b", 100)
    with pytest.raises(ConfigError, match="two or more different"):
        blind_count(BlindCountConfig(composes=f"{a},{a}", out=str(tmp_path / "o1")))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="is not a compose output"):
        blind_count(BlindCountConfig(composes=f"{a},{tmp_path / 'plain'}", out=str(tmp_path / "o2")))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and not a blind count's output"):
        blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    out = tmp_path / "blind"
    blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out)))
    with pytest.raises(UserError, match="outside the batch of 20"):
        blind_count(BlindCountConfig(out=str(out), marked="3,20"))
    with pytest.raises(UserError, match="holds no key.json"):
        blind_count(BlindCountConfig(out=str(tmp_path / "o3"), marked="1"))
    with pytest.raises(ConfigError, match="not both"):
        blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out), marked="1"))
    images = np.zeros((30, 3, 32, 32), np.uint8)
    save_file({"images": images}, str(b / "images.safetensors"))  # composed again since the sheets were made
    with pytest.raises(UserError, match="images changed since the sheets"):
        blind_count(BlindCountConfig(out=str(out), marked="1"))
    assert not (out / "counts.json").exists()


def test_blind_count_runs_as_a_user_runs_it(tmp_path):
    a, b = fake_compose(tmp_path / "a", 0), fake_compose(tmp_path / "b", 100)
    out = tmp_path / "blind"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "latent_ops.blind_count", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    made = run("--composes", f"{a},{b}", "--out", str(out), "--seed", "5")
    assert made.returncode == 0 and "sheet-*.png" in made.stdout, made.stderr
    numbers = json.loads((out / "key.json").read_text())["numbers"]
    first_of_b = next(j for j, (output, _) in enumerate(numbers) if output == 1)
    counted = run("--out", str(out), "--marked", str(first_of_b))
    assert counted.returncode == 0 and f"{b}: 1 of 10 marked" in counted.stdout and f"{a}: 0 of 10" in counted.stdout
    bad = run("--out", str(out), "--marked", "99")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "outside the batch of 20" in bad.stderr


def test_counted_images_that_changed_or_are_not_a_grid_of_them_are_one_line(tmp_path):
    a, b = fake_compose(tmp_path / "a", 0), fake_compose(tmp_path / "b", 100, kept_ranks=(1, 4, 6, 7))
    out = tmp_path / "blind"
    blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out), seed=3))
    digest, file = json.loads((out / "key.json").read_text())["counted_digest"], out / "counted.png"
    with pytest.raises(UserError, match="is 512x32, not the 512x64 grid of 20 counted images"):
        read_counted(file, 20, digest)
    with Image.open(file) as picture:
        pixels = np.array(picture)
    pixels[3, 40, 1] ^= 1  # one value of number 1 off by one: JPEG, a resize or an edit would do as much
    Image.fromarray(pixels).save(file)
    with pytest.raises(UserError, match="counted.png holds other images than the ones counted"):
        read_counted(file, 14, digest)
    file.write_bytes(b"not a picture")
    with pytest.raises(UserError, match="cannot be read as the counted images of a blind count"):
        read_counted(file, 14, digest)


def test_a_finished_sittings_marks_are_never_lost(tmp_path):
    a, b = fake_compose(tmp_path / "a", 0), fake_compose(tmp_path / "b", 100)
    out = tmp_path / "blind"
    blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out), seed=1))
    with pytest.raises(UserError, match="names 3 more than once"):  # 3,3 is a slip for another number
        blind_count(BlindCountConfig(out=str(out), marked="1,3,3"))
    assert not (out / "counts.json").exists()
    blind_count(BlindCountConfig(out=str(out), marked="1,3,5"))
    first = (out / "counts.json").read_text()
    key, sheets = (out / "key.json").read_text(), (out / "sheet-1.png").read_bytes()
    blind_count(BlindCountConfig(out=str(out), marked="5,1,3"))  # the same marks again: accepted as they are
    with pytest.raises(UserError, match="already holds 3 other marks; pass --replace true"):
        blind_count(BlindCountConfig(out=str(out), marked="1,3"))
    with pytest.raises(UserError, match="holds a finished sitting"):  # a new shuffle would orphan the marks
        blind_count(BlindCountConfig(composes=f"{a},{b}", out=str(out), seed=2))
    assert (out / "counts.json").read_text() == first and (out / "key.json").read_text() == key
    assert (out / "sheet-1.png").read_bytes() == sheets
    blind_count(BlindCountConfig(out=str(out), marked="1,3", replace=True))
    assert json.loads((out / "counts.json").read_text())["marked_numbers"] == [1, 3]
