"""Pareto front against the brute-force definition; each selection policy on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lepton_ray import metrics
from lepton_ray.config import SelectionConfig
from lepton_ray.errors import ConfigError, SelectionError
from lepton_ray.deploy.pareto import POLICIES, completed, pareto_front, select

COST = "size_bytes"


def brute_force_front(accuracy: list[float], cost: list[float]) -> list[bool]:
    """O(n^2) definition: finite, and no finite point is at least as good in both and better in one."""
    finite = [math.isfinite(a) and math.isfinite(c) for a, c in zip(accuracy, cost)]
    on_front = []
    for i in range(len(accuracy)):
        dominated = any(
            finite[j] and accuracy[j] >= accuracy[i] and cost[j] <= cost[i] and (accuracy[j] > accuracy[i] or cost[j] < cost[i])
            for j in range(len(accuracy))
        )
        on_front.append(finite[i] and not dominated)
    return on_front


def table(rows: list[tuple[int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial", metrics.SELECTION_ACCURACY, COST])


def test_front_on_hand_made_points_with_duplicates_and_dominated_points():
    accuracy = [0.90, 0.95, 0.95, 0.80, 0.97, 0.96, 0.90, 0.95, float("nan"), 0.99]
    cost = [10.0, 20.0, 20.0, 10.0, 50.0, 60.0, 10.0, 25.0, 1.0, float("nan")]
    expected = [True, True, True, False, True, False, True, False, False, False]
    assert pareto_front(np.array(accuracy), np.array(cost)).tolist() == expected
    assert brute_force_front(accuracy, cost) == expected


@pytest.mark.parametrize("seed", range(40))
def test_front_equals_brute_force_on_random_points_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # Few distinct values, so equal accuracies, equal costs and duplicate points are common.
    accuracy = rng.integers(0, 8, n) / 8.0
    cost = rng.integers(0, 8, n).astype(float) * 1000
    accuracy[rng.random(n) < 0.1] = np.nan
    cost[rng.random(n) < 0.05] = np.inf
    assert pareto_front(accuracy, cost).tolist() == brute_force_front(accuracy.tolist(), cost.tolist())


def test_front_of_empty_and_all_nan_inputs_is_empty():
    assert pareto_front(np.array([]), np.array([])).tolist() == []
    assert pareto_front(np.array([np.nan, 0.5]), np.array([1.0, np.nan])).tolist() == [False, False]


def test_front_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="one length"):
        pareto_front(np.array([0.5, 0.6]), np.array([1.0]))


TRIALS = table([
    (0, 0.971, 90_000.0),
    (1, 0.962, 41_000.0),
    (2, 0.950, 20_000.0),
    (3, 0.700, 5_000.0),
    (4, 0.960, 95_000.0),  # dominated
    (5, 0.962, 41_000.0),  # duplicate of trial 1
    (6, float("nan"), 1_000.0),  # failed trial: never picked
])


def test_max_accuracy_under_cost_picks_the_most_accurate_within_budget():
    picked = select(TRIALS, COST, 0.98, SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 50_000}))
    assert picked.trial == 1  # trials 1 and 5 tie; the earlier trial wins
    assert picked.explanation == "picked trial 1: int8_val_accuracy 0.9620, size_bytes 41,000; most accurate with size_bytes <= 50,000"


def test_max_accuracy_under_cost_budget_is_inclusive():
    picked = select(TRIALS, COST, 0.98, SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 20_000}))
    assert picked.trial == 2


def test_min_cost_within_drop_of_best_trial_picks_the_cheapest_close_enough():
    picked = select(TRIALS, COST, 0.98, SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 1.0}))
    assert picked.trial == 1  # best 0.971; 0.962 is within 1 pt, 0.950 is not
    assert picked.explanation.endswith("cheapest within 1.0 pt of best 0.971")


def test_min_cost_within_drop_of_teacher_uses_the_teacher_accuracy():
    picked = select(TRIALS, COST, 0.96, SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 1.0, "reference": "teacher"}))
    assert picked.trial == 2  # teacher 0.96: 0.950 is exactly 1 pt below, and cheapest


def test_knee_is_the_front_point_farthest_above_the_chord():
    # Front in normalised space: (0, 0), (0.1, 0.8), (0.5, 0.9), (1, 1): distances 0, 0.49, 0.28, 0.
    trials = table([(10, 0.50, 0.0), (11, 0.90, 10.0), (12, 0.95, 50.0), (13, 1.00, 100.0), (14, 0.85, 60.0)])
    picked = select(trials, COST, 1.0, SelectionConfig(policy="knee"))
    assert picked.trial == 11


@pytest.mark.parametrize("rows, expected", [
    ([(0, 0.9, 5.0)], 0),
    ([(0, 0.9, 5.0), (1, 0.95, 9.0)], 1),
    ([(0, 0.8, 1.0), (1, 0.9, 2.0), (2, 1.0, 3.0)], 2),  # straight front: nothing above the chord
])
def test_knee_with_no_point_above_the_chord_picks_the_most_accurate(rows, expected):
    assert select(table(rows), COST, 1.0, SelectionConfig(policy="knee")).trial == expected


def test_no_trial_under_budget_raises_a_selection_error_naming_the_cheapest():
    with pytest.raises(SelectionError, match=r"no trial has size_bytes <= budget 4,000 \(cheapest is 5,000\)"):
        select(TRIALS, COST, 0.98, SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 4_000}))


def test_no_trial_within_drop_of_teacher_raises_a_selection_error():
    with pytest.raises(SelectionError, match="no trial reaches accuracy 0.9900"):
        select(TRIALS, COST, 0.995, SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 0.5, "reference": "teacher"}))


def test_teacher_reference_with_unknown_teacher_accuracy_raises():
    with pytest.raises(SelectionError, match="teacher's validation accuracy is unknown"):
        select(TRIALS, COST, float("nan"), SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 1, "reference": "teacher"}))


def test_no_completed_trial_raises_a_selection_error():
    with pytest.raises(SelectionError, match="no completed trial"):
        select(table([(0, float("nan"), 5.0)]), COST, 0.9, SelectionConfig(policy="knee"))


@pytest.mark.parametrize("policy, options, message", [
    ("max_accuracy_under_cost", {}, "selection.options.budget: required option is missing"),
    ("max_accuracy_under_cost", {"budget": 1, "budgett": 2}, "selection.options.budgett: unknown option"),
    ("min_cost_within_accuracy_drop", {"max_drop_points": 1, "reference": "median"}, "selection.options.reference"),
    ("min_cost_within_accuracy_drop", {"max_drop_points": -1}, "selection.options.max_drop_points"),
    ("knee", {"budget": 5}, r"selection.options.budget: unknown option for this policy \(allowed: none\)"),
])
def test_bad_policy_options_raise_config_errors_naming_the_key(policy, options, message):
    with pytest.raises(ConfigError, match=message):
        select(TRIALS, COST, 0.98, SelectionConfig(policy=policy, options=options))


def test_unknown_policy_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'knee'"):
        select(TRIALS, COST, 0.98, SelectionConfig(policy="kne"))


def test_registry_holds_the_three_policies():
    assert POLICIES.names() == ["knee", "max_accuracy_under_cost", "min_cost_within_accuracy_drop"]


def test_ties_go_to_the_lower_trial_number_whatever_the_row_order():
    reversed_trials = TRIALS.iloc[::-1]
    picked = select(reversed_trials, COST, 0.98, SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 50_000}))
    assert picked.trial == 1


@pytest.mark.parametrize("seed", range(10))
def test_every_policy_picks_a_point_of_the_front(seed: int):
    rng = np.random.default_rng(seed)
    n = 30
    trials = table([(i, float(a), float(c)) for i, a, c in zip(range(n), rng.integers(50, 100, n) / 100, rng.integers(1, 20, n) * 1000)])
    front_trials = set(trials["trial"][pareto_front(trials[metrics.SELECTION_ACCURACY].to_numpy(), trials[COST].to_numpy())])
    configs = [
        SelectionConfig(policy="knee"),
        SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 10_000}),
        SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 5}),
    ]
    for cfg in configs:
        assert select(trials, COST, 1.0, cfg).trial in front_trials


def test_a_trial_whose_int8_file_loses_more_than_the_tolerance_on_val_is_never_on_the_front_nor_picked():
    """The front holds only points whose shipped artifact holds them (`int8_val_accuracy` against `best_val_accuracy`)."""
    trials = table([(0, 0.945, 10_000), (1, 0.90, 12_000), (2, 0.90, 5_000)])  # the int8 files' validation accuracy
    trials[metrics.BEST_VAL_ACCURACY] = [0.95, 0.97, 0.90]  # trial 1's file drops 7 points from its trial's
    assert completed(trials, COST, max_int8_drop_points=1.0)["trial"].tolist() == [0, 2]
    assert completed(trials, COST)["trial"].tolist() == [0, 1, 2]
    assert select(trials, COST, 0.99, SelectionConfig(policy="knee"), max_int8_drop_points=1.0).trial != 1
    assert select(trials, COST, 0.99, SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 20_000}), max_int8_drop_points=1.0).trial == 0


def test_costs_print_as_integers_with_thousands_separators_never_in_e_notation():
    from lepton_ray.deploy.pareto import format_cost

    assert [format_cost(v) for v in (41_000.0, 14_270.5, 5_582.0, 999.5, 1.2345, float("nan"))] == ["41,000", "14,270", "5,582", "999.5", "1.234", "nan"]
