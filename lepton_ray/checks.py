"""Checks that need more than the schema: registry names, files on disk, resources, search spaces.

All run before Ray starts or MLflow is touched, so a rejected workflow costs nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig, apply_overrides, parse_workflow
from lepton_ray.search_space import SearchSpace, load_search_space
from lepton_ray.errors import ConfigError

DRIVER_CPU_RESERVE = 0.02
"""CPU kept free per trial for its Tune driver and the sweep driver (see STACK.md: trials deadlock otherwise)."""


def check_names(wf: WorkflowConfig) -> None:
    from lepton_ray.data.datasets import DATASETS
    from lepton_ray.distill.losses import LOSSES
    from lepton_ray.models.zoo import MODELS
    from lepton_ray.deploy.pareto import POLICIES, parse_options

    DATASETS.get(wf.data.name)
    for field, name in [("student.name", wf.student.name), ("teacher.name", wf.teacher.name)] + [
        (f"extra_teachers.{i}.name", t.name) for i, t in enumerate(wf.extra_teachers)
    ]:
        MODELS.get(name, field)
    for index, spec in enumerate(wf.distillation.losses):
        LOSSES.get(spec.name, f"distillation.losses.{index}.name")
    parse_options(POLICIES.get(wf.selection.policy).options_type, wf.selection.options)
    for name in wf.sweep.constraints:
        if name not in metrics.COST_METRICS:
            raise ConfigError(f"sweep.constraints.{name}: unknown metric; constrain one of {', '.join(metrics.COST_METRICS)}")


def check_paths(wf: WorkflowConfig) -> None:
    """Where the run will write: `output_dir` a folder (or one that can be created) and the run folder
    a folder inside it. Nothing is created here."""
    writable_folder("output_dir", wf.output_dir)
    if wf.run_dir.exists() and not wf.run_dir.is_dir():
        raise ConfigError(f"name: {str(wf.run_dir)!r} is a file, so the run folder cannot be created there; rename the workflow or move the file")


def writable_folder(field: str, folder: Path) -> None:
    """`folder` is a folder, or can be created: its nearest existing ancestor is a writable folder."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{field}: {str(folder)!r} is a file, not a folder; point {field} at a folder (created if missing)")
    existing = next(path for path in [folder, *folder.absolute().parents] if path.exists())
    if not existing.is_dir():
        raise ConfigError(f"{field}: {str(existing)!r} is a file, so {str(folder)!r} cannot be created; point {field} elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: folder {str(existing)!r} is not writable; point {field} at a folder you can write to")


def check_tracking(wf: WorkflowConfig) -> None:
    """The URI parses and names a store, and its server answers (the same check `train` makes before MLflow starts)."""
    from lepton_ray.tracking.uris import check_reachable, tracking_uri

    check_reachable(tracking_uri(wf.tracking.uri))


def check_methods(wf: WorkflowConfig, num_classes: int | None = None) -> None:
    """Each compressor and loss builds from its config, so its own option checks (and those needing the
    teacher count, or the data's classes where known) run here, without a model: cheap enough for every search-space edge."""
    from lepton_ray.compress.pipeline import Compression
    from lepton_ray.distill.losses import DistillationObjective

    Compression(wf.compression, wf.training.epochs)
    for loss in DistillationObjective(wf.distillation).losses:
        loss.check_teachers(1 + len(wf.extra_teachers))
        if num_classes is not None:
            loss.check_classes(num_classes)


def check_teachers(wf: WorkflowConfig) -> Callable[[Any], None]:
    """Each teacher file is a file that loads weights-only and holds a teacher; where one will be trained,
    its folder can be created. Returns the check of the loaded teachers against the data splits."""
    from lepton_ray.trial.teacher import check_teacher_fits, locate_teacher

    sources = [locate_teacher(wf, index, cfg) for index, cfg in enumerate([wf.teacher, *wf.extra_teachers])]
    for source, cfg in zip(sources, [wf.teacher, *wf.extra_teachers]):
        if source.payload is None and cfg.checkpoint is not None and source.path == Path(cfg.checkpoint):
            writable_folder(f"{source.field}.checkpoint", source.path.parent)

    def fit_the_data(data: Any) -> None:
        for source in sources:
            if source.payload is not None:
                check_teacher_fits(source.payload, data, source.field)

    return fit_the_data


