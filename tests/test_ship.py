"""Shipping a run as a model folder: fp16 weights, a test-only bank, the prior without checkpoints, a card;
compose then works from it without the data set, and a killed ship resumes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import dies_on_call
from safetensors.torch import load_file

from autoencoder.run_folder import RunError, load_run
from latent_ops import prior as prior_module
from latent_ops.compose import compose
from latent_ops.encode import load_bank
from latent_ops.runs import resolve_run
from latent_ops.ship import make_ship_config, rewrite_card, ship
from latent_ops.shipped_folder import CARD_FILE


@pytest.fixture(scope="module")
def shipped(smoke_run, folder_data, tmp_path_factory):
    """The smoke run shipped with a 20-step prior: (model folder, its flags)."""
    root = tmp_path_factory.mktemp("ship")
    run = root / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("prior", "latents.npz", "concepts.npz"))
    flags = dict(run=str(run), data=str(folder_data), cache_dir=str(root / "cache"),
                 out=str(root / "models" / "tiny"), prior_steps=20)
    return ship(make_ship_config(**flags), progress=False), flags


def test_the_shipped_folder_holds_fp16_weights_test_codes_and_a_card(shipped, smoke_run):
    out, flags = shipped
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for needed in ("config.json", "model.safetensors", "latents.npz", "concepts.npz", "directions.json",
                   "prior/model.safetensors", "prior/config.json", "prior/source.json", "data.json", "ship.json",
                   CARD_FILE):
        assert needed in names, needed
    assert not any(n.startswith("prior/checkpoints") for n in names)
    assert not (out.parent / f".{out.name}.partial").exists()
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}

    with np.load(out / "latents.npz") as raw:
        assert raw["test_codes"].dtype == np.float16 and len(raw["train_codes"]) == 0
    bank = load_bank(out)
    assert bank.codes["test"].dtype == np.float32 and len(bank.codes["test"]) == len(bank.labels["test"]) > 0

    # The fp16 weights decode the test codes as the run's fp32 weights do, to fp16 precision.
    opened = load_run(smoke_run)
    _, original = opened.config, opened.nets
    opened = load_run(out)
    _, copy = opened.config, opened.nets
    z = torch.from_numpy(bank.codes["test"][:8])
    with torch.no_grad():
        assert (original.decoder(z) - copy.decoder(z)).abs().max() < 0.02

    card = (out / CARD_FILE).read_text()
    data = json.loads((out / "data.json").read_text())
    assert data["test"][:16] in card and "python -m latent_ops.ship" in card and "Licence" in card

    notes = out.parent / "notes.md"
    notes.write_text("## What it cannot do\n\nWings.\n")
    rewrite_card(make_ship_config(out=str(out), card_notes=str(notes)))
    assert "Wings." in (out / CARD_FILE).read_text() and data["test"][:16] in (out / CARD_FILE).read_text()
    assert card.startswith("# Model card: tiny\n")  # the model's name, not its staging folder's


def test_the_card_carries_the_reports_numbers_beside_their_floors(shipped, tmp_path):
    out, _ = shipped
    row = dict(sharpness=0.0193, nn_feature_median=0.498, diversity_feature=1.646)
    report = {"run": str(out), "reconstruction": {"psnr_db": 21.4}, "pca_floor": {"psnr_db": 24.0},
              "sets": [dict(row, name="real: test images", frechet=None),
                       dict(row, name="model: reconstructions of test", frechet=10.93)],
              "compositions": [{"sets": [dict(row, name="composed horse+wings, the kept 64", frechet=None)]}]}
    file = tmp_path / "report.json"
    file.write_text(json.dumps(report))
    card = rewrite_card(make_ship_config(out=str(out), report=str(file))).read_text()
    assert "PSNR 21.40 dB (PCA with as many components, the linear floor: 24.00 dB)" in card
    assert "| model: reconstructions of test | 10.9 | 0.0193 | 0.498 | 1.646 |" in card
    assert "| real: test images | - |" in card and "| composed horse+wings, the kept 64 | - |" in card


def test_compose_uses_the_shipped_model_without_data(shipped, tmp_path, capsys):
    out, _ = shipped
    folder = compose("horse+wings", run=str(out), data=str(tmp_path / "no-data"), cache_dir=str(tmp_path / "c"),
                     out=str(tmp_path / "pegasus"), pool=40, project=0.3, refine_prior=1.0, refine_steps=2)
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["uniqueness_reference"] is None and "uniqueness" not in scores["candidates"][0]
    assert scores["candidates_composed"] == 40 and (folder / "best_x8.png").exists()
    assert not (folder / "neighbours.png").exists()
    assert "uniqueness and neighbour panels skipped" in capsys.readouterr().out


def test_the_shipped_model_is_the_default_only_when_no_run_is_trained(shipped, tmp_path, smoke_run):
    out, _ = shipped
    runs = tmp_path / "runs"
    runs.mkdir()
    assert resolve_run("", runs, shipped=out) == out
    with pytest.raises(RunError, match="no trained run"):
        resolve_run("", runs, shipped=tmp_path / "absent")
    shutil.copytree(smoke_run, runs / "mine")
    assert resolve_run("", runs, shipped=out) == runs / "mine"


def test_a_killed_ship_resumes_and_refuses_a_run_without_weights(shipped, tmp_path, monkeypatch):
    _, flags = shipped
    again = dict(flags, out=str(tmp_path / "models" / "again"))
    monkeypatch.setattr(prior_module, "flow_matching_loss", dies_on_call(prior_module.flow_matching_loss, 12))
    with pytest.raises(KeyboardInterrupt):
        ship(make_ship_config(**again), progress=False)
    monkeypatch.undo()
    partial = tmp_path / "models" / ".again.partial"
    assert (partial / "concepts.npz").exists() and not (tmp_path / "models" / "again").exists()
    out = ship(make_ship_config(**again), progress=False)
    assert not partial.exists() and (out / "prior" / "model.safetensors").exists()
    steps = [json.loads(x)["step"] for x in (out / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 20
    unbroken = shipped[0]  # the same flags, shipped without a kill: the resumed folder holds the same model
    for name in ("prior/model.safetensors", "model.safetensors"):
        resumed, whole = load_file(str(out / name)), load_file(str(unbroken / name))
        assert resumed.keys() == whole.keys() and all(resumed[k].equal(whole[k]) for k in whole), name
    with np.load(out / "concepts.npz") as resumed, np.load(unbroken / "concepts.npz") as whole:
        assert sorted(resumed.files) == sorted(whole.files)
        assert [k for k in whole.files if not np.array_equal(resumed[k], whole[k])] == []

    with pytest.raises(RunError, match="no trained weights to ship"):
        ship(make_ship_config(**dict(flags, run=str(tmp_path / "nothing"))), progress=False)


def test_a_card_target_row_says_when_it_was_not_measured_and_by_how_much_it_was_missed():
    from latent_ops.ship import target_line

    assert target_line("guided prior P(class)", {"value": None, "target": 0.7, "met": False, "missed_by": None}) \
        == "| guided prior P(class) | - | >= 0.7 | not measured |"
    assert target_line("reconstruction Frechet", {"value": 9.5, "target": 8.0, "met": False, "missed_by": 1.5}) \
        == "| reconstruction Frechet | 9.5 | <= 8 | no, by 1.5 |"


def test_a_rewritten_card_gives_the_folder_size_as_it_is_now(shipped, tmp_path):
    from latent_ops.shipped_folder import folder_bytes

    out, _ = shipped
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shipped_size = json.loads((copy / "ship.json").read_text())["bytes"] / 2 ** 20
    (copy / "learned").mkdir(exist_ok=True)
    (copy / "learned" / "added.bin").write_bytes(b"\0" * 3 * 2 ** 20)  # what learn adds after shipping
    rewrite_card(make_ship_config(out=str(copy)))
    card = (copy / CARD_FILE).read_text()
    assert f"- Size: {folder_bytes(copy) / 2 ** 20:.1f} MiB." in card
    assert f"- Size: {shipped_size:.1f} MiB." not in card


def test_a_decoder_fine_tune_takes_the_prior_of_the_model_it_came_from(shipped, tmp_path):
    from autoencoder.atomic import save_weights
    from autoencoder.run_folder import model_file, weights_digest
    from latent_ops.trained_prior import load_prior

    model, flags = shipped
    tuned = tmp_path / "tuned"
    shutil.copytree(flags["run"], tuned)
    nets = load_run(tuned, device="cpu").nets
    with torch.no_grad():
        next(nets.decoder.parameters()).add_(0.01)  # a new decoder, the same encoder
    save_weights(nets, model_file(tuned))
    assert weights_digest(tuned) != weights_digest(flags["run"])
    out = ship(make_ship_config(**dict(flags, run=str(tuned), out=str(tmp_path / "models" / "tuned"),
                                       prior_from=str(model))), progress=False)
    theirs, ours = load_file(model / "prior" / "model.safetensors"), load_file(out / "prior" / "model.safetensors")
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert load_prior(out) is not None  # stamped with the new weights, so not stale
    assert json.loads((out / "prior" / "source.json").read_text())["adopted_from"] == str(model)
    card = (out / CARD_FILE).read_text()
    assert "taken from it: the same encoder" in card and str(model) in card

    with torch.no_grad():
        next(nets.encoder.parameters()).add_(0.01)  # other codes: the prior does not fit them
    save_weights(nets, model_file(tuned))
    again = dict(flags, run=str(tuned), out=str(tmp_path / "models" / "other"), prior_from=str(model))
    with pytest.raises(RunError, match="other encoder weights.*ship without --prior_from"):
        ship(make_ship_config(**again), progress=False)
    with pytest.raises(RunError, match="prior of 20 steps.*not the 30"):
        ship(make_ship_config(**dict(again, run=flags["run"], prior_steps=30)), progress=False)
    with pytest.raises(RunError, match="not a shipped model with a prior"):
        ship(make_ship_config(**dict(again, prior_from=str(tmp_path))), progress=False)
    assert not (tmp_path / "models" / "other").exists()


def test_only_white_fits_the_pale_subject_concepts_of_a_shipped_model_again_and_keeps_the_rest(shipped, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import dataclasses

    from latent_ops.run_concepts import load_concepts, save_concepts

    out, flags = shipped
    model = tmp_path / "model"
    shutil.copytree(out, model)
    shipped_white = load_concepts(model).directions["white"].vector.copy()
    stale = load_concepts(model)  # a white direction of another fit (its vector reversed) stands in the copy
    stale.directions["white"] = dataclasses.replace(stale.directions["white"], vector=-shipped_white)
    record = json.loads((model / "clusters.json").read_text())
    save_concepts(stale, {k: v for k, v in record.items() if k != "weights_digest"}, model, record["weights_digest"])
    before = load_concepts(model)
    old_directions = json.loads((model / "directions.json").read_text())
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "latent_ops.run_concepts", "--run", str(model), "--only", "white",
                           "--data", flags["data"], "--cache_dir", flags["cache_dir"]], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "only white fitted again" in done.stdout
    after = load_concepts(model)  # still stamped with the model's weights: it loads
    assert len(load_bank(model).codes["train"]) == 0  # the train codes were encoded in memory, not stored
    new_directions = json.loads((model / "directions.json").read_text())
    assert "pale unsaturated subject" in new_directions["white"]["note"]
    assert new_directions["_default_wings"] == old_directions["_default_wings"]  # the wing probe is kept
    for name in before.directions:
        if name != "white":
            assert np.array_equal(before.directions[name].vector, after.directions[name].vector), name
    for name in before.densities:
        if name != "horse:white":
            assert np.array_equal(before.densities[name][0][1].mean, after.densities[name][0][1].mean), name
    assert abs(after.directions["white"].vector @ after.directions["wings"].vector) < 1e-5
    assert np.allclose(after.directions["white"].vector, shipped_white, atol=1e-6)  # fitted again, as shipping did
    refused = subprocess.run([sys.executable, "-m", "latent_ops.run_concepts", "--run", str(model), "--only", "wings"],
                             cwd=root, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--only takes white" in refused.stderr
