"""Which student ships is decided on validation only, and every sweep says what distillation bought for it.

The pure tests build sweeps whose validation and test rankings disagree; the Ray test runs a real sweep, its
labels-only control and a resume that must not train the control again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lepton_ray
from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.cli import main
from lepton_ray.config import SelectionConfig, StopWhen, load_workflow
from lepton_ray.errors import ConfigError
from lepton_ray.data.datasets import build_data
from lepton_ray.deploy.kd_gain import DistillationGain, SeedPair
from lepton_ray.deploy.pareto import completed, pareto_front, select, standard_error
from lepton_ray.sweep.control import control_folder, control_runs, labels_only_run
from lepton_ray.sweep.goal import meets
from lepton_ray.sweep.study import is_final_result
from lepton_ray.deploy.leaderboard import trials_frame
from lepton_ray.trial.files import newest_student_file
from lepton_ray.trial.loop import run_trial
from lepton_ray.trial.sessions import InProcessSession

from conftest import tiny_training

COST = metrics.INT8_GZIP_BYTES
POLICIES = [
    SelectionConfig(policy="knee"),
    SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 6_000}),
    SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 1.0}),
    SelectionConfig(policy="min_cost_within_accuracy_drop", options={"max_drop_points": 2.0, "reference": "teacher"}),
]
TEACHER = 0.985
"""The teacher's validation accuracy."""


def disagreeing_sweep(seed: int, n: int = 24) -> pd.DataFrame:
    """Finished trials whose test accuracy ranks them in the reverse order of their validation accuracy."""
    rng = np.random.default_rng(seed)
    val = rng.integers(850, 990, n) / 1000
    return pd.DataFrame({
        "trial": np.arange(n), metrics.SELECTION_ACCURACY: val, metrics.BEST_VAL_ACCURACY: val + 0.002,
        metrics.TEST_ACCURACY: 1.84 - val, COST: rng.integers(1, 12, n) * 1000.0,
    })


def brute_force_pick(trials: pd.DataFrame, cfg: SelectionConfig, teacher_accuracy: float) -> int:
    """Each policy's definition applied to the validation column by hand (ties: accuracy, cost, then trial)."""
    acc = trials[metrics.SELECTION_ACCURACY]
    if cfg.policy == "max_accuracy_under_cost":
        feasible = trials[trials[COST] <= cfg.options["budget"]]
        return int(feasible.sort_values([metrics.SELECTION_ACCURACY, COST, "trial"], ascending=[False, True, True]).iloc[0]["trial"])
    reference = teacher_accuracy if cfg.options.get("reference") == "teacher" else acc.max()
    feasible = trials[acc >= reference - cfg.options["max_drop_points"] / 100 - 1e-12]
    return int(feasible.sort_values([COST, metrics.SELECTION_ACCURACY, "trial"], ascending=[True, False, True]).iloc[0]["trial"])


@pytest.mark.parametrize("seed", range(6))
def test_the_front_and_every_policy_follow_validation_where_test_ranks_the_trials_otherwise(seed: int):
    trials = disagreeing_sweep(seed)
    on_front = pareto_front(trials[metrics.SELECTION_ACCURACY].to_numpy(), trials[COST].to_numpy())
    assert not np.array_equal(on_front, pareto_front(trials[metrics.TEST_ACCURACY].to_numpy(), trials[COST].to_numpy())), "the splits must disagree"
    front_trials = set(trials["trial"][on_front])
    for cfg in POLICIES:
        picked = select(trials, COST, TEACHER, cfg, max_int8_drop_points=1.0, val_samples=270)
        assert picked.trial in front_trials, cfg
        if cfg.policy != "knee":
            assert picked.trial == brute_force_pick(trials, cfg, TEACHER), cfg


@pytest.mark.parametrize("seed", range(4))
def test_no_decision_changes_when_the_test_figures_are_scrambled_or_gone(seed: int):
    """Behavioural: every decision made again on the same sweep with its test column shuffled, then dropped."""
    trials = disagreeing_sweep(seed)
    scrambled = trials.assign(**{metrics.TEST_ACCURACY: np.random.default_rng(99).permutation(trials[metrics.TEST_ACCURACY].to_numpy())})
    for other in (scrambled, trials.drop(columns=[metrics.TEST_ACCURACY])):
        assert completed(other, COST, 1.0)["trial"].tolist() == completed(trials, COST, 1.0)["trial"].tolist()
        for cfg in POLICIES:
            again, first = select(other, COST, TEACHER, cfg, 1.0, 270), select(trials, COST, TEACHER, cfg, 1.0, 270)
            assert (again.trial, again.explanation) == (first.trial, first.explanation)


class NoTestSplit(dict):
    """A trial's final result that fails the test on any read of its test accuracy."""

    def __getitem__(self, key):
        assert key != metrics.TEST_ACCURACY, "a decision read test_accuracy"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != metrics.TEST_ACCURACY, "a decision read test_accuracy"
        return super().get(key, default)

    def __contains__(self, key):
        assert key != metrics.TEST_ACCURACY, "a decision looked for test_accuracy"
        return super().__contains__(key)


