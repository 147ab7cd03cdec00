"""How a trial's failure reaches Tune, Optuna and the command: an input error fails the trial once, not
retried by Ray (it would repeat); a run whose every trial failed is a failed command."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lepton_ray import metrics
from lepton_ray.config import SweepConfig, load_workflow
from lepton_ray.sweep.runner import failure_lines
from lepton_ray.sweep.search import StudySearcher
from lepton_ray.sweep.study import NUMBER_KEY, open_study
from lepton_ray.sweep.trial_driver import trial_driver
from lepton_ray.trial.trainer import TrialInputs

from conftest import QUICKSTART


@pytest.mark.parametrize("num_workers", [1, 2])
def test_an_input_error_in_a_trial_is_reported_as_its_failure_not_raised_so_ray_never_retries_it(tmp_path, monkeypatch, num_workers):
    from ray import tune

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", reports.append)
    base = load_workflow(QUICKSTART, {"student.name": "registered_only_in_the_driver", "resources.num_workers": num_workers}).to_dict()

    trial_driver({NUMBER_KEY: 0}, base, TrialInputs(teachers=[]), str(tmp_path))

    assert len(reports) == 1 and list(reports[0]) == [metrics.INPUT_ERROR]
    assert reports[0][metrics.INPUT_ERROR].startswith("ConfigError: student.name: unknown model 'registered_only_in_the_driver'")


def test_a_trial_that_reported_an_input_error_is_failed_in_the_study(tmp_path):
    searcher = StudySearcher(open_study(tmp_path, SweepConfig()), None, SweepConfig())
    assert searcher.outcome({metrics.INPUT_ERROR: "ConfigError: x"}, error=False)[0].name == "FAIL"


def test_failure_lines_count_raised_errors_and_reported_input_errors_but_not_finished_trials():
    results = [
        SimpleNamespace(metrics={metrics.INPUT_ERROR: "ConfigError: student.name: unknown model 'x'"}, error=None),
        SimpleNamespace(metrics={}, error=RuntimeError("Traceback ...\nTrialDivergedError: training diverged at epoch 1")),
        SimpleNamespace(metrics={metrics.TEST_ACCURACY: 0.9}, error=None),
    ]
    assert failure_lines(results) == ["ConfigError: student.name: unknown model 'x'", "TrialDivergedError: training diverged at epoch 1"]


@pytest.mark.ray
def test_train_whose_only_trial_fails_on_a_model_the_trial_process_does_not_know_exits_1_naming_the_field(
    ray_session, write_workflow, teacher_checkpoint, monkeypatch, capsys
):
    from lepton_ray.cli import main
    from lepton_ray.models.zoo import MODELS, cnn_small

    monkeypatch.setitem(MODELS._items, "driver_only_cnn", cnn_small)  # a plugin imported by the driver, not by Ray's workers
    path = write_workflow({
        "teacher.checkpoint": str(teacher_checkpoint), "teacher.train": None, "student.name": "driver_only_cnn",
        "resources.num_workers": 1, "sweep.teacher_cache": False, "training.epochs": 1,
    })

    assert main(["train", str(path)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("lepton-ray: error: the trial failed, the first with: ConfigError: student.name: unknown model 'driver_only_cnn'"), last


def test_the_sweeps_default_log_still_pickles_after_ray_train_patched_print(monkeypatch):
    """Ray Train's workers replace `builtins.print` (patch_print_function); a test, or an in-process trial, that
    ran worker code leaves it replaced, and Tune pickles the sweep's callbacks: a default bound to `print` then fails."""
    import builtins
    import inspect

    from ray import cloudpickle

    from lepton_ray.sweep.progress import SweepProgress
    from lepton_ray.sweep.runner import run_sweep
    from lepton_ray.trial.teacher import prepare_teachers

    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    for default in (inspect.signature(run_sweep).parameters["log"].default, inspect.signature(prepare_teachers).parameters["log"].default):
        assert cloudpickle.loads(cloudpickle.dumps(default)) is default
    progress = cloudpickle.loads(cloudpickle.dumps(SweepProgress(2, 0, metrics.INT8_GZIP_BYTES)))
    assert progress.total == 2
