"""The judge of by-eye marks: fitted from marks it orders new images by them, it loads back exactly and refuses what it
cannot read in one line; learn_marks fits it from blind counts it remakes, and compose --mark_gate ranks by it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoencoder.classifier import load_perceptual
from autoencoder.cli import ConfigError, UserError
from autoencoder.run_folder import RunError
from latent_ops.blind_count import BlindCountConfig, blind_count
from latent_ops.compose import compose
from latent_ops.learn_marks import LearnMarksConfig, learn_marks
from latent_ops.mark_judge import (FEATURES_FILE, LAYOUT, fit_judge, judge_folder, judge_images, judged_expressions,
                                   load_judge, mark_features, marks_reading, save_judge)
from latent_ops.showcase import kept_batch

ROOT = Path(__file__).resolve().parent.parent


def auc(marked: np.ndarray, score: np.ndarray) -> float:
    """The share of (marked, unmarked) pairs that the score orders rightly."""
    return float((score[marked][:, None] > score[~marked][None, :]).mean())


def test_a_judge_fitted_on_marks_orders_new_images_by_them_and_loads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)) * [1, 5, 1, 1, 0.1, 1] + [0, 3, 0, 0, 7, 0]
    marked = features[:, 2] + 0.3 * rng.normal(size=400) > 0
    judge = fit_judge(features[:300], marked[:300], 1.0, "a winged horse", "pegasus")
    probability = judge.probability(features[300:])
    assert probability.shape == (100,) and ((0 < probability) & (probability < 1)).all()
    assert auc(marked[300:], probability) > 0.9  # held out: it learned the feature the marks follow
    assert abs(judge.weights[2]) == abs(judge.weights).max()
    save_judge(judge, judge_folder(tmp_path / "run", "pegasus"), {"rows": 300})
    loaded = load_judge(tmp_path / "run", "pegasus")
    np.testing.assert_array_equal(loaded.probability(features[300:]), probability)
    assert (loaded.what, loaded.expression) == ("a winged horse", "pegasus")
    assert json.loads((tmp_path / "run" / "marks" / "pegasus" / "judge.json").read_text())["rows"] == 300
    assert judged_expressions(tmp_path / "run") == ["pegasus"] and judged_expressions(tmp_path / "none") == []
    with pytest.raises(ValueError, match="marks are all True"):
        fit_judge(features, np.ones(400, dtype=bool), 1.0, "", "pegasus")
    for name in ("../up", "a/b", "horse&wings@back", ""):
        with pytest.raises(ConfigError, match="cannot name a folder"):
            judge_folder(tmp_path / "run", name)


def test_a_missing_or_damaged_judge_is_one_line(tmp_path):
    with pytest.raises(RunError, match="no judge of by-eye marks for 'pegasus'.*judged: none.*learn_marks"):
        load_judge(tmp_path / "run", "pegasus")
    judge = fit_judge(np.arange(20.0)[:, None], np.arange(20) > 9, 1.0, "x", "pegasus")
    folder = judge_folder(tmp_path / "run", "pegasus")
    save_judge(judge, folder, {})
    np.savez(folder / "judge.npz", mean=np.zeros(2), scale=np.ones(2), weights=np.zeros(3), bias=np.array(0.0))
    with pytest.raises(RunError, match="judge.npz is damaged"):
        load_judge(tmp_path / "run", "pegasus")
    np.savez(folder / "judge.npz", mean=np.array([{"code": 1}], dtype=object), scale=np.ones(1), weights=np.ones(1),
             bias=np.array(0.0))
    with pytest.raises(RunError, match="judge.npz is damaged"):  # a pickle is never loaded
        load_judge(tmp_path / "run", "pegasus")
    (folder / "judge.npz").write_bytes(b"not a zip")
    with pytest.raises(RunError, match="judge.npz is damaged"):
        load_judge(tmp_path / "run", "pegasus")


def test_the_features_read_the_picture_and_the_judge_does_not_care_which_way_it_faces():
    perceptual = load_perceptual()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features = mark_features(images, perceptual)
    assert features.shape == (5, perceptual.feature_dim + 10 * 9 + 1 + 2 * LAYOUT * LAYOUT)
    assert not np.allclose(features[0], features[1])
    rng = np.random.default_rng(1)
    judge = fit_judge(rng.normal(size=(50, features.shape[1])), rng.random(50) > 0.5, 1.0, "", "pegasus")
    torch.testing.assert_close(judge_images(judge, images, perceptual), judge_images(judge, images.flip(3), perceptual))


def sitting(composed_run, folder_data, smoke_run, tmp_path, name: str, outputs: list[dict], seed: int) -> dict:
    """A blind count of composes remade as learn_marks will remake them, its marks following brightness."""
    folders = []
    for i, output in enumerate(outputs):
        folders.append(compose("horse+wings", run=str(composed_run), data=str(folder_data), quiet=True,
                               cache_dir=str(smoke_run.parent / "cache"), seed=output["seed"],
                               out=str(tmp_path / f"{name}-{i}"), **output["flags"]))
    out = tmp_path / "blind" / name
    blind_count(BlindCountConfig(composes=",".join(map(str, folders)), out=str(out), seed=seed))
    key = json.loads((out / "key.json").read_text())
    batches = [kept_batch(f).float().mean((1, 2, 3)) for f in folders]
    every = torch.cat(batches)
    marked = [n for n, (o, p) in enumerate(key["numbers"]) if batches[o][p] > every.median()]
    blind_count(BlindCountConfig(out=str(out), marked=",".join(map(str, marked))))
    return {"key": f"{name}/key.json", "counts": f"{name}/counts.json", "outputs": outputs}


def test_learn_marks_fits_from_remade_blind_counts_and_compose_ranks_by_it(composed_run, folder_data, smoke_run,
                                                                           tmp_path, capsys):
    flags = {"n": 24, "refine_steps": 1}
    plain, other = {"seed": 0, "flags": flags}, {"seed": 0, "flags": {**flags, "rank_gate": 0.0}}
    sittings = [sitting(composed_run, folder_data, smoke_run, tmp_path, "a", [plain, other], 3),
                sitting(composed_run, folder_data, smoke_run, tmp_path, "b", [{"seed": 1, "flags": flags}, plain], 4)]
    sittings[1]["outputs"][1] = None  # an output this code could not remake: its rows are left out
    spec = tmp_path / "blind" / "sittings.json"
    spec.write_text(json.dumps({"what": "bright", "expression": "horse+wings", "sittings": sittings}))
    kept = [json.loads((tmp_path / "blind" / name / "key.json").read_text())["kept"] for name in "ab"]
    rows = sum(kept[0]) + kept[1][0]
    common = ["--run", str(composed_run), "--data", str(folder_data), "--cache_dir", str(smoke_run.parent / "cache")]
    done = subprocess.run([sys.executable, "-m", "latent_ops.learn_marks", *common, "--sittings", str(spec),
                           "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"learn_marks: {rows} counted images" in done.stdout and "held-out ROC AUC: seed 0" in done.stdout
    record = json.loads((composed_run / "marks" / "horse+wings" / "judge.json").read_text())
    assert record["expression"] == "horse+wings" and record["rows"] == rows
    assert set(record["held out by seed"]) == {"0", "1"}
    assert min(f["auc"] for f in record["held out by seed"].values()) > 0.7  # brightness is easy to see
    assert len(list((tmp_path / "work").iterdir())) == 3  # three different composes remade
    features_record = record["features judge"]  # the judge of the perceptual net's features alone, fitted beside it
    assert features_record["rows"] == rows and set(features_record["held out by seed"]) == {"0", "1"}
    judged = composed_run / "marks" / "horse+wings"
    assert load_judge(composed_run, "horse+wings", FEATURES_FILE).weights.shape == (load_perceptual().feature_dim,)
    before = (judged / "judge.npz").read_bytes()
    learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(spec), data=str(folder_data), fit="features",
                                 cache_dir=str(smoke_run.parent / "cache"), work=str(tmp_path / "work"), strength=0.1))
    assert (judged / "judge.npz").read_bytes() == before  # --fit features leaves the judge as it was
    again = json.loads((judged / "judge.json").read_text())
    assert again["held out by seed"] == record["held out by seed"] and again["features judge"]["strength"] == 0.1
    assert json.loads((judged / "config-features.json").read_text())["fit"] == "features"
    fitted = load_judge(composed_run, "horse+wings").weights
    (tmp_path / "blind" / "b" / "counted.png").unlink()  # as a sitting counted before blind counts kept their images
    converted = tmp_path / "blind" / "converted.json"
    converted.write_text(spec.read_text())
    places = dict(data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"))
    learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(converted), fit="judge", keep_images=True,
                                 work=str(tmp_path / "work"), **places))
    kept_sittings = json.loads(converted.read_text())["sittings"]
    assert [s["images"] for s in kept_sittings] == ["a/counted.png", "b/counted.png"]
    assert kept_sittings[0]["images_digest"] == json.loads((tmp_path / "blind" / "a" / "key.json").read_text())[
        "counted_digest"] and (tmp_path / "blind" / "b" / "counted.png").exists()
    for name in "ab":  # then the images kept are read, as on another CPU, whose remakes differ from the counted
        key_file = tmp_path / "blind" / name / "key.json"
        key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "images_digests": ["0" * 16] * 2}))
    learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(converted), fit="judge",
                                 work=str(tmp_path / "no-work"), **places))
    assert np.allclose(load_judge(composed_run, "horse+wings").weights, fitted) and not (tmp_path / "no-work").exists()

    gated = compose("horse+wings", run=str(composed_run), data=str(folder_data), quiet=True, n=24, seed=5,
                    refine_steps=1, rank_gate=0.0, mark_gate=0.5, cache_dir=str(smoke_run.parent / "cache"),
                    out=str(tmp_path / "gated"), best="rank")
    rows = json.loads((gated / "scores.json").read_text())["candidates"]
    median = float(torch.quantile(torch.tensor([c["mark"] for c in rows]), 0.5))
    assert [c["passed_gate"] for c in rows] == [c["mark"] >= median for c in rows]
    assert [c["passed_gate"] for c in rows] == sorted((c["passed_gate"] for c in rows), reverse=True)

    common = dict(run=str(composed_run), data=str(folder_data), quiet=True, n=24, refine_steps=1,
                  cache_dir=str(smoke_run.parent / "cache"))
    compose("horse+wings", mark_gate=0.5, save_recipe=True, out=str(tmp_path / "recipe"), **common)
    by_recipe = json.loads((compose("horse+wings", out=str(tmp_path / "r1"), **common) / "scores.json").read_text())
    assert by_recipe["mark_gate"] == 0.5 and "mark" in by_recipe["candidates"][0]
    other = json.loads((compose("horse", out=str(tmp_path / "r2"), **common) / "scores.json").read_text())
    assert other["mark_gate"] == 0.0 and "mark" not in other["candidates"][0]  # the recipe's gate: only where known
    (composed_run / "compose.json").unlink()
    with pytest.raises(ConfigError, match="no judge of by-eye marks for 'horse' \\(judged: horse\\+wings\\)"):
        compose("horse", run=str(composed_run), data=str(folder_data), mark_gate=0.5, quiet=True,
                out=str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    # the key of sitting a lists wrong digests (made so above): a remake of it now differs
    with pytest.raises(UserError, match="holds other images than the ones counted"):
        learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(spec), data=str(folder_data),
                                     cache_dir=str(smoke_run.parent / "cache"), work=str(tmp_path / "work")))
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "counted_on": "38a03e0f316a668ce123d1dc66dd891c6fcb4d0f"}))
    with pytest.raises(UserError, match=r"with the model of commit 38a03e0f316a \(git worktree add DIR 38a03e0f316a"):
        learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(spec), data=str(folder_data),
                                     cache_dir=str(smoke_run.parent / "cache"), work=str(tmp_path / "work")))
    assert load_judge(composed_run, "horse+wings").expression == "horse+wings"  # the judge fitted before is whole
    later = json.loads(spec.read_text())
    later["sittings"][0]["counted_on"] = "c486e0a7280a6aec0b740e8cc43b48c3db3aa99d"  # counted on a later model
    spec.write_text(json.dumps(later))
    with pytest.raises(UserError, match="with the model of commit c486e0a7280a \\(git worktree add DIR c486e0a7280a"):
        learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(spec), data=str(folder_data),
                                     cache_dir=str(smoke_run.parent / "cache"), work=str(tmp_path / "work")))
    assert len(list((tmp_path / "work").iterdir())) == 4  # its output remade apart from the same flags' with the other
    later["sittings"][0]["counted_on"] = 7
    spec.write_text(json.dumps(later))
    with pytest.raises(ConfigError, match="sitting 0 of .* is not .*optionally \"counted_on\": COMMIT"):
        learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(spec), data=str(folder_data),
                                     cache_dir=str(smoke_run.parent / "cache"), work=str(tmp_path / "work")))


def test_a_gate_on_a_run_without_a_judge_is_one_line(smoke_run, folder_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--mark_gate: .* has no judge of by-eye marks for 'horse\\+wings' \\(judged: none"):
        compose("horse+wings", run=str(smoke_run), data=str(folder_data), mark_gate=0.5, quiet=True,
                out=str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_a_judge_refuses_images_read_by_another_perceptual_net():
    judge = fit_judge(np.arange(40.0).reshape(20, 2), np.arange(20) > 9, 1.0, "x", "pegasus")
    with pytest.raises(RunError, match="reads 2 features, but these images give 3.*learn_marks"):
        judge.probability(np.zeros((4, 3)))


def test_a_sittings_file_it_cannot_use_is_one_line_and_fits_nothing(composed_run, folder_data, tmp_path):
    blind = tmp_path / "blind"
    blind.mkdir()
    (blind / "key.json").write_text(json.dumps({"composes": ["gone"], "images_digests": ["0" * 16], "kept": [1],
                                                "numbers": [[0, 0]]}))
    (blind / "counts.json").write_text(json.dumps({"marked_numbers": [0]}))
    cases = [({"expression": "horse+wings", "sittings": [{"key": "key.json", "outputs": [None]}]}, ConfigError,
              "sitting 0 of .* is not"),
             ({"expression": "horse+wings", "sittings": [{"key": "key.json", "counts": "counts.json",
                                                           "outputs": [None]}]}, UserError, "every one is null"),
             ({"sittings": []}, ConfigError, "lists no sittings")]
    marks = composed_run / "marks"
    before = {p: p.read_bytes() for p in marks.rglob("*") if p.is_file()} if marks.exists() else {}
    for spec, error, words in cases:
        (blind / "sittings.json").write_text(json.dumps(spec))
        with pytest.raises(error, match=words):
            learn_marks(LearnMarksConfig(run=str(composed_run), sittings=str(blind / "sittings.json"),
                                         data=str(folder_data), work=str(tmp_path / "work")))
    after = {p: p.read_bytes() for p in marks.rglob("*") if p.is_file()} if marks.exists() else {}
    assert after == before  # nothing fitted, nothing replaced


def test_the_marks_reading_is_the_log_probability_of_the_judge_of_features_and_has_a_gradient():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(40, 6))
    judge = fit_judge(features, features[:, 1] > 0.2, 1.0, "x", "pegasus")
    x = torch.tensor(features[:5], dtype=torch.float32, requires_grad=True)
    read = marks_reading(judge)(x)
    torch.testing.assert_close(read.exp().double(), torch.from_numpy(judge.probability(features[:5])), atol=1e-5,
                               rtol=1e-5)
    read.sum().backward()
    assert x.grad[:, 1].gt(0).all()  # up the reading is up the marked feature
    with pytest.raises(RunError, match="reads 6 features, but these are 3"):
        marks_reading(judge)(torch.zeros(2, 3))
