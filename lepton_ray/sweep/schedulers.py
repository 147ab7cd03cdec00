"""`sweep.scheduler`: which Ray Tune trial scheduler stops trials early, by name.

Both judge trials first at a third of the epochs (at least 1), then every `reduction_factor` times further:
Tune's default 4 for asha, 3 for moasha (as in the MO-ASHA paper and `benchmarks/multi_fidelity.py`).
"""

from __future__ import annotations

from typing import Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig
from lepton_ray.sweep.moasha import MultiObjectiveAsha, rung_milestones

MOASHA_REDUCTION_FACTOR = 3


def grace_period(epochs: int) -> int:
    """The first rung: a third of the epochs, at least 1."""
    return max(1, epochs // 3)


def moasha_milestones(epochs: int) -> list[int]:
    """The epochs at which `moasha` judges trials (also what `benchmarks/multi_fidelity.py` replays)."""
    return rung_milestones(grace_period(epochs), epochs, MOASHA_REDUCTION_FACTOR)


SCHEDULERS: dict[str, Callable[[WorkflowConfig], TrialScheduler]] = {
    "none": lambda wf: FIFOScheduler(),
    "asha": lambda wf: ASHAScheduler(
        time_attr=metrics.EPOCH, metric=metrics.VAL_ACCURACY, mode="max", max_t=wf.training.epochs,
        grace_period=grace_period(wf.training.epochs),
    ),
    "moasha": lambda wf: MultiObjectiveAsha(
        max_t=wf.training.epochs, grace_period=grace_period(wf.training.epochs), reduction_factor=MOASHA_REDUCTION_FACTOR,
        accuracy_floor=wf.sweep.accuracy_floor,
    ),
}
"""Name (the values `sweep.scheduler` accepts) -> the scheduler for a workflow."""


def make_scheduler(wf: WorkflowConfig) -> TrialScheduler:
    return SCHEDULERS[wf.sweep.scheduler](wf)
