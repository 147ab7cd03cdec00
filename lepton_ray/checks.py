"""Checks that need more than the schema: registry names, files on disk, resources, search spaces.

All run before Ray starts or MLflow is touched, so a rejected workflow costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lepton_ray.config import SearchSpace, WorkflowConfig, apply_overrides, load_search_space, parse_workflow
from lepton_ray.errors import ConfigError

DRIVER_CPU_RESERVE = 0.02
"""CPU kept free per trial for its Tune driver and the sweep driver (see STACK.md: trials deadlock otherwise)."""


def check_names(wf: WorkflowConfig) -> None:
    from lepton_ray.data import DATASETS
    from lepton_ray.losses import LOSSES
    from lepton_ray.models import MODELS
    from lepton_ray.pareto import POLICIES

    DATASETS.get(wf.data.name)
    for field, name in [("student.name", wf.student.name), ("teacher.name", wf.teacher.name)] + [
        (f"extra_teachers.{i}.name", t.name) for i, t in enumerate(wf.extra_teachers)
    ]:
        MODELS.get(name, field)
    for index, spec in enumerate(wf.distillation.losses):
        LOSSES.get(spec.name, f"distillation.losses.{index}.name")
    POLICIES.get(wf.selection.policy)


def check_files(wf: WorkflowConfig) -> None:
    for index, teacher in enumerate([wf.teacher, *wf.extra_teachers]):
        field = "teacher" if index == 0 else f"extra_teachers.{index - 1}"
        if teacher.train is None and teacher.checkpoint is not None and not Path(teacher.checkpoint).is_file():
            raise ConfigError(f"{field}.checkpoint: file {str(teacher.checkpoint)!r} not found; fix the path or add a 'train' block")


def check_data_and_models(wf: WorkflowConfig) -> None:
    """Build the data splits (files present, options known) and each model once (options known)."""
    from lepton_ray.data import build_data
    from lepton_ray.models import build_model

    data = build_data(wf.data)
    build_model(wf.student, data.input_shape, data.num_classes, field="student")
    for index, teacher in enumerate([wf.teacher, *wf.extra_teachers]):
        build_model(teacher, data.input_shape, data.num_classes, field="teacher" if index == 0 else f"extra_teachers.{index - 1}")


def check_resources(wf: WorkflowConfig, cluster_cpus: float | None, cluster_gpus: float | None) -> None:
    """On a known-size cluster, a trial must fit, or Ray would wait forever for resources."""
    res = wf.resources
    if wf.training.precision == "fp16" and not res.use_gpu:
        raise ConfigError("training.precision: fp16 needs a GPU; use bf16 or fp32 on CPU, or set resources.use_gpu: true")
    if cluster_cpus is not None:
        needed = res.num_workers * res.cpus_per_worker + DRIVER_CPU_RESERVE
        if needed > cluster_cpus:
            raise ConfigError(
                f"resources.num_workers: {res.num_workers} workers x {res.cpus_per_worker} CPU need {needed:.2f} CPUs "
                f"but the cluster has {cluster_cpus:g}; lower num_workers or cpus_per_worker"
            )
    if res.use_gpu and cluster_gpus is not None and res.gpus_per_worker * min(res.num_workers, 1) > cluster_gpus:
        raise ConfigError(f"resources.use_gpu: the cluster has {cluster_gpus:g} GPUs; set use_gpu: false or run on a GPU cluster")


def search_space_for(wf: WorkflowConfig) -> SearchSpace | None:
    return load_search_space(wf.sweep.space) if wf.sweep.space is not None else None


def check_search_space(wf: WorkflowConfig, space: SearchSpace) -> None:
    """Every knob must name a workflow field, and each edge of its range must give a valid workflow."""
    raw = wf.to_dict()
    for path, param in space.params.items():
        values: list[Any] = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            try:
                parse_workflow(apply_overrides(raw, {path: value}))
            except ConfigError as err:
                raise ConfigError(f"search_space.params.{path}: value {value!r} gives an invalid workflow ({err})") from None


def local_cluster_size() -> tuple[float, float]:
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def check_workflow(wf: WorkflowConfig, cluster: tuple[float, float] | None = None) -> SearchSpace | None:
    """Run every check; returns the parsed search space (None when the workflow names none)."""
    check_names(wf)
    check_files(wf)
    check_data_and_models(wf)
    check_resources(wf, *(cluster or (None, None)))
    space = search_space_for(wf)
    if space is not None:
        check_search_space(wf, space)
    return space
