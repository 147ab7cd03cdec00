"""Per-layer allocation under a budget: the exact optimum of a multiple-choice knapsack (issue 33)."""

from __future__ import annotations

import itertools
import random

import pytest

from lepton_ray.compress.allocation import LayerOption, allocate
from lepton_ray.errors import ConfigError


def brute_force(profile: dict[str, list[LayerOption]], budget: float) -> float:
    """The least summed sensitivity over every combination within the budget: the reference."""
    best = float("inf")
    for combination in itertools.product(*profile.values()):
        if sum(option.cost for option in combination) <= budget:
            best = min(best, sum(option.sensitivity for option in combination))
    return best


def toy_profile() -> dict[str, list[LayerOption]]:
    """Three layers: the first and last break at low bits, the wide middle one holds the bytes and tolerates them."""
    options = {
        "conv1": [(7, 0, 90, 0.00), (4, 0, 52, 0.40), (2, 0, 26, 2.50)],
        "conv2": [(7, 0, 900, 0.00), (4, 0, 520, 0.05), (2, 0, 260, 0.30), (4, 0.5, 300, 0.20)],
        "fc": [(7, 0, 110, 0.00), (4, 0, 64, 0.60), (2, 0, 32, 3.00)],
    }
    return {layer: [LayerOption({"bits": bits, "sparsity": sparsity}, cost, sensitivity) for bits, sparsity, cost, sensitivity in rows]
            for layer, rows in options.items()}


def test_the_allocation_is_the_known_optimum_and_meets_the_budget_exactly():
    """At 460 bytes the optimum spends every byte: conv1 and fc keep 7 bits, conv2 goes to 2 bits (90 + 260 + 110)."""
    allocation = allocate(toy_profile(), 460)
    assert {layer: option.setting["bits"] for layer, option in allocation.choices.items()} == {"conv1": 7, "conv2": 2, "fc": 7}
    assert allocation.cost == 460 and allocation.sensitivity == pytest.approx(0.30)
    assert allocate(toy_profile(), 10_000).sensitivity == 0, "a loose budget keeps every layer at its least sensitive setting"


def test_random_profiles_match_brute_force_and_never_exceed_the_budget():
    rng = random.Random(0)
    for _ in range(30):
        profile = {f"layer{i}": [LayerOption({"option": j}, rng.randint(1, 50), round(rng.random(), 3)) for j in range(rng.randint(1, 4))]
                   for i in range(rng.randint(1, 5))}
        cheapest = sum(min(option.cost for option in options) for options in profile.values())
        budget = rng.randint(cheapest, cheapest + 60)
        allocation = allocate(profile, budget)
        assert allocation.cost <= budget and set(allocation.choices) == set(profile)
        assert allocation.sensitivity == pytest.approx(brute_force(profile, budget), abs=1e-9)


def test_a_budget_below_the_cheapest_allocation_names_the_field_and_the_fix():
    with pytest.raises(ConfigError, match=r"compression.allocation.budget: 100 is below the cheapest allocation \(318\); raise it"):
        allocate(toy_profile(), 100)


def test_the_same_profile_and_budget_give_the_same_allocation():
    first, second = allocate(toy_profile(), 700), allocate(toy_profile(), 700)
    assert first == second