def check_data_and_models(wf: WorkflowConfig) -> Any:
    """Build the data splits (files present, options known), check the teacher files against them, build
    each model and the losses once (options, layer names and feature shapes known), so a trial never
    fails on what the workflow says. Returns the splits (`DataSplits`)."""
    import torch

    from lepton_ray.data.datasets import build_data
    from lepton_ray.models.zoo import build_model

    teachers_fit = check_teachers(wf)
    with _option_values("data.options", f"data set {wf.data.name!r}"):
        data = build_data(wf.data)
    data.model_input.check_workflow(wf)  # e.g. no channel pruning or flips for token ids
    teachers_fit(data)
    models = []
    for field, spec in [("student", wf.student), ("teacher", wf.teacher)] + [(f"extra_teachers.{i}", t) for i, t in enumerate(wf.extra_teachers)]:
        with _option_values(f"{field}.options", f"model {spec.name!r} on inputs {list(data.input_shape)} {data.input_dtype}"):
            models.append(build_model(spec, data.model_input, data.num_classes, field=field))
            logits = models[-1](data.train[0][0].unsqueeze(0))
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, data.num_classes):
            shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"{field}.name: model {spec.name!r} maps one image to {shape}; it must return logits of shape (N, {data.num_classes})")
    check_channels_last(wf, models[0], data.train[0][0].unsqueeze(0))
    check_losses(wf, models[0], models[1:], data.train[0][0].unsqueeze(0), data.num_classes)
    return data


def check_channels_last(wf: WorkflowConfig, student: Any, example: Any) -> None:
    """A student whose forward `.view`s a conv output fails on channels_last weights: when the workflow asks for them
    (`training.channels_last: true`), say so before any trial runs (unset, the trial falls back to the default layout)."""
    from lepton_ray.trial.epoch import runs_channels_last

    if wf.training.channels_last is not True:
        return
    failure = runs_channels_last(student, example)
    if failure is not None:
        raise ConfigError(f"training.channels_last: the student fails on channels_last weights ({failure}); set training.channels_last: false")


