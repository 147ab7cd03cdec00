"""The persistent study: seeded, reproducible suggestions that a resumed sweep continues, not replays."""

from __future__ import annotations

import optuna
import pytest

from lepton_ray.config import SweepConfig
from lepton_ray.sweep.study import open_study

SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _first_suggestions(folder, count: int) -> list[float]:
    study = open_study(folder, SweepConfig(seed=3))
    values = []
    for _ in range(count):
        trial = study.ask(SPACE)
        values.append(trial.params["x"])
        study.tell(trial, [values[-1], 1.0])
    return values


def test_same_seed_gives_the_same_suggestions(tmp_path):
    assert _first_suggestions(tmp_path / "a", 3) == _first_suggestions(tmp_path / "b", 3)


def test_a_reopened_study_continues_the_sequence_instead_of_replaying_it(tmp_path):
    first = _first_suggestions(tmp_path, 2)
    resumed = _first_suggestions(tmp_path, 2)
    assert not set(first) & set(resumed), (first, resumed)
    assert len(open_study(tmp_path, SweepConfig(seed=3)).trials) == 4


def test_a_trial_whose_storage_filled_up_stays_open_for_resume_and_no_new_trial_starts(tmp_path):
    from ray.tune.search import Searcher

    from lepton_ray import metrics
    from lepton_ray.search_space import FloatParam, SearchSpace
    from lepton_ray.sweep.search import StudySearcher

    space = SearchSpace(params={"distillation.alpha": FloatParam(type="float", low=0.1, high=0.9)})
    study = open_study(tmp_path, SweepConfig(seed=0))
    searcher = StudySearcher(study, space, SweepConfig(seed=0))
    config = searcher.suggest("tune-a")
    searcher.on_trial_complete("tune-a", {metrics.STORAGE_FULL: 1})
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    assert searcher.suggest("tune-b") == Searcher.FINISHED
    resumed = StudySearcher(open_study(tmp_path, SweepConfig(seed=0)), space, SweepConfig(seed=0))
    assert resumed.suggest("tune-c") == config, "the same trial number and knobs are re-issued"


def test_a_study_write_refused_by_a_full_disk_stops_new_trials_and_leaves_the_trial_for_resume(tmp_path, monkeypatch):
    """SQLite answers a full disk with "database or disk is full" (seen on a real full tmpfs); the tell is
    rolled back, so the trial stays RUNNING and --resume reports it from its checkpoint."""
    import sqlite3

    from ray.tune.search import Searcher

    from lepton_ray import metrics
    from lepton_ray.search_space import FloatParam, SearchSpace
    from lepton_ray.sweep.search import StudySearcher

    space = SearchSpace(params={"distillation.alpha": FloatParam(type="float", low=0.1, high=0.9)})
    study = open_study(tmp_path, SweepConfig(seed=0))
    searcher = StudySearcher(study, space, SweepConfig(seed=0))
    searcher.suggest("tune-a")

    def full(*args, **kwargs):
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(study, "tell", full)
    searcher.on_trial_complete("tune-a", {metrics.TEST_ACCURACY: 0.9, metrics.BEST_VAL_ACCURACY: 0.9, metrics.INT8_GZIP_BYTES: 100.0})
    assert searcher.storage_full
    assert searcher.suggest("tune-b") == Searcher.FINISHED
    assert [t.state.name for t in study.trials] == ["RUNNING"]

    other = open_study(tmp_path / "other", SweepConfig(seed=0))
    unrelated = StudySearcher(other, space, SweepConfig(seed=0))
    unrelated.suggest("tune-c")

    def broken(*args, **kwargs):
        raise ValueError("unrelated")

    monkeypatch.setattr(other, "tell", broken)
    with pytest.raises(ValueError, match="unrelated"):
        unrelated.on_trial_complete("tune-c", {metrics.TEST_ACCURACY: 0.9, metrics.BEST_VAL_ACCURACY: 0.9, metrics.INT8_GZIP_BYTES: 100.0})
    assert not unrelated.storage_full


