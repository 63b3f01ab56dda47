"""The explorer's parts without a browser: edits, pictures, the map cache, the edit and explore commands, the
server's answers to bad requests. The page itself is tested in Chromium (test_explore_browser.py)."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from latent_ops.editing import (EditError, cells_to_hex, direction_spreads, edited_code, format_cells, format_moves,
                                hex_to_cells, parse_cells, parse_moves)
from latent_ops.pictures import MAX_BYTES, PictureError, read_picture, small_picture

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "pegasus-cifar10"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- edits -------------------------------------------------------------------------------------------------------

def test_a_move_is_its_amount_of_standard_deviations_along_the_direction():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(500, 2 * 4 * 4)).astype(np.float32) * np.linspace(0.5, 2, 32, dtype=np.float32)
    vector = rng.normal(size=32).astype(np.float32)
    vector /= np.linalg.norm(vector)
    spreads = direction_spreads({"d": vector}, codes)
    assert spreads["d"] == pytest.approx(float(np.std(codes @ vector)), rel=1e-5)
    start = codes[0]
    moved = edited_code(start, {"d": 1.5}, {}, {"d": vector}, spreads, (2, 4, 4))
    assert (moved - start) @ vector == pytest.approx(1.5 * spreads["d"], rel=1e-4)
    assert np.allclose(edited_code(start, {}, {}, {"d": vector}, spreads, (2, 4, 4)), start)


def test_painted_cells_limit_a_move_to_them():
    rng = np.random.default_rng(1)
    vector = rng.normal(size=2 * 4 * 4).astype(np.float32)
    cells = np.zeros((4, 4), dtype=bool)
    cells[0, :2] = True
    moved = edited_code(np.zeros(32, np.float32), {"d": 2.0}, {"d": cells}, {"d": vector}, {"d": 1.0}, (2, 4, 4))
    changed = moved.reshape(2, 4, 4) != 0
    assert changed[:, 0, :2].all() and not changed[:, ~cells].any()
    nothing = edited_code(np.zeros(32, np.float32), {"d": 2.0}, {"d": np.zeros((4, 4), bool)}, {"d": vector},
                          {"d": 1.0}, (2, 4, 4))
    assert not nothing.any(), "a direction with no painted cell moves nothing"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=64, max_size=64))
def test_cells_round_trip_through_hex(bits):
    cells = np.array(bits).reshape(8, 8)
    text = cells_to_hex(cells)
    assert len(text) == 16 and np.array_equal(hex_to_cells(text, (8, 8)), cells)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["wings", "white", "wings_flight"]),
                       st.floats(-10, 10, allow_nan=False).filter(lambda v: v != 0), max_size=3))
def test_moves_round_trip_exactly_through_text(moves):
    assert parse_moves(format_moves(moves)) == moves


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=40))
def test_any_moves_text_parses_or_names_what_is_wrong(text):
    try:
        moves = parse_moves(text)
    except EditError as error:
        assert "--moves" in str(error)
    else:
        assert all(abs(v) <= 10 for v in moves.values())


@pytest.mark.parametrize("text, words", [("wings", "NAME=AMOUNT"), ("wings=abc", "not a number"),
                                         ("wings=nan", "within"), ("wings=1e9", "within"),
                                         ("wings=1,wings=2", "twice"), ("wing=1", "not a direction")])
def test_bad_moves_are_named(text, words):
    with pytest.raises(EditError, match=words):
        parse_moves(text, known=["wings", "white"])


@pytest.mark.parametrize("text", ["wings=ff", "wings=zz00000000000000", "wings=1ff00000000000000"])
def test_bad_cells_are_named(text):
    with pytest.raises(EditError, match="hex digits"):
        parse_cells(text, (8, 8), ["wings"])


def test_cells_text_round_trips():
    cells = {"wings": np.eye(8, dtype=bool)}
    back = parse_cells(format_cells(cells), (8, 8), ["wings"])
    assert np.array_equal(back["wings"], cells["wings"])


# --- pictures --------------------------------------------------------------------------------------------------------

def test_a_picture_of_any_size_is_centre_cropped_to_32():
    pixels = np.zeros((90, 300, 3), np.uint8)
    pixels[:, 105:195] = 255  # the centre square is white, the sides black
    small = small_picture(read_picture(png(pixels)))
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert small.min() > 240, "only the centre square is kept"
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG")
    assert small_picture(read_picture(jpeg.getvalue())).shape == (32, 32, 3)


def test_a_text_file_is_not_a_picture():
    with pytest.raises(PictureError, match="notes.png is not a PNG or JPEG picture"):
        read_picture(b"just some text, named like a picture\n" * 10, "notes.png")


def test_a_truncated_picture_is_refused():
    data = png(np.full((64, 64, 3), 100, np.uint8))
    with pytest.raises(PictureError, match="damaged|not a PNG"):
        read_picture(data[:len(data) // 2], "half.png")


def test_too_many_bytes_are_refused_before_reading():
    with pytest.raises(PictureError, match="MiB"):
        read_picture(b"\0" * (MAX_BYTES + 1), "big.png")


def test_a_decompression_bomb_is_refused():
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 megapixels in a small file
    assert len(buffer.getvalue()) < MAX_BYTES
    with pytest.raises(PictureError, match="megapixels|bomb"):
        read_picture(buffer.getvalue(), "bomb.png")


# --- the commands as a user runs them -----------------------------------------------------------------------------

def run(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_edit_command_writes_an_edit_and_its_command_writes_it_again(tmp_path):
    out = tmp_path / "edit"
    done = run("-m", "latent_ops.edit", "--run", str(SHIPPED), "--start", "test:7", "--moves", "wings=1.5,white=-1",
               "--cells", "wings=ffff000000000000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["moves"] == {"wings": 1.5, "white": -1.0} and recipe["cells"] == "wings=ffff000000000000"
    with Image.open(out / "image-8x.png") as big:
        assert big.size == (256, 256)
    with np.load(out / "code.npz", allow_pickle=False) as saved:
        assert not np.allclose(saved["start"], saved["code"])
    again = recipe["command"].split()
    again[again.index("--out") + 1] = str(tmp_path / "again")
    assert run(*again[1:]).returncode == 0
    assert (tmp_path / "again" / "image.png").read_bytes() == (out / "image.png").read_bytes()


@pytest.mark.parametrize("args, words", [
    (["--start", "test:99999"], "test:0 to test:9999"),
    (["--start", "test:1", "--moves", "wing=1"], "not a direction"),
    (["--start", "nothing.png"], "no such picture"),
    (["--start", "somewhere"], "give test:ROW"),
    (["--start", "test:1", "--cells", "wings=12"], "hex digits"),
])
def test_edit_command_errors_are_one_line(tmp_path, args, words):
    done = run("-m", "latent_ops.edit", "--run", str(SHIPPED), "--out", str(tmp_path / "e"), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr
    assert not (tmp_path / "e" / "image.png").exists()


def test_the_next_free_port_is_taken_when_the_first_is_busy():
    from latent_ops.explore.__main__ import bind

    first = bind("127.0.0.1", 0)
    assert first.proto == socket.IPPROTO_TCP, "asyncio sets TCP_NODELAY on connections of an IPPROTO_TCP socket only"
    assert first.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    busy = first.getsockname()[1]
    try:
        second = bind("127.0.0.1", busy)
        assert second.getsockname()[1] > busy
        second.close()
    finally:
        first.close()


@pytest.fixture(scope="module")
def small_map(tmp_path_factory):
    """The shipped model's map of 400 codes, made by the export command in a fresh cache folder."""
    root = tmp_path_factory.mktemp("explore")
    file = root / "map.html"
    done = run("-m", "latent_ops.explore", "--run", str(SHIPPED), "--points", "400", "--cache_dir",
               str(root / "cache"), "--export", str(file), "--data", str(root / "no-data"))
    assert done.returncode == 0, done.stderr
    return root, file, done


