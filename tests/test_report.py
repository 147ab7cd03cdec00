"""The selection report's pure parts: the estimate-against-measured rank correlation and the labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from lepton_ray import metrics
from lepton_ray.deploy.report import cost_agreement_markdown, label, spearman


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


def test_a_measured_cost_that_never_changes_has_no_rank_correlation_and_says_so():
    text = cost_agreement_markdown(made_up_trials())
    assert f"`{metrics.INT8_FILE_BYTES}` (measured): n/a over 8 finished trials" in text
    assert math.isnan(spearman(np.arange(5.0), np.ones(5)))


def test_the_report_names_the_knobs_that_change_nothing_in_the_shipped_file_in_one_line():
    knob_lines = [line for line in cost_agreement_markdown(made_up_trials()).splitlines() if "change nothing in the shipped file" in line]
    assert len(knob_lines) == 1
    assert "compression.pruning.sparsity" in knob_lines[0] and "compression.quantization.bits" in knob_lines[0]


def test_estimates_are_labelled_and_measured_figures_are_not():
    assert label(metrics.SIZE_BYTES) == "size_bytes (estimate)"
    assert label(metrics.INT8_GZIP_BYTES) == metrics.INT8_GZIP_BYTES
