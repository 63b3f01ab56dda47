"""A spatial code (C x 4 x 4, stored flat) through every latent_ops command on a tiny run."""
from __future__ import annotations

import json

from autoencoder.config import make_config
from autoencoder.train import train
from latent_ops.atlas import build_atlas
from latent_ops.compose import compose
from latent_ops.encode import load_bank
from latent_ops.report import report
from conftest import smoke_flags


def test_a_spatial_run_goes_through_encode_concepts_compose_atlas_and_report(folder_data, tmp_path, tiny_evaluator):
    run = train(make_config("smoke", latent_dim=32, spatial_channels=2, steps=20, log_every=10,
                            **smoke_flags(folder_data, tmp_path / "spatial")), progress=False)
    cache = str(tmp_path / "cache")
    out = compose("horse+wings", run=str(run), data=str(folder_data), cache_dir=cache, n=6,
                  out=str(tmp_path / "compose"), quiet=True)
    assert load_bank(run).codes["test"].shape == (24, 32)  # 2 x 4 x 4, stored flat
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["candidates"]) == 6 and "wings_signed_distance" in scores["candidates"][0]
    record = build_atlas(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "atlas"),
                         neighbours=5, cells=4, path_codes=3, strengths="0,1", quiet=True)
    assert record["codes"] == 24
    folder = report(run=str(run), data=str(folder_data), cache_dir=cache, out=str(tmp_path / "report"),
                    prior_samples=32, neighbour_count=8, kid_subset=8, compose_n=8,
                    evaluator=str(tiny_evaluator[0]), quiet=True)
    assert (folder / "report.md").exists() and (folder / "architecture.png").exists()