def test_export_is_one_self_contained_file(small_map):
    root, file, done = small_map
    text = file.read_text()
    assert "400 codes with thumbnails" in done.stdout
    assert 'src="http' not in text and "<link" not in text and "/static/" not in text, "nothing from elsewhere"
    assert text.count("data:image/png;base64,") == 1 and "class LatentMap" in text
    points = json.loads(text.split("const POINTS = ", 1)[1].split(";\n", 1)[0])
    assert len(points["x"]) == 400 and all(0 <= v <= 1 for v in points["x"] + points["y"])


def test_the_map_is_cached_by_its_inputs_outside_the_model(small_map):
    from latent_ops.editor import Editor
    from latent_ops.explore.map_cache import open_map

    root, _, _ = small_map
    folders = list((root / "cache" / "explore").iterdir())
    assert len(folders) == 1 and {p.suffix for p in folders[0].iterdir()} == {".npz", ".png", ".json"}
    assert not (SHIPPED / "atlas").exists() and not (SHIPPED / "explore").exists()
    editor = Editor(SHIPPED, str(root / "no-data"), str(root / "cache"))
    again = open_map(editor, root / "cache", points=400)
    assert again.reused and len(again.rows) == 400
    (folders[0] / "map.npz").write_bytes(b"not an npz")  # a damaged cache is made again, never trusted
    remade = open_map(editor, root / "cache", points=400, say=lambda line: None)
    assert not remade.reused and np.allclose(remade.embedding, again.embedding, atol=1e-4)


