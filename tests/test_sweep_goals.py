"""`sweep.stop_when` (end the sweep once a trial meets the goal) and `sweep.warm_start` (start from another sweep)."""

from __future__ import annotations

import optuna
import pytest
from test_sweep import TINY

from lepton_ray import metrics
from lepton_ray.checks import search_space_for
from lepton_ray.cli import main
from lepton_ray.config import StopWhen, SweepConfig, load_workflow
from lepton_ray.search_space import FloatParam, SearchSpace
from lepton_ray.errors import ConfigError
from lepton_ray.sweep.goal import meets
from lepton_ray.sweep.study import is_history, open_study, own_trials
from lepton_ray.sweep.warm_start import read_warm_start

FINAL = {metrics.INT8_VAL_ACCURACY: 0.91, metrics.TEST_ACCURACY: 0.99, metrics.INT8_GZIP_BYTES: 8000.0, metrics.BEST_VAL_ACCURACY: 0.92}
"""A finished trial's figures; its test accuracy would meet every goal below, and no goal may read it."""


@pytest.mark.parametrize(("goal", "result", "met"), [
    (StopWhen(min_accuracy=0.9), FINAL, True),
    (StopWhen(min_accuracy=0.92), FINAL, False),  # validation: 0.91 < 0.92, whatever the test split says
    (StopWhen(max_cost=8000), FINAL, True),
    (StopWhen(min_accuracy=0.9, max_cost=7999), FINAL, False),
    (StopWhen(min_accuracy=0.5), {metrics.VAL_ACCURACY: 0.99, metrics.EPOCH: 1}, False),  # an epoch's report, not a finished trial
    (StopWhen(min_accuracy=0.5), {**FINAL, metrics.DIVERGED: 1}, False),
])
def test_a_goal_is_met_only_by_a_finished_trial_within_every_bound(goal, result, met):
    assert meets(goal, result, metrics.INT8_GZIP_BYTES) is met


def test_a_goal_without_a_bound_is_a_config_error_naming_the_field(write_workflow):
    with pytest.raises(ConfigError, match=r"sweep\.stop_when.*min_accuracy, max_cost"):
        load_workflow(write_workflow({"sweep.stop_when": {}}))


def test_warm_start_refuses_a_folder_without_a_sweep_or_a_sweep_over_other_knobs(tmp_path):
    space = SearchSpace(params={"distillation.alpha": FloatParam(type="float", low=0.1, high=0.9)})
    with pytest.raises(ConfigError, match=r"sweep\.warm_start: no sweep under .*no study\.db"):
        read_warm_start(tmp_path / "nowhere", space, SweepConfig())
    other = open_study(tmp_path / "other", SweepConfig())
    trial = other.ask({"distillation.temperature": optuna.distributions.FloatDistribution(1.0, 8.0)})
    other.tell(trial, [0.9, 100.0])
    with pytest.raises(ConfigError, match=r"searched \['distillation.temperature'\] but this sweep searches \['distillation.alpha'\]"):
        read_warm_start(tmp_path / "other", space, SweepConfig())
    with pytest.raises(ConfigError, match=r"sweep\.warm_start: needs sweep\.space"):
        read_warm_start(tmp_path / "other", None, SweepConfig())


def _study(folder):
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}")
    return study, own_trials(study), [t for t in study.trials if is_history(t)]


@pytest.mark.ray
def test_a_warm_started_sweep_tries_the_other_front_first_and_stops_at_its_goal(ray_session, write_workflow, tmp_path, capsys):
    """Sweep A (3 trials); sweep B warm-starts from it with a goal any finished trial meets: B runs
    A's most accurate front configuration first, learns from A's trials, and stops after that one
    trial of 4; --resume has nothing left to run. A space over other knobs is refused at validate."""
    tiny = {**TINY, "student.name": "mlp", "student.options": {"hidden": [32]}, "resources.num_workers": 1, "resources.max_concurrent_trials": 1}
    first = write_workflow({**tiny, "sweep.num_samples": 3}, name="a.yaml")
    assert main(["sweep", str(first), "--no-export"]) == 0
    wf_a = load_workflow(first)
    a_folder = wf_a.run_dir / "sweep"
    _, a_trials, _ = _study(a_folder)
    front = read_warm_start(a_folder, search_space_for(wf_a), wf_a.sweep).front

    goal = {"sweep.warm_start": str(a_folder), "sweep.stop_when": {"min_accuracy": 0.0}, "sweep.num_samples": 4, "output_dir": str(tmp_path / "b-runs"),
            "sweep.accuracy_floor": 0.5}
    second = write_workflow({**tiny, **goal}, name="b.yaml")
    capsys.readouterr()
    assert main(["sweep", str(second), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert f"warm start from {a_folder}: its {len(front)} front configuration(s) first, 3 finished trial(s) as sampler history" in out
    assert "stop_when met by trial 0 (int8_val_accuracy" in out and "the sweep stopped after 1 of 4 trials" in out
    b_folder = load_workflow(second).run_dir / "sweep"
    study, own, history = _study(b_folder)
    finished = [t for t in own if t.state.is_finished()]
    assert [t.state.name for t in finished] == ["COMPLETE"] and finished[0].params == front[0]
    assert [t.system_attrs["fixed_params"] for t in own if t.state.name == "WAITING"] == front[1:], "the rest of the front stays queued, run only if the goal is dropped"
    assert sorted(t.params.items() for t in history) == sorted(t.params.items() for t in a_trials if t.state.name == "COMPLETE")
    for trial in [*history, *finished]:  # B's accuracy floor applies to A's trials too, so the sampler learns where B's floor lies
        assert trial.constraints == pytest.approx({"accuracy_floor": 0.5 - trial.values[0]})
    assert main(["leaderboard", str(second)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.split()[:1] and line.split()[0].isdigit()] == ["0"]

    assert main(["sweep", str(second), "--no-export", "--resume"]) == 0
    assert "stop_when was met by trial 0" in capsys.readouterr().out
    assert [t.state.name for t in _study(b_folder)[1] if t.state.is_finished()] == ["COMPLETE"]

    other_space = tmp_path / "other_space.yaml"
    other_space.write_text("params:\n  distillation.alpha: {type: float, low: 0.1, high: 0.9}\n")
    third = write_workflow({**tiny, **goal, "sweep.space": str(other_space), "output_dir": str(tmp_path / "c-runs")}, name="c.yaml")
    assert main(["validate", str(third)]) == 2
    assert "sweep.warm_start:" in capsys.readouterr().err
