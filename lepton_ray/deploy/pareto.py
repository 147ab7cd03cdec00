"""Pareto front and selection policies: pure functions, no I/O.

Accuracies are fractions in [0, 1]; accuracy tolerances in options are in percentage points.
Every rule ranks by `metrics.SELECTION_ACCURACY`, a validation figure (why: its docstring); the teacher
reference is the teacher's validation accuracy. A policy either returns the trial it picks with a one-line
reason, or raises `SelectionError`: it never falls back to some other trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton_ray import metrics
from lepton_ray.config import SelectionConfig
from lepton_ray.errors import ConfigError, SelectionError
from lepton_ray.registry import Registry

ACCURACY = metrics.SELECTION_ACCURACY


def standard_error(accuracy: float, samples: int) -> float:
    """Binomial standard error of an accuracy measured on `samples` examples, sqrt(p (1 - p) / n): two trials
    closer than about twice this cannot be told apart on that split."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / samples) if samples > 0 else math.nan


def noise_note(accuracy: float, samples: int | None, split: str = "validation") -> str:
    """'+- 0.82 pt SE, 270 validation images': how noisy an accuracy is, to print next to it."""
    if not samples:
        return f"{split} split size unknown"
    return f"+- {100 * standard_error(accuracy, samples):.2f} pt SE, {samples:,} {split} samples"


def threshold_warning(cfg: SelectionConfig, val_samples: int, accuracy: float | None = None) -> str | None:
    """A warning when the policy's accuracy threshold (`max_drop_points`) is finer than the validation split can
    resolve: below the standard error at `accuracy` (the teacher's, when known: students score at most about that,
    and the error only grows below it), else below one sample."""
    threshold = getattr(parse_options(POLICIES.get(cfg.policy).options_type, cfg.options), "max_drop_points", None)
    if threshold is None or not val_samples:
        return None
    known = accuracy is not None and math.isfinite(accuracy)
    resolution = 100 * (standard_error(accuracy, val_samples) if known else 1 / val_samples)
    if threshold >= resolution:
        return None
    what = f"the standard error of a {accuracy:.1%} accuracy" if known else "one sample"
    return (f"warning: selection.options.max_drop_points {threshold:g} pt is finer than {what} on the {val_samples:,} validation samples "
            f"({resolution:.2f} pt): the pick follows noise; raise it, or give the validation split more samples (data.val_fraction)")


def pareto_front(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points for (accuracy up, cost down).

    A point is dominated when another has accuracy >= and cost <= with at least one strict.
    Equal points are all on the front when they are not dominated; rows with a NaN or infinite
    value are never on it (and dominate nothing). Sort + cumulative extreme, as Optuna's
    `_is_pareto_front_2d`: O(n log n).
    """
    accuracy = np.asarray(accuracy, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if accuracy.shape != cost.shape or accuracy.ndim != 1:
        raise ValueError(f"accuracy and cost must be 1-d arrays of one length, got {accuracy.shape} and {cost.shape}")
    on_front = np.zeros(len(accuracy), dtype=bool)
    valid = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(cost))
    if len(valid) == 0:
        return on_front
    points = np.stack([cost[valid], -accuracy[valid]], axis=1)  # both minimised
    unique_points, inverse = np.unique(points, axis=0, return_inverse=True)  # lexsorted by cost, then -accuracy
    best_so_far = np.minimum.accumulate(unique_points[:, 1])
    unique_on_front = np.ones(len(unique_points), dtype=bool)
    unique_on_front[1:] = best_so_far[1:] < best_so_far[:-1]
    on_front[valid] = unique_on_front[inverse.reshape(-1)]
    return on_front


@dataclass(frozen=True)
class Selection:
    """The picked trial's row of the trials table (column -> value), and why it was picked: `explanation` is the
    whole line (figures and reason), `reason` the rule that decided alone ("knee of the 5-point front (...)")."""

    policy: str
    row: dict[str, Any]
    explanation: str
    reason: str

    @property
    def trial(self) -> Any:
        return self.row["trial"]


PolicyFn = Callable[[pd.DataFrame, str, float, Any], Selection]


@dataclass(frozen=True)
class Policy:
    """A selection rule and the typed options it takes from `selection.options`."""

    options_type: type[BaseModel]
    select: PolicyFn


POLICIES: Registry[Policy] = Registry("selection policy", "selection.policy")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _policy(name: str, options_type: type[BaseModel]) -> Callable[[PolicyFn], PolicyFn]:
    def decorator(select: PolicyFn) -> PolicyFn:
        POLICIES.register(name)(Policy(options_type, select))
        return select

    return decorator


def parse_options(options_type: type[BaseModel], options: dict[str, Any]) -> BaseModel:
    """Validate `selection.options` for one policy; errors name `selection.options.<key>`."""
    try:
        return options_type.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(options_type.model_fields) or "none"
            raise ConfigError(f"selection.options.{key}: unknown option for this policy (allowed: {allowed})") from None
        if first["type"] == "missing":
            raise ConfigError(f"selection.options.{key}: required option is missing") from None
        raise ConfigError(f"selection.options.{key}: {first['msg']} (got {first.get('input')!r})") from None


def artifact_holds(trials: pd.DataFrame, max_drop_points: float) -> np.ndarray:
    """Rows whose int8 file, run in ONNX Runtime on the validation split, is at most `max_drop_points` below
    the trial's own validation accuracy (the publish step's check, on val); rows without the figure pass."""
    if metrics.INT8_VAL_ACCURACY not in trials.columns or metrics.BEST_VAL_ACCURACY not in trials.columns:
        return np.ones(len(trials), dtype=bool)
    int8_accuracy = trials[metrics.INT8_VAL_ACCURACY].to_numpy(dtype=float)
    drop_points = (trials[metrics.BEST_VAL_ACCURACY].to_numpy(dtype=float) - int8_accuracy) * 100
    return np.isnan(int8_accuracy) | (drop_points <= max_drop_points + 1e-9)


def completed(trials: pd.DataFrame, cost_column: str, max_int8_drop_points: float | None = None) -> pd.DataFrame:
    """Rows with a finite accuracy and cost, and (given `max_int8_drop_points`) an int8 file that holds the
    trial's accuracy (`artifact_holds`): the only ones on the front and the only ones a policy may pick."""
    for column in ("trial", ACCURACY, cost_column):
        if column not in trials.columns:
            raise SelectionError(f"trials table has no column {column!r}; columns: {', '.join(map(str, trials.columns))}")
    keep = np.isfinite(trials[[ACCURACY, cost_column]].to_numpy(dtype=float)).all(axis=1)
    if max_int8_drop_points is not None:
        keep &= artifact_holds(trials, max_int8_drop_points)
    return trials[keep].reset_index(drop=True)


