"""The model the repository ships (models/pegasus-cifar10): complete, small, loadable, consistent with its
config and stamps, and it decodes its own test codes to images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from autoencoder.models import ModelConfig
from autoencoder.run_folder import load_run, weights_digest
from latent_ops.encode import load_bank
from latent_ops.flow import sample
from latent_ops.run_concepts import load_concepts
from latent_ops.runs import SHIPPED_MODEL
from latent_ops.shipped_folder import CARD_FILE, SIZE_LIMIT, folder_bytes
from latent_ops.trained_prior import load_prior


def test_the_shipped_model_loads_with_its_config_prior_concepts_and_test_codes():
    model = SHIPPED_MODEL
    assert folder_bytes(model) < SIZE_LIMIT
    opened = load_run(model)
    config, nets = opened.config, opened.nets
    shape = ModelConfig.of(config).code_shape
    assert shape == (4, 8, 8) and config.latent_dim == int(np.prod(shape)) == 256
    trained = json.loads((model / "config.json").read_text())
    # the shipped weights are an average: the release run's, then its decoder fine-tune's
    assert config.preset == "release-grid8-sharpen" and trained["ema"] > 0 and trained["spectral_weight"] > 0
    weights = load_file(str(model / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}

    bank = load_bank(model)  # stamped with these weights' digest, else it would be refused as stale
    assert bank.codes["test"].shape == (10000, config.latent_dim) and len(bank.codes["train"]) == 0
    with torch.no_grad():
        images = nets.decoder(torch.from_numpy(bank.codes["test"][:4]))
    assert images.shape == (4, 3, 32, 32) and images.abs().max() <= 1.0 + 1e-4

    concepts = load_concepts(model)
    assert {"horse", "bird", "horse:fullbody", "bird:flight"} <= set(concepts.densities)
    assert "wings" in concepts.directions
    prior = load_prior(model)
    assert prior.dim == config.latent_dim and sample(prior, 3, [(7, 2.0)], steps=4).shape == (3, 256)

    ship = json.loads((model / "ship.json").read_text())
    assert ship["weights_digest"] == weights_digest(model)
    card = (model / CARD_FILE).read_text()
    data = json.loads((model / "data.json").read_text())
    assert data["train"][:16] in card and data["test"][:16] in card and "make model" in card


def test_the_shipped_model_carries_its_conv_prior_and_the_learned_pegasus():
    from latent_ops.flow import ConvVelocityNet
    from latent_ops.trained_prior import learned_expression, learned_names, load_learned

    model = SHIPPED_MODEL
    assert isinstance(load_prior(model), ConvVelocityNet)
    assert "pegasus" in learned_names(model)
    net = load_learned(model, "pegasus")
    assert net.label_names[-1] == "pegasus" and net.classes == 11
    assert sample(net, 3, [(10, 1.5)], steps=4).shape == (3, 256)
    assert "horse" in learned_expression(model, "pegasus")
    record = json.loads((model / "learned" / "pegasus" / "record.json").read_text())
    assert record["judge"] == "perceptual" and record["accepted"] >= 32
    white = load_learned(model, "pegasus_white")
    assert white.label_names[-1] == "pegasus_white" and "white@body" in learned_expression(model, "pegasus_white")
    record = json.loads((model / "learned" / "pegasus_white" / "record.json").read_text())
    assert "pale_wing" in record["accept"] and record["accepted"] >= 32


@pytest.mark.parametrize("name, variable", [("pegasus", "LEARN_PEGASUS"), ("pegasus_white", "LEARN_PEGASUS_WHITE")])
def test_make_model_learns_each_pegasus_with_the_rule_it_shipped_with(name, variable):
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    text = re.search(rf"^{variable} := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ")
    flags = shlex.split(text)
    given = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
    shipped = json.loads((SHIPPED_MODEL / "learned" / name / "config.json").read_text())
    assert {k: str(shipped[k]) for k in given} == given
    assert f"learn {name} --run $(MODEL) $({variable})" in makefile
    if shipped.get("marks"):  # accepted by a judge of marks the model carries (kept aside and put back by make model)
        assert (SHIPPED_MODEL / "marks" / shipped["marks"] / "judge.npz").exists()


def test_make_model_recreates_the_shipped_model_with_the_flags_it_was_shipped_with():
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    release = re.search(r"^RELEASE_PRESET \?= (\S+)$", makefile, re.M).group(1)
    sharpen = re.search(r"^SHARPEN_PRESET \?= ?(\S*)$", makefile, re.M).group(1)
    preset = sharpen or release  # the run that ships: the decoder fine-tune when there is one
    flags = shlex.split(re.search(r"^SHIP_FLAGS \?= (.*)$", makefile, re.M).group(1))
    given = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
    shipped = json.loads((SHIPPED_MODEL / "ship.json").read_text())["config"]
    prior = json.loads((SHIPPED_MODEL / "prior" / "config.json").read_text())
    run_config = json.loads((SHIPPED_MODEL / "config.json").read_text())
    assert run_config["preset"] == preset
    if sharpen:  # fine-tuned as the preset says, from the release run, its encoder frozen
        from autoencoder.config import PRESETS

        assert {k: run_config[k] for k in PRESETS[sharpen]} == {**PRESETS[sharpen], "init_from": run_config["init_from"]}
        assert run_config["train_encoder"] is False and release in run_config["init_from"]
    assert {k: shipped[k] for k in given} == {k: int(v) for k, v in given.items()}
    assert (prior["steps"], prior["channels"]) == (shipped["prior_steps"], shipped["prior_channels"])


def test_a_white_pegasus_as_make_asks_for_it_has_paler_subjects_than_a_plain_one(tmp_path):
    """make pegasus-white's expression (read from the Makefile, quoted for the shell) composed as a user runs it:
    the kept images' subjects are brighter than those of plain ``pegasus`` with the same seed and pool."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from autoencoder.classifier import load_perceptual
    from latent_ops.sources import classifier_views
    from autoencoder.data import to_float
    from latent_ops.subject import rising_brightness, subject_colour

    root = Path(__file__).resolve().parents[1]
    expression = re.search(r"^WHITE_PEGASUS := (.*)$", (root / "Makefile").read_text(), re.M).group(1)
    dry = subprocess.run(["make", "-n", "pegasus-white"], cwd=root, capture_output=True, text=True, timeout=60)
    assert f"PEGASUS_EXPRESSION='{expression}'" in dry.stdout  # quoted: & would end the shell command
    white_flags = re.search(r"^WHITE_PEGASUS_FLAGS := (.*)$", (root / "Makefile").read_text(), re.M).group(1)
    assert f"PEGASUS_FLAGS='{white_flags}'" in dry.stdout  # at the guidance its blind counts were made with
    assert "pale unsaturated subject" in json.loads((SHIPPED_MODEL / "directions.json").read_text())["white"]["note"]
    brightness, rising = {}, {}
    for name, text in (("plain", "pegasus"), ("white", expression)):
        out = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "latent_ops.compose", text, "--run", str(SHIPPED_MODEL),
                               "--pool", "128", "--n", "16", "--refine_top", "16", "--data", "no-data",
                               "--out", str(out)], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        scores = json.loads((out / "scores.json").read_text())
        ranks = sorted(c["rank"] for c in scores["candidates"] if c["kept"])
        images = load_file(out / "images.safetensors")["images"][ranks]
        _, maps = classifier_views(load_perceptual().eval(), images)
        brightness[name] = subject_colour(images, maps[:, 7])[0]
        rising[name] = rising_brightness(to_float(images))
    assert brightness["white"].mean() > brightness["plain"].mean() + 0.15, brightness
    assert (brightness["white"] >= 0.5).sum() >= 8 > (brightness["plain"] >= 0.5).sum()
    assert rising["white"].mean() > rising["plain"].mean() + 0.2, rising  # and what rises above the back is pale


