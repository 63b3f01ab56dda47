"""The flow's ODE solvers: the multistep ones converge at second order with one evaluation a step, guidance in an
interval skips the unconditional branch outside it, and a bad schedule is refused by name."""
from __future__ import annotations

import pytest
import torch

from latent_ops.flow import (Schedule, VelocityNet, away_from_neighbours, guided_velocity, integrate, project,
                             repulsion, sample)


@pytest.fixture(scope="module")
def curved_net():
    """An untrained net with larger weights: a smooth, curved velocity field (straight paths would be too easy)."""
    torch.manual_seed(0)
    net = VelocityNet(6, 3, hidden=32, blocks=2)
    with torch.no_grad():
        for block in net.blocks:
            block.mlp[-1].weight.normal_(0, 0.3)
        fast = (net.time[0].frequencies > 2).repeat(2)  # untrained, the fastest time features make v rough in t
        net.time[1].weight[:, fast] = 0
    return net.eval()


def solve(net, solver, steps, conditions=((0, 2.0),), **interval):
    x0 = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    return integrate(net, x0, 0.0, list(conditions), Schedule(steps, solver, **interval))


@pytest.mark.parametrize("solver", ["ab2", "dpmpp2m", "heun"])
def test_each_solver_converges_at_second_order_to_the_fine_solution(curved_net, solver):
    exact = solve(curved_net, "heun", 512)
    coarse, fine = [(solve(curved_net, solver, n) - exact).norm() / exact.norm() for n in (8, 16)]
    assert fine < coarse * 0.4, (solver, coarse.item(), fine.item())  # second order: about a quarter
    assert fine < 0.02


def test_the_multistep_solvers_evaluate_the_net_once_a_step(curved_net, monkeypatch):
    calls = []
    real = curved_net.forward
    monkeypatch.setattr(curved_net, "forward", lambda x, t, labels: calls.append(len(x)) or real(x, t, labels))
    for solver, per_step in (("ab2", 1), ("dpmpp2m", 1), ("heun", 2)):
        calls.clear()
        solve(curved_net, solver, 10)
        assert len(calls) == 10 * per_step == Schedule(10, solver).evaluations()
        assert set(calls) == {128}  # each evaluation: 64 codes, unconditional and conditional at once


def test_guidance_in_an_interval_evaluates_only_the_condition_outside_it(curved_net, monkeypatch):
    sizes = []
    real = curved_net.forward
    monkeypatch.setattr(curved_net, "forward", lambda x, t, labels: sizes.append((round(t[0].item(), 3), len(x)))
                        or real(x, t, labels))
    solve(curved_net, "ab2", 10, guidance_from=0.25, guidance_until=0.55)
    assert [n for t, n in sizes if 0.25 <= t <= 0.55] == [128] * 3  # the steps from t = 0.3, 0.4 and 0.5
    assert [n for t, n in sizes if not 0.25 <= t <= 0.55] == [64] * 7
    throughout = solve(curved_net, "ab2", 10)
    assert torch.equal(solve(curved_net, "ab2", 10, guidance_from=0.0, guidance_until=1.0), throughout)
    assert not torch.allclose(solve(curved_net, "ab2", 10, guidance_from=0.25, guidance_until=0.55), throughout)


def test_outside_the_interval_the_conditions_are_a_mixture_not_an_extrapolation(curved_net):
    x = torch.randn(5, 6)
    t = torch.full((5,), 0.9)
    plain = guided_velocity(curved_net, x, 0.9, [(1, 1.0)])
    assert torch.allclose(plain, curved_net(x, t, torch.ones(5, dtype=torch.long)), atol=1e-6)
    late = solve(curved_net, "ab2", 4, conditions=((1, 3.0),), guidance_from=1.0, guidance_until=1.0)
    assert torch.allclose(late, solve(curved_net, "ab2", 4, conditions=((1, 1.0),)), atol=1e-6)


def test_a_plain_step_count_is_heuns_method_and_projection_scales_the_steps(curved_net):
    g = torch.Generator()
    assert torch.equal(sample(curved_net, 4, [(0, 2.0)], 6, g.manual_seed(3)),
                       sample(curved_net, 4, [(0, 2.0)], Schedule(6, "heun"), g.manual_seed(3)))
    codes = torch.randn(4, 6)
    a = project(curved_net, codes, 0.5, [(0, 2.0)], Schedule(12, "ab2"), torch.Generator().manual_seed(4))
    b = project(curved_net, codes, 0.5, [(0, 2.0)], Schedule(12, "dpmpp2m"), torch.Generator().manual_seed(4))
    assert a.shape == codes.shape and (a - b).norm() < 0.1 * a.norm()  # two solvers of one ODE agree


@pytest.mark.parametrize("schedule, message", [
    (Schedule(0), "steps must be at least 1"), (Schedule(8, "rk4"), "solver must be one of heun, ab2, dpmpp2m"),
    (Schedule(8, "ab2", 0.7, 0.2), "guidance interval must satisfy"),
    (Schedule(8, "ab2", repel=-1.0), "repel must be a finite number at least 0"),
    (Schedule(8, "ab2", repel=1.0, repel_until=1.5), "repel_until a time in"),
])
def test_a_bad_schedule_is_refused_by_name(curved_net, schedule, message):
    with pytest.raises(ValueError, match=message):
        sample(curved_net, 2, [], schedule)



