"""A small sweep on a local Ray cluster: parent/child runs, leaderboard = MLflow, failures recorded."""

from __future__ import annotations

import mlflow
import optuna
import pytest

from lepton_ray import metrics
from lepton_ray.checks import check_workflow
from lepton_ray.config import load_workflow
from lepton_ray.leaderboard import trials_frame
from lepton_ray.sweep import run_sweep
from lepton_ray.tracking import ERROR_TAG, PARENT_TAG, Tracker

TINY = {
    "data.name": "synthetic",
    "data.options": {"num_samples": 300, "image_size": 8},
    "teacher.name": "cnn_small",
    "teacher.options": {"channels": [16, 32]},
    "teacher.train.epochs": 3,
    "student.options": {"channels": [4, 8]},
    "training.epochs": 2,
    "sweep.num_samples": 3,
    "export.calibration_samples": 64,
}


@pytest.mark.ray
def test_small_sweep_logs_children_matches_leaderboard_and_records_a_failing_trial(ray_session, write_workflow, tmp_path):
    bad_combination = {"compression.pruning.sparsity": 0.5, "compression.pruning.start_epoch": 1, "compression.pruning.end_epoch": 0}
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n"
        "  compression.pruning.sparsity: {type: float, low: 0.0, high: 0.5}\n"
        "  compression.pruning.start_epoch: {type: int, low: 0, high: 1}\n"
        "  compression.pruning.end_epoch: {type: int, low: 0, high: 1}\n"
    )
    path = write_workflow({**TINY, "sweep.space": str(space), "sweep.baseline_trials": [bad_combination]})
    wf = load_workflow(path)
    outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)

    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert len(runs) == 3
    assert sorted(runs["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert "compression.pruning.end_epoch" in failed[f"tags.{ERROR_TAG}"]
    finished = runs[runs["status"] == "FINISHED"]
    for name in (metrics.TEST_ACCURACY, metrics.SIZE_BYTES, metrics.MACS, metrics.BOPS, metrics.LATENCY_MS, metrics.SPARSITY):
        assert finished[f"metrics.{name}"].notna().all(), name
    assert (finished["params.training.epochs"] == "2").all()

    board = trials_frame(tracker, outcome.parent_run_id)
    by_run = runs.set_index("run_id")
    assert sorted(board["run_id"]) == sorted(runs["run_id"])
    for _, row in board.iterrows():
        if row["status"] == "finished":
            assert row[metrics.TEST_ACCURACY] == pytest.approx(by_run.loc[row["run_id"], f"metrics.{metrics.TEST_ACCURACY}"])
    assert board["on_front"].sum() >= 1

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{outcome.paths.study}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