def select(
    trials: pd.DataFrame, cost_column: str, teacher_accuracy: float, cfg: SelectionConfig, max_int8_drop_points: float | None = None,
    val_samples: int | None = None,
) -> Selection:
    """Apply the workflow's policy to the completed trials; `SelectionError` when none qualifies. `teacher_accuracy`:
    the teacher's validation accuracy; `val_samples` puts the figure's standard error in the explanation."""
    policy = POLICIES.get(cfg.policy)
    options = parse_options(policy.options_type, cfg.options)
    candidates = completed(trials, cost_column, max_int8_drop_points)
    if candidates.empty:
        raise SelectionError(
            f"selection.policy {cfg.policy!r}: no completed trial with {ACCURACY} and {cost_column}"
            f"{'' if max_int8_drop_points is None else ' whose int8 file holds its validation accuracy'}; nothing to select"
        )
    selection = policy.select(candidates, cost_column, teacher_accuracy, options)
    if not val_samples:
        return selection
    return replace(selection, explanation=f"{selection.explanation} ({noise_note(selection.row[ACCURACY], val_samples)})")


def chosen_trial(trials: pd.DataFrame, trial: int, cost_column: str, val_samples: int | None = None) -> Selection:
    """The user's own pick (`lepton-ray export --trial N`): any trial that finished with an accuracy and a cost,
    on the front or not; its int8 file is verified like a policy's pick."""
    candidates = completed(trials, cost_column)
    matches = candidates.index[candidates["trial"] == trial]
    if matches.empty:
        finished = ", ".join(str(int(t)) for t in sorted(candidates["trial"])) or "none"
        raise SelectionError(f"--trial: trial {trial} has no finished result with {ACCURACY} and {cost_column} in this sweep; finished trials: {finished}")
    selection = _picked("--trial", candidates, matches[0], cost_column, "chosen with export --trial, not by the policy")
    return replace(selection, explanation=f"{selection.explanation} ({noise_note(selection.row[ACCURACY], val_samples)})") if val_samples else selection


def format_cost(value: float) -> str:
    """41000.0 -> '41,000'; 14270.5 -> '14,270' (never 1.427e+04); 1.2345 -> '1.234': readable in explanations and tables."""
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def _picked(policy: str, candidates: pd.DataFrame, index: Any, cost_column: str, reason: str) -> Selection:
    row = candidates.loc[[index]].to_dict("records")[0]  # per-column types kept (a Series would make ints floats)
    line = f"picked trial {row['trial']}: {ACCURACY} {row[ACCURACY]:.4f}, {cost_column} {format_cost(row[cost_column])}; {reason}"
    return Selection(policy, row, line, reason)


