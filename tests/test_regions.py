"""Regional composition: masked conditions and drifts in the flow, regions inside conjunctions, the
subject-following placement, and the convolutional prior."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fit_toy_flow
from torch import nn

from latent_ops.expression import ExpressionError, parse, term_parts, to_text
from latent_ops.flow import (Baseline, Condition, ConvVelocityNet, Drift, Schedule, Velocity, VelocityNet, guided_velocity,
                             integrate, sample, with_extra_label)
from latent_ops.placement import SubjectPlacer, cells_above, subject_cells


class KnownVelocity(nn.Module):
    """A toy flow whose velocity is the label everywhere: v(x, t, k) = k (and 10 with no condition)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim, self.classes = dim, 10
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("spread", torch.full((dim,), 2.0))

    unconditional = 10

    def forward(self, x, t, labels):
        return labels[:, None].float().expand(-1, self.dim).clone()

    def unstandardise(self, x):
        return x * self.spread + self.mean


def top_rows(rows: int, shape=(2, 4, 4)) -> torch.Tensor:
    mask = torch.zeros(shape)
    mask[:, :rows] = 1
    return mask.flatten()


def test_a_regional_condition_changes_only_the_velocity_of_its_cells():
    net, x = KnownVelocity(), torch.randn(3, 32)
    mask = top_rows(2)
    v = guided_velocity(net, x, 0.5, [Condition(7, 2.0), Condition(0, 3.0, mask)])
    inside, outside = v[:, mask.bool()], v[:, ~mask.bool()]
    assert torch.allclose(outside, torch.full_like(outside, 10 + 2 * (7 - 10)))  # horse everywhere only
    assert torch.allclose(inside, torch.full_like(inside, 10 + 2 * (7 - 10) + 3 * (0 - 10)))
    # A per-candidate mask (B, D): each row its own cells; a drift pushes only inside its mask.
    rows = torch.stack([top_rows(1), top_rows(2), top_rows(0)])
    v = guided_velocity(net, x, 0.5, [Condition(0, 1.0, rows)])
    assert torch.equal(v == 0, rows.bool())
    drift = guided_velocity(net, x, 0.5, [Drift(torch.ones(32), mask)]) - guided_velocity(net, x, 0.5, [])
    assert torch.allclose(drift, mask / 2.0)  # code units over the spread: standardised units
    # Plain (label, weight) pairs still mean a condition everywhere.
    assert torch.equal(guided_velocity(net, x, 0.5, [(3, 1.0)]), guided_velocity(net, x, 0.5, [Condition(3, 1.0)]))


def test_a_baseline_replaces_no_condition_as_what_guidance_pushes_away_from():
    net, x = KnownVelocity(), torch.randn(3, 32)
    mask = top_rows(2)
    v = guided_velocity(net, x, 0.5, [Condition(7, 2.0), Condition(0, 3.0, mask), Baseline(4)])
    inside, outside = v[:, mask.bool()], v[:, ~mask.bool()]
    assert torch.allclose(outside, torch.full_like(outside, 4 + 2 * (7 - 4)))  # v(b) + w (v(c) - v(b))
    assert torch.allclose(inside, torch.full_like(inside, 4 + 2 * (7 - 4) + 3 * (0 - 4)))
    assert torch.allclose(guided_velocity(net, x, 0.5, [Baseline(4)]), torch.full((3, 32), 4.0))  # alone: its own
    # One condition of weight 1 is its own velocity with or without a baseline; outside the guidance interval the
    # baseline is dropped with the extrapolation (the conditions mix; nothing is pushed away from).
    assert torch.equal(guided_velocity(net, x, 0.5, [Condition(7, 1.0), Baseline(4)]), torch.full((3, 32), 7.0))
    outside_interval = Velocity(net, [Condition(7, 2.0), Condition(0, 3.0, mask), Baseline(4)],
                                Schedule(4, "ab2", 0.0, 0.5))
    assert torch.equal(outside_interval(x, 0.8), guided_velocity(net, x, 0.8, [Condition(7, 0.4), Condition(0, 0.6, mask)]))


def test_a_baseline_costs_no_evaluation_and_steers_a_trained_flow_away_from_its_class():
    torch.manual_seed(0)
    codes = torch.cat([torch.randn(600, 4) * 0.3 + c for c in (torch.tensor([2.0, 0, 0, 0]), torch.tensor([0, 2.0, 0, 0]),
                                                               torch.tensor([-2.0, 0, 0, 0]))])
    labels = torch.arange(3).repeat_interleave(600)
    net = VelocityNet(4, 3, hidden=64, blocks=2)
    fit_toy_flow(net, codes, labels, codes[::7], labels[::7], steps=600)
    sizes = []
    real = net.forward
    net.forward = lambda x, t, lab: sizes.append(len(x)) or real(x, t, lab)
    g = torch.Generator()
    plain = sample(net, 200, [(0, 2.0)], 12, g.manual_seed(5))
    plain_sizes, sizes[:] = list(sizes), []
    away = sample(net, 200, [(0, 2.0), Baseline(1)], 12, g.manual_seed(5))
    assert sizes == plain_sizes  # the baseline takes the unconditional branch's place: no extra evaluation
    # Pushed away from class 1 (at +y), the class-0 samples sit lower in y than under plain guidance.
    assert away[:, 1].mean() < plain[:, 1].mean() - 0.1, (away[:, 1].mean(), plain[:, 1].mean())
    centres = torch.stack([codes[i * 600:(i + 1) * 600].mean(0) for i in range(3)])
    assert (torch.cdist(away, centres).argmin(1) == 0).float().mean() > 0.95  # still nearest class 0


def test_the_placer_is_called_once_part_way_with_the_denoised_estimate():
    net, calls = KnownVelocity(), []

    def placer(estimate, guides):
        calls.append(estimate.clone())
        return [Condition(0, 1.0)]

    x = integrate(net, torch.zeros(2, 32), 0.0, [Condition(7, 1.0)], steps=10, placer=placer, place_at=0.4)
    assert len(calls) == 1
    assert torch.allclose(calls[0], torch.full((2, 32), 7.0 * 2.0))  # x + (1 - t) v = 0.4*7 + 0.6*7, unstandardised
    assert torch.allclose(x, torch.full((2, 32), 0.4 * 7 + 0.6 * 0))  # then label 0's velocity


