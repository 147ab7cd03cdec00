"""The search: an Optuna study, persisted in SQLite, driving Ray Tune as a `Searcher`.

Why not Tune's stock `OptunaSearch`: in Ray 2.60 its state lives in Tune's periodic experiment
snapshot, so after a driver crash it re-suggests configs and counts trials twice, and trials
stopped early reach Optuna as COMPLETE. Here the study file is the source of truth:
every trial is an Optuna trial number (also the Train run name and the MLflow run key);
a resumed sweep re-issues interrupted numbers before asking for new ones; trials stopped
early by the scheduler are told PRUNED and never enter the front.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import optuna
from ray.tune.search import Searcher

from lepton_ray import metrics
from lepton_ray.checkpoints import is_storage_full
from lepton_ray.config import SweepConfig
from lepton_ray.search_space import SearchSpace
from lepton_ray.sweep.study import NUMBER_KEY, TUNE_ID_ATTR, distribution, is_final_result, set_constraints


class StudySearcher(Searcher):
    """Tune `Searcher` over a persistent multi-objective study (accuracy up, cost down)."""

    def __init__(self, study: optuna.Study, space: SearchSpace | None, cfg: SweepConfig) -> None:
        super().__init__()  # no metric: Tune would demand it in every per-epoch report
        self.study = study
        self.cost_metric = cfg.cost_metric
        self.cfg = cfg
        self.distributions = {path: distribution(p) for path, p in (space.params.items() if space else [])}
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        self.interrupted = sorted(running, key=lambda t: t.number)
        self.live: dict[str, int] = {}
        self.storage_full = False
        """Set when a trial reported `storage_full`: no new trials; the driver stops with a clear error."""
        self.goal_met: Callable[[], bool] = lambda: False
        """True once `sweep.stop_when` is met (`sweep/goal.py`): no new trials."""

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Interrupted trials first (same number, same params), then a fresh ask; nothing once storage is full."""
        if self.storage_full or self.goal_met():
            return Searcher.FINISHED
        with self._unless_storage_full():
            if self.interrupted:
                frozen = self.interrupted[0]
                number, params = frozen.number, dict(frozen.params)
            else:
                trial = self.study.ask(fixed_distributions=self.distributions)
                number, params = trial.number, dict(trial.params)
            self._set_attr(number, TUNE_ID_ATTR, trial_id)
            if self.interrupted and self.interrupted[0].number == number:
                self.interrupted.pop(0)
            self.live[trial_id] = number
            return {**params, NUMBER_KEY: number}
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.live.pop(trial_id, None)
        if number is None:
            return
        if result and result.get(metrics.STORAGE_FULL):
            self.storage_full = True  # left RUNNING in the study: --resume re-issues it from its last checkpoint
            return
        state, values = self.outcome(result, error)
        with self._unless_storage_full():  # not told: the trial stays RUNNING and --resume reports it from its checkpoint
            set_constraints(self._trial(number), self.cfg, result if values else None)
            self.study.tell(number, values, state=state, skip_if_finished=True)

    @contextlib.contextmanager
    def _unless_storage_full(self):
        """A study write the full disk refused (SQLite rolls it back) stops new trials instead of the sweep."""
        try:
            yield
        except Exception as err:
            if not is_storage_full(err):
                raise
            self.storage_full = True

    def outcome(self, result: dict | None, error: bool) -> tuple[optuna.trial.TrialState, list[float] | None]:
        """COMPLETE only with the final metrics of a finished trial; early-stopped -> PRUNED."""
        if error or not result or result.get(metrics.INPUT_ERROR):
            return optuna.trial.TrialState.FAIL, None
        if not is_final_result(result):
            return optuna.trial.TrialState.PRUNED, None
        return optuna.trial.TrialState.COMPLETE, [float(result[metrics.BEST_VAL_ACCURACY]), float(result[self.cost_metric])]

    def _trial(self, number: int) -> optuna.trial.Trial:
        """The live trial of this number (Tune hands the searcher trial ids, the study knows numbers)."""
        return optuna.trial.Trial(self.study, self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        self._trial(number).set_user_attr(key, value)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study's SQLite file is already the persistent state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: state is re-read from the study file."""