def _best(candidates: pd.DataFrame, cost_column: str, accuracy_first: bool) -> Any:
    """Index label of the best row; deterministic tie-breaks: by accuracy then cost (or cost then accuracy), then trial number."""
    keys = [ACCURACY, cost_column, "trial"] if accuracy_first else [cost_column, ACCURACY, "trial"]
    ascending = [False, True, True] if accuracy_first else [True, False, True]
    return candidates.sort_values(keys, ascending=ascending, kind="stable").index[0]


class BudgetOptions(_Options):
    budget: float = Field(gt=0, description="largest acceptable value of the cost metric")


@_policy("max_accuracy_under_cost", BudgetOptions)
def select_max_accuracy_under_cost(trials: pd.DataFrame, cost_column: str, teacher_accuracy: float, options: BudgetOptions) -> Selection:
    """The most accurate trial whose cost is at most `budget` (ties: the cheaper one)."""
    feasible = trials[trials[cost_column] <= options.budget]
    if feasible.empty:
        cheapest = trials[cost_column].min()
        raise SelectionError(
            f"max_accuracy_under_cost: no trial has {cost_column} <= budget {format_cost(options.budget)} "
            f"(cheapest is {format_cost(cheapest)}); raise selection.options.budget or change the sweep"
        )
    index = _best(feasible, cost_column, accuracy_first=True)
    return _picked("max_accuracy_under_cost", feasible, index, cost_column, f"most accurate with {cost_column} <= {format_cost(options.budget)}")


class AccuracyDropOptions(_Options):
    max_drop_points: float = Field(ge=0, le=100, description="allowed accuracy drop below the reference, in points")
    reference: Literal["best", "teacher"] = "best"


@_policy("min_cost_within_accuracy_drop", AccuracyDropOptions)
def select_min_cost_within_accuracy_drop(trials: pd.DataFrame, cost_column: str, teacher_accuracy: float, options: AccuracyDropOptions) -> Selection:
    """The cheapest trial at most `max_drop_points` below the best trial or the teacher (ties: the more accurate), on validation."""
    if options.reference == "teacher":
        if not np.isfinite(teacher_accuracy):
            raise SelectionError("min_cost_within_accuracy_drop: the teacher's validation accuracy is unknown; use selection.options.reference: best")
        reference = float(teacher_accuracy)
    else:
        reference = float(trials[ACCURACY].max())
    threshold = reference - options.max_drop_points / 100
    feasible = trials[trials[ACCURACY] >= threshold - 1e-12]
    if feasible.empty:
        raise SelectionError(
            f"min_cost_within_accuracy_drop: no trial reaches accuracy {threshold:.4f} "
            f"({options.max_drop_points} pt below {options.reference} {reference:.4f}; best trial has {trials[ACCURACY].max():.4f}); "
            "raise selection.options.max_drop_points or change the sweep"
        )
    index = _best(feasible, cost_column, accuracy_first=False)
    reason = f"cheapest within {options.max_drop_points:.1f} pt of {options.reference} {reference:.3f}"
    return _picked("min_cost_within_accuracy_drop", feasible, index, cost_column, reason)


class KneeOptions(_Options):
    pass


@_policy("knee", KneeOptions)
def select_knee(trials: pd.DataFrame, cost_column: str, teacher_accuracy: float, options: KneeOptions) -> Selection:
    """The front point with the largest trade-off: farthest above the chord of the front.

    Cost and accuracy are min-max normalised over the front; the chord joins its cheapest and
    its most accurate point. The knee is the point with the largest positive distance above the
    chord, i.e. the most accuracy per unit cost beyond linear interpolation. With fewer than
    three distinct front points, or none above the chord, the most accurate front point is
    picked. Ties go to the cheaper point.
    """
    front = trials[pareto_front(trials[ACCURACY].to_numpy(), trials[cost_column].to_numpy())]
    front = front.sort_values([cost_column, ACCURACY, "trial"], ascending=[True, False, True], kind="stable")
    cost = front[cost_column].to_numpy(dtype=float)
    accuracy = front[ACCURACY].to_numpy(dtype=float)
    cost_span, accuracy_span = cost[-1] - cost[0], accuracy[-1] - accuracy[0]
    if cost_span > 0 and accuracy_span > 0:
        # Signed distance to the chord from (0, 0) to (1, 1) in normalised space, positive above it.
        above = ((accuracy - accuracy[0]) / accuracy_span - (cost - cost[0]) / cost_span) / np.sqrt(2)
        if above.max() > 1e-12:
            index = front.index[int(np.argmax(above))]
            return _picked("knee", front, index, cost_column, f"knee of the {len(front)}-point front (largest gain over the chord: {above.max():.3f})")
    index = _best(front, cost_column, accuracy_first=True)
    return _picked("knee", front, index, cost_column, f"most accurate point of the {len(front)}-point front (no knee above the chord)")
