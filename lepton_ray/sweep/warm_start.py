"""`sweep.warm_start`: start a sweep from another sweep's results.

The other sweep's front configurations are queued first (re-measured under this workflow), and its
finished trials join this study as history the sampler learns from, marked so that they never count
as this sweep's trials nor appear on its leaderboard. The other sweep's files are only read (its
study is read from a copy). Knobs must match this sweep's search space; trials whose values fall
outside this space's ranges are left out. Costs are read from each trial's own final metrics, so a
sweep drawn against another cost metric still warm-starts this one.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.search_space import SearchSpace
from lepton_ray.deploy.pareto import pareto_front
from lepton_ray.errors import ConfigError
from lepton_ray.sweep.paths import SweepPaths
from lepton_ray.sweep.study import HISTORY_ATTR, constraint_values, distribution
from lepton_ray.trial.files import finished_trial_metrics, trial_run_name

FIELD = "sweep.warm_start"


@dataclass(frozen=True)
class WarmStart:
    source: Path
    front: list[dict[str, Any]]
    """Parameters of the other sweep's front, most accurate first: this sweep's first trials."""
    history: list[optuna.trial.FrozenTrial]
    left_out: int
    """Finished trials outside this space's ranges, or without the metrics this sweep needs."""

    def describe(self) -> str:
        left = f", {self.left_out} left out (outside this space's ranges or without final metrics)" if self.left_out else ""
        return f"warm start from {self.source}: its {len(self.front)} front configuration(s) first, {len(self.history)} finished trial(s) as sampler history{left}"


def sweep_folder(path: Path) -> Path:
    """The folder holding the other sweep's study.db: the path itself or its `sweep/` subfolder."""
    for folder in (path, path / "sweep"):
        if SweepPaths(folder).study.is_file():
            return folder
    raise ConfigError(f"{FIELD}: no sweep under {path} (no study.db); point it at another sweep's folder, e.g. runs/<workflow name>/sweep")


def finished_trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    """The other study's completed trials, read from a copy (loading a study may write to its file)."""
    with tempfile.TemporaryDirectory(prefix="lepton-warm-start-") as scratch:
        copy = Path(scratch) / "study.db"
        shutil.copyfile(SweepPaths(folder).study, copy)
        storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
        try:
            study = optuna.load_study(study_name="sweep", storage=storage)
            return study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.COMPLETE,))
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{FIELD}: {folder / 'study.db'} is not a lepton-ray sweep's study ({err}); point it at another sweep's folder") from None
        finally:
            storage.engine.dispose()


def _inside(distribution: optuna.distributions.BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def read_warm_start(path: Path, space: SearchSpace | None, cfg: SweepConfig) -> WarmStart:
    """Everything the new study needs from the other sweep; a `ConfigError` naming the field when it cannot warm-start this one."""
    if space is None:
        raise ConfigError(f"{FIELD}: needs sweep.space (a single trial has nothing to warm-start); set sweep.space or drop {FIELD}")
    folder = sweep_folder(Path(path))
    trials = finished_trials(folder)
    if not trials:
        raise ConfigError(f"{FIELD}: {folder} has no finished trial to start from; point it at a sweep with finished trials")
    knobs = set(space.params)
    searched = set().union(*(trial.params for trial in trials))
    if searched != knobs:
        raise ConfigError(
            f"{FIELD}: {folder} searched {sorted(searched)} but this sweep searches {sorted(knobs)}; warm-start from a sweep over the same knobs"
        )
    distributions = {path: distribution(param) for path, param in space.params.items()}
    history, points, left_out = [], [], 0
    for trial in trials:
        final = finished_trial_metrics(SweepPaths(folder).trials / trial_run_name(trial.number)) or {}
        usable = all(_inside(distributions[k], v) for k, v in trial.params.items()) and all(
            name in final for name in (metrics.BEST_VAL_ACCURACY, metrics.SELECTION_ACCURACY, cfg.cost_metric, *cfg.constraints))
        if not usable:
            left_out += 1
            continue
        values = [float(final[metrics.BEST_VAL_ACCURACY]), float(final[cfg.cost_metric])]
        history.append(optuna.trial.create_trial(
            params=trial.params, distributions={k: distributions[k] for k in trial.params}, values=values,
            user_attrs={HISTORY_ATTR: str(folder), "warm_start_trial": trial.number},
            system_attrs={f"constraints:{name}": value for name, value in constraint_values(cfg, final).items()},  # as Trial.set_constraint writes them
        ))
        points.append((float(final[metrics.SELECTION_ACCURACY]), values[1]))  # the front as `select` draws it: on validation
    if not history:
        raise ConfigError(f"{FIELD}: none of {folder}'s {len(trials)} finished trials fits this search space's ranges; widen the ranges or warm-start from another sweep")
    accuracy, cost = np.array(points).T
    on_front = np.flatnonzero(pareto_front(accuracy, cost))
    front = [dict(history[i].params) for i in sorted(on_front, key=lambda i: -accuracy[i])]
    return WarmStart(folder, front, history, left_out)

