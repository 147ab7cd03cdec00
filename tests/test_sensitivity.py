"""The per-layer sensitivity profile (issue 33): what each candidate setting of one layer costs and how far it moves the outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lepton_ray.compress.allocation import allocate
from lepton_ray.compress.quantize import WeightFQ
from lepton_ray.compress.sensitivity import compressed_weight, sensitivity_profile


class OneUsedHead(nn.Module):
    """A conv body and two heads, the second multiplied by 0: compressing it cannot move the outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.used, self.unused = nn.Linear(32, 10), nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body(images)
        return self.used(features) + 0 * self.unused(features)


def test_a_compressed_weight_is_pruned_within_the_layer_then_on_the_qat_grid():
    weight = torch.randn(6, 4, 3, 3)
    grid = WeightFQ(7)
    grid.enabled = True
    assert torch.equal(compressed_weight(weight, 7, 0.0), grid(weight))
    half = compressed_weight(weight, 7, 0.5)
    assert int((half == 0).sum()) >= weight.numel() // 2
    ternary = compressed_weight(weight, 2, 0.0)
    assert all(len(torch.unique(channel.abs())) <= 2 for channel in ternary), "{-a, 0, +a} per output channel"


def test_the_profile_costs_each_layer_per_setting_and_leaves_the_student_unchanged():
    model = OneUsedHead()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settled = []
    profile = sensitivity_profile(model, torch.randn(64, 1, 8, 8), settled.append)
    assert set(profile) == {"body.0", "used", "unused"} and all(len(options) == 9 for options in profile.values())
    assert len(settled) == 27 and all(probe is not model for probe in settled)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the profile works on copies"
    used = {(o.setting["bits"], o.setting["sparsity"]): o for o in profile["used"]}
    assert used[(2, 0.0)].cost < used[(4, 0.0)].cost < used[(7, 0.0)].cost and used[(7, 0.8)].cost < used[(7, 0.0)].cost
    assert all(option.sensitivity == 0 for option in profile["unused"]), "a layer whose output is multiplied by 0"
    assert used[(2, 0.8)].sensitivity > used[(7, 0.0)].sensitivity > 0


def test_allocating_from_the_profile_spends_the_bytes_where_they_move_the_outputs():
    profile = sensitivity_profile(OneUsedHead(), torch.randn(64, 1, 8, 8), lambda probe: None)
    cheapest = {layer: min(options, key=lambda o: o.cost) for layer, options in profile.items()}
    gentlest = {layer: min(options, key=lambda o: o.sensitivity) for layer, options in profile.items()}
    budget = cheapest["unused"].cost + gentlest["used"].cost + gentlest["body.0"].cost
    allocation = allocate(profile, budget)
    assert allocation.cost <= budget
    assert allocation.choices["unused"].cost == cheapest["unused"].cost, "the bytes go to the layers that matter"
    assert allocation.sensitivity == pytest.approx(gentlest["used"].sensitivity + gentlest["body.0"].sensitivity, rel=1e-12)