def blob_images(positions, size=10, seed=0):
    """Grey pictures with a dark square of ``size`` pixels at each (top, left)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.02 * torch.randn(len(positions), 3, 32, 32, generator=g)
    for i, (top, left) in enumerate(positions):
        images[i, :, top:top + size, left:left + size] = -0.8
    return images


def test_the_following_mask_lands_above_a_blob_at_random_positions():
    g = torch.Generator().manual_seed(1)
    positions = [(int(torch.randint(10, 22, (1,), generator=g)), int(torch.randint(0, 22, (1,), generator=g)))
                 for _ in range(30)]
    images = blob_images(positions)
    subject = subject_cells(images, None, (4, 4))
    above = cells_above(subject)
    for i, (top, left) in enumerate(positions):
        blob_columns = {c for c in range(4) if 8 * c < left + 10 and 8 * c + 8 > left}
        chosen = above[i].nonzero().tolist()
        assert chosen, (top, left)
        for r, c in chosen:
            assert c in blob_columns and 8 * r < top, (top, left, r, c)  # in the blob's columns, above its top
            assert r >= top // 8 - 2  # just above, not at the far top of a tall sky
        assert not (above[i] & subject[i]).any()
        assert subject[i, (top + 5) // 8, (left + 5) // 8]  # the blob's centre cell is the subject's
    # A blob that reaches the top row gets its top row; a picture with nothing in it the top two rows.
    reaching = cells_above(subject_cells(blob_images([(0, 12)]), None, (4, 4)))
    assert reaching[0, 0].any() and not reaching[0, 1:].any()
    nothing = cells_above(torch.zeros(1, 4, 4, dtype=torch.bool))
    assert nothing[0, :2].all() and not nothing[0, 2:].any()


class Painter(nn.Module):
    """"Decodes" a code (B, 2*4*4) to a blob whose top-left pixel is where the code's first two numbers say."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, codes):
        return blob_images([(int(c[0]), int(c[1])) for c in codes], size=12)


def test_the_subject_placer_gives_back_conditions_the_cells_above_each_subject():
    placer = SubjectPlacer(Painter(), None, 7, (2, 4, 4))
    estimate = torch.zeros(2, 32)
    estimate[0, :2] = torch.tensor([18.0, 2.0])  # a blob low on the left
    estimate[1, :2] = torch.tensor([9.0, 18.0])  # a blob on the right
    guides = placer(estimate, [Condition(7, 2.0), Condition(0, 3.0, top_rows(2), "back"), Drift(torch.ones(32), None, "top")])
    assert guides[0].mask is None and guides[2].mask is None  # only the following region is placed
    mask = guides[1].mask.view(2, 2, 4, 4)
    assert torch.equal(mask[:, 0].bool(), placer.cells) and torch.equal(mask[:, 0], mask[:, 1])
    assert placer.cells[0, :2, :2].any() and not placer.cells[0, :, 3].any()
    assert placer.cells[1, 0, 2:].any() and not placer.cells[1, :, 0].any()


def test_body_conditions_get_the_subjects_own_cells_and_back_ones_the_cells_above_in_the_same_call():
    placer = SubjectPlacer(Painter(), None, 7, (2, 4, 4))
    estimate = torch.zeros(2, 32)
    estimate[0, :2] = torch.tensor([18.0, 2.0])
    estimate[1, :2] = torch.tensor([9.0, 18.0])
    white = torch.ones(32)
    guides = placer(estimate, [Condition(7, 2.0), Drift(white, top_rows(2), "body"), Condition(0, 3.0, top_rows(2), "back")])
    body, back = guides[1].mask.view(2, 2, 4, 4).bool(), guides[2].mask.view(2, 2, 4, 4).bool()
    images = Painter()(estimate)
    subject = subject_cells(images, None, (4, 4))
    assert torch.equal(body[:, 0], subject) and torch.equal(body[:, 1], subject)  # every channel of those cells
    assert torch.equal(back[:, 0], cells_above(subject)) and not (body & back).any()
    assert torch.equal(placer.cells, subject)  # the first following region is the one shown
    (term,) = parse("pegasus&2*white@body&4*white@back", ["pegasus", "white"])
    assert term_parts(term).conjunction == (("pegasus", 1.0), ("white@body", 2.0), ("white@back", 4.0))


def test_regions_inside_conjunctions_round_trip_and_bad_forms_are_named():
    for text in ("horse&airplane@top", "horse&1.5*wings@back&white@back", "horse:white&bird:flight@above",
                 "0.5*(horse&airplane@back)+wings@top"):
        weights = parse(text)
        assert parse(to_text(weights)) == weights
    parts = term_parts("horse&1.5*wings@back&white@back").conjunction
    assert parts == (("horse", 1.0), ("wings@back", 1.5), ("white@back", 1.0))
    with pytest.raises(ExpressionError, match="one part that is everywhere"):
        parse("airplane@top&bird@back")
    with pytest.raises(ExpressionError, match="unknown region 'wing'"):
        parse("horse&airplane@wing")