def test_a_trial_stopped_early_by_the_scheduler_is_pruned_and_never_completes(tmp_path):
    """ASHA stops a trial with its early values; Optuna must not see them as a finished trial's."""
    from lepton_ray import metrics
    from lepton_ray.search_space import FloatParam, SearchSpace
    from lepton_ray.sweep.search import StudySearcher

    space = SearchSpace(params={"distillation.alpha": FloatParam(type="float", low=0.1, high=0.9)})
    study = open_study(tmp_path, SweepConfig(seed=0))
    searcher = StudySearcher(study, space, SweepConfig(seed=0))
    searcher.suggest("stopped")
    searcher.suggest("finished")
    searcher.on_trial_complete("stopped", {metrics.EPOCH: 2, metrics.VAL_ACCURACY: 0.5})
    final = {metrics.EPOCH: 8, metrics.TEST_ACCURACY: 0.9, metrics.BEST_VAL_ACCURACY: 0.91, metrics.INT8_GZIP_BYTES: 4000.0}
    searcher.on_trial_complete("finished", final)
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE"]
    assert study.trials[1].values == [0.91, 4000.0]
    assert [t.number for t in study.best_trials] == [1]


def test_the_searcher_tells_each_finished_trial_with_its_constraints_as_the_study_file_keeps_them(tmp_path):
    """`sweep.constraints` and `sweep.accuracy_floor` land on the trial in the study file, where every sampler reads them
    (a resumed sweep's sampler too)."""
    from lepton_ray import metrics
    from lepton_ray.search_space import FloatParam, SearchSpace
    from lepton_ray.sweep.search import StudySearcher

    cfg = SweepConfig(seed=0, constraints={metrics.INT8_GZIP_BYTES: 5000.0}, accuracy_floor=0.9)
    space = SearchSpace(params={"distillation.alpha": FloatParam(type="float", low=0.1, high=0.9)})
    searcher = StudySearcher(open_study(tmp_path, cfg), space, cfg)
    for name, accuracy in (("below", 0.85), ("above", 0.95)):
        searcher.suggest(name)
        searcher.on_trial_complete(name, {metrics.TEST_ACCURACY: accuracy, metrics.BEST_VAL_ACCURACY: accuracy, metrics.INT8_GZIP_BYTES: 4000.0})
    reopened = open_study(tmp_path, cfg)
    assert [t.constraints for t in reopened.trials] == [
        pytest.approx({metrics.INT8_GZIP_BYTES: -1000.0, "accuracy_floor": 0.05}), pytest.approx({metrics.INT8_GZIP_BYTES: -1000.0, "accuracy_floor": -0.05})]


def test_a_sweep_resumed_with_other_constraints_is_refused_in_one_line_before_the_sampler_fails(tmp_path):
    """Finished trials carry one constraint value per limit the sweep started with; GPSampler raises on a mix
    ("The number of constraints must be the same for all trials"), so the changed limits are named up front."""
    from lepton_ray.errors import ConfigError

    from lepton_ray.sweep.study import check_constraints_unchanged

    with_floor = SweepConfig(seed=0, accuracy_floor=0.5)
    open_study(tmp_path, with_floor)
    check_constraints_unchanged(open_study(tmp_path, with_floor), with_floor)  # the same limits resume
    without = SweepConfig(seed=0)
    with pytest.raises(ConfigError) as caught:
        check_constraints_unchanged(open_study(tmp_path, without), without)
    message = str(caught.value)
    assert message.startswith("sweep.constraints / sweep.accuracy_floor: this sweep started with {'accuracy_floor': 0.5}") and "\n" not in message


def test_run_sweep_refuses_a_resume_with_other_constraints_before_it_loads_data_or_teachers(tmp_path, monkeypatch):
    """The resume is refused where `--resume` is checked: not after the data, a teacher (maybe trained first) and MLflow."""
    from conftest import QUICKSTART

    from lepton_ray.checks import check_workflow
    from lepton_ray.config import load_workflow
    from lepton_ray.errors import ConfigError
    from lepton_ray.sweep import runner
    from lepton_ray.sweep.paths import sweep_paths

    started = load_workflow(QUICKSTART, {"output_dir": str(tmp_path), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep.accuracy_floor": 0.5})
    open_study(sweep_paths(started, single=False).root, started.sweep)
    resumed = load_workflow(QUICKSTART, {"output_dir": str(tmp_path), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    monkeypatch.setattr(runner, "build_data", lambda *_: pytest.fail("data loaded before the resume was refused"))
    with pytest.raises(ConfigError, match=r"^sweep.constraints / sweep.accuracy_floor: this sweep started with \{'accuracy_floor': 0.5\}"):
        runner.run_sweep(resumed, check_workflow(resumed), resume=True)