def test_explore_refuses_bad_flags_in_one_line(tmp_path):
    for args, words in [(["--kept", "80"], "--kept"), (["--export", str(tmp_path / "map.txt")], ".html"),
                        (["--port", "70000"], "--port"), (["--host", "203.0.113.9"], "--host")]:
        done = run("-m", "latent_ops.explore", "--run", str(SHIPPED), "--cache_dir", str(tmp_path / "c"), *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, (args, done.stderr)


# --- the server's answers to bad requests ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(small_map):
    from starlette.testclient import TestClient

    from latent_ops.explore.__main__ import ExploreConfig, open_explorer
    from latent_ops.explore.server import make_app

    root, _, _ = small_map
    config = ExploreConfig(run=str(SHIPPED), points=400, cache_dir=str(root / "cache"), data=str(root / "no-data"),
                           out=str(root / "saved"))
    with TestClient(make_app(open_explorer(config, say=lambda line: None))) as test_client:
        yield test_client


def test_the_server_refuses_hostile_requests_and_keeps_running(client):
    assert client.post("/api/upload", content=b"%PDF-1.4 not a picture", headers={"X-File-Name": "a.png"}
                       ).json()["error"].startswith("a.png is not a PNG or JPEG")
    big = client.post("/api/upload", content=b"\0" * (MAX_BYTES + 10), headers={"X-File-Name": "big.jpg"})
    assert big.status_code == 400 and "MiB" in big.json()["error"]
    assert client.post("/api/render", content=b"{not json").status_code == 400
    assert "not a direction" in client.post("/api/render", json={"start": {"kind": "bank", "row": 0},
                                                                  "moves": {"../etc": 1}}).json()["error"]
    assert "whole number" in client.post("/api/render", json={"start": {"kind": "bank", "row": "x"}}).json()["error"]
    assert client.get("/api/sprites/99.png").status_code == 404
    assert client.get("/static/../__main__.py").status_code == 404
    ok = client.post("/api/render", json={"start": {"kind": "bank", "row": 3}, "moves": {"wings": 1}})
    assert ok.status_code == 200 and ok.json()["image"].startswith("data:image/png;base64,")
    for start, words in [(["horse"], "start must be the name of a class or cluster"),
                         ("x" * 5000, "start must be the name of a class or cluster"),
                         ("pegasus", "--start pegasus is a learned concept, which has no pictures"),
                         ("unicorn", "--start unicorn is not a class or cluster of this run")]:
        refused = client.post("/api/compose", json={"expression": "pegasus", "seed": 0, "start": start})
        assert refused.status_code == 400 and words in refused.json()["error"], refused.json()
    assert client.get("/api/state").status_code == 200  # still answering


def test_a_compose_whose_draws_push_apart_says_so_in_its_command_and_refuses_what_it_cannot_push(client):
    import shlex
    import time

    for request, words in [({"apart": "yes"}, "apart must be true or false"),
                           ({"apart": 1}, "apart must be true or false"),
                           ({"expression": "horse+wings", "apart": True},
                            "--repel 1.0 pushes draws from the prior apart, but 'horse+wings' draws none")]:
        refused = client.post("/api/compose", json={"expression": "pegasus", "seed": 0, **request})
        assert refused.status_code == 400 and words in refused.json()["error"], refused.json()

    def finished(job: dict) -> dict:
        for _ in range(600):
            job = client.get(f"/api/compose/{job['id']}").json()
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"compose {job['id']} did not finish")

    job = client.post("/api/compose", json={"expression": "pegasus", "seed": 3, "apart": True}).json()
    command = shlex.split(job["command"])
    assert job["apart"] is True and command[command.index("--repel") + 1] == "1"
    assert command[command.index("--repel_toward") + 1] == "0"  # unguarded, as make pegasus-diverse
    assert command[command.index("--guidance") + 1] == "2.25"  # as make pegasus-diverse, not the recipe's
    job = finished(job)
    assert job["state"] == "done" and len(job["results"]) == 16, job["error"]
    plain = client.post("/api/compose", json={"expression": "pegasus", "seed": 3}).json()
    plain_command = shlex.split(plain["command"])  # the recipe's own push, guided up the judge of marks
    assert plain["apart"] is False and plain_command[plain_command.index("--repel_reading") + 1] == "class+marks"
    recipe_guidance = json.loads((SHIPPED / "compose.json").read_text())["guidance"]
    assert float(plain_command[plain_command.index("--guidance") + 1]) == recipe_guidance
    plain = finished(plain)
    assert plain["state"] == "done"
    # each tile says why it stands where it does: through every gate first, then the rest, each by score
    places = [0 if r["passed_gates"] else 1 for r in plain["results"]]
    assert places == sorted(places) and places[0] == 0 and [r["rank"] for r in plain["results"]] == sorted(
        r["rank"] for r in plain["results"])
    for place in (0, 1):
        scores = [r["combined"] for r, p in zip(plain["results"], places) if p == place]
        assert scores == sorted(scores, reverse=True)
    pushed = [r["image"] for r in job["results"]]
    assert pushed != [r["image"] for r in finished(plain)["results"]]  # the same seed, other pictures


def test_saving_never_replaces_a_folder(client, small_map):
    root, _, _ = small_map
    request = {"start": {"kind": "bank", "row": 5}, "moves": {"white": 1.0}}
    first, second = client.post("/api/save", json=request).json(), client.post("/api/save", json=request).json()
    assert first["folder"] != second["folder"]
    assert Path(first["folder"]).parent == root / "saved"
    assert (Path(first["folder"]) / "image.png").read_bytes() == (Path(second["folder"]) / "image.png").read_bytes()
    assert {"image.png", "image-8x.png", "code.npz", "recipe.json"} <= set(first["files"])


@pytest.mark.parametrize("module, flag", [("latent_ops.explore", "--export"), ("latent_ops.edit", "--moves")])
def test_help_prints_the_usage_and_every_flag(module, flag):
    done = run("-m", module, "--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith(f"usage: python -m {module}") and flag in done.stdout
