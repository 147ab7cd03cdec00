"""`sweep.stop_when`: end the sweep as soon as a finished trial meets the user's goal.

A Ray Tune `Stopper` that is also a `Callback`: when a trial's final result (the one with the int8 file's
validation accuracy and the measured costs) meets every bound, no new trial is asked for (the searcher checks
`met`); once that trial has completed (stopping it at its final report would lose it), `stop_all`
turns true and Tune stops the trials still running (they reach Optuna as pruned, so they never
enter the front). The met goal is written into the study, so `--resume` of a sweep that met its
goal has nothing left to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna
from ray.tune import Callback, Stopper

from lepton_ray import metrics
from lepton_ray.config import StopWhen
from lepton_ray.sweep.study import is_final_result

MET_ATTR = "stop_when_met"
"""Study attribute: the goal that was met and the trial that met it."""


@dataclass(frozen=True)
class GoalMet:
    trial: int
    accuracy: float
    cost: float


def meets(goal: StopWhen, result: dict[str, Any], cost_metric: str) -> bool:
    """A finished trial's final result within every bound of the goal (intermediate epochs never are)."""
    if not is_final_result(result) or cost_metric not in result or metrics.SELECTION_ACCURACY not in result:
        return False
    accurate = goal.min_accuracy is None or float(result[metrics.SELECTION_ACCURACY]) >= goal.min_accuracy
    cheap = goal.max_cost is None or float(result[cost_metric]) <= goal.max_cost
    return accurate and cheap


def describe(goal: StopWhen, cost_metric: str) -> str:
    bounds = ([f"{metrics.SELECTION_ACCURACY} >= {goal.min_accuracy:g}"] if goal.min_accuracy is not None else []) + (
        [f"{cost_metric} <= {goal.max_cost:,.6g}"] if goal.max_cost is not None else [])
    return " and ".join(bounds)


def met_before(study: optuna.Study, goal: StopWhen | None) -> int | None:
    """The trial that met this same goal in an earlier run of the sweep (None: not met, or the goal changed)."""
    recorded = study.user_attrs.get(MET_ATTR)
    if goal is None or not recorded or recorded.get("goal") != goal.model_dump():
        return None
    return int(recorded["trial"])


class GoalStopper(Stopper, Callback):
    """Watches every result; never stops a single trial, stops the sweep once the trial that met the goal has completed."""

    def __init__(self, goal: StopWhen, cost_metric: str, study: optuna.Study, trial_number: Callable[[str], int | None]) -> None:
        self.goal = goal
        self.cost_metric = cost_metric
        self.study = study
        self.trial_number = trial_number
        self.met: GoalMet | None = None
        self.met_by: str | None = None
        """Tune id of the trial that met the goal."""
        self.met_trial_done = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.met is None and meets(self.goal, result, self.cost_metric):
            number = self.trial_number(trial_id)
            self.met = GoalMet(-1 if number is None else number, float(result[metrics.SELECTION_ACCURACY]), float(result[self.cost_metric]))
            self.met_by = trial_id
            self.study.set_user_attr(MET_ATTR, {"goal": self.goal.model_dump(), "trial": self.met.trial})
        return False

    def stop_all(self) -> bool:
        return self.met_trial_done

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.met_trial_done = self.met_trial_done or trial.trial_id == self.met_by

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.on_trial_complete(iteration, trials, trial)

    def summary(self, finished: int, total: int) -> str:
        met = self.met
        assert met is not None
        return (f"stop_when met by trial {met.trial} ({metrics.SELECTION_ACCURACY} {met.accuracy:.4f}, {self.cost_metric} {met.cost:,.6g}; "
                f"goal {describe(self.goal, self.cost_metric)}): the sweep stopped after {finished} of {total} trials")