@contextmanager
def _option_values(field: str, what: str) -> Iterator[None]:
    """Option values of the wrong type or size surface as plain Python/torch errors; name the field instead."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{field}: {str(err).strip().splitlines()[0][:200]}; check the option values for {what}") from None


def check_losses(wf: WorkflowConfig, student: Any, teachers: list[Any], example: Any, num_classes: int) -> None:
    """Loss options, the classes and layers they need and their feature shapes, on untrained models of the right architecture."""
    from lepton_ray.distill.losses import DistillationObjective
    from lepton_ray.trial.loop import build_objective

    objective = DistillationObjective(wf.distillation)
    for loss in objective.losses:
        loss.check_classes(num_classes)
        for side, model, names in (("student", student, loss.student_layers), ("teacher", teachers[0], loss.teacher_layers)):
            for name in names:
                try:
                    model.get_submodule(name)
                except AttributeError:
                    known = ", ".join(n for n, _ in model.named_modules() if n)[:300]
                    raise ConfigError(f"{loss.field}.options: {side} layer {name!r} is not a module of {side}; layers: {known}") from None
    build_objective(wf, student, teachers, example)


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
    if not res.use_gpu:
        return
    if res.num_workers > 1 and res.gpus_per_worker < 1:
        raise ConfigError(
            f"resources.gpus_per_worker: {res.gpus_per_worker:g} GPU per worker with {res.num_workers} DDP workers would put "
            "several ranks on one GPU, which NCCL refuses; use whole GPUs or num_workers: 1"
        )
    needed_gpus = res.num_workers * res.gpus_per_worker
    if cluster_gpus is not None and needed_gpus > cluster_gpus:
        raise ConfigError(
            f"resources.use_gpu: a trial needs {res.num_workers} workers x {res.gpus_per_worker:g} GPU = {needed_gpus:g} GPUs "
            f"but the cluster has {cluster_gpus:g}; lower num_workers, set use_gpu: false or run on a GPU cluster"
        )


def search_space_for(wf: WorkflowConfig) -> SearchSpace | None:
    return load_search_space(wf.sweep.space) if wf.sweep.space is not None else None


def check_search_space(wf: WorkflowConfig, space: SearchSpace, num_classes: int | None = None) -> None:
    """Every knob must name a workflow field, and its whole range must give valid workflows: each edge
    (each choice), registry names and method options included (e.g. a loss name searched as
    `distillation.losses.0.name`), and for a float range a value between integers too, which an
    integer field refuses. `num_classes`: the data's, where built (a loss searched that needs more is refused)."""
    raw = wf.to_dict()
    for path, param in space.params.items():
        values: list[Any] = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            try:
                check_parsed(parse_workflow(apply_overrides(raw, {path: value})), num_classes=num_classes)
            except ConfigError as err:
                raise ConfigError(f"search_space.params.{path}: value {value!r} gives an invalid workflow ({err})") from None
        if param.type == "float":
            inner = fractional_value_inside(param.low, param.high)
            try:
                parse_workflow(apply_overrides(raw, {path: inner}))
            except ConfigError:
                raise ConfigError(
                    f"search_space.params.{path}: a float range samples values such as {inner:.4g}, which the field refuses "
                    "(it takes whole numbers); use type: int"
                ) from None
    check_baseline_trials(wf, space)


def fractional_value_inside(low: float, high: float) -> float:
    """A value strictly inside (low, high) that is not a whole number (a float range always holds one)."""
    for share in (0.5, 0.382, 0.618, 0.1):
        value = low + (high - low) * share
        if low < value < high and not float(value).is_integer():
            return value
    return low + (high - low) / 3


def check_parsed(wf: WorkflowConfig, on_worker: bool = False, num_classes: int | None = None) -> None:
    """The checks that need no data or models: the user's code imports (`on_worker`: from what Ray
    shipped), registry names (import paths resolve), and each method's own option checks."""
    from lepton_ray.user_code import load_user_code

    load_user_code(wf.user_code, on_worker)
    check_names(wf)
    check_methods(wf, num_classes)


def check_baseline_trials(wf: WorkflowConfig, space: SearchSpace) -> None:
    """Each baseline trial sets knobs of the space to values inside their ranges (Optuna would drop or clip the rest)."""
    for index, trial in enumerate(wf.sweep.baseline_trials):
        for path, value in trial.items():
            field = f"sweep.baseline_trials.{index}.{path}"
            param = space.params.get(path)
            if param is None:
                raise ConfigError(f"{field}: not a knob of the search space; knobs: {', '.join(space.params)}")
            inside = value in param.choices if param.type == "categorical" else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and param.low <= value <= param.high
            )
            if not inside:
                allowed = param.choices if param.type == "categorical" else f"[{param.low}, {param.high}]"
                raise ConfigError(f"{field}: value {value!r} is outside the knob's range {allowed}")


def local_cluster_size() -> tuple[float, float]:
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def check_workflow(wf: WorkflowConfig, cluster: tuple[float, float] | None = None, on_data: Callable[[Any], None] | None = None) -> SearchSpace | None:
    """Run every check, before anything is started or written (`validate`, and `train`/`sweep` before Ray
    and MLflow); returns the parsed search space (None when the workflow names none). `on_data` gets the
    splits the check built (`validate` summarises them without building them twice)."""
    check_parsed(wf)
    check_paths(wf)
    check_tracking(wf)
    check_resources(wf, *(cluster or (None, None)))
    data = check_data_and_models(wf)
    if on_data is not None:
        on_data(data)
    space = search_space_for(wf)
    if space is not None:
        check_search_space(wf, space, data.num_classes)
    return space
