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
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from ray.tune.search import Searcher

from lepton_ray import metrics
from lepton_ray.checkpoints import is_storage_full
from lepton_ray.config import CategoricalParam, FloatParam, SearchSpace, SweepConfig
from lepton_ray.sweep.samplers import make_sampler

SWEEP_ID_ATTR = "sweep_id"
"""Study attribute naming this sweep: a sweep started again in a deleted folder gets new MLflow runs."""
NUMBER_KEY = "optuna_number"
"""Key of the Optuna trial number in every Tune trial config."""
TUNE_ID_ATTR = "tune_trial_id"
HISTORY_ATTR = "warm_start"
"""User attribute of a trial another sweep lent as history (`sweep/warm_start.py`): the folder it came from."""

if TYPE_CHECKING:
    from lepton_ray.sweep.warm_start import WarmStart


def is_history(trial: optuna.trial.FrozenTrial) -> bool:
    return HISTORY_ATTR in trial.user_attrs


def distribution(param) -> optuna.distributions.BaseDistribution:
    if isinstance(param, FloatParam):
        return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
    if isinstance(param, CategoricalParam):
        return optuna.distributions.CategoricalDistribution(param.choices)
    return optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step)


def is_final_result(result: dict | None) -> bool:
    """A trial's last report as a finished trial gives it: test accuracy and costs measured, not diverged, no input error."""
    return bool(result) and metrics.TEST_ACCURACY in result and not result.get(metrics.DIVERGED) and not result.get(metrics.INPUT_ERROR)


def constraint_list(constraints: dict[str, float], result: dict | None) -> list[float]:
    """A trial's constraint values from its final metrics (None: infeasible)."""
    if not result:
        return [1.0] * max(len(constraints), 1)
    return [float(result[name]) - limit for name, limit in constraints.items()] or [0.0]


def open_study(storage_dir: Path, cfg: SweepConfig, warm: WarmStart | None = None) -> optuna.Study:
    """Create the study (queueing a warm start's front, then `baseline_trials`; adding the warm start's
    history) or load the existing one."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_dir.mkdir(parents=True, exist_ok=True)
    is_new = not (storage_dir / "study.db").exists()
    study = optuna.create_study(
        study_name="sweep",
        storage=f"sqlite:///{(storage_dir / 'study.db').resolve()}",
        directions=["maximize", "minimize"],
        load_if_exists=True,
    )
    study.sampler = make_sampler(cfg, len(study.get_trials(deepcopy=False)))
    if is_new:
        study.set_user_attr(SWEEP_ID_ATTR, uuid.uuid4().hex[:12])
        for params in (warm.front if warm else []):
            study.enqueue_trial(params)
        for params in cfg.baseline_trials:
            study.enqueue_trial(params, skip_if_exists=True)
        study.add_trials(warm.history if warm else [])
    return study


def sweep_id(study: optuna.Study) -> str:
    """The id `open_study` gave the sweep when it created its study."""
    return study.user_attrs.get(SWEEP_ID_ATTR, "")


def own_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The sweep's own trials: a warm start's history is only there for the sampler."""
    return [trial for trial in study.get_trials(deepcopy=False) if not is_history(trial)]


def finished_count(study: optuna.Study) -> int:
    return sum(1 for trial in own_trials(study) if trial.state.is_finished())


class StudySearcher(Searcher):
    """Tune `Searcher` over a persistent multi-objective study (accuracy up, cost down)."""

    def __init__(self, study: optuna.Study, space: SearchSpace | None, cfg: SweepConfig) -> None:
        super().__init__()  # no metric: Tune would demand it in every per-epoch report
        self.study = study
        self.cost_metric = cfg.cost_metric
        self.constraints = dict(cfg.constraints)
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
            self._set_attr(number, "constraints", self.constraint_list(result if values else None))
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

    def constraint_list(self, result: dict | None) -> list[float]:
        return constraint_list(self.constraints, result)

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        """User attrs on a trial known by number (Optuna's public API needs the live Trial object)."""
        storage = self.study._storage
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number), key, value)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study's SQLite file is already the persistent state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: state is re-read from the study file."""
