"""compose end to end on the tiny smoke run: every output file, refinement, determinism, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError
from autoencoder.data import load_split, to_float
from autoencoder.metrics import nearest_neighbours
from autoencoder.run_folder import load_run
from latent_ops import ranking
from latent_ops.compose import compose
from latent_ops.compose import main as compose_main
from latent_ops.concepts import heldout_members
from latent_ops.encode import load_bank
from latent_ops.expression import ExpressionError
from latent_ops.intent import intent_terms, resolve_intent
from latent_ops.refine import refine_codes
from latent_ops.run_concepts import load_concepts


def test_bank_holds_both_splits(composed_run):
    bank = load_bank(composed_run)
    opened = load_run(composed_run)
    config, _ = opened.config, opened.nets
    assert bank.codes["train"].shape == (48, config.latent_dim) and bank.codes["test"].shape == (24, config.latent_dim)
    assert set(bank.labels["train"].tolist()) == {2, 3, 7}


def test_compose_writes_every_output(composed_run, folder_data, tmp_path, smoke_run):
    out = compose("horse+wings", run=str(composed_run), data=str(folder_data), n=16, seed=0, refine_steps=5,
                  dedup=0.0, cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "hw"), quiet=True)
    sizes = {"best.png": (32, 32), "best_x8.png": (256, 256), "batch64.png": (3 * (8 * 34 + 2), 3 * (2 * 34 + 2)),
             "neighbours.png": (3 * (4 * 34 + 2), 3 * (8 * 34 + 2)),
             "refinement.png": (3 * (8 * 34 + 2), 3 * (4 * 34 + 2))}
    for name, size in sizes.items():
        with Image.open(out / name) as image:
            assert image.size == size, name
    scores = json.loads((out / "scores.json").read_text())
    assert scores["expression"] == "horse+wings" and scores["seed"] == 0 and scores["candidates_composed"] == 16
    assert [c["rank"] for c in scores["candidates"]] == list(range(16))
    for key in ("realism", "realism_before_refinement", "intent", "uniqueness", "combined", "intent_terms",
                "nearest_train_indices", "wings_signed_distance"):
        assert key in scores["candidates"][0], key
    combined = [c["combined"] for c in scores["candidates"]]
    assert combined == sorted(combined, reverse=True)
    assert (composed_run / "clusters.json").exists() and (composed_run / "directions.json").exists()
    assert list((composed_run / "clusters").glob("*.png"))
    assert "wings" in load_concepts(composed_run).directions
    images = load_file(str(out / "images.safetensors"))["images"]
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    with Image.open(out / "best.png") as best:
        assert torch.equal(torch.from_numpy(np.array(best.convert("RGB"))).permute(2, 0, 1), images[0])
    with Image.open(out / "showcase.png") as showcase:
        assert showcase.size[0] > 600 and showcase.size[1] > 250  # best, neighbours and batch side by side


def test_the_contact_sheet_frames_the_marked_cells_and_refuses_bad_positions(composed_run, folder_data, tmp_path,
                                                                            smoke_run):
    from autoencoder.cli import UserError
    from latent_ops.showcase import contact_sheet

    out = compose("horse+wings", out=str(tmp_path / "sheet"), n=16, dedup=0.0, refine_steps=0,
                  **kwargs(composed_run, folder_data, smoke_run))
    with pytest.raises(UserError, match="names 3 more than once"):  # a slip for another number, not merged
        contact_sheet(str(out), "3,1,3", what="wing-like shape")
    file = contact_sheet(str(out), "3,1", what="wing-like shape")
    assert json.loads((out / "marked.json").read_text()) == {"what": "wing-like shape", "marked": [1, 3],
                                                              "count": 2, "of": 16}
    with Image.open(file) as sheet:
        pixels = np.array(sheet.convert("RGB")).reshape(-1, 3)
    assert ((pixels[:, 1] > 200) & (pixels[:, 0] < 60) & (pixels[:, 2] < 60)).any()  # a lime frame is drawn
    with pytest.raises(UserError, match="position 16 is outside the batch of 16"):
        contact_sheet(str(out), "2,16")
    with pytest.raises(UserError, match="takes positions like"):
        contact_sheet(str(out), "two")


def test_intent_reads_class_probabilities_of_the_decoded_images(composed_run):
    concepts = load_concepts(composed_run)
    probs = {name: torch.zeros(2) for name in CIFAR10_CLASSES}
    probs["horse"], probs["bird"], probs["airplane"] = torch.tensor([0.5, 1.0]), torch.tensor([0.3, 0.0]), \
        torch.tensor([0.2, 0.0])
    codes = torch.zeros(2, len(concepts.directions["wings"].vector))
    terms = intent_terms({"horse": 1.0, "wings": 1.0, "bird": -1.0}, concepts, codes, probs)
    assert terms["horse"].tolist() == pytest.approx([0.5, 1.0])
    assert terms["wings"].tolist() == pytest.approx([0.5, 0.0])
    assert terms["not bird"].tolist() == pytest.approx([0.7, 1.0])  # a negative term counts its absence
    assert "bird" not in terms  # and is never reported as P(bird)
    with pytest.raises(ExpressionError, match="--intent must be one of"):
        resolve_intent("oracle")
    assert resolve_intent("probe") == "probe"


def test_intent_source_is_recorded(composed_run, folder_data, tmp_path, smoke_run):
    out = compose("horse+wings", run=str(composed_run), data=str(folder_data), n=4, seed=0, refine_steps=1,
                  cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "probe"), quiet=True, intent="probe")
    assert json.loads((out / "scores.json").read_text())["intent_source"] == "probe"


def test_same_seed_same_images(composed_run, folder_data, tmp_path, smoke_run):
    kw = dict(run=str(composed_run), data=str(folder_data), n=4, refine_steps=3,  # 4 of the 8 test horses
              cache_dir=str(smoke_run.parent / "cache"), quiet=True)
    a = compose("horse+0.8*wings", seed=5, out=str(tmp_path / "a"), **kw)
    b = compose("horse+0.8*wings", seed=5, out=str(tmp_path / "b"), **kw)
    c = compose("horse+0.8*wings", seed=6, out=str(tmp_path / "c"), **kw)
    assert (a / "batch64.png").read_bytes() == (b / "batch64.png").read_bytes()
    assert (a / "batch64.png").read_bytes() != (c / "batch64.png").read_bytes()
    d = compose("horse+0.8*wings", seed=5, source="density", out=str(tmp_path / "d"), **kw)
    e = compose("horse+0.8*wings", seed=5, source="density", out=str(tmp_path / "e"), **kw)
    assert (d / "batch64.png").read_bytes() == (e / "batch64.png").read_bytes()
    assert json.loads((d / "scores.json").read_text())["source"] == "density"


def test_heldout_source_draws_real_test_codes_of_the_class(composed_run):
    import numpy as np

    from latent_ops.sampling import Sources, sample_expression

    bank, concepts = load_bank(composed_run), load_concepts(composed_run)
    codes, drawn = sample_expression({"horse": 1.0}, Sources(concepts, bank), 5, np.random.default_rng(0))
    test_positions = {int(i): row for row, i in enumerate(bank.indices["test"])}
    for code, index in zip(codes, drawn["horse"]):
        row = test_positions[index]
        assert bank.labels["test"][row] == 7 and np.allclose(code, bank.codes["test"][row])
    clusters = [n for n in concepts.names if n.startswith("horse:") and n.split(":")[1].isdigit()]
    members = np.concatenate([heldout_members(n, concepts, bank) for n in clusters])
    assert sorted(members.tolist()) == heldout_members("horse", concepts, bank).tolist()  # clusters: a partition


def test_the_prior_pull_moves_codes_its_share_of_the_way_to_the_denoised_code(composed_run):
    opened = load_run(composed_run)
    _, nets = opened.config, opened.nets
    z0 = torch.from_numpy(load_bank(composed_run).codes["test"][:4])
    target = torch.zeros_like(z0)
    for weight in (0.0, 0.5, 1.0):
        z, _ = refine_codes(nets, z0, steps=1, step_size=0.0, prior_denoise=lambda z: target, prior_weight=weight)
        assert torch.allclose(z, (1 - weight) * z0, atol=1e-6)


def test_refinement_raises_the_critic_score(composed_run):
    opened = load_run(composed_run)
    _, nets = opened.config, opened.nets
    torch.manual_seed(0)
    z0 = torch.randn(32, nets.decoder.project.in_features)
    z, history = refine_codes(nets, z0, steps=10, step_size=0.05, anchor=0.1)
    assert len(history) == 11 and history[-1] > history[0]
    assert (z - z0).norm(dim=1).mean() > 0  # the codes moved...
    assert torch.cdist(z, z).mean() > 0.5 * torch.cdist(z0, z0).mean()  # ...without collapsing together


def test_unknown_concept_is_one_clear_error(composed_run, folder_data, smoke_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compose_main("horse+wigns", run=str(composed_run), data=str(folder_data),
                     cache_dir=str(smoke_run.parent / "cache"))
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and message.count("\n") == 1
    assert message.startswith("error: unknown concept 'wigns' at column 7") and "horse:0" in message


def test_a_temperature_that_would_change_nothing_is_one_clear_error(composed_run, folder_data, smoke_run, tmp_path,
                                                                    capsys):
    with pytest.raises(SystemExit) as exit_info:  # held-out codes of real images have no spread to warm
        compose_main("horse+wings", run=str(composed_run), data=str(folder_data), temperature=1.5,
                     cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "out"))
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and message.count("\n") == 1 and not (tmp_path / "out").exists()
    assert message.startswith("error: --temperature 1.5 spreads density and prior draws") and "--source" in message


def test_a_negative_class_without_prior_draws_is_one_clear_error(composed_run, folder_data, smoke_run, tmp_path,
                                                                 capsys):
    with pytest.raises(SystemExit) as exit_info:  # held-out codes of real images are not steered by guidance
        compose_main("horse+wings", run=str(composed_run), data=str(folder_data), negative="deer",
                     cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "out"))
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and message.count("\n") == 1 and not (tmp_path / "out").exists()
    assert message.startswith("error: --negative deer steers draws from the prior") and "--source prior" in message


def test_a_recipes_negative_is_a_default_for_prior_draws_not_an_error_elsewhere(composed_run, folder_data, smoke_run,
                                                                                  tmp_path, capsys):
    from autoencoder.cli import save_config
    from latent_ops.compose_config import RECIPE_FILE, ComposeConfig

    run = tmp_path / "run"
    shutil.copytree(composed_run, run)
    save_config(ComposeConfig(negative="deer", refine_steps=1), run / RECIPE_FILE)
    out = compose("horse+wings", run=str(run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"),
                  n=4, out=str(tmp_path / "held-out"), quiet=True)  # held-out codes: nothing to push away from deer
    assert json.loads((out / "scores.json").read_text())["negative"] == ""
    with pytest.raises(SystemExit) as exit_info:  # asked for on the command line, it is still refused
        compose_main("horse+wings", run=str(run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"),
                     negative="deer", out=str(tmp_path / "asked"))
    assert exit_info.value.code == 2 and "--negative deer steers draws from the prior" in capsys.readouterr().err


def test_a_copied_training_image_has_zero_uniqueness(folder_data, smoke_run):
    bank = load_split(folder_data, "train", smoke_run.parent / "cache").images
    copies = to_float(bank[[3, 17]])
    distance, index = nearest_neighbours(copies, bank, k=3, chunk=10)
    assert torch.allclose(distance[:, 0], torch.zeros(2), atol=1e-6) and index[:, 0].tolist() == [3, 17]
    assert (distance[:, 1] > 0).all() and (distance[:, 1:] >= distance[:, :-1]).all()


def test_ranking_helpers():
    assert torch.allclose(ranking.zscore(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(ranking.zscore(torch.ones(3)), torch.zeros(3))
    g = ranking.geometric_mean(torch.tensor([[0.5, 0.5], [1.0, 0.01]]))
    assert g[0] > g[1]  # both parts present beats one strong, one absent
    score = ranking.combined_score({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 1.0])})
    assert score[1] > score[0]


def test_term_weights_lean_the_intent_towards_the_named_term():
    terms = {"horse": torch.tensor([0.6, 0.3]), "wings": torch.tensor([0.2, 0.5])}
    even = ranking.term_weighted_intent(terms, {})
    assert torch.allclose(even, ranking.geometric_mean(torch.stack(list(terms.values()), 1)))
    assert even[1] > even[0]  # evenly weighted, the second candidate is the better pair
    leaning = ranking.term_weighted_intent(terms, ranking.parse_term_weights("horse=3"))
    assert leaning[0] > leaning[1]  # with horse counted three times, the better horse leads
    assert torch.allclose(leaning[0], torch.tensor((0.6 ** 3 * 0.2) ** 0.25))
    assert ranking.parse_term_weights(" horse=2, wings=0.5 ") == {"horse": 2.0, "wings": 0.5}
    for bad in ("horse", "horse=x", "=2", "horse=-1", "horse=101"):
        with pytest.raises(ValueError, match="NAME=WEIGHT"):
            ranking.parse_term_weights(bad)
    with pytest.raises(ValueError, match="tail, not an intent term.*horse, wings"):
        ranking.term_weighted_intent(terms, {"tail": 2.0})
    with pytest.raises(ValueError, match="weight 0"):
        ranking.term_weighted_intent(terms, {"horse": 0.0, "wings": 0.0})


def test_the_gate_ranks_every_passing_candidate_first_then_by_score():
    combined = torch.tensor([5.0, -1.0, 3.0, 0.5, -4.0])
    passed = torch.tensor([False, True, False, True, True])
    assert ranking.gated_order(combined, passed).tolist() == [3, 1, 4, 0, 2]
    assert ranking.gated_order(combined, torch.ones(5, dtype=torch.bool)).tolist() == [0, 2, 3, 1, 4]
    refined = torch.tensor([False, True, False, False, True])
    assert ranking.gated_order(combined, passed, refined).tolist() == [1, 4, 3, 0, 2]  # refined first, then the gate


def test_sharpness_and_the_gate_decide_the_ranking(composed_run, folder_data, tmp_path, smoke_run):
    from autoencoder.metrics import laplacian_variance

    common = dict(run=str(composed_run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"), n=40,
                  seed=2, refine_steps=1, quiet=True, best="rank")  # the ranking's own order, not the best-image rule
    sharp = compose("horse+wings", out=str(tmp_path / "sharp"), rank_sharpness=100.0, rank_gate=0.0, **common)
    scores = json.loads((sharp / "scores.json").read_text())["candidates"]
    assert scores[0]["sharpness"] == max(c["sharpness"] for c in scores)  # sharpness outweighs the rest
    best = load_file(str(sharp / "images.safetensors"))["images"][:1]
    assert laplacian_variance(to_float(best)).item() == pytest.approx(scores[0]["sharpness"], rel=0.1, abs=1e-3)

    heads = {}  # leaning the ranking on one term puts more of that term at the head of the ranking
    for name, other in (("horse", "wings"), ("wings", "horse")):
        leaning = compose("horse+wings", out=str(tmp_path / name), rank_terms=f"{name}=1,{other}=0",
                          rank_intent=100.0, rank_gate=0.0, **common)
        ranks = json.loads((leaning / "scores.json").read_text())
        assert ranks["rank_terms"] == f"{name}=1,{other}=0" and ranks["rank_intent"] == 100.0
        heads[name] = {term: np.mean([c["intent_terms"][term] for c in ranks["candidates"][:10]])
                       for term in ("horse", "wings")}
    assert heads["horse"]["horse"] > heads["wings"]["horse"] and heads["wings"]["wings"] > heads["horse"]["wings"]
    with pytest.raises(ConfigError, match="tail, not an intent term"):
        compose("horse+wings", out=str(tmp_path / "tail"), rank_terms="tail=2", **common)
    assert not (tmp_path / "tail").exists()  # refused before anything was written

    gated = compose("horse+wings", out=str(tmp_path / "gated"), rank_gate=0.05, **common)
    ranks = json.loads((gated / "scores.json").read_text())["candidates"]
    passed = [c["passed_gate"] for c in ranks]
    assert 0 < sum(passed) < len(passed), "the toy pool should be split by the gate"
    assert passed == sorted(passed, reverse=True)  # every passing candidate before every other
    assert all(min(c["intent_terms"].values()) >= 0.05 for c in ranks if c["passed_gate"])

    risen = compose("horse+wings", out=str(tmp_path / "risen"), rank_gate=0.0, rise_gate=0.5, **common)
    ranks = json.loads((risen / "scores.json").read_text())
    assert ranks["rise_gate"] == 0.5
    rows = ranks["candidates"]
    median = float(torch.quantile(torch.tensor([c["rise"] for c in rows], dtype=torch.float32), 0.5))
    assert [c["passed_gate"] for c in rows] == [c["rise"] >= median for c in rows]  # the gate is the upper half
    assert [c["passed_gate"] for c in rows] == sorted((c["passed_gate"] for c in rows), reverse=True)
    plain = compose("horse", out=str(tmp_path / "plain"), rank_gate=0.0, rise_gate=0.5, **common)
    assert all(c["passed_gate"] for c in json.loads((plain / "scores.json").read_text())["candidates"])  # no wings


def test_strength_and_weight_scale_the_calibrated_step(composed_run):
    import numpy as np

    from latent_ops.sampling import DrawSettings, Sources, sample_expression

    bank, concepts = load_bank(composed_run), load_concepts(composed_run)
    wings = concepts.directions["wings"]

    def codes(weights, strength):
        return sample_expression(weights, Sources(concepts, bank), 3, np.random.default_rng(1),
                                 DrawSettings(strength=strength))[0]

    base = codes({"horse": 1.0, "wings": 1.0}, 0.0)
    moved = codes({"horse": 1.0, "wings": 0.5}, 2.0)  # 0.5 * 2 = one calibrated step
    assert np.allclose(moved - base, wings.step * wings.vector, atol=1e-5)


def test_newest_run_is_the_default(tmp_path, smoke_run):
    import os

    from autoencoder.run_folder import RunError
    from latent_ops.runs import resolve_run

    with pytest.raises(RunError, match="no trained run"):
        resolve_run("", tmp_path, shipped=tmp_path / "no-shipped-model")
    for name, age in (("old", 100), ("new", 0)):
        shutil.copytree(smoke_run, tmp_path / name)
        os.utime(tmp_path / name / "model.safetensors", (1e9 - age, 1e9 - age))
    assert resolve_run("", tmp_path) == tmp_path / "new"
    with pytest.raises(RunError, match="has no model.safetensors"):
        resolve_run(tmp_path / "missing")


def kwargs(composed_run, folder_data, smoke_run, **extra):
    return dict(run=str(composed_run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"),
                quiet=True, **extra)


@pytest.mark.parametrize("flags, message", [
    (dict(n=0), "--n must be between 1"), (dict(n=-5), "--n must be between 1"),
    (dict(seed=-1), "--seed must be between 0"), (dict(strength=float("nan")), "--strength must be a finite"),
    (dict(strength=float("inf")), "--strength must be a finite"), (dict(strength=1e999), "--strength must be a finite"),
    (dict(strength=1e6), "--strength must be between"), (dict(refine_steps=2.5), "--refine_steps takes a whole"),
    (dict(source="dream"), "--source must be one of"), (dict(chunk=0), "--chunk must be between"),
    (dict(expression="1e999*horse"), "is too large"), (dict(expression="horse+" * 2000), "characters long"),
    (dict(colour=3), "unknown flag(s) --colour"), (dict(solver="rk4"), "--solver must be one of"),
    (dict(precision="fp8"), "--precision must be one of"), (dict(refine_top=10), "--refine_top 10 refines fewer"),
    (dict(guidance_from=0.8, guidance_until=0.2), "--guidance_from 0.8 is after --guidance_until 0.2"),
    (dict(guidance_until=1.5), "--guidance_until must be between"),
    (dict(negative="pegasus"), "--negative 'pegasus' is not a CIFAR-10 class or cluster"),
    (dict(start="horse"), "--start horse gives the pictures the candidates start from; --project says how far"),
])
def test_bad_compose_flags_are_one_line_before_any_work(flags, message, tmp_path, capsys):
    expression = flags.pop("expression", "horse+wings")
    with pytest.raises(SystemExit) as exit_info:
        compose_main(expression, run=str(tmp_path / "no-run-needed"), out=str(tmp_path / "out"), **flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_two_composes_into_one_folder_leave_one_consistent_output(composed_run, folder_data, tmp_path, smoke_run):
    out = tmp_path / "shared"
    compose("horse+wings", out=str(out), n=4, refine_steps=1, **kwargs(composed_run, folder_data, smoke_run))
    first = (out / "batch64.png").read_bytes()
    compose("bird", out=str(out), n=6, refine_steps=1, seed=3, **kwargs(composed_run, folder_data, smoke_run))
    scores = json.loads((out / "scores.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert scores["expression"] == config["expression"] == "bird" and scores["candidates_composed"] == len(scores["candidates"]) == 6
    assert load_file(str(out / "images.safetensors"))["images"].shape[0] == 6
    assert (out / "batch64.png").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"], "a temporary folder was left"


def test_a_compose_that_fails_leaves_the_previous_output_whole(composed_run, folder_data, tmp_path, smoke_run,
                                                              monkeypatch):
    import latent_ops.compose_files as compose_module

    out = tmp_path / "kept"
    compose("horse+wings", out=str(out), n=4, refine_steps=1, **kwargs(composed_run, folder_data, smoke_run))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(compose_module, "save_grid", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        compose("bird", out=str(out), n=4, refine_steps=1, **kwargs(composed_run, folder_data, smoke_run))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_a_folder_that_is_not_a_compose_output_is_refused(composed_run, folder_data, tmp_path, smoke_run):

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and not a compose output"):
        compose("horse", out=str(mine), n=2, **kwargs(composed_run, folder_data, smoke_run))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_different_expressions_never_share_a_folder():
    from latent_ops.compose_config import folder_name

    names = ["horse-(bird-wings)", "horse-bird-wings", "horse*2", "horsex2", "horse:2", "horse_2", "horse+wings",
             "horse + wings", "a" * 300 + "+horse", "a" * 300 + "+bird", "horse/2", "horseover2"]
    folders = [folder_name(e, 0) for e in names]
    assert len(set(folders)) == len(folders)
    assert folder_name("horse+wings", 0) == "horse+wings-0" and folder_name("horse:2+wings", 1) == "horse~2+wings-1"
    assert all(len(f) < 120 for f in folders)


def test_many_candidates_are_composed_in_chunks(composed_run, folder_data, tmp_path, smoke_run, monkeypatch):
    import latent_ops.scoring as scoring_module

    sizes, real = [], scoring_module.refine_codes

    def recording(nets, z0, *args, **kw):
        sizes.append(len(z0))
        return real(nets, z0, *args, **kw)

    monkeypatch.setattr(scoring_module, "refine_codes", recording)
    out = compose("horse+wings", out=str(tmp_path / "many"), n=70, chunk=16, refine_steps=1, dedup=0.0,
                  **kwargs(composed_run, folder_data, smoke_run))
    assert sizes == [16, 16, 16, 16, 6]
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["candidates"]) == 70 and sorted(c["candidate"] for c in scores["candidates"]) == list(range(70))
    combined = [c["combined"] for c in scores["candidates"]]
    assert combined == sorted(combined, reverse=True)
    with Image.open(out / "batch64.png") as grid:  # the best 64 only
        assert grid.size == (3 * (8 * 34 + 2), 3 * (8 * 34 + 2))


def test_stale_or_damaged_concepts_are_refitted(composed_run, folder_data, tmp_path, smoke_run):
    from autoencoder.config import make_config
    from autoencoder.run_folder import RunError
    from autoencoder.train import train

    run = tmp_path / "run"
    shutil.copytree(composed_run, run)
    compose("horse", out=str(tmp_path / "a"), n=2, **kwargs(run, folder_data, smoke_run))  # fits concepts
    npz = run / "concepts.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(RunError, match="concepts.npz is damaged"):
        load_concepts(run)
    compose("horse", out=str(tmp_path / "b"), n=2, **kwargs(run, folder_data, smoke_run))
    assert load_concepts(run).names  # refitted
    # other weights (the run trained on): bank and concepts are stale and rebuilt
    train(make_config("smoke", out=str(run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"),
                      steps=61, log_every=61, sample_every=1000, checkpoint_every=1000), resume=True, progress=False)
    with pytest.raises(RunError, match="other weights"):
        load_bank(run)
    compose("horse", out=str(tmp_path / "c"), n=2, **kwargs(run, folder_data, smoke_run))
    assert load_bank(run).codes["test"].shape[0] == 24


def test_regions_need_a_spatial_code_and_conjunctions_need_the_prior(composed_run, folder_data, smoke_run, tmp_path):
    flags = dict(run=str(composed_run), data=str(folder_data), cache_dir=str(smoke_run.parent / "cache"), n=4,
                 quiet=True)
    with pytest.raises(ExpressionError, match="this run's code is flat .* --spatial_channels"):
        compose("horse+wings@top", out=str(tmp_path / "a"), **flags)
    with pytest.raises(Exception, match="python -m latent_ops.prior --run"):
        compose("horse&bird", out=str(tmp_path / "b"), **flags)
    with pytest.raises(ExpressionError, match="needs at least one class, cluster or conjunction to start from"):
        compose("horse@top+wings", out=str(tmp_path / "c"), **flags)  # a pasted region needs a base to paste onto
    with pytest.raises(ExpressionError, match="this run's code is flat"):
        compose("horse+bird@above", out=str(tmp_path / "d"), **flags)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_diverse_subset_skips_near_duplicates_and_keeps_the_order():
    g = torch.Generator().manual_seed(0)
    distinct = torch.rand(6, 3, 4, 4, generator=g)
    pool = torch.cat([distinct[:1], distinct[:1] + 1e-3, distinct[1:]])  # the second is a near-copy of the first
    picked = ranking.diverse_subset(pool, 4, dedup=0.5)
    assert picked.tolist() == [0, 2, 3, 4]
    assert ranking.diverse_subset(pool, 10, dedup=0.0).tolist() == list(range(7))  # dedup 0 keeps everything


def test_named_sources_are_concepts_with_their_own_members(composed_run, folder_data, smoke_run, tmp_path):
    concepts, bank = load_concepts(composed_run), load_bank(composed_run)
    assert "bird:flight" in concepts.densities and "bird:flight" in concepts.sources
    members = heldout_members("bird:flight", concepts, bank)
    assert len(members) and (bank.labels["test"][members] == CIFAR10_CLASSES.index("bird")).all()
    assert len(members) < len(heldout_members("bird", concepts, bank))
    assert (composed_run / "clusters" / "sources.png").exists()
    out = compose("bird:flight+wings", run=str(composed_run), data=str(folder_data), n=4, refine_steps=1,
                  cache_dir=str(smoke_run.parent / "cache"), out=str(tmp_path / "flight"), quiet=True)
    scores = json.loads((out / "scores.json").read_text())
    drawn = {i for c in scores["candidates"] for i in [c["source_test_indices"]["bird:flight"]]}
    assert drawn <= {int(bank.indices["test"][m]) for m in members}


def test_the_kept_batch_has_no_near_duplicates(composed_run, folder_data, smoke_run, tmp_path):
    """Drawing 40 candidates from 8 held-out horses repeats sources; the kept batch keeps one of each look."""
    out = compose("horse+wings", out=str(tmp_path / "pool"), pool=40, refine_steps=0,
                  **kwargs(composed_run, folder_data, smoke_run))
    scores = json.loads((out / "scores.json").read_text())
    kept = [c for c in scores["candidates"] if c["kept"]]
    assert scores["candidates_composed"] == 40 and len(scores["candidates"]) == 40
    assert 1 <= len(kept) < 40 and kept[0]["rank"] == 0  # the best is always kept
    assert len({c["source_test_indices"]["horse"] for c in kept}) == len(kept)  # one per source image
    assert scores["pool"]["count"] == 40 and scores["kept"]["count"] == len(kept)


def test_the_grid_has_torchvisions_layout_without_importing_it():
    from torchvision.utils import make_grid

    from autoencoder.grids import tile

    for count, nrow in ((64, 8), (5, 8), (10, 4), (2, 1)):
        images = torch.rand(count, 3, 32, 32)
        assert torch.equal(tile(images, nrow), make_grid(images, nrow=nrow, padding=2, pad_value=1.0))


def test_only_the_best_of_a_first_ranking_are_refined_and_every_stage_is_timed(composed_run, folder_data, tmp_path,
                                                                               smoke_run, monkeypatch):
    import latent_ops.scoring as scoring_module

    sizes, real = [], scoring_module.refine_codes
    monkeypatch.setattr(scoring_module, "refine_codes", lambda nets, z0, *a, **kw: sizes.append(len(z0)) or
                        real(nets, z0, *a, **kw))
    out = compose("horse+wings", out=str(tmp_path / "top"), n=4, pool=24, refine_top=6, chunk=64, refine_steps=2,
                  dedup=0.0, **kwargs(composed_run, folder_data, smoke_run))
    assert sizes == [6]  # one chunk of the six best, not the pool of 24
    scores = json.loads((out / "scores.json").read_text())
    refined = [c for c in scores["candidates"] if c["refined"]]
    assert scores["refined"] == len(refined) == 6 and all(c["refined"] for c in scores["candidates"] if c["kept"])
    assert sorted(c["rank"] for c in refined) == list(range(6))  # the refined rank first: the best is refined
    assert [c for c in scores["candidates"] if not c["refined"]], "the rest keep their first scores"
    unrefined = [c for c in scores["candidates"] if not c["refined"]]
    assert all(c["realism"] == c["realism_before_refinement"] for c in unrefined)
    stages = scores["stage_seconds"]
    assert set(stages) == {"setup", "sampling", "ranking", "refinement", "writing"} and min(stages.values()) > 0
    assert sum(stages.values()) <= scores["seconds"] + 1e-6
    assert scores["precision"] in ("bf16", "fp32") and scores["solver"] == "ab2" and scores["refine_top"] == 6
    every = compose("horse+wings", out=str(tmp_path / "every"), n=4, pool=24, refine_top=0, refine_steps=2,
                    **kwargs(composed_run, folder_data, smoke_run))
    assert json.loads((every / "scores.json").read_text())["refined"] == 24


def test_compose_runs_as_a_user_runs_it_and_prints_its_timings_without_a_progress_bar_off_a_terminal(
        composed_run, folder_data, tmp_path, smoke_run):
    import subprocess
    import sys

    command = [sys.executable, "-m", "latent_ops.compose", "horse+wings", "--run", str(composed_run), "--data",
               str(folder_data), "--cache_dir", str(smoke_run.parent / "cache"), "--n", "4", "--pool", "8",
               "--refine_steps", "2", "--precision", "fp32", "--out", str(tmp_path / "cli")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("seconds:"))
    for stage in ("setup", "sampling", "ranking", "refinement", "writing", "fp32", "ab2, 12 steps", "8 refined"):
        assert stage in line, line
    assert "\r" not in done.stderr and "it/s" not in done.stderr  # tqdm stays quiet when output is not a terminal
    assert json.loads((tmp_path / "cli" / "scores.json").read_text())["precision"] == "fp32"

