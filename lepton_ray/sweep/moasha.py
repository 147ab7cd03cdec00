"""`sweep.scheduler: moasha`: asynchronous successive halving that promotes by Pareto rank (MO-ASHA).

Tune's ASHA keeps the best 1/eta of the trials seen at a rung by one metric; on a two-objective sweep
that metric (validation accuracy) stops every cheap student early, and the front loses its cheap end.
Here, as in MO-ASHA (Schmucker et al. 2021, syne-tune's `MOASHA`), a trial reaching a rung joins the
(validation accuracy, planned cost) points recorded there and goes on only if it is among the first
ceil(n / eta) of them in NSGA-II order: non-dominated front first, then crowding distance. The cost at a
rung is `planned_size_bytes` (the packed size of the student the trial will finish with, known from its
first epoch), because the measured cost of the int8 file exists only at the end. A stopped trial is told
to Optuna as PRUNED (`sweep/search.py`) and never reaches the front. With `sweep.accuracy_floor`, the order
is NSGA-II's constrained one: points at or above the floor first (in Pareto order), then the rest by accuracy,
so a rung keeps the students that may still reach the floor rather than the cheap ones that never will.

The rule (`ParetoRungs`) has no Ray in it, so `benchmarks/multi_fidelity.py` replays it on a measured grid.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lepton_ray import metrics

Point = tuple[float, float]
"""(accuracy: higher is better, cost: lower is better)."""


def dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def nondominated_fronts(points: Sequence[Point]) -> list[list[int]]:
    """Indices of `points` by non-dominated front, the Pareto front first."""
    left = list(range(len(points)))
    fronts = []
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i]) for j in left)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


def crowding_distances(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index of one front: the ends are infinite, the rest the normalised
    gaps to their neighbours summed over both objectives (a point in a sparse stretch of the front ranks first)."""
    distance = {i: 0.0 for i in front}
    for axis in (0, 1):
        ordered = sorted(front, key=lambda i: points[i][axis])
        span = points[ordered[-1]][axis] - points[ordered[0]][axis]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (points[after][axis] - points[before][axis]) / span if span else 0.0
    return distance


def pareto_order(points: Sequence[Point]) -> list[int]:
    """Indices of `points`, best first: by non-dominated front, within a front by crowding distance (ties: first seen)."""
    order = []
    for front in nondominated_fronts(points):
        distance = crowding_distances(points, front)
        order += sorted(front, key=lambda i: (-distance[i], i))
    return order


def constrained_order(points: Sequence[Point], floor: float | None) -> list[int]:
    """`pareto_order` with an accuracy floor as the constraint (Deb's constrained domination): the points at or above
    it in Pareto order, then those below it, least short of it first."""
    if floor is None:
        return pareto_order(points)
    feasible = [i for i, point in enumerate(points) if point[0] >= floor]
    short = sorted((i for i, point in enumerate(points) if point[0] < floor), key=lambda i: (-points[i][0], i))
    return [feasible[k] for k in pareto_order([points[i] for i in feasible])] + short


def rung_milestones(grace_period: int, max_t: int, reduction_factor: int) -> list[int]:
    """Epochs at which trials are compared: grace, grace * eta, ... while below `max_t` (the last epoch finishes anyway)."""
    milestones, milestone = [], grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


class ParetoRungs:
    """The promotion rule, without Tune: one record of points per rung, filled as trials arrive (asynchronously)."""

    def __init__(self, milestones: Sequence[int], reduction_factor: int, accuracy_floor: float | None = None) -> None:
        self.reduction_factor = reduction_factor
        self.accuracy_floor = accuracy_floor
        self.recorded: dict[int, dict[str, Point]] = {milestone: {} for milestone in milestones}

    def goes_on(self, trial_id: str, time: int, point: Point) -> bool:
        """Record a trial's point at every rung it has reached and not yet been judged at; False: stop it there."""
        for milestone, recorded in self.recorded.items():
            if time < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = point
            ids = list(recorded)
            kept = constrained_order([recorded[i] for i in ids], self.accuracy_floor)[: math.ceil(len(ids) / self.reduction_factor)]
            if ids.index(trial_id) not in kept:
                return False
        return True


class MultiObjectiveAsha(FIFOScheduler):
    """Ray Tune scheduler over `ParetoRungs`: STOP for a trial that is not among the best 1/eta at its rung."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: int = 3, time_attr: str = metrics.EPOCH,
                 accuracy: str = metrics.VAL_ACCURACY, cost: str = metrics.PLANNED_SIZE_BYTES, accuracy_floor: float | None = None) -> None:
        super().__init__()
        self.time_attr, self.accuracy, self.cost = time_attr, accuracy, cost
        self.rungs = ParetoRungs(rung_milestones(grace_period, max_t, reduction_factor), reduction_factor, accuracy_floor)
        self.stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # its two objectives are its own; the searcher needs no metric either

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not {self.time_attr, self.accuracy, self.cost} <= result.keys() or metrics.BEST_VAL_ACCURACY in result:
            return TrialScheduler.CONTINUE  # the final report: the trial is done, never cut at its last step
        point = (float(result[self.accuracy]), float(result[self.cost]))
        if self.rungs.goes_on(trial.trial_id, int(result[self.time_attr]), point):
            return TrialScheduler.CONTINUE
        self.stopped += 1
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"MultiObjectiveAsha: {self.stopped} stopped; rungs {list(self.rungs.recorded)}"