def make_flags(variable: str, target: str) -> list[str]:
    """The compose flags a Makefile variable holds, checked to be what ``make TARGET`` passes."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    flags = re.search(rf"^{variable} := (.*)$", (root / "Makefile").read_text(), re.M).group(1)
    dry = subprocess.run(["make", "-n", target], cwd=root, capture_output=True, text=True, timeout=60)
    assert f"PEGASUS_FLAGS='{flags}'" in dry.stdout and f"outputs/compose/{target}" in dry.stdout
    return shlex.split(flags)


def composed_as_a_user_does(flags: list[str], out) -> tuple[dict, float]:
    """``compose pegasus`` on the shipped model with ``flags`` (a pool of 256, 32 kept, no data) in a subprocess: its
    scores and the kept images' mean pairwise distance in the evaluator's features."""
    import subprocess
    import sys
    from pathlib import Path

    from autoencoder.classifier import load_evaluator
    from autoencoder.metrics import mean_pairwise_distance

    done = subprocess.run([sys.executable, "-m", "latent_ops.compose", "pegasus", "--run", str(SHIPPED_MODEL),
                           *flags, "--pool", "256", "--n", "32", "--refine_top", "32", "--data", "no-data",
                           "--out", str(out)], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads((out / "scores.json").read_text())
    kept = sorted(c["rank"] for c in scores["candidates"] if c["kept"])
    images = load_file(out / "images.safetensors")["images"][kept]
    return scores, mean_pairwise_distance(load_evaluator().features(images))


@pytest.fixture(scope="module")
def plain_pegasus(tmp_path_factory) -> float:
    """The kept images' feature diversity of plain ``compose pegasus`` with the pool the tests below use."""
    return composed_as_a_user_does([], tmp_path_factory.mktemp("plain") / "out")[1]