def test_stop_when_and_the_final_result_check_never_read_the_test_accuracy():
    final = NoTestSplit({metrics.INT8_VAL_ACCURACY: 0.91, metrics.BEST_VAL_ACCURACY: 0.92, metrics.TEST_ACCURACY: 0.99, COST: 8000.0})
    assert is_final_result(final)
    assert meets(StopWhen(min_accuracy=0.9, max_cost=9000), final, COST)
    assert not meets(StopWhen(min_accuracy=0.95), final, COST), "0.91 on validation; 0.99 on test must not count"


def test_the_explanation_gives_the_standard_error_of_the_validation_figure():
    trials = disagreeing_sweep(0)
    picked = select(trials, COST, TEACHER, SelectionConfig(policy="knee"), val_samples=270)
    accuracy = picked.row[metrics.SELECTION_ACCURACY]
    assert picked.explanation.endswith(f"(+- {100 * standard_error(accuracy, 270):.2f} pt SE, 270 validation samples)")
    assert standard_error(0.98, 270) == pytest.approx(0.00852, abs=1e-5)


@pytest.mark.parametrize(("drop", "teacher", "warned"), [(0.1, False, True), (2.0, False, False), (0.5, True, True), (1.0, True, False)])
def test_validate_warns_when_a_policy_threshold_is_finer_than_the_validation_split_resolves(
    write_workflow, teacher_checkpoint, capsys, drop: float, teacher: bool, warned: bool,
):
    """Without a teacher file: one of 270 digits validation images (0.37 pt); with one (about 98% on validation): its SE, ~0.85 pt."""
    overrides = {"selection.policy": "min_cost_within_accuracy_drop", "selection.options": {"max_drop_points": drop}}
    path = write_workflow({**overrides, **({"teacher.checkpoint": str(teacher_checkpoint), "teacher.train.epochs": 10} if teacher else {})})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("warning: selection.options.max_drop_points" in out) is warned, out.splitlines()[-3:]


def test_the_gain_is_the_mean_of_paired_differences_with_their_spread():
    pair = lambda seed, kd, labels: SeedPair(seed, {metrics.TEST_ACCURACY: kd}, {metrics.TEST_ACCURACY: labels})  # noqa: E731
    gain = DistillationGain(5, (pair(0, 0.92, 0.90), pair(1, 0.91, 0.90), pair(2, 0.93, 0.90)))
    assert gain.gain_points == pytest.approx(2.0)
    assert gain.spread_points == pytest.approx(1.0)
    assert gain.sentence().startswith("distillation bought +2.00 pt of test accuracy at this compression: trial 5 0.9200 with the teacher vs 0.9000")
    assert gain.as_metrics()[metrics.KD_GAIN_POINTS] == pytest.approx(2.0)
    skipped = DistillationGain(5, skipped="trial 5 trained without its teacher")
    assert skipped.as_metrics() == {} and skipped.sentence() == "distillation gain not measured: trial 5 trained without its teacher"


def test_control_runs_pair_each_seed_and_retrain_the_pick_only_at_seeds_other_than_its_own():
    assert control_runs(3, 1) == {"labels-only-seed-3": {"distillation.alpha": 0.0, "training.seed": 3}}
    assert list(control_runs(3, 2)) == ["labels-only-seed-3", "labels-only-seed-4", "with-teacher-seed-4"]
    assert control_runs(3, 2)["with-teacher-seed-4"] == {"training.seed": 4}


def test_a_smoothed_control_is_named_apart_smooths_only_the_labels_only_runs_and_says_so():
    runs = control_runs(0, 2, label_smoothing=0.1)
    assert runs == {
        "labels-only-smoothed-0.1-seed-0": {"distillation.alpha": 0.0, "training.seed": 0, "distillation.label_smoothing": 0.1},
        "labels-only-smoothed-0.1-seed-1": {"distillation.alpha": 0.0, "training.seed": 1, "distillation.label_smoothing": 0.1},
        "with-teacher-seed-1": {"training.seed": 1},
    }
    assert labels_only_run(0, 0.0) == "labels-only-smoothed-0-seed-0" != labels_only_run(0), "smoothing 0 asked for is not the pick's own"
    pair = SeedPair(0, {metrics.TEST_ACCURACY: 0.91}, {metrics.TEST_ACCURACY: 0.90})
    smoothed, own = DistillationGain(5, (pair,), labels_only_smoothing=0.1), DistillationGain(5, (pair,))
    assert "(same configuration, alpha 0, labels smoothed 0.1; 1 seed" in smoothed.sentence()
    assert "(same configuration, alpha 0; 1 seed" in own.sentence()
    assert smoothed.as_metrics()["control_label_smoothing"] == 0.1 and "control_label_smoothing" not in own.as_metrics()


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_a_control_smoothing_outside_zero_to_one_is_a_config_error_naming_the_field(smoothing: float):
    with pytest.raises(ConfigError, match=r"selection\.distillation_control\.label_smoothing"):
        load_workflow(Path("workflows/digits_quickstart.yaml"), {"selection.distillation_control.label_smoothing": smoothing})


