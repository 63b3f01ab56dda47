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

from autoencoder.config import ConfigError
from latent_ops.atlas import build_atlas, cluster_outline, fit_or_load, main as atlas_main
from latent_ops.compose import ensure_concepts
from latent_ops.encode import load_bank

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
    first = build_atlas(str(atlas_run), str(folder_data), str(tmp_path / "a"), cache_dir=cache, quiet=True, **SMALL)
    assert not first["reused_cache"] and first["codes"] == 24
    for name in ("class-map.png", "mosaic.png", "compose-path.png", "wing-direction.png", "wing-strip.png"):
        with Image.open(tmp_path / "a" / name) as image:
            assert min(image.size) > 100, name
    with Image.open(tmp_path / "a" / "mosaic.png") as image:
        assert image.size == (8 * 32, 8 * 32)  # 8 x 8 cells of 32 pixels
    with Image.open(tmp_path / "a" / "wing-strip.png") as image:
        assert image.size == (3 * (3 * 34 + 2), 3 * (4 * 34 + 2))  # a column per strength, a row per horse
    assert set(first["path"]["landing"]) == {"0", "1", "2"}
    for shares in first["path"]["landing"].values():
        assert sum(shares.values()) == pytest.approx(1.0)
    assert set(first["cluster_centres"]) <= {"horse:0", "horse:1", "horse:2", "bird:0", "bird:1", "bird:2"}
    assert len(list((atlas_run / "atlas").glob("umap-*.npz"))) == 1
    second = build_atlas(str(atlas_run), str(folder_data), str(tmp_path / "b"), cache_dir=cache, quiet=True, **SMALL)
    assert second["reused_cache"]
    bank = load_bank(atlas_run)
    a = fit_or_load(atlas_run, bank, neighbours=5)
    assert a.reused and a.embedding.shape == (24, 2)
    assert json.loads((tmp_path / "b" / "atlas.json").read_text())["path"] == first["path"]


def test_a_tampered_model_file_is_refitted_not_loaded(atlas_run, smoke_run):
    bank = load_bank(atlas_run)
    fitted = fit_or_load(atlas_run, bank, classes="horse,bird", neighbours=5, seed=1)
    assert not fitted.reused and sorted(set(fitted.labels.tolist())) == [2, 7] and len(fitted.rows) == 16
    model = next(f for f in (atlas_run / "atlas").glob("umap-*.joblib")
                 if f.with_suffix(".npz").exists() and np.load(f.with_suffix(".npz"))["rows"].size == 16)
    model.write_bytes(model.read_bytes() + b"tampered")
    again = fit_or_load(atlas_run, bank, classes="horse,bird", neighbours=5, seed=1)
    assert not again.reused  # the recorded SHA-256 no longer matches: refitted, never unpickled


def test_outline_and_landing_helpers():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 2))
    outline = cluster_outline(points)
    assert np.array_equal(outline[0], outline[-1]) and len(outline) > 4
    assert np.abs(outline).max() < np.abs(points).max()  # the outliers lie outside the central 80%


def test_bad_atlas_input_is_one_clear_error(atlas_run, folder_data, smoke_run):
    bank = load_bank(atlas_run)
    with pytest.raises(ConfigError, match="--split"):
        fit_or_load(atlas_run, bank, split="validation")
    with pytest.raises(ConfigError, match="needs more"):
        fit_or_load(atlas_run, bank, classes="horse", neighbours=15)
    with pytest.raises(SystemExit, match="a path needs a class or cluster and a direction"):
        atlas_main(str(atlas_run), str(folder_data), expression="horse+bird", cache_dir=str(smoke_run.parent / "cache"),
                   neighbours=5, path_codes=2)


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