def test_a_varied_pegasus_as_make_asks_for_it_starts_from_real_horses_and_varies_more_than_a_plain_one(
        tmp_path, plain_pegasus):
    """make pegasus-varied's flags (read from the Makefile) composed as a user runs them: every candidate starts from
    a real held-out horse, and the kept images vary more in the evaluator's features than plain ``pegasus``'s with
    the same seed and pool."""
    scores, diversity = composed_as_a_user_does(make_flags("VARIED_PEGASUS_FLAGS", "pegasus-varied"), tmp_path / "out")
    assert scores["start"] == "horse"
    assert all("horse" in c["source_test_indices"] for c in scores["candidates"] if c["kept"])
    assert diversity > 1.05 * plain_pegasus, (diversity, plain_pegasus)


def test_a_diverse_pegasus_as_make_asks_for_it_pushes_its_draws_apart_and_varies_more_than_a_plain_one(
        tmp_path, plain_pegasus):
    """make pegasus-diverse's flags composed as a user runs them: the draws were pushed apart (particle guidance,
    recorded in the config) and the kept images vary more in the evaluator's features than plain ``pegasus``'s."""
    flags = make_flags("DIVERSE_PEGASUS_FLAGS", "pegasus-diverse")
    scores, diversity = composed_as_a_user_does(flags, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["repel"] > 0
    assert diversity > 1.05 * plain_pegasus, (diversity, plain_pegasus)


def test_the_shipped_judge_of_marks_is_fitted_from_the_committed_sittings_and_none_since(tmp_path):
    """learn_marks, run as a user runs it on a copy of the model, fits from the committed counted images
    (docs/pegasus-cifar10/blind/sittings-kept.json, each read from its counted.png: no compose, any machine) the
    judge the model ships; the sittings counted since (sittings-since.json, which tested it) are not in it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    blind = root / "docs" / "pegasus-cifar10" / "blind"
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, copy)
    done = subprocess.run([sys.executable, "-m", "latent_ops.learn_marks", "--run", str(copy), "--sittings",
                           str(blind / "sittings-kept.json"), "--fit", "judge"],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    refitted = np.load(copy / "marks" / "pegasus" / "judge.npz", allow_pickle=False)
    shipped = np.load(SHIPPED_MODEL / "marks" / "pegasus" / "judge.npz", allow_pickle=False)
    for name in ("mean", "scale", "weights", "bias"):  # to a fit's tolerance: another CPU's convolutions round apart
        np.testing.assert_allclose(refitted[name], shipped[name], rtol=1e-3, atol=1e-3 * np.abs(shipped[name]).max())
    record = json.loads((SHIPPED_MODEL / "marks" / "pegasus" / "judge.json").read_text())
    kept = json.loads((blind / "sittings-kept.json").read_text())["sittings"]
    since = json.loads((blind / "sittings-since.json").read_text())["sittings"]
    assert record["sittings"] == [s["key"] for s in kept]
    assert not {s["key"] for s in since} & set(record["sittings"])
    assert all((blind / s["images"]).exists() for s in since)  # they too travel, for the next fit
