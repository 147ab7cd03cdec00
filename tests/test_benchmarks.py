"""The benchmark suite's pure helpers: hypervolume, training FLOPs, goal verdicts. No benchmark runs here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Figure
from benchmarks.search_efficiency import hypervolume_2d
from benchmarks.throughput_vs_peak import training_flops
from lepton_ray.compress.cost import count_macs


def brute_force_hypervolume(accuracy: list[float], cost: list[float], reference: tuple[float, float]) -> float:
    """Union of the boxes [cost, ref_cost] x [ref_accuracy, accuracy], cell by cell on the grid of all coordinates."""
    xs = sorted({reference[1], *(min(c, reference[1]) for c in cost)})
    ys = sorted({reference[0], *(max(a, reference[0]) for a in accuracy)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        if any(c <= centre_x and a >= centre_y for a, c in zip(accuracy, cost)):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_matches_hand_computation_and_ignores_dominated_points():
    # front (cost 2, acc 0.5) and (cost 5, acc 0.8); (cost 6, acc 0.6) is dominated; box up to cost 10
    area = hypervolume_2d([0.5, 0.8, 0.6], [2.0, 5.0, 6.0], reference=(0.0, 10.0))
    assert area == pytest.approx((5 - 2) * 0.5 + (10 - 5) * 0.8)


def test_hypervolume_matches_brute_force_on_random_points():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        accuracy = torch.rand(12, generator=generator).tolist()
        cost = (torch.rand(12, generator=generator) * 12).tolist()  # some beyond the reference cost
        reference = (0.2, 10.0)
        assert hypervolume_2d(accuracy, cost, reference) == pytest.approx(brute_force_hypervolume(accuracy, cost, reference))


def test_hypervolume_is_zero_without_points_better_than_the_reference():
    assert hypervolume_2d([], [], (0.0, 1.0)) == 0.0
    assert hypervolume_2d([0.9, math.nan, 0.1], [2.0, 0.5, 0.5], reference=(0.1, 1.0)) == 0.0


def test_training_flops_equal_forward_plus_backward_flops_counted_by_torch():
    layer = nn.Linear(8, 4, bias=False)
    inputs = torch.randn(5, 8, requires_grad=True)  # so the backward computes input grads too, as for inner layers
    counter = FlopCounterMode(display=False)
    with counter:
        layer(inputs).sum().backward()
    assert training_flops(count_macs(layer, (8,)), samples=5) == counter.get_total_flops()


def test_figure_verdict_follows_its_goal_and_nan_never_passes():
    assert Figure("b", "f", 1.1, at_most=1.15).verdict == "pass"
    assert Figure("b", "f", 1.2, at_most=1.15).verdict == "FAIL"
    assert Figure("b", "f", 1.9, at_least=2.0).verdict == "FAIL"
    assert Figure("b", "f", math.nan, at_least=2.0).verdict == "FAIL"
    assert Figure("b", "f", 0.3).verdict == "-"