def toy_grid_bank(n=512, seed=0):
    """Two classes of (1, 2, 2) codes: class 0 bright on the left column, class 1 on the right."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, -3, 3, -3], [-3.0, 3, -3, 3]])
    labels = torch.arange(n) % 2
    return centres[labels] + 0.3 * torch.randn(n, 4, generator=g), labels, centres


def test_the_convolutional_prior_learns_and_samples_each_class_nearer_its_own():
    torch.manual_seed(0)
    codes, labels, centres = toy_grid_bank()
    net = ConvVelocityNet((1, 2, 2), 10, channels=16, blocks=2, hidden=32)
    held, held_labels, _ = toy_grid_bank(512, seed=9)
    before, after = fit_toy_flow(net, codes, labels, held, held_labels, steps=400)
    assert after < 0.7 * before
    for label in (0, 1):
        drawn = sample(net, 200, [(label, 1.0)], steps=16, generator=torch.Generator().manual_seed(label))
        distances = torch.cdist(drawn, centres)
        assert (distances[:, label] < distances[:, 1 - label]).float().mean() > 0.95
    with pytest.raises(ValueError, match="spatial"):
        ConvVelocityNet((16,), 10)


def test_an_extra_label_starts_as_no_condition_and_keeps_the_old_ones():
    net = ConvVelocityNet((2, 4, 4), 10, channels=16, blocks=1, hidden=32).eval()
    with torch.no_grad():
        net.label.weight.normal_()
        net.blocks[0].conv2.weight.normal_(std=0.1)
    grown = with_extra_label(net).eval()
    x, t = torch.randn(4, 32), torch.full((4,), 0.3)
    assert grown.classes == 11 and grown.unconditional == 11
    for label in (0, 7):
        same = torch.full((4,), label)
        assert torch.allclose(grown(x, t, same), net(x, t, same))
    assert torch.allclose(grown(x, t, torch.full((4,), 11)), net(x, t, torch.full((4,), 10)))
    assert torch.allclose(grown(x, t, torch.full((4,), 10)), net(x, t, torch.full((4,), 10)))


def test_a_cluster_in_a_conjunction_pushes_by_its_offset_from_its_class():
    import numpy as np

    from latent_ops.concepts import Concepts, Gaussian
    from latent_ops.flow import Condition, Drift
    from latent_ops.sampling import DrawSettings, Sources, conjunction_guides

    def gaussian(mean):
        return Gaussian(np.array(mean, dtype=np.float64), np.eye(2))

    concepts = Concepts(densities={"horse": [(0.75, gaussian([0, 0])), (0.25, gaussian([4, 0]))],
                                   "horse:0": [(1.0, gaussian([0, 0]))], "horse:white": [(1.0, gaussian([4, 2]))],
                                   "bird": [(1.0, gaussian([9, 9]))]})
    sources = Sources(concepts, code_shape=(2,))
    settings = DrawSettings(guidance=2.0, strength=0.5)
    plain = conjunction_guides((("bird", 1.0), ("horse", 1.0)), sources, settings)
    white = conjunction_guides((("bird", 1.0), ("horse:white", 3.0)), sources, settings)
    first = conjunction_guides((("bird", 1.0), ("horse:0", 1.0)), sources, settings)
    assert plain == [Condition(2, 2.0, None, ""), Condition(7, 2.0, None, "")]  # a class: its label alone
    assert white[:2] == [Condition(2, 2.0, None, ""), Condition(7, 6.0, None, "")]
    assert isinstance(white[2], Drift) and white[2].vector.tolist() == [3 * 0.5 * 3.0, 3 * 0.5 * 2.0]
    assert first[2].vector.tolist() == [-0.5, 0.0]  # the class's mean is (1, 0): the clusters differ


def test_a_region_inside_a_conjunction_on_a_flat_code_is_the_clear_error():
    from latent_ops.concepts import Concepts
    from latent_ops.sampling import DrawSettings, Sources, conjunction_guides

    sources = Sources(Concepts(densities={"horse": [], "airplane": []}), code_shape=(16,))
    with pytest.raises(ExpressionError, match="this run's code is flat"):
        conjunction_guides((("horse", 1.0), ("airplane@top", 1.0)), sources, DrawSettings())


@pytest.fixture(scope="module")
def learned_run(smoke_run, folder_data, tmp_path_factory):
    """A copy of the smoke run with its bank, concepts, a tiny prior and a concept learned from horse&bird."""
    import shutil

    from latent_ops.encode import encode_run
    from latent_ops.learn import learn, make_learn_config
    from latent_ops.prior import make_prior_config, train_prior
    from latent_ops.run_concepts import fit_run_concepts

    run = tmp_path_factory.mktemp("learn") / "run"
    shutil.copytree(smoke_run, run)
    cache = str(smoke_run.parent / "cache")
    encode_run(run, str(folder_data), cache_dir=cache, progress=False)
    fit_run_concepts(run, str(folder_data), cache)
    train_prior(make_prior_config(run=str(run), data=str(folder_data), cache_dir=cache, hidden=32, blocks=1,
                                  steps=60, batch_size=32, log_every=30, checkpoint_every=60), progress=False)
    folder = learn(make_learn_config(name="pegasus", run=str(run), expression="horse&bird", pool=64, chunk=32,
                                     prior_steps=4, accept="horse>=0,wings>=0", critic_quantile=0.2,
                                     sharpness_quantile=0.2, min_accepted=8, steps=40, batch_size=32), quiet=True)
    return run, folder, cache


def test_learn_adds_a_label_that_compose_draws_and_keeps_the_old_ones(learned_run, folder_data, tmp_path):
    import json

    from latent_ops.compose import compose
    from latent_ops.trained_prior import learned_names, load_learned, load_prior

    run, folder, cache = learned_run
    record = json.loads((folder / "record.json").read_text())
    assert record["accepted"] >= 8 and record["trained_on"] == 2 * record["accepted"]  # and their mirror images
    assert max(record["old_label_samples_moved"].values()) < 0.35  # old labels keep their samples
    assert json.loads((folder / "config.json").read_text())["accept"] == "horse>=0,wings>=0"
    assert learned_names(run) == ["pegasus"]
    net, base = load_learned(run, "pegasus"), load_prior(run)
    assert net.classes == base.classes + 1 and net.label_names[-1] == "pegasus"
    new = sample(net, 64, [(10, 2.0)], 8, torch.Generator().manual_seed(0))
    horse = sample(net, 64, [(7, 2.0)], 8, torch.Generator().manual_seed(0))
    assert not torch.allclose(new, horse)  # the new label is a condition of its own
    out = compose("pegasus", run=str(run), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4,
                  refine_steps=1, out=str(tmp_path / "pegasus"), quiet=True)
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["pool"]["intent_terms"]) == {"horse", "bird"}  # scored as what it was learned from
    out = compose("pegasus&bird", run=str(run), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4,
                  refine_steps=1, out=str(tmp_path / "pegasus-bird"), quiet=True)
    assert json.loads((out / "scores.json").read_text())["candidates_composed"] == 8


def test_learning_into_a_shipped_model_warns_when_it_outgrows_the_size_limit(learned_run, folder_data, tmp_path,
                                                                               monkeypatch, capsys):
    import shutil

    from latent_ops import learn as learn_module

    run, _, _ = learned_run
    shipped = tmp_path / "shipped"
    shutil.copytree(run, shipped)
    (shipped / "ship.json").write_text("{}")  # what makes it a shipped model
    monkeypatch.setattr(learn_module, "SIZE_LIMIT", 1024)
    folder = learn_module.learn(learn_module.make_learn_config(
        name="pegasus2", run=str(shipped), expression="horse&bird", pool=64, chunk=32, prior_steps=4,
        accept="horse>=0,wings>=0", critic_quantile=0.2, sharpness_quantile=0.2, min_accepted=8, steps=4,
        batch_size=32), quiet=True)
    err = capsys.readouterr().err
    assert (folder / "model.safetensors").exists(), "the concept is learned all the same"
    assert "over the 0 MiB a shipped model may take" in err and str(shipped) in err


def test_learning_goes_on_from_a_learned_concept_with_the_rising_mass_in_its_rule(learned_run, tmp_path):
    import json

    import latent_ops.learn as learn_module
    from latent_ops.learn import accept, learn, make_learn_config

    run, _, _ = learned_run
    config = make_learn_config(name="pegasus", run=str(run), out=str(tmp_path / "again"), expression="horse&bird",
                               warm_start="pegasus", pool=64, chunk=32, prior_steps=4, solver="ab2",
                               accept="horse>=0,wings>=0", critic_quantile=0.2, sharpness_quantile=0.2,
                               rise_quantile=0.5, min_accepted=4, steps=4, batch_size=32)
    seen = []
    original = learn_module.compose_pool
    learn_module.compose_pool = lambda c, n, sources, p, expression, *rest: seen.append(
        (expression, sources.prior.label_names[-1])) or original(c, n, sources, p, expression, *rest)
    try:
        folder = learn(config, quiet=True)
    finally:
        learn_module.compose_pool = original
    assert seen == [("pegasus", "pegasus")]  # the first pool came from the concept learned before, by its label
    record = json.loads((folder / "record.json").read_text())
    assert record["rise_quantile"] == 0.5 and record["rounds"][0]["expression"] == "pegasus"
    pool = {"probabilities": torch.full((6, 10), 0.1), "realism": torch.zeros(6), "sharpness": torch.zeros(6),
            "rise": torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])}
    assert accept(pool, config).tolist() == [False, False, False, True, True, True]
    config.accept = "horse>=0"  # a rule without wings asks for no wing to rise
    assert accept(pool, config).all()
    pool["pale_subject"] = torch.tensor([0.9, 0.9, 0.2, 0.9, 0.9, 0.9])
    pool["pale_wing"] = torch.tensor([0.9, 0.1, 0.9, 0.7, 0.5, 0.9])
    config.accept = "horse>=0,pale_subject>=0.6,pale_wing>=0.6"  # read from the pixels, not a classifier
    assert accept(pool, config).tolist() == [True, False, False, True, False, True]


def test_learning_from_several_sources_splits_the_pool_and_accepts_each_against_its_own_quantiles(
        learned_run, tmp_path):
    import json
    import shutil

    import latent_ops.learn as learn_module
    from latent_ops.intent import expand_learned
    from latent_ops.learn import accept, learn, make_learn_config

    run, _, _ = learned_run
    config = make_learn_config(name="winged", run=str(run), out=str(tmp_path / "winged"),
                               expression="horse&bird | horse&cat|bird", pool=65, chunk=16, prior_steps=4,
                               solver="ab2", accept="horse>=0,wings>=0", critic_quantile=0.5, sharpness_quantile=0.0,
                               min_accepted=4, steps=4, batch_size=32, rounds=2)
    seen = []
    original = learn_module.compose_pool
    learn_module.compose_pool = lambda c, n, sources, p, expression, *rest: seen.append(
        (expression, c.pool)) or original(c, n, sources, p, expression, *rest)
    try:
        folder = learn(config, quiet=True)
    finally:
        learn_module.compose_pool = original
    # the first round's 65 split 22 / 22 / 21 between the sources; the second composes from the learned label
    assert seen == [("horse&bird", 22), ("horse&cat", 22), ("bird", 21), ("winged", 65)]
    record = json.loads((folder / "record.json").read_text())
    first = record["rounds"][0]
    assert [s["expression"] for s in first["sources"]] == ["horse&bird", "horse&cat", "bird"]
    assert [s["composed"] for s in first["sources"]] == [22, 22, 21]
    assert sum(s["accepted"] for s in first["sources"]) == first["accepted"]
    assert all(s["accepted"] >= 10 for s in first["sources"])  # the critic's median of each source's own share
    assert "sources" not in record["rounds"][1]
    # compose scores such a concept as its first source asked for
    beside = tmp_path / "run-like"
    (beside / "learned").mkdir(parents=True)
    shutil.copytree(folder, beside / "learned" / "winged")
    assert expand_learned({"winged": 1.0}, beside, ["winged"]) == {"horse&bird": 1.0}
    # per-source quantiles: a source whose realism is all low still gives its best half
    pool = {"probabilities": torch.full((6, 10), 0.1), "realism": torch.tensor([0.0, 0.1, 0.2, 5.0, 6.0, 7.0]),
            "sharpness": torch.zeros(6), "rise": torch.zeros(6), "part": torch.tensor([0, 0, 0, 1, 1, 1])}
    assert accept(pool, config).tolist() == [False, True, True, False, True, True]
    del pool["part"]  # one source: the pool's own median
    assert accept(pool, config).tolist() == [False, False, False, True, True, True]


def test_learning_accepts_by_the_judge_of_marks_within_each_source_and_refuses_a_missing_judge(learned_run, tmp_path):
    import json

    import numpy as np

    from autoencoder.classifier import load_perceptual
    from autoencoder.run_folder import RunError
    from latent_ops.learn import accept, learn, make_learn_config
    from latent_ops.mark_judge import LAYOUT, MarkJudge, judge_folder, save_judge

    run, _, _ = learned_run
    width = load_perceptual().feature_dim + 10 * 9 + 1 + 2 * LAYOUT * LAYOUT
    weights = np.zeros(width)
    weights[-LAYOUT * LAYOUT:] = 1.0  # a judge whose marks follow the grey level: brighter pictures are marked
    flags = dict(name="marked", run=str(run), expression="horse&bird | bird", pool=64, chunk=32, prior_steps=4,
                 solver="ab2", accept="horse>=0,wings>=0", critic_quantile=0.0, sharpness_quantile=0.0,
                 marks="bright", mark_quantile=0.5, min_accepted=4, steps=4, batch_size=32)
    with pytest.raises(RunError, match="no judge of by-eye marks for 'bright'.*learn_marks"):
        learn(make_learn_config(**flags, out=str(tmp_path / "none")), quiet=True)
    assert not (tmp_path / "none").exists()  # refused before anything was claimed
    from autoencoder.cli import ConfigError

    with pytest.raises(ConfigError, match="cannot name a folder"):
        learn(make_learn_config(**{**flags, "marks": "../up"}, out=str(tmp_path / "up")), quiet=True)
    assert not (tmp_path / "up").exists()
    save_judge(MarkJudge(np.zeros(width), np.ones(width), weights, 0.0, "bright", "bright"),
               judge_folder(run, "bright"), {})
    folder = learn(make_learn_config(**flags, out=str(tmp_path / "marked")), quiet=True)
    record = json.loads((folder / "record.json").read_text())
    assert (record["marks"], record["mark_quantile"]) == ("bright", 0.5)
    first = record["rounds"][0]
    assert [s["accepted"] for s in first["sources"]] == [16, 16]  # the judge's upper half of each source's 32
    assert first["mark_mean_of_accepted"] > first["mark_mean_of_pool"]
    pool = {"probabilities": torch.full((6, 10), 0.1), "realism": torch.zeros(6), "sharpness": torch.zeros(6),
            "rise": torch.zeros(6), "mark": torch.tensor([0.9, 0.1, 0.5, 0.2, 0.3, 0.8]),
            "part": torch.tensor([0, 0, 0, 1, 1, 1])}
    assert accept(pool, make_learn_config(**flags)).tolist() == [True, False, True, False, True, True]


def test_learn_refuses_the_evaluator_as_judge_and_bad_rules():
    from autoencoder.cli import ConfigError
    from latent_ops.learn import make_learn_config

    with pytest.raises(ConfigError, match="evaluator measures the results"):
        make_learn_config(judge="evaluator")
    with pytest.raises(ConfigError, match="not CLASS>=NUMBER"):
        make_learn_config(accept="unicorn>=0.3")
    with pytest.raises(ConfigError, match="not be a CIFAR-10 class"):
        make_learn_config(name="horse")
    with pytest.raises(ConfigError, match="pale_wing>=NUMBER"):
        make_learn_config(accept="pale_sky>=0.5")
    assert make_learn_config(accept="horse>=0.3,pale_wing>=0.6").accept == "horse>=0.3,pale_wing>=0.6"
    with pytest.raises(ConfigError, match="--solver must be one of"):
        make_learn_config(solver="euler")
    with pytest.raises(ConfigError, match="--rise_quantile must be between"):
        make_learn_config(rise_quantile=1.0)
    with pytest.raises(ConfigError, match="source 2 of 3 is empty"):
        make_learn_config(expression="horse&bird | | bird")
    with pytest.raises(ConfigError, match="cannot be split between the 3 sources"):
        make_learn_config(expression="horse | bird | airplane", pool=2)
    with pytest.raises(ConfigError, match="--mark_quantile 0.5 needs --marks"):
        make_learn_config(mark_quantile=0.5)
    with pytest.raises(ConfigError, match="--mark_quantile must be between"):
        make_learn_config(marks="pegasus", mark_quantile=1.0)


def test_a_prior_out_folder_that_is_not_a_prior_is_refused_before_any_work(tmp_path):
    from autoencoder.cli import ConfigError
    from latent_ops.prior import claim_prior_folder

    claim_prior_folder(tmp_path / "new")  # a new folder is fine
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds notes.txt"):
        claim_prior_folder(theirs)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a prior's folder"):
        claim_prior_folder(run)
    assert (theirs / "notes.txt").read_text() == "mine" and (run / "config.json").read_text() == "{}"
    prior = tmp_path / "prior"
    prior.mkdir()
    for name in ("config.json", "source.json", ".model.tmp42.safetensors"):
        (prior / name).write_text("{}")
    claim_prior_folder(prior)  # a prior's own folder, with a killed write's temporary, resumes


def test_compose_starts_from_real_pictures_and_carries_them_to_the_expression(learned_run, folder_data, tmp_path,
                                                                              capsys):
    import json

    from safetensors.torch import load_file

    from autoencoder.data import load_split, to_float
    from latent_ops.compose import compose, main as compose_main
    from latent_ops.encode import load_bank
    from latent_ops.run_concepts import load_concepts
    from latent_ops.sampling import DrawSettings, Sources, start_guides
    from latent_ops.trained_prior import load_learned

    run, _, cache = learned_run
    net, concepts = load_learned(run, "pegasus"), load_concepts(run)
    guides, placer = start_guides({"pegasus": 2.0, "wings": 1.0}, Sources(concepts, prior=net),
                                  DrawSettings(guidance=1.5, negative="deer"))
    assert placer is None and guides == [Condition(10, 3.0, None, ""), Condition(0, 1.5, None, ""),
                                         Condition(2, 0.75, None, ""), Baseline(4)]  # a+b read as a&b

    flags = dict(run=str(run), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4, refine_steps=1,
                 quiet=True)
    out = compose("pegasus", start="horse", project=0.6, out=str(tmp_path / "start"), **flags)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["start"] == "horse" and scores["projection_conditions"] == {"pegasus": 2.0}
    test, bank = load_split(folder_data, "test", cache), load_bank(run)
    row_of = {int(i): r for r, i in enumerate(test.indices)}
    images = load_file(str(out / "images.safetensors"))["images"]
    for entry in scores["candidates"]:  # each began as a real held-out horse, and its distance from it is measured
        start = test.images[row_of[entry["source_test_indices"]["horse"]]]
        assert int(test.labels[row_of[entry["source_test_indices"]["horse"]]]) == 7
        expected = (to_float(images[entry["rank"]]) - to_float(start)).pow(2).mean().sqrt().item()
        assert entry["start_distance"] == pytest.approx(expected, abs=1e-5)
    assert set(scores["kept"]) >= {"start_distance_median", "uniqueness_median"}
    assert len(bank.codes["test"]) > 0
    again = compose("pegasus", start="horse", project=0.6, out=str(tmp_path / "again"), **flags)
    assert (again / "batch64.png").read_bytes() == (out / "batch64.png").read_bytes()  # seeded
    near = compose("pegasus", start="horse", project=0.05, out=str(tmp_path / "near"), **flags)
    fresh = compose("pegasus", start="horse", project=1.0, out=str(tmp_path / "fresh"), **flags)
    median = {name: json.loads((f / "scores.json").read_text())["pool"]["start_distance_median"]
              for name, f in [("near", near), ("fresh", fresh)]}
    assert median["near"] < median["fresh"]  # a little noise keeps the picture; all noise forgets it

    for start, message in [("pegasus", "--start pegasus is a learned concept, which has no pictures"),
                           ("unicorn", "--start unicorn is not a class or cluster of this run")]:
        with pytest.raises(SystemExit) as exit_info:
            compose_main("pegasus", start=start, project=0.5, out=str(tmp_path / start), **flags)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / start).exists()


def test_learning_from_real_pictures_starts_every_round_from_held_out_codes_of_the_class(learned_run, tmp_path):
    import json

    import numpy as np

    import latent_ops.learn as learn_module
    from autoencoder.cli import ConfigError
    from latent_ops.encode import load_bank
    from latent_ops.learn import learn, make_learn_config

    run, _, _ = learned_run
    bank = load_bank(run)
    horses = bank.codes["test"][bank.labels["test"] == 7]
    flags = dict(name="fromhorses", run=str(run), warm_start="pegasus", start="horse", start_noise=0.6, pool=32,
                 chunk=16, prior_steps=5, solver="ab2", accept="horse>=0,wings>=0", critic_quantile=0.2,
                 sharpness_quantile=0.2, min_accepted=4, steps=4, batch_size=16, rounds=2)
    carried = []
    original = learn_module.project
    learn_module.project = lambda net, codes, noise, *rest: carried.append((codes.clone(), noise)) or original(
        net, codes, noise, *rest)
    try:
        folder = learn(make_learn_config(**flags, out=str(tmp_path / "fromhorses")), quiet=True)
    finally:
        learn_module.project = original
    assert len(carried) == 4  # two chunks of 16 in each of two rounds
    for codes, noise in carried:  # every candidate began as a real held-out horse, carried 0.6 of the way
        assert noise == 0.6
        assert all(np.abs(horses - code.numpy()).max(1).min() < 1e-6 for code in codes)
    record = json.loads((folder / "record.json").read_text())
    assert (record["start"], record["start_noise"]) == ("horse", 0.6)
    assert [r["expression"] for r in record["rounds"]] == ["pegasus", "fromhorses"]

    with pytest.raises(ConfigError, match="--start 'pegasus' is not a class or cluster"):
        learn(make_learn_config(**{**flags, "start": "pegasus"}, out=str(tmp_path / "bad")), quiet=True)
    assert not (tmp_path / "bad").exists()  # refused before anything was claimed
    with pytest.raises(ConfigError, match="--start_noise must be between"):
        make_learn_config(**{**flags, "start_noise": 0.0})


def test_a_concept_learned_from_a_warm_start_shows_what_that_concept_was_learned_from(tmp_path):
    import json

    from autoencoder.run_folder import RunError
    from latent_ops.trained_prior import learned_expression

    def learned(name, **config):
        (tmp_path / "learned" / name).mkdir(parents=True)
        (tmp_path / "learned" / name / "config.json").write_text(json.dumps(config))

    learned("first", expression="horse&bird | horse:white&bird")
    learned("again", expression="horse&wings@back", warm_start="first")  # its pools came from first's label
    learned("later", expression="cat", warm_start="again")
    learned("itself", expression="horse&deer", warm_start="itself")  # learned again over its own folder
    learned("loop_a", expression="horse&cat", warm_start="loop_b")
    learned("loop_b", expression="horse&dog", warm_start="loop_a")
    learned("gone", expression="horse&ship", warm_start="removed")
    assert [learned_expression(tmp_path, n) for n in ("first", "again", "later", "itself", "gone")] == [
        "horse&bird", "horse&bird", "horse&bird", "horse&deer", "horse&ship"]
    assert learned_expression(tmp_path, "loop_a") == "horse&dog"  # a chain stops before it comes back
    (tmp_path / "learned" / "broken").mkdir()
    (tmp_path / "learned" / "broken" / "config.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="broken/config.json is missing or damaged"):
        learned_expression(tmp_path, "broken")


def test_particle_guidance_spreads_the_pool_in_the_perceptual_nets_features_and_compose_records_it(
        learned_run, folder_data, tmp_path, capsys):
    import dataclasses
    import json

    import numpy as np

    from autoencoder.classifier import load_perceptual
    from autoencoder.run_folder import load_run
    from latent_ops.compose import compose, main as compose_main
    from latent_ops.run_concepts import load_concepts
    from latent_ops.sampling import DrawSettings, Sources, picture_features, sample_expression
    from latent_ops.trained_prior import load_learned

    run, _, cache = learned_run
    opened = load_run(run)
    perceptual = load_perceptual()
    sources = Sources(load_concepts(run), prior=load_learned(run, "pegasus"), code_shape=opened.code_shape,
                      decoder=opened.nets.decoder, perceptual=perceptual)
    settings = DrawSettings("prior", guidance=2.0, prior_steps=6, solver="ab2")
    pushed_settings = dataclasses.replace(settings, repel=2.0, repel_features=picture_features(sources))

    def feature_spread(settings: DrawSettings) -> float:
        codes, _ = sample_expression({"pegasus": 1.0}, sources, 48, np.random.default_rng(0), settings)
        with torch.no_grad():
            return torch.pdist(perceptual.features(opened.nets.decoder(torch.from_numpy(codes)))).mean().item()

    plain, pushed = feature_spread(settings), feature_spread(pushed_settings)
    assert pushed > 1.05 * plain, (plain, pushed)  # the batch covers more of what the perceptual net sees
    with pytest.raises(ValueError, match="needs the run's prior, decoder and perceptual net"):
        picture_features(Sources(sources.concepts, prior=sources.prior))

    flags = dict(run=str(run), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4, refine_steps=1,
                 quiet=True)
    out = compose("pegasus", repel=1.0, repel_until=0.5, out=str(tmp_path / "repel"), **flags)
    plain_out = compose("pegasus", out=str(tmp_path / "plain"), **flags)
    again = compose("pegasus", repel=1.0, repel_until=0.5, out=str(tmp_path / "again"), **flags)
    config = json.loads((out / "config.json").read_text())
    assert config["repel"] == 1.0 and config["repel_until"] == 0.5
    assert json.loads((out / "scores.json").read_text())["repel"] == [1.0, 0.5]
    assert (out / "batch64.png").read_bytes() != (plain_out / "batch64.png").read_bytes()
    assert (again / "batch64.png").read_bytes() == (out / "batch64.png").read_bytes()  # seeded

    with pytest.raises(SystemExit) as exit_info:  # held-out codes of real pictures: no draws to push apart
        compose_main("horse+wings", repel=1.0, out=str(tmp_path / "held-out"), **flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and not (tmp_path / "held-out").exists()
    assert err.startswith("error: --repel 1.0 pushes draws from the prior apart") and "--source prior" in err


def test_learning_with_repulsion_draws_each_chunk_as_one_batch_pushed_apart_and_records_it(learned_run, tmp_path):
    import json

    import latent_ops.learn as learn_module
    from latent_ops.learn import learn, make_learn_config

    run, _, _ = learned_run
    flags = dict(name="apart", run=str(run), warm_start="pegasus", repel=1.5, pool=32, chunk=16, prior_steps=5,
                 solver="ab2", accept="horse>=0,wings>=0", critic_quantile=0.2, sharpness_quantile=0.2,
                 min_accepted=4, steps=4, batch_size=16)
    drawn = []
    original = learn_module.sample_expression

    def recording(weights, sources, count, rng, settings):
        codes, positions = original(weights, sources, count, rng, settings)
        drawn.append((settings, codes))
        return codes, positions

    learn_module.sample_expression = recording
    try:
        folder = learn(make_learn_config(**flags, out=str(tmp_path / "apart")), quiet=True)
        plain = learn(make_learn_config(**{**flags, "repel": 0.0}, out=str(tmp_path / "plain")), quiet=True)
    finally:
        learn_module.sample_expression = original
    pushed, independent = drawn[:2], drawn[2:]
    assert len(pushed) == 2 and all(s.repel == 1.5 and s.repel_features is not None for s, _ in pushed)
    assert all(s.repel == 0 and s.repel_features is None for s, _ in independent)
    assert all(len(codes) == 16 for _, codes in drawn)  # each chunk is one batch
    assert not all((a == b).all() for (_, a), (_, b) in zip(pushed, independent))  # the push moved the draws
    assert json.loads((folder / "record.json").read_text())["repel"] == 1.5
    assert json.loads((plain / "record.json").read_text())["repel"] == 0.0


def test_a_feature_proxy_learns_a_feature_map_and_the_gradient_the_push_asks_for():
    from latent_ops.feature_proxy import FeatureProxy, gradient_agreement, proxy_loss, pushed_gradient
    from latent_ops.flow import away_from_neighbours
    from latent_ops.learn_proxy import LearnProxyConfig, PushRecorder, train_proxy

    torch.manual_seed(0)
    mixing = torch.randn(32, 6) / 32 ** 0.5

    def features(codes):  # a smooth map standing in for "decode, then read with the perceptual net"
        return torch.tanh(codes @ mixing) * 3 + 1

    blocks = []
    for _ in range(8):
        recorder = PushRecorder(features)
        recorder(torch.randn(64, 32).requires_grad_(True))
        blocks += recorder.blocks
    rows = {key: torch.cat([block[key] for block in blocks]) for key in blocks[0]}
    block = blocks[0]
    read = features(block["codes"].requires_grad_(True))
    expected, = torch.autograd.grad((read * away_from_neighbours(read.detach())).sum(), block["codes"])
    assert torch.allclose(block["gradient"], expected)  # what the push asks of the codes, as block_repulsion takes it

    untrained = FeatureProxy((2, 4, 4), 6, width=8)
    untrained.set_statistics(rows["features"])
    before = proxy_loss(untrained, rows["codes"], rows["features"], rows["push"], rows["gradient"]).item()
    proxy, losses = train_proxy(LearnProxyConfig(steps=300, batch_size=64, lr=3e-3, width=8, seed=0), rows, (2, 4, 4))
    after = proxy_loss(proxy, rows["codes"], rows["features"], rows["push"], rows["gradient"]).item()
    assert len(losses) == 10 and losses[-1] < losses[0] and after < 0.6 * before, (before, after, losses)
    test = PushRecorder(features)
    test(torch.randn(64, 32).requires_grad_(True))
    held = test.blocks[0]
    _, gradient = pushed_gradient(proxy, held["codes"], held["push"])
    _, first = pushed_gradient(untrained, held["codes"], held["push"])
    agree, agreed_before = (gradient_agreement(g, held["gradient"]).mean().item() for g in (gradient, first))
    assert agree > 0.5 and agree > agreed_before + 0.3, (agreed_before, agree)  # on draws it never saw

    flat = FeatureProxy((32,), 6, width=4)
    assert flat(torch.randn(5, 32)).shape == (5, 6) and untrained(torch.randn(5, 32)).shape == (5, 6)
    with pytest.raises(ValueError, match=r"codes of shape \(C, H, W\) or \(D,\), not \(2, 4\)"):
        FeatureProxy((2, 4), 6)


def test_learn_proxy_makes_the_proxy_compose_pushes_through_and_bad_folders_are_refused(learned_run, folder_data,
                                                                                       tmp_path):
    import json
    import math
    import shutil
    import subprocess
    import sys

    from latent_ops.compose import compose, main as compose_main
    from latent_ops.feature_proxy import load_proxy

    run, _, cache = learned_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    command = [sys.executable, "-m", "latent_ops.learn_proxy", "--run", str(copy), "--draws", "1", "--pool", "24",
               "--steps", "20", "--batch_size", "16", "--width", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "held out: gradients agree with the pictures' at cosine" in done.stdout
    record = json.loads((copy / "proxy" / "proxy.json").read_text())
    assert record["expressions"] == ["pegasus"] and record["rows_learned_from"] > 0
    held = record["held_out"]["pegasus"]
    assert -1 <= held["gradient_cosine_mean"] <= 1 and held["rows"] > 0
    assert json.loads((copy / "proxy" / "config.json").read_text())["steps"] == 20
    proxy = load_proxy(copy)
    assert proxy(torch.zeros(3, math.prod(proxy.code_shape))).shape == (3, 128)

    flags = dict(run=str(copy), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4, refine_steps=1, quiet=True)
    through_proxy = compose("pegasus", repel=1.0, repel_until=0.5, out=str(tmp_path / "proxy"), **flags)
    through_pictures = compose("pegasus", repel=1.0, repel_until=0.5, repel_through="pictures",
                               out=str(tmp_path / "pictures"), **flags)
    plain = compose("pegasus", out=str(tmp_path / "plain"), **flags)
    scores = {name: json.loads((folder / "scores.json").read_text())
              for name, folder in [("proxy", through_proxy), ("pictures", through_pictures), ("plain", plain)]}
    assert scores["proxy"]["repel_through"] == "proxy" and scores["pictures"]["repel_through"] == "pictures"
    assert scores["plain"]["repel_through"] == ""
    assert (through_proxy / "batch64.png").read_bytes() != (plain / "batch64.png").read_bytes()
    guarded = compose("pegasus", repel=1.0, repel_until=0.5, repel_toward=1.0, out=str(tmp_path / "guarded"), **flags)
    assert json.loads((guarded / "scores.json").read_text())["repel_guard"] == {"keep": True, "toward": 1.0,
                                                                               "reading": "class"}
    assert scores["proxy"]["repel_guard"] is None
    assert (guarded / "batch64.png").read_bytes() != (through_proxy / "batch64.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:  # a guard with no push to guard: one line, nothing made
        compose_main("pegasus", repel_toward=1.0, out=str(tmp_path / "unpushed"), **flags)
    assert exit_info.value.code == 2 and not (tmp_path / "unpushed").exists()

    (copy / "proxy" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match="does not hold a feature proxy this code reads"):
        load_proxy(copy)
    with pytest.raises(SystemExit) as exit_info:  # asked for by name where the run has none: one line, nothing made
        compose_main("pegasus", repel=1.0, repel_through="proxy", out=str(tmp_path / "none"),
                     **{**flags, "run": str(run)})
    assert exit_info.value.code == 2 and not (tmp_path / "none").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    refused = subprocess.run([*command[:3], "--run", str(copy), "--out", str(mine), "--steps", "1"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "not empty" in refused.stderr
    assert (mine / "notes.txt").read_text() == "keep"


def test_the_class_reading_sums_the_log_probabilities_of_the_expressions_terms(learned_run):
    from latent_ops.intent import class_reading
    from latent_ops.run_concepts import load_concepts

    concepts = load_concepts(learned_run[0])
    logits = torch.randn(5, 10)
    reading = class_reading({"horse&wings@top": 1.0}, concepts, lambda features: features)
    probabilities = torch.softmax(logits, dim=1)
    expected = probabilities[:, 7].log() + (probabilities[:, 2] + probabilities[:, 0]).log()  # horse; bird + airplane
    assert torch.allclose(reading(logits), expected, atol=1e-5)
    features = logits.clone().requires_grad_(True)
    reading(features).sum().backward()
    assert features.grad[:, 7].gt(0).all()  # raising horse's logit raises the reading
    assert class_reading({"white": 1.0}, concepts, lambda features: features) is None  # a direction has no class


def test_compose_guides_its_push_up_the_judge_of_marks_and_the_recipes_push_applies_only_where_it_can(
        learned_run, folder_data, tmp_path):
    import json
    import shutil

    from latent_ops.compose import compose, main as compose_main
    from latent_ops.mark_judge import FEATURES_FILE, fit_judge, judge_folder, save_judge

    run, _, cache = learned_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    flags = dict(run=str(copy), data=str(folder_data), cache_dir=cache, n=8, prior_steps=4, refine_steps=1, quiet=True)
    pushed = dict(repel=1.0, repel_until=0.5, repel_toward=2.0)
    with pytest.raises(SystemExit) as exit_info:  # no judge of features for pegasus: one line, nothing made
        compose_main("pegasus", repel_reading="marks", out=str(tmp_path / "unjudged"), **pushed, **flags)
    assert exit_info.value.code == 2 and not (tmp_path / "unjudged").exists()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 128))
    judge = fit_judge(features, features[:, 0] > 0, 1.0, "bright", "pegasus")  # marks one feature's direction
    save_judge(judge, judge_folder(copy, "pegasus"), {}, FEATURES_FILE)
    by_marks = compose("pegasus", repel_reading="marks", out=str(tmp_path / "marks"), **pushed, **flags)
    by_class = compose("pegasus", out=str(tmp_path / "class"), **pushed, **flags)
    guard = json.loads((by_marks / "scores.json").read_text())["repel_guard"]
    assert guard == {"keep": True, "toward": 2.0, "reading": "marks"}
    assert (by_marks / "batch64.png").read_bytes() != (by_class / "batch64.png").read_bytes()
    tenth = compose("pegasus", repel_reading="class+marks", repel_class=0.1, out=str(tmp_path / "tenth"), **pushed,
                    **flags)
    whole = compose("pegasus", repel_reading="class+marks", out=str(tmp_path / "whole"), **pushed, **flags)
    assert json.loads((tenth / "scores.json").read_text())["repel_guard"]["class_weight"] == 0.1
    assert (tenth / "batch64.png").read_bytes() != (whole / "batch64.png").read_bytes()  # the weight is read
    with pytest.raises(SystemExit) as exit_info:  # a reading with no guard to read it: one line
        compose_main("pegasus", repel_reading="marks", out=str(tmp_path / "unguarded"), **flags)
    assert exit_info.value.code == 2 and not (tmp_path / "unguarded").exists()

    compose("pegasus", repel_reading="marks", save_recipe=True, out=str(tmp_path / "recipe"), **pushed, **flags)
    settled = {}
    for expression in ("pegasus", "horse", "pegasus&bird"):
        folder = compose(expression, out=str(tmp_path / f"by-recipe-{len(settled)}"), **flags)
        settled[expression] = json.loads((folder / "config.json").read_text())
    assert settled["pegasus"]["repel"] == 1.0 and settled["pegasus"]["repel_reading"] == "marks"
    assert settled["horse"]["repel"] == 0.0 and settled["horse"]["repel_toward"] == 0.0  # no draws to push
    assert settled["pegasus&bird"]["repel"] == 0.0  # draws, but no judge of features for this expression
    stronger = compose("pegasus", repel_toward=3.0, out=str(tmp_path / "stronger"), **flags)  # over the recipe's push
    assert {k: json.loads((stronger / "config.json").read_text())[k] for k in ("repel", "repel_toward")} == {
        "repel": 1.0, "repel_toward": 3.0}
    off = compose("pegasus", repel=0.0, out=str(tmp_path / "off"), **flags)  # --repel 0 turns the guard off with it
    assert json.loads((off / "config.json").read_text())["repel_toward"] == 0.0
    (judge_folder(copy, "pegasus") / FEATURES_FILE).unlink()  # the recipe's reading can no longer be read
    folder = compose("pegasus", out=str(tmp_path / "by-recipe-unjudged"), **flags)
    assert json.loads((folder / "config.json").read_text())["repel"] == 0.0
