"""Per-layer compression allocated under a budget (issue 33): every layer takes one of its candidate settings
(bits, sparsity, ...) so that the summed sensitivity is least and the summed cost fits the budget.

A multiple-choice knapsack, solved exactly as a small integer program with scipy's HiGHS (one binary per layer
and option, one equality per layer, one budget row: a few hundred variables for a MobileNetV2-sized student);
the same profile and budget give the same allocation. Sensitivities come from a measured profile (the increase
of the validation loss when only that layer is so compressed); costs are in the sweep's cost unit (bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from lepton_ray.errors import ConfigError


@dataclass(frozen=True)
class LayerOption:
    """One candidate setting of one layer: what it is, what it costs, how much it hurts."""

    setting: dict[str, Any]
    cost: float
    sensitivity: float


@dataclass(frozen=True)
class Allocation:
    """The chosen option of every layer, with their summed cost and sensitivity."""

    choices: dict[str, LayerOption]
    cost: float
    sensitivity: float


def allocate(profile: dict[str, list[LayerOption]], budget: float) -> Allocation:
    """The options, one per layer of `profile`, with the least summed sensitivity whose summed cost is at most
    `budget`. `ConfigError` naming `compression.allocation.budget` when even the cheapest choice does not fit."""
    empty = [layer for layer, options in profile.items() if not options]
    if not profile or empty:
        raise ValueError(f"allocate: every layer needs at least one option (none for {empty or 'any layer'})")
    cheapest = sum(min(option.cost for option in options) for options in profile.values())
    if cheapest > budget:
        raise ConfigError(f"compression.allocation.budget: {budget:,.0f} is below the cheapest allocation ({cheapest:,.0f}); raise it")
    layers = list(profile)
    flat = [(index, option) for index, layer in enumerate(layers) for option in profile[layer]]
    sensitivity = np.array([option.sensitivity for _, option in flat], dtype=float)
    cost = np.array([option.cost for _, option in flat], dtype=float)
    one_per_layer = np.zeros((len(layers), len(flat)))
    for column, (index, _) in enumerate(flat):
        one_per_layer[index, column] = 1.0
    result = milp(sensitivity, integrality=np.ones(len(flat)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_per_layer, 1, 1), LinearConstraint(cost[None, :], -np.inf, budget)])
    if not result.success:  # feasible by the check above: a solver failure, not the user's input
        raise RuntimeError(f"allocate: the integer program failed ({result.message})")
    chosen = np.flatnonzero(np.round(result.x) == 1)
    choices = {layers[flat[column][0]]: flat[column][1] for column in chosen}
    return Allocation(choices, float(cost[chosen].sum()), float(sensitivity[chosen].sum()))