def mean_pairwise_distance(x: torch.Tensor) -> float:
    return torch.pdist(x.flatten(1).float()).mean().item()


def test_the_push_away_from_neighbours_spreads_a_cloud_and_vanishes_for_identical_points():
    cloud = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    push = away_from_neighbours(cloud)
    outward = ((cloud - cloud.mean(0)) * push).sum(1)
    assert (outward > 0).float().mean() > 0.9  # nearly every point is pushed away from the cloud's middle
    assert mean_pairwise_distance(cloud + 0.1 * push) > mean_pairwise_distance(cloud)
    typical = torch.cdist(cloud, cloud).topk(2, largest=False).values[:, 1].median()
    assert 0.5 * typical < push.norm(dim=1).median() < 5 * typical  # at the scale of a neighbour's distance
    assert away_from_neighbours(torch.ones(5, 3)).abs().max() < 1e-6  # identical points: no direction to push in


def test_repulsion_through_features_moves_the_features_apart_at_the_code_push_scale():
    torch.manual_seed(0)
    codes = torch.randn(32, 6)
    mix = torch.randn(6, 4)
    features = lambda x: torch.tanh(x @ mix)  # noqa: E731 - a differentiable stand-in for decoder and perceptual net
    push = repulsion(codes, features)
    assert push.shape == codes.shape
    assert push.norm(dim=1) == pytest.approx(away_from_neighbours(codes).norm(dim=1), rel=1e-4)
    step = 0.05 * push
    assert mean_pairwise_distance(features(codes + step)) > mean_pairwise_distance(features(codes))
    assert mean_pairwise_distance(features(codes + step)) > mean_pairwise_distance(features(codes - step))
    assert torch.equal(repulsion(codes), away_from_neighbours(codes))  # no features: in code space


def test_particle_guidance_spreads_a_batch_and_leaves_single_draws_and_repel_zero_unchanged(curved_net):
    x0 = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    plain = integrate(curved_net, x0, 0.0, [(0, 2.0)], Schedule(12, "ab2"))
    same = integrate(curved_net, x0, 0.0, [(0, 2.0)], Schedule(12, "ab2", repel=0.0, repel_until=1.0))
    assert torch.equal(plain, same)
    spread = integrate(curved_net, x0, 0.0, [(0, 2.0)], Schedule(12, "ab2", repel=1.0, repel_until=0.5))
    assert mean_pairwise_distance(spread) > 1.05 * mean_pairwise_distance(plain)
    one = integrate(curved_net, x0[:1], 0.0, [(0, 2.0)], Schedule(12, "ab2", repel=1.0))
    assert torch.allclose(one, plain[:1], atol=1e-5)  # a batch of one has no neighbours to push away from
    late = integrate(curved_net, x0, 0.0, [(0, 2.0)], Schedule(12, "ab2", repel=1.0, repel_until=0.0))
    assert torch.equal(late, plain)  # at t = 0 every estimate is the same mean: nothing is pushed


def test_a_batch_larger_than_a_block_is_pushed_apart_block_by_block(monkeypatch):
    import latent_ops.flow as flow

    monkeypatch.setattr(flow, "REPEL_BLOCK", 8)
    codes = torch.randn(17, 3, generator=torch.Generator().manual_seed(2))
    push = flow.repulsion(codes)
    for first in (0, 8):
        assert torch.allclose(push[first:first + 8], away_from_neighbours(codes[first:first + 8]))
    assert torch.equal(push[16], torch.zeros(3))  # a block of one has no neighbours


def test_a_guarded_push_drops_only_the_part_against_the_reading_and_adds_the_asked_step_along_it():
    from latent_ops.flow import guarded_push

    keep = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    push = torch.tensor([[-3.0, 4.0], [5.0, 1.0], [-1.0, -1.0]])
    guarded = guarded_push(push, keep)
    assert torch.allclose(guarded, torch.tensor([[0.0, 4.0], [5.0, 1.0], [0.0, 0.0]]))  # against: dropped; along: kept
    assert ((guarded * keep).sum(1) >= 0).all()
    toward = guarded_push(push, keep, toward=2.0)
    lengths = push.norm(dim=1, keepdim=True)
    assert torch.allclose(toward - guarded, 2.0 * lengths * keep / keep.norm(dim=1, keepdim=True))


def test_a_guarded_repulsion_spreads_a_batch_without_lowering_what_it_keeps():
    from latent_ops.flow import block_repulsion

    torch.manual_seed(0)
    points = torch.randn(64, 4)

    def features(codes):
        return codes * 2

    def reading(read):  # the first coordinate, which must not fall
        return read[:, 0]

    free = block_repulsion(points, features)
    guarded = block_repulsion(points, features, reading)
    drawn = block_repulsion(points, features, reading, toward=1.0)
    assert (free[:, 0] < 0).any() and (guarded[:, 0] >= -1e-6).all()  # the push lowered it for some; guarded never
    assert torch.allclose(guarded[:, 1:], free[:, 1:])  # the rest of the push is left as it was
    assert (drawn[:, 0] > guarded[:, 0]).all()
