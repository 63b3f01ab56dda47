"""The architecture diagram and the report, on the tiny smoke run and a tiny evaluator."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from torch import nn

from autoencoder.cli import save_config
from autoencoder.diagram import NETWORK_TITLES, draw_run
from autoencoder.diagram import main as diagram_main
from autoencoder.run_folder import load_run
from latent_ops.compose_config import RECIPE_FILE, ComposeConfig
from latent_ops.report import report


def weighted_modules(network: nn.Module) -> int:
    """Convolutions and linear layers: every one must have its own box."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in network.modules())


def test_diagram_draws_every_module_of_every_network(smoke_run, tmp_path):
    files, layers = draw_run(smoke_run, tmp_path)
    assert [f.name for f in files] == ["architecture.png", "architecture.svg"]
    assert all(f.stat().st_size > 10_000 for f in files)
    opened = load_run(smoke_run)
    _, networks = opened.config, opened.nets
    svg = files[1].read_text()
    for name, title in NETWORK_TITLES.items():
        network = getattr(networks, name)
        mine = [layer for layer in layers if layer.network == name]
        boxes = sum(l.label.split()[0] in ("Conv", "Linear", "SN-Conv", "SN-Linear") for l in mine)
        assert boxes == weighted_modules(network), name
        named = {n for n, _ in network.named_modules()}
        assert all(layer.name in named for layer in mine)
        assert title in svg
        assert all(layer.label.replace(">", "&gt;") in svg for layer in mine)
    encoder_out = [l.shape for l in layers if l.network == "encoder"][-1]
    decoder_out = [l.shape for l in layers if l.network == "decoder"][-1]
    opened = load_run(smoke_run)
    config, _ = opened.config, opened.nets
    assert encoder_out == (config.latent_dim,) and decoder_out == (3, 32, 32)
    assert "compose pipeline" in svg.lower() and "refine" in svg


def test_diagram_cli_names_a_missing_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        diagram_main(str(tmp_path / "nothing"))
    assert exit_info.value.code == 2 and "not a run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_report(smoke_run, folder_data, tiny_evaluator, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(smoke_run, run)
    out = run.parent / "report"
    save_config(ComposeConfig(n=16), run / RECIPE_FILE)  # the run's compose recipe, which the report composes with
    report(run=str(run), data=str(folder_data), out=str(out), expressions="horse+wings;bird+wings", prior_samples=64, neighbour_count=16,
           kid_subset=16, evaluator=str(tiny_evaluator[0]), cache_dir=str(smoke_run.parent / "cache"),
           quiet=True)
    return out


def test_report_writes_every_metric_with_its_floor(tiny_report):
    record = json.loads((tiny_report / "report.json").read_text())
    names = [s["name"] for s in record["sets"]]
    assert names[0].startswith("real: train subset") and "model: prior samples N(0, I)" in names
    floor, prior = record["sets"][0], record["sets"][names.index("model: prior samples N(0, I)")]
    for row in (floor, prior):
        for key in ("frechet", "kid", "sharpness", "nn_pixel_median", "nn_feature_median", "diversity_feature"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["name"], key)
            assert key == "kid" or row[key] >= 0, (row["name"], key)  # KID's unbiased estimate may fall below 0
    assert math.isfinite(record["reconstruction"]["psnr_db"]) and record["reconstruction"]["psnr_db"] > 0
    assert record["pca_floor"]["components"] == 16
    composed = record["compositions"][0]
    assert composed["expression"] == "horse+wings"
    for key in ("horse", "winged", "combined"):
        assert 0 <= composed["recognisability_best"][key] <= 1
    assert composed["sets"][1]["name"].startswith("real: 8 test horse images")
    birds = record["compositions"][1]  # scored against its own subject, not against horses
    assert birds["subject"] == "bird" and set(birds["recognisability_best"]) == {"bird", "winged", "combined"}
    assert birds["sets"][1]["name"].startswith("real: 8 test bird images")
    assert record["weights_digest"] and "expressions" in json.loads((tiny_report / "config.json").read_text())
    assert record["compositions"][0]["candidates_composed"] == 16  # the run's recipe
    text = (tiny_report / "report.md").read_text()
    for heading in ("## Model", "## Reconstruction", "## Samples", "## Composed: `horse+wings`",
                    "## Composed: `bird+wings`", "P(bird) |"):
        assert heading in text
    assert "latent intent" not in text and "intent from" in text
    assert "not Inception FID/KID" in text
    for figure in ("architecture.png", "architecture.svg", "prior-samples.png", "reconstructions.png",
                   "horse+wings-0-best_x8.png", "horse+wings-0-neighbours.png", "horse+wings-0-batch64.png",
                   "horse+wings-0-evaluator-top8.png"):
        assert (tiny_report / figure).exists(), figure
        if figure.endswith(".png") and figure != "architecture.png":
            assert f"({figure})" in text, figure


def test_report_is_deterministic_for_a_seed(tiny_report, smoke_run, folder_data, tiny_evaluator, tmp_path):
    again = report(run=str(tiny_report.parent / "run"), data=str(folder_data), out=str(tmp_path / "again"),
                   expressions="horse+wings", prior_samples=64, neighbour_count=16, kid_subset=16,
                   evaluator=str(tiny_evaluator[0]), cache_dir=str(smoke_run.parent / "cache"),
                   pca_floor=False, quiet=True)
    first = json.loads((tiny_report / "report.json").read_text())
    second = json.loads((again / "report.json").read_text())
    assert first["sets"] == second["sets"]
    assert first["compositions"][0]["recognisability_best"] == second["compositions"][0]["recognisability_best"]


def test_the_diagram_caption_names_the_terms_that_trained_and_a_frozen_encoder(tmp_path):
    from autoencoder.cli import load_config, save_config
    from autoencoder.config import make_config
    from autoencoder.diagram import LossWeights, loss_line

    def caption(preset: str) -> str:  # as the diagram reads a run: the loss weights from its config.json
        config = make_config(preset)
        save_config(config, tmp_path / f"{preset}.json")
        return loss_line(config, load_config(tmp_path / f"{preset}.json", LossWeights))

    release = caption("release-grid8")
    assert "0.005 AAE" in release and "0.1 class head" in release and "spectral" not in release
    tuned = caption("release-grid8-sharpen")
    assert "0.3 spectral" in tuned and "AAE" not in tuned and "class head" not in tuned
    assert "fine-tuned from outputs/runs/release-grid8, its encoder frozen" in tuned
