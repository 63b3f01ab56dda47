"""Choosing the best image by agreement of two readings and the regional reading (latent_ops.best_choice), on small
inputs, and compose --best run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from latent_ops.best_choice import agreement, best_first, choice_score, eligible, reads_as_subject, regional_reading

ROOT = Path(__file__).resolve().parent.parent


def test_agreement_is_only_as_high_as_the_reading_that_likes_a_candidate_less():
    evaluator = {"horse": torch.tensor([0.9, 0.5, 0.5]), "wings": torch.tensor([0.9, 0.5, 0.1])}
    perceptual = {"horse": torch.tensor([0.1, 0.5, 0.5]), "wings": torch.tensor([0.9, 0.5, 0.9])}
    agree = agreement(evaluator, perceptual)
    assert torch.allclose(agree, torch.tensor([0.3, 0.5, (0.5 * 0.1) ** 0.5]), atol=1e-5)
    assert agree.argmax() == 1, "one classifier's maximum (candidate 0) does not win when the other disagrees"
    assert agreement({"horse": torch.tensor([0.4])}, {"cat": torch.tensor([0.9])}).tolist() == [1.0]


def test_the_regional_reading_wants_the_body_below_and_the_wings_on_top():
    cams = torch.zeros(3, 10, 3, 3)
    horse, bird, plane = 7, 2, 0
    cams[0, horse, 1:] = 1.0  # the body fills the lower rows...
    cams[0, plane, 0] = 1.0  # ...and the wing reading is all in the top row
    cams[1, horse, 1:] = 1.0
    cams[1, bird, 2] = 1.0  # the wing reading is at the legs: a bird standing, not a wing above the back
    cams[2, horse] = 1.0  # horse everywhere, wings too
    cams[2, bird] = 1.0
    reading = regional_reading(cams, horse, [bird, plane])
    assert reading[0] == 1.0 and reading[1] == 0.0
    assert torch.isclose(reading[2], torch.tensor(2 / 3 * 1 / 3))
    cams[0, horse, 0] = -5.0  # negative evidence is no evidence: it neither adds nor takes away
    assert regional_reading(cams, horse, [bird, plane])[0] == 1.0


def test_the_chosen_four_move_to_the_front_and_the_rest_keep_their_order():
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    score = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.95, 0.2])
    allowed = torch.tensor([True, True, True, False, False, True])
    moved = best_first(order, score, allowed, count=2)
    assert moved.tolist() == [0, 2, 5, 4, 3, 1], "4 scores highest but is not allowed; 0 and 2 lead"
    assert sorted(moved.tolist()) == list(range(6))
    assert best_first(order, score, torch.zeros(6, dtype=torch.bool)).tolist() == order.tolist()


def test_only_refined_gated_and_realistic_candidates_are_eligible():
    refined = torch.tensor([True, True, True, True, False])
    gated = torch.tensor([True, True, True, False, True])
    realism = torch.tensor([0.1, 0.5, 0.9, 2.0, 3.0])
    assert eligible(refined, gated, realism).tolist() == [False, True, True, False, False]
    assert choice_score(torch.tensor([0.5]), torch.tensor([0.25])).item() == 0.25


def test_the_best_is_chosen_among_those_that_read_as_the_subject_at_least_as_well_as_their_median():
    allowed = torch.tensor([True, True, True, True, False])
    horse = torch.tensor([0.2, 0.5, 0.4, 0.6, 0.9])
    assert reads_as_subject(allowed, horse).tolist() == [False, True, True, True, False]  # the lower median, 0.4
    assert not reads_as_subject(torch.zeros(3, dtype=torch.bool), torch.ones(3)).any()


def test_compose_best_agreement_records_both_readings_and_the_showcase_shows_four(tmp_path):
    from PIL import Image

    runs = {}
    for rule in ("agreement", "rank"):
        out = tmp_path / rule
        done = subprocess.run([sys.executable, "-m", "latent_ops.compose", "pegasus", "--run", "models/pegasus-cifar10",
                               "--data", "no-data", "--pool", "96", "--n", "16", "--refine_top", "24", "--repel", "0",
                               "--refine_steps", "1", "--best", rule, "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-800:]
        # the shipped recipe's negative, said where it ran; its push is off here (--repel 0): in a pool of 96 it
        # leaves fewer than four candidates the rule may choose, and the rest keep the ranking's order
        assert "12 steps, away from deer;" in done.stdout
        runs[rule] = json.loads((out / "scores.json").read_text())["candidates"]
    chosen, ranked = runs["agreement"], runs["rank"]
    read = [c for c in chosen if "best_score" in c]
    realistic = sorted(c["realism"] for c in read if c["passed_gate"])
    median = realistic[(len(realistic) - 1) // 2]
    allowed = [c for c in read if c["passed_gate"] and c["realism"] >= median]
    horse = sorted(min(c["intent_terms"]["horse"], c["second_reading"]["horse"]) for c in allowed)
    floor = horse[(len(horse) - 1) // 2]  # both readings of the horse at least their median: a horse first
    may = sorted((c["best_score"] for c in allowed
                  if min(c["intent_terms"]["horse"], c["second_reading"]["horse"]) >= floor), reverse=True)
    lead = chosen[:min(4, len(may))]  # up to four chosen by the rule (a small pool may allow fewer)
    assert lead and all(c["refined"] and c["passed_gate"] for c in lead)
    assert all(set(c["second_reading"]) == set(c["intent_terms"]) == {"horse", "wings"} for c in lead)
    assert [c["best_score"] for c in lead] == may[:len(lead)]  # the highest scores the rule allows, highest first
    assert all(min(c["intent_terms"]["horse"], c["second_reading"]["horse"]) >= floor for c in lead)
    assert [c["best_chosen"] for c in chosen] == [True] * len(lead) + [False] * (len(chosen) - len(lead))
    assert all("second_reading" not in c and "best_chosen" not in c for c in ranked)
    assert [c["candidate"] for c in chosen[len(lead):]] == [c["candidate"] for c in ranked if c["candidate"] not in
                                                     {x["candidate"] for x in lead}], "the rest keep the ranking"
    with Image.open(tmp_path / "agreement" / "showcase.png") as showcase:
        assert showcase.size[1] > 700, "the best four sit in a row of their own, under the best and the batch"
    bad = subprocess.run([sys.executable, "-m", "latent_ops.compose", "horse", "--best", "evaluator"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--best" in bad.stderr and "agreement" in bad.stderr


def test_the_rise_gate_keeps_the_upper_share_and_a_note_shows_rise_and_each_reading():
    from latent_ops.compose_files import leader_note
    from latent_ops.ranking import at_least_quantile

    rise = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert at_least_quantile(rise, 0.5).tolist() == [False] * 4 + [True] * 4
    assert at_least_quantile(rise, 0.0).all()
    note = leader_note({"realism": 0.56, "rise": 0.81, "regional_reading": 0.03, "intent_terms": {"horse": 0.22,
                        "wings": 0.5}, "second_reading": {"horse": 0.25, "wings": 0.39}})
    assert note.splitlines() == ["realism 0.56", "rise 0.81, regional 0.03", "evaluator | perceptual",
                                 "horse 0.22 | 0.25", "wings 0.50 | 0.39"]
