"""The latent atlas on the tiny smoke run, and both notebooks executed end to end against it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from autoencoder.cli import ConfigError
from latent_ops.atlas import build_atlas, cluster_outline, fit_or_load
from latent_ops.atlas import main as atlas_main
from latent_ops.encode import load_bank
from latent_ops.run_concepts import ensure_concepts

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL = dict(neighbours=5, cells=8, path_codes=4, strengths="0,1,2")


@pytest.fixture(scope="module")
def atlas_run(smoke_run, folder_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("atlas") / "run"
    shutil.copytree(smoke_run, run)
    ensure_concepts(run, str(folder_data), str(smoke_run.parent / "cache"))
    return run


def test_atlas_writes_every_figure_and_reuses_its_cache(atlas_run, folder_data, smoke_run, tmp_path):
    cache = str(smoke_run.parent / "cache")
    args = dict(run=str(atlas_run), data=str(folder_data), cache_dir=cache, quiet=True, **SMALL)
    first = build_atlas(out=str(tmp_path / "a"), **args)
    assert not first["reused_cache"] and first["codes"] == 24
    for name in ("class-map.png", "mosaic.png", "compose-path.png", "wing-direction.png", "wing-strip.png"):
        with Image.open(tmp_path / "a" / name) as image:
            assert min(image.size) > 100, name
    with Image.open(tmp_path / "a" / "mosaic.png") as image:
        assert image.size == (8 * 32, 8 * 32)  # 8 x 8 cells of 32 pixels
    with Image.open(tmp_path / "a" / "wing-strip.png") as image:
        assert image.size == (3 * (3 * 34 + 2), 3 * (4 * 34 + 2))  # a column per strength, a row per horse
    assert set(first["path"]["landing"]) == {"0", "1", "2"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["neighbours"] == 5
    assert set(first["cluster_centres"]) <= {"horse:0", "horse:1", "horse:2", "bird:0", "bird:1", "bird:2"}
    assert [f.suffix for f in (Path(cache) / "atlas").glob(f"{atlas_run.name}-*")] == [".npz"], \
        "only a plain npz is cached"
    assert not (atlas_run / "atlas").exists(), "the cache is never written into the run's folder"
    second = build_atlas(out=str(tmp_path / "b"), **args)
    assert second["reused_cache"]
    bank = load_bank(atlas_run)
    a = fit_or_load(atlas_run, bank, neighbours=5, cache_dir=cache)
    assert a.reused and a.embedding.shape == (24, 2)
    assert json.loads((tmp_path / "b" / "atlas.json").read_text())["path"] == first["path"]


def test_a_planted_pickle_in_a_run_folder_is_never_loaded(atlas_run, folder_data, smoke_run, tmp_path):
    """Files a run folder may hold are planted as pickles that would leave a mark; no command runs one."""
    import pickle

    run = tmp_path / "shared-run"
    shutil.copytree(atlas_run, run)
    mark = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (mark, "code ran"))

    payload = pickle.dumps(Payload())
    cache = str(smoke_run.parent / "cache")
    build_atlas(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "first"), quiet=True,
                **SMALL)
    folder = Path(cache) / "atlas"
    stems = [f.stem for f in folder.glob("shared-run-umap-*.npz")]
    assert stems
    import hashlib

    for stem in stems:  # a reducer pickle beside the cache, its hash recorded as the old atlas checked it
        (folder / f"{stem}.joblib").write_bytes(payload)
        with np.load(folder / f"{stem}.npz") as saved:
            rows, embedding = saved["rows"], saved["embedding"]
        np.savez(folder / f"{stem}.npz", rows=rows, embedding=embedding,
                 model_sha256=np.array(hashlib.sha256(payload).hexdigest()))
    (run / "concepts.npz").write_bytes(payload)
    (run / "train_state.pt").write_bytes(payload)
    (run / "checkpoints" / "step_00000060" / "train_state.pt").write_bytes(payload)
    build_atlas(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "atlas"), quiet=True,
                **SMALL)
    from latent_ops.compose import compose

    compose("horse+wings", run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "c"), n=2,
            quiet=True)
    from autoencoder.train import main as train_main

    with pytest.raises(SystemExit):  # a planted training state is refused by weights_only, not run
        train_main(resume=True, out=str(run), steps=61, data=str(folder_data), cache_dir=cache)
    assert not mark.exists(), "a planted pickle was executed"


def test_codes_are_placed_among_their_nearest_mapped_codes():
    from latent_ops.atlas import Atlas, landing

    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))]).astype(np.float32)
    embedding = np.concatenate([rng.normal(-10, 0.5, (20, 2)), rng.normal(10, 0.5, (20, 2))]).astype(np.float32)
    labels = np.repeat([2, 7], 20)
    atlas = Atlas(embedding, np.arange(40), labels, "test", codes, 5, False, 0.0)
    placed = atlas.transform(np.array([[0, 0, 0, 0], [5, 5, 5, 5]], dtype=np.float32))
    assert np.allclose(placed[0], -10, atol=1) and np.allclose(placed[1], 10, atol=1)
    assert np.allclose(atlas.transform(codes[:3]), embedding[:3], atol=1.5)  # a mapped code lands near itself
    assert landing(atlas, placed[:1], k=5) == {"bird": 1.0, "horse": 0.0}
    assert landing(atlas, placed[1:], k=5) == {"bird": 0.0, "horse": 1.0}


def test_outline_and_landing_helpers():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 2))
    outline = cluster_outline(points)
    assert np.array_equal(outline[0], outline[-1]) and len(outline) > 4
    assert np.abs(outline).max() < np.abs(points).max()  # the outliers lie outside the central 80%


def test_bad_atlas_input_is_one_clear_error(atlas_run, folder_data, smoke_run, tmp_path, capsys):
    bank = load_bank(atlas_run)
    with pytest.raises(ConfigError, match="--split"):
        fit_or_load(atlas_run, bank, split="validation")
    with pytest.raises(ConfigError, match="needs more"):
        fit_or_load(atlas_run, bank, classes="horse", neighbours=15)
    with pytest.raises(SystemExit):
        atlas_main(run=str(atlas_run), data=str(folder_data), expression="horse+bird", neighbours=5, path_codes=2,
                   cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "atlas"))
    assert "a path needs a class or cluster and a direction" in capsys.readouterr().err
    assert not (tmp_path / "atlas").exists()


@pytest.mark.parametrize("notebook", ["01_latent_atlas.ipynb", "02_compose_pegasus.ipynb"])
def test_notebook_runs_end_to_end(notebook, atlas_run, folder_data, smoke_run, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
    monkeypatch.setenv("PEGASUS_RUN", str(atlas_run))
    monkeypatch.setenv("PEGASUS_DATA", str(folder_data))
    monkeypatch.setenv("PEGASUS_CACHE", str(smoke_run.parent / "cache"))
    monkeypatch.setenv("PEGASUS_OUT", str(tmp_path))
    if notebook.startswith("01"):  # the tiny run has 24 codes: fewer UMAP neighbours than the default
        for cell in nb.cells:
            cell.source = cell.source.replace("seed=SEED)", "seed=SEED, neighbours=5, cells=8)")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (5 if notebook.startswith("01") else 3)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
