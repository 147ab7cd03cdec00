"""Checks of the sweep's own settings (the searcher's name, a warm start), run right after
`lepton_ray.checks.check_workflow` by `validate`, `sweep` and `train`: they need this package, which the
lower `checks` module must not import (the stage packages depend one way)."""

from __future__ import annotations

from lepton_ray.config import WorkflowConfig

from lepton_ray.search_space import SearchSpace
from lepton_ray.deploy.pareto import threshold_warning
from lepton_ray.sweep.samplers import SAMPLERS
from lepton_ray.sweep.warm_start import read_warm_start


def teacher_val_accuracy(wf: WorkflowConfig) -> float | None:
    """The teacher's validation accuracy as its file records it; None before it is trained (or a file without it)."""
    from lepton_ray.trial.teacher import locate_teacher

    payload = locate_teacher(wf, 0, wf.teacher).payload
    return None if payload is None or "val_accuracy" not in payload else float(payload["val_accuracy"])


def teacher_line(wf: WorkflowConfig) -> str:
    """What `validate` says of the teacher: the file a sweep will use and its recorded validation accuracy."""
    from lepton_ray.trial.teacher import locate_teacher

    source = locate_teacher(wf, 0, wf.teacher)
    if source.payload is None:
        why = f" ({source.note})" if source.note else ""
        return f"teacher: {source.path} is not there yet; `train` and `sweep` train it first (teacher.train: {wf.teacher.train.epochs} epochs){why}"
    accuracy = source.payload.get("val_accuracy")
    if accuracy is None:
        return f"teacher: {source.path} (your file; its validation accuracy is measured when a sweep starts)"
    return f"teacher: {source.path}, validation accuracy {float(accuracy):.4f} (recorded when it was trained)"


def selection_noise_warning(wf: WorkflowConfig, val_samples: int, teacher_accuracy: float | None) -> str | None:
    """`pareto.threshold_warning` for this workflow's policy: a threshold finer than its validation split resolves."""
    return threshold_warning(wf.selection, val_samples, teacher_accuracy)


def check_sweep(wf: WorkflowConfig, space: SearchSpace | None) -> None:
    """A `ConfigError` naming the field, before anything is started or written."""
    SAMPLERS.get(wf.sweep.searcher)
    if wf.sweep.warm_start is not None:
        read_warm_start(wf.sweep.warm_start, space, wf.sweep)
