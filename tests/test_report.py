"""The selection report's pure parts: the estimate-against-measured rank correlation and the labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from lepton_ray import metrics
from lepton_ray.config import SelectionConfig
from lepton_ray.deploy.pareto import pareto_front, select
from lepton_ray.deploy.report import cost_agreement_markdown, label, pareto_figure, spearman


def made_up_trials() -> pd.DataFrame:
    """Eight finished trials (ties in both columns) and one failed trial without figures."""
    return pd.DataFrame({
        "trial": range(9),
        metrics.SIZE_BYTES: [5_700, 9_100, 9_100, 12_000, 15_500, 20_600, 7_300, 11_000, math.nan],
        metrics.INT8_GZIP_BYTES: [11_400, 12_900, 12_100, 12_900, 13_800, 18_900, 13_100, 11_900, math.nan],
        metrics.INT8_FILE_BYTES: [21_843] * 8 + [math.nan],
    })


def test_the_reports_rank_correlation_equals_scipys_spearman_on_a_made_up_table():
    trials = made_up_trials()
    finished = trials.dropna()
    expected = spearmanr(finished[metrics.SIZE_BYTES], finished[metrics.INT8_GZIP_BYTES]).statistic
    assert spearman(finished[metrics.SIZE_BYTES].to_numpy(), finished[metrics.INT8_GZIP_BYTES].to_numpy()) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(finished[metrics.SIZE_BYTES].corr(finished[metrics.INT8_GZIP_BYTES], method="spearman"))
    text = cost_agreement_markdown(trials)
    assert f"`{metrics.INT8_GZIP_BYTES}` (measured): {expected:.3f} over 8 finished trials" in text


def test_a_measured_cost_that_never_changes_has_no_rank_correlation_and_says_why():
    text = cost_agreement_markdown(made_up_trials())
    assert (f"`{metrics.INT8_FILE_BYTES}` (measured): n/a (`{metrics.INT8_FILE_BYTES}` is 21,843 B for every trial: no ranking to compare) "
            "over 8 finished trials") in text
    assert math.isnan(spearman(np.arange(5.0), np.ones(5)))


def test_under_three_finished_trials_the_rank_correlation_is_na_because_too_few():
    text = cost_agreement_markdown(made_up_trials().iloc[[0, 1, 8]])
    assert f"`{metrics.INT8_GZIP_BYTES}` (measured): n/a (fewer than 3 finished trials have both figures) over 2 finished trials" in text


def test_the_report_names_the_knobs_that_change_nothing_in_the_shipped_file_in_one_line():
    knob_lines = [line for line in cost_agreement_markdown(made_up_trials()).splitlines() if "change nothing in the shipped file" in line]
    assert len(knob_lines) == 1
    assert "compression.pruning.sparsity" in knob_lines[0] and "compression.quantization.bits" in knob_lines[0]


def test_estimates_are_labelled_and_measured_figures_are_not():
    assert label(metrics.SIZE_BYTES) == "size_bytes (estimate)"
    assert label(metrics.INT8_GZIP_BYTES) == metrics.INT8_GZIP_BYTES


COST = metrics.SIZE_BYTES


def plotted(rows: list[tuple[int, float, float]]):
    """The knee policy's pick on these (trial, accuracy, cost) rows and the plot's one axes."""
    trials = pd.DataFrame(rows, columns=["trial", metrics.SELECTION_ACCURACY, COST])
    on_front = pareto_front(trials[metrics.SELECTION_ACCURACY].to_numpy(), trials[COST].to_numpy())
    selection = select(trials, COST, 0.99, SelectionConfig(policy="knee"))
    (axes,) = pareto_figure(trials, COST, on_front, selection, 0.99).axes
    return trials[on_front], selection, axes


def test_the_front_line_touches_only_front_points_and_each_is_labelled_with_its_trial_number():
    """Trials 3, 4 and 5 lie on the corners a step line would draw (same accuracy as the point before, or same cost
    as the point after): they must be markers off the line."""
    front, _, axes = plotted([(0, 0.80, 1_000), (1, 0.90, 2_000), (2, 0.95, 4_000), (3, 0.80, 1_500), (4, 0.90, 3_000), (5, 0.92, 4_000)])
    assert sorted(front["trial"]) == [0, 1, 2]
    (line,) = [line for line in axes.get_lines() if line.get_label() == "Pareto front"]
    assert line.get_xydata().tolist() == [[1_000, 0.80], [2_000, 0.90], [4_000, 0.95]], "straight segments between front points only"
    (dominated,) = [points for points in axes.collections if points.get_label() == "dominated"]
    assert sorted(map(tuple, dominated.get_offsets().tolist())) == [(1_500, 0.80), (3_000, 0.90), (4_000, 0.92)]
    labels = {text.get_text(): text.xy for text in axes.texts}
    assert labels == {"0": (1_000, 0.80), "1": (2_000, 0.90), "2": (4_000, 0.95)}


def test_the_plot_title_says_knee_only_when_a_knee_decided_in_the_words_of_the_explanation():
    _, knee, axes = plotted([(0, 0.50, 1_000), (1, 0.90, 2_000), (2, 0.92, 9_000)])
    title = axes.get_title().replace("\n", " ")
    assert knee.reason.startswith("knee of the 3-point front") and f"picked trial 1: {knee.reason}" in title
    _, fallback, axes = plotted([(0, 0.50, 1_000), (1, 0.60, 5_000), (2, 0.90, 9_000)])
    title = axes.get_title().replace("\n", " ")
    assert fallback.reason in fallback.explanation and f"picked trial 2: {fallback.reason}" in title
    assert "no knee" in title and "knee of" not in title