class RefusingTeacher(nn.Module):
    """A teacher that fails the trial if it is ever run."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher was run")


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_trial_with_alpha_zero_never_runs_its_teacher(tmp_path: Path, alpha: float):
    wf = load_workflow(Path("workflows/digits_quickstart.yaml"), {
        "distillation.alpha": alpha, "training.epochs": 1, "sweep.teacher_cache": False, "student.options": {"channels": [8, 16]},
    })
    loop_config = {"workflow": wf.to_dict(), "teachers": [RefusingTeacher()], "data": build_data(wf.data), "teacher_cache": None}
    reports: list[dict] = []
    if alpha:
        with pytest.raises(AssertionError, match="the teacher was run"):
            run_trial(loop_config, InProcessSession(tmp_path, reports.append, torch.device("cpu")))
        return
    run_trial(loop_config, InProcessSession(tmp_path, reports.append, torch.device("cpu")))
    assert metrics.TEST_ACCURACY in reports[-1]


@pytest.mark.ray
def test_a_sweep_picks_on_validation_reports_the_labels_only_control_and_a_resume_reuses_it(ray_session, write_workflow, teacher_checkpoint, capsys):
    path = write_workflow({
        **tiny_training(3), "teacher.checkpoint": str(teacher_checkpoint), "sweep.num_samples": 3, "resources.num_workers": 1,
        "resources.cpus_per_worker": 0.9, "selection.distillation_control.enabled": True, "student.options": {"channels": [8, 16]},
    })
    wf = load_workflow(path)
    lines: list[str] = []
    outcome = lepton_ray.sweep(path, log=lines.append)
    exported = outcome.selection
    pick = int(exported.selection.trial)

    assert bool(outcome.trials.set_index("trial").loc[pick, "on_front"]), "the pick lies on the validation front"
    assert select(outcome.trials, wf.sweep.cost_metric, outcome.teacher_accuracy, wf.selection, wf.export.tolerance).trial == pick

    gain = exported.gain
    assert gain is not None and gain.measured and len(gain.pairs) == 1
    control = load_safe(newest_student_file(control_folder(outcome.paths, pick) / "labels-only-seed-0"), "control")
    picked_workflow = load_safe(newest_student_file(outcome.paths.trials / f"trial-{pick:04d}"), "pick")["workflow"]
    assert control["workflow"]["distillation"]["alpha"] == 0.0
    assert {k: v for k, v in control["workflow"].items() if k != "distillation"} == {k: v for k, v in picked_workflow.items() if k != "distillation"}
    expected = 100 * (float(exported.selection.row[metrics.TEST_ACCURACY]) - control["metrics"][metrics.TEST_ACCURACY])
    assert gain.gain_points == pytest.approx(expected, abs=1e-9)

    sentence = gain.sentence()
    assert any(sentence in line for line in lines), "the final summary line carries the control"
    assert sentence in exported.report.read_text() and "Chosen on validation only" in exported.report.read_text()
    from lepton_ray.tracking.tracker import Tracker

    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment, create=False)
    parent_metrics = tracker.client.get_run(outcome.parent_run_id).data.metrics
    assert parent_metrics[metrics.KD_GAIN_POINTS] == pytest.approx(gain.gain_points)
    assert parent_metrics[metrics.VAL_SAMPLES] == 270 and "int8_test_accuracy" in parent_metrics
    version = tracker.client.get_model_version_by_alias(wf.tracking.model_name, "champion")
    assert sentence in version.description and "Chosen on validation only" in version.description
    assert set(trials_frame(tracker, outcome.parent_run_id)["trial"]) == {0, 1, 2}, "the control runs are not trials"

    shutil.rmtree(outcome.paths.root / "export")
    again: list[str] = []
    resumed = lepton_ray.sweep(path, resume=True, log=again.append)
    assert not any(line.startswith("distillation control: training") for line in again), "a finished control is read back"
    assert resumed.selection.gain == gain

    capsys.readouterr()
    assert main(["export", str(path), "--set", "selection.distillation_control.label_smoothing=0.1"]) == 0
    assert "distillation control: training" in capsys.readouterr().out, "a control of another smoothing is trained, not read back"
    smoothed = load_safe(newest_student_file(control_folder(outcome.paths, pick) / "labels-only-smoothed-0.1-seed-0"), "smoothed control")
    assert smoothed["workflow"]["distillation"]["label_smoothing"] == 0.1 and smoothed["workflow"]["distillation"]["alpha"] == 0.0
    assert tracker.client.get_run(outcome.parent_run_id).data.metrics["control_label_smoothing"] == pytest.approx(0.1)
