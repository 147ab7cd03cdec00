"""A small sweep on a local Ray cluster: parent/child runs, leaderboard = MLflow, failures recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import optuna
import pytest

import lepton_ray
from lepton_ray import metrics
from lepton_ray.checks import check_workflow
from lepton_ray.cli import main
from lepton_ray.config import load_workflow
from lepton_ray.deploy import publish
from lepton_ray.errors import ExportError
from lepton_ray.deploy.leaderboard import trials_frame
from lepton_ray.sweep.results import SweepOutcome
from lepton_ray.sweep.runner import run_sweep
from lepton_ray.tracking.tracker import ERROR_TAG, PARENT_TAG, Tracker

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
    "export.tolerance": 3.5,  # 60 test images: one is 1.67 pt, so 1.0 would refuse any single flip of the int8 grid
}


def refuse_int8(checks) -> None:
    raise ExportError("injected: int8 file outside export.tolerance")


@pytest.mark.ray
def test_small_sweep_logs_children_matches_leaderboard_and_records_failing_trials(ray_session, write_workflow, tmp_path, capsys, monkeypatch):
    """Four single-worker (in-process) trials: an invalid knob combination and a diverging lr fail with
    their reason; two finish. (DDP trials are covered by the resume, job and worker-failure tests.)"""
    good = {"compression.pruning.start_epoch": 0, "compression.pruning.end_epoch": 1, "training.lr": 0.05}
    bad_combination = {**good, "compression.pruning.sparsity": 0.5, "compression.pruning.start_epoch": 1, "compression.pruning.end_epoch": 0}
    diverging = {**good, "compression.pruning.sparsity": 0.0, "training.lr": 10.0}
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n"
        "  compression.pruning.sparsity: {type: float, low: 0.0, high: 0.5}\n"
        "  compression.pruning.start_epoch: {type: int, low: 0, high: 1}\n"
        "  compression.pruning.end_epoch: {type: int, low: 0, high: 1}\n"
        "  training.lr: {type: categorical, choices: [0.05, 10.0]}\n"
    )
    mlp_student = {"student.name": "mlp", "student.options": {"hidden": [32]}, "training.optimizer": "sgd"}
    path = write_workflow({**TINY, **mlp_student, "resources.num_workers": 1, "sweep.num_samples": 4, "sweep.space": str(space), "sweep.baseline_trials": [bad_combination, diverging]})
    wf = load_workflow(path)
    outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)

    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert len(runs) == 4
    by_trial = runs.set_index(runs["tags.optuna_trial"].astype(int))
    assert by_trial.loc[0, "status"] == "FAILED" and "compression.pruning.end_epoch" in by_trial.loc[0, f"tags.{ERROR_TAG}"]
    assert by_trial.loc[1, "status"] == "FAILED" and "diverged" in by_trial.loc[1, f"tags.{ERROR_TAG}"]
    assert list(by_trial.loc[[2, 3], "status"]) == ["FINISHED", "FINISHED"]
    finished = runs[runs["status"] == "FINISHED"]
    measured = (metrics.INT8_FILE_BYTES, metrics.INT8_GZIP_BYTES, metrics.INT8_VAL_ACCURACY, metrics.REESTIMATE_S, metrics.FINISH_S)
    for name in (metrics.TEST_ACCURACY, metrics.SIZE_BYTES, metrics.MACS, metrics.BOPS, metrics.SPARSITY, metrics.BITS, metrics.TEACHER_TEST_ACCURACY, *measured):
        assert finished[f"metrics.{name}"].notna().all(), name
    assert f"metrics.{metrics.LATENCY_MS}" not in runs.columns, "the cost is gzip bytes: trials spend no time on latency rounds"
    machine_paths = {column: value for column in runs.columns if column.startswith(("tags.", "params.")) for value in runs[column].dropna()
                     if isinstance(value, str) and str(tmp_path.resolve()) in str(Path(value).resolve()) and Path(value).is_absolute()}
    assert not machine_paths, f"a trial run names a path of this machine (a moved store could not resolve it): {machine_paths}"
    params = [name for name in runs.columns if name.startswith("params.") and runs[name].notna().any()]
    assert sorted(params) == sorted([*(f"params.{knob}" for knob in good), "params.compression.pruning.sparsity"]), "a trial logs its searched knobs only"
    assert set(finished["params.training.lr"]) == {"0.05"}
    parent = mlflow.get_run(outcome.parent_run_id)
    assert parent.data.params["training.epochs"] == "2", "the workflow is logged once, on the sweep run"

    board = trials_frame(tracker, outcome.parent_run_id)
    by_run = runs.set_index("run_id")
    assert sorted(board["run_id"]) == sorted(runs["run_id"])
    for _, row in board.iterrows():
        if row["status"] == "finished":
            assert row[metrics.TEST_ACCURACY] == pytest.approx(by_run.loc[row["run_id"], f"metrics.{metrics.TEST_ACCURACY}"])
    assert board["on_front"].sum() >= 1
    assert not board.set_index("trial").loc[[0, 1], "on_front"].any()

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{outcome.paths.study}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]

    # `lepton-ray leaderboard WORKFLOW`: the same sweep read back through the workflow's tracking settings.
    capsys.readouterr()
    assert main(["leaderboard", str(path), "--sort", "accuracy"]) == 0
    header, *rows = [line.split() for line in capsys.readouterr().out.splitlines() if line and not line.startswith("(")]
    assert header[:5] == ["trial", "status", metrics.SELECTION_ACCURACY, metrics.TEST_ACCURACY, wf.sweep.cost_metric] and "training.lr" in header
    assert [row[1] for row in rows] == ["finished", "finished", "failed", "failed"], "most accurate first, failed trials last"

    # `select` and `export` on the finished sweep: the pick's own checkpoint (with its own knobs) is
    # rebuilt, exported to int8, verified in ONNX Runtime and registered as champion.
    assert main(["select", str(path)]) == 0
    picked = capsys.readouterr().out.strip().splitlines()[-1]
    assert picked.startswith("picked trial ") and int(picked.split()[2].rstrip(":")) in (2, 3)
    assert main(["export", str(path)]) == 0
    assert "alias champion" in capsys.readouterr().out
    champion = tracker.client.get_model_version_by_alias(wf.tracking.model_name, "champion")
    assert champion.tags["lepton.trial"] == picked.split()[2].rstrip(":")
    assert (outcome.paths.root / "export" / "student.int8.onnx").is_file()

    # `export --trial N`: the other finished trial, verified and registered the same way; a trial that failed is refused.
    other = ({2, 3} - {int(picked.split()[2].rstrip(":"))}).pop()
    assert main(["export", str(path), "--trial", str(other)]) == 0
    assert f"picked trial {other}: " in capsys.readouterr().out
    assert tracker.client.get_model_version_by_alias(wf.tracking.model_name, "champion").tags["lepton.trial"] == str(other)
    assert main(["export", str(path), "--trial", "0"]) == 2
    assert "--trial: trial 0 has no finished result" in capsys.readouterr().err

    # Started over in the same folder (the user deleted it), from Python: `lepton_ray.sweep` with dotted
    # overrides and `__` keywords runs it; new MLflow runs; the old sweep's runs stay as they were.
    # Its export is refused (a fault injected into the int8 check): the error carries the outcome, trials kept.
    shutil.rmtree(outcome.paths.root)
    monkeypatch.setattr(publish, "verify_int8", refuse_int8)
    with pytest.raises(ExportError) as refused:
        lepton_ray.sweep(path, {**good, "sweep.baseline_trials": []}, sweep__num_samples=1, log=lambda _: None)
    again = refused.value.outcome
    assert isinstance(again, SweepOutcome) and list(again.trials["status"]) == ["finished"]
    assert tracker.client.get_run(again.parent_run_id).info.status == "FAILED"
    assert again.parent_run_id != outcome.parent_run_id
    new_runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{again.parent_run_id}'")
    assert len(new_runs) == 1 and new_runs["run_id"][0] not in set(runs["run_id"])
    assert tracker.client.get_run(again.parent_run_id).data.metrics[metrics.EPOCHS_REDONE] == 0
    old_runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert sorted(old_runs["status"]) == sorted(runs["status"])


@pytest.mark.ray
def test_train_prints_one_line_per_epoch_with_train_loss_val_accuracy_and_throughput(ray_session, write_workflow, capsys):
    path = write_workflow({**TINY, "resources.num_workers": 1})
    assert main(["train", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train] ")]
    assert [line.split(" | ")[0] for line in lines] == ["[train] epoch 1/2", "[train] epoch 2/2"]
    for line in lines:
        _, loss, accuracy, throughput = line.split(" | ")
        assert loss.startswith("train_loss ") and float(loss.split()[1]) > 0
        assert accuracy.startswith("val_accuracy ") and 0 <= float(accuracy.split()[1]) <= 1
        assert throughput.endswith(" images/s") and float(throughput.split()[0]) > 0
