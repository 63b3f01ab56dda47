"""A spatial code (C x 4 x 4, stored flat) through every latent_ops command on a tiny run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_flags
from PIL import Image

from autoencoder.cli import save_config
from autoencoder.config import make_config
from autoencoder.train import train
from latent_ops.atlas import build_atlas
from latent_ops.compose import compose
from latent_ops.compose_config import RECIPE_FILE, ComposeConfig
from latent_ops.encode import load_bank
from latent_ops.learn import learn, make_learn_config
from latent_ops.prior import make_prior_config, train_prior
from latent_ops.report import report
from latent_ops.run_concepts import load_concepts
from latent_ops.sampling import Sources, sample_expression
from latent_ops.ship import make_ship_config, ship

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.parametrize("grid", [4, 8])
def test_a_spatial_run_goes_through_every_latent_ops_command(grid, folder_data, tmp_path, tiny_evaluator):
    """On a 2 x 4 x 4 and a 2 x 8 x 8 code: encode, concepts, compose, atlas, report, regions, prior, learn, ship."""
    half, quarter, dim = grid // 2, grid // 4, 2 * grid * grid
    run = train(make_config("smoke", latent_dim=dim, spatial_channels=2, code_grid=grid, steps=20, log_every=10,
                            **smoke_flags(folder_data, tmp_path / "spatial")), progress=False)
    cache = str(tmp_path / "cache")
    out = compose("horse+wings", run=str(run), data=str(folder_data), cache_dir=cache, n=6,
                  out=str(tmp_path / "compose"), quiet=True)
    assert load_bank(run).codes["test"].shape == (24, dim)  # 2 x grid x grid, stored flat
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["candidates"]) == 6 and "wings_signed_distance" in scores["candidates"][0]
    record = build_atlas(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "atlas"),
                         neighbours=5, cells=4, path_codes=3, strengths="0,1", quiet=True)
    assert record["codes"] == 24
    save_config(ComposeConfig(n=8), run / RECIPE_FILE)  # the report composes with the run's recipe
    folder = report(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "report"),
                    prior_samples=32, neighbour_count=8, kid_subset=8,
                    evaluator=str(tiny_evaluator[0]), quiet=True)
    assert (folder / "report.md").exists() and (folder / "architecture.png").exists()

    # A direction in a region moves only that region's cells (the top half: 2 rows of 4, 4 of 8).
    concepts, bank = load_concepts(run), load_bank(run)
    sources = Sources(concepts, bank, code_shape=(2, grid, grid))
    plain, _ = sample_expression({"horse": 1.0}, sources, 5, np.random.default_rng(3))
    edited, _ = sample_expression({"horse": 1.0, "wings@top": 1.0}, sources, 5, np.random.default_rng(3))
    moved = (edited - plain).reshape(5, 2, grid, grid)
    assert np.abs(moved[:, :, half:]).max() == 0 and np.abs(moved[:, :, :half]).max() > 0

    # A class in a region is a collage: the top quarter's cells come from held-out birds, the rest is the horse's.
    pasted, drawn = sample_expression({"horse": 1.0, "bird@above": 1.0}, sources, 5, np.random.default_rng(3))
    cells, base = pasted.reshape(5, 2, grid, grid), plain.reshape(5, 2, grid, grid)
    assert np.array_equal(cells[:, :, quarter:], base[:, :, quarter:]) and not np.array_equal(cells, base)
    row_of = {int(i): r for r, i in enumerate(bank.indices["test"])}
    birds = bank.codes["test"][[row_of[i] for i in drawn["bird@above"]]].reshape(5, 2, grid, grid)
    assert (bank.labels["test"][[row_of[i] for i in drawn["bird@above"]]] == 2).all()
    assert np.allclose(cells[:, :, :quarter], birds[:, :, :quarter])
    mixed, _ = sample_expression({"horse": 1.0, "bird@above": 0.5}, sources, 5, np.random.default_rng(3))
    assert np.allclose(mixed.reshape(5, 2, grid, grid)[:, :, :quarter],
                       (base[:, :, :quarter] + birds[:, :, :quarter]) / 2, atol=1e-6)

    # The latent prior on the spatial codes, then everything compose does with it.
    train_prior(make_prior_config(run=str(run), data=str(folder_data), cache_dir=cache, hidden=32, blocks=1,
                                  steps=30, batch_size=16, log_every=10, checkpoint_every=30), progress=False)
    out = compose("horse&bird+wings@top", run=str(run), data=str(folder_data), cache_dir=cache, pool=24,
                  source="prior", project=0.5, refine_prior=0.5, refine_steps=2, prior_steps=4,
                  out=str(tmp_path / "prior-compose"), quiet=True)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["candidates_composed"] == 24 and len(scores["candidates"]) == 24
    assert scores["projection_conditions"] == {"bird": 4.0, "horse": 2.0}  # horse, bird (&) and bird (wings)
    assert scores["regions"] == ["top"] and scores["projection_strip_noise"][0] == 0.0
    kept = [c for c in scores["candidates"] if c["kept"]]
    assert 1 <= len(kept) == scores["kept"]["count"] <= 24 and scores["pool"]["count"] == 24
    assert set(scores["pool"]["intent_terms"]) == {"horse", "bird", "wings"}
    with Image.open(out / "region.png") as region:
        pixels = torch.from_numpy(np.array(region))
    assert region.size == (256, 256) and pixels[0, 0].tolist() == [255, 0, 0]  # the top region's outline
    with Image.open(out / "refinement.png") as strip:
        assert strip.size[0] == 3 * (8 * 34 + 2)  # eight noise levels in the last row
    again = compose("horse&bird+wings@top", run=str(run), data=str(folder_data), cache_dir=cache, pool=24,
                    source="prior", project=0.5, refine_prior=0.5, refine_steps=2, prior_steps=4,
                    out=str(tmp_path / "prior-compose-again"), quiet=True)
    assert (again / "batch64.png").read_bytes() == (out / "batch64.png").read_bytes()  # seeded
    warmer = compose("horse&bird+wings@top", run=str(run), data=str(folder_data), cache_dir=cache, pool=24,
                     source="prior", project=0.5, refine_prior=0.5, refine_steps=2, prior_steps=4, temperature=1.6,
                     out=str(tmp_path / "prior-compose-warmer"), quiet=True)
    assert json.loads((warmer / "scores.json").read_text())["temperature"] == 1.6
    assert (warmer / "batch64.png").read_bytes() != (out / "batch64.png").read_bytes()  # it spreads the prior's noise
    away = compose("horse&bird+wings@top", run=str(run), data=str(folder_data), cache_dir=cache, pool=24,
                   source="prior", project=0.5, refine_prior=0.5, refine_steps=2, prior_steps=4, negative="deer",
                   out=str(tmp_path / "prior-compose-away"), quiet=True)
    assert json.loads((away / "scores.json").read_text())["negative"] == "deer"
    assert (away / "batch64.png").read_bytes() != (out / "batch64.png").read_bytes()  # guidance pushed from deer

    # The report with a pool: rows for the unselected pool and the kept ones, which the targets bench reads.
    save_config(ComposeConfig(pool=24, project=0.5), run / RECIPE_FILE)
    folder = report(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "pool-report"),
                    prior_samples=32, neighbour_count=8, kid_subset=8,
                    pca_floor=False, evaluator=str(tiny_evaluator[0]), quiet=True)
    record = json.loads((folder / "report.json").read_text())
    names = [r["name"] for r in record["compositions"][0]["sets"]]
    assert names[0].endswith("the unselected pool of 24") and "the kept" in names[1]
    assert "Of the whole unselected pool of 24" in (folder / "report.md").read_text()
    from manifold_targets import targets_of
    assert all(0 <= v["missed_by"] for v in targets_of(record).values())

    # A concept learned from regional compositions, and the run shipped with it.
    learned = learn(make_learn_config(name="pegasus", run=str(run), expression="horse&bird@top", pool=32, chunk=16,
                                      prior_steps=4, accept="horse>=0,wings>=0", critic_quantile=0.2,
                                      sharpness_quantile=0.2, min_accepted=4, steps=10, batch_size=16, rounds=2,
                                      balance=1.0), quiet=True)
    learned_record = json.loads((learned / "record.json").read_text())
    assert json.loads((learned / "config.json").read_text())["balance"] == 1.0
    from safetensors import safe_open

    with safe_open(str(learned / "model.safetensors"), "pt") as weights:  # the moving average, saved once
        assert weights.keys() and all(k.startswith("ema.") for k in weights.keys())
    assert learned_record["accepted"] >= 8
    # the second round composes from the concept the first learned, and trains on both rounds' codes
    assert [r["expression"] for r in learned_record["rounds"]] == ["horse&bird@top", "pegasus"]
    assert learned_record["accepted"] == sum(r["accepted"] for r in learned_record["rounds"])
    assert learned_record["trained_on"] == 2 * learned_record["accepted"]
    shipped = ship(make_ship_config(run=str(run), data=str(folder_data), cache_dir=cache, prior_steps=10,
                                    prior_channels=16, out=str(tmp_path / "models" / f"grid{grid}")), progress=False)
    assert json.loads((shipped / "ship.json").read_text())["code_shape"] == [2, grid, grid]
    assert json.loads((shipped / "prior" / "config.json").read_text())["channels"] == 16
    composed = compose("horse+wings@top", run=str(shipped), data="no-data", n=4, refine_steps=1,
                       out=str(tmp_path / "shipped-compose"), quiet=True)
    assert json.loads((composed / "scores.json").read_text())["regions"] == ["top"]
