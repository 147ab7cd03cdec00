"""The Optuna study of a sweep, persisted in SQLite next to its trials: the source of truth for what was
tried and what it scored (`search.py` drives Ray Tune from it). No Ray import here, so reading a finished
sweep back (`select`, `leaderboard`) does not pay for Ray Tune."""


from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import optuna

from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.search_space import CategoricalParam, FloatParam
from lepton_ray.errors import ConfigError
from lepton_ray.sweep.samplers import make_sampler

SWEEP_ID_ATTR = "sweep_id"
"""Study attribute naming this sweep: a sweep started again in a deleted folder gets new MLflow runs."""
NUMBER_KEY = "optuna_number"
"""Key of the Optuna trial number in every Tune trial config."""
TUNE_ID_ATTR = "tune_trial_id"
HISTORY_ATTR = "warm_start"
"""User attribute of a trial another sweep lent as history (`sweep/warm_start.py`): the folder it came from."""

def is_history(trial: optuna.trial.FrozenTrial) -> bool:
    return HISTORY_ATTR in trial.user_attrs


def distribution(param) -> optuna.distributions.BaseDistribution:
    if isinstance(param, FloatParam):
        return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
    if isinstance(param, CategoricalParam):
        return optuna.distributions.CategoricalDistribution(param.choices)
    return optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step)


def is_final_result(result: dict | None) -> bool:
    """A trial's last report as a finished trial gives it (the best epoch's figures and the costs measured), not diverged,
    no input error; earlier epochs' reports never carry `best_val_accuracy`."""
    return bool(result) and metrics.BEST_VAL_ACCURACY in result and not result.get(metrics.DIVERGED) and not result.get(metrics.INPUT_ERROR)


FLOOR_CONSTRAINT = "accuracy_floor"
"""The constraint `sweep.accuracy_floor` sets; the others are named by their cost metric."""
CONSTRAINTS_ATTR = "constraint_limits"
"""Study attribute: the limits the sweep started with. Every finished trial carries one value per limit, and
Optuna's GPSampler refuses trials with different numbers of constraints, so a resume must keep them."""


def constraint_limits(cfg: SweepConfig) -> dict[str, float]:
    """Constraint name -> limit: each `sweep.constraints` cost, then `sweep.accuracy_floor`."""
    return {**cfg.constraints, **({} if cfg.accuracy_floor is None else {FLOOR_CONSTRAINT: cfg.accuracy_floor})}


def constraint_values(cfg: SweepConfig, result: dict | None) -> dict[str, float]:
    """A trial's constraints from its final metrics, Optuna's way (<= 0: feasible): each `sweep.constraints` cost
    over its limit, and `sweep.accuracy_floor` over the trial's best_val_accuracy. No result: infeasible on each."""
    limits = constraint_limits(cfg)
    if not result:
        return {name: 1.0 for name in limits}
    return {name: limit - float(result[metrics.BEST_VAL_ACCURACY]) if name == FLOOR_CONSTRAINT else float(result[name]) - limit
            for name, limit in limits.items()}


def set_constraints(trial: optuna.trial.Trial, cfg: SweepConfig, result: dict | None) -> None:
    """Before the trial is told: every sampler of Optuna 5 reads constraints set this way (`Trial.set_constraint`)."""
    for name, value in constraint_values(cfg, result).items():
        trial.set_constraint(name, value)


def open_study(
    storage_dir: Path, cfg: SweepConfig, front: list[dict[str, Any]] | None = None, history: list[optuna.trial.FrozenTrial] | None = None,
) -> optuna.Study:
    """Create the study (queueing a warm start's `front`, then `baseline_trials`; adding the warm start's
    `history`: `sweep/warm_start.py`) or load the existing one."""
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
        study.set_user_attr(CONSTRAINTS_ATTR, constraint_limits(cfg))
        for params in front or []:
            study.enqueue_trial(params)
        for params in cfg.baseline_trials:
            study.enqueue_trial(params, skip_if_exists=True)
        study.add_trials(history or [])
    return study


def check_constraints_unchanged(study: optuna.Study, cfg: SweepConfig) -> None:
    """Before a sweep asks for more trials (reading one back needs no check)."""
    limits = constraint_limits(cfg)
    started_with = study.user_attrs.get(CONSTRAINTS_ATTR, limits)  # studies from before the attribute: not known, not refused
    if started_with != limits:
        raise ConfigError(f"sweep.constraints / sweep.accuracy_floor: this sweep started with {started_with or 'none'}, the workflow now "
                          f"sets {limits or 'none'}; set them back to resume it, or start a new sweep under another name")


def sweep_id(study: optuna.Study) -> str:
    """The id `open_study` gave the sweep when it created its study."""
    return study.user_attrs.get(SWEEP_ID_ATTR, "")


def own_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The sweep's own trials: a warm start's history is only there for the sampler."""
    return [trial for trial in study.get_trials(deepcopy=False) if not is_history(trial)]


def finished_count(study: optuna.Study) -> int:
    return sum(1 for trial in own_trials(study) if trial.state.is_finished())
