"""The one training loop: distill + compress + evaluate + report, run by every DDP worker.

Read top to bottom: build data, teachers and student; compression hooks at named points
(`prepare`, `on_epoch_start`, `is_final`, `finalize`); BatchNorm statistics re-estimated on
training batches after the structural steps, before each evaluation that may pick the `best`
student (epochs where the compression is final), and on the finalized student; one report per
epoch; the last report carries the test accuracy and cost figures of the best fully-compressed student.
The epoch functions (`trial/epoch.py`) also train teachers in-process (no Ray, no DDP).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lepton_ray import metrics
from lepton_ray.compress.cost import packed_size_bytes, static_cost
from lepton_ray.compress.layers import layer_names
from lepton_ray.compress.pipeline import Compression
from lepton_ray.config import WorkflowConfig, parse_workflow
from lepton_ray.data.batches import Batch, augment_view, iterate_batches, on_device, train_indices, world
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.distill.teacher_cache import TeacherCache
from lepton_ray.models.features import capture_features, unwrap
from lepton_ray.models.saved import load_teacher_module, model_payload
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.epoch import Precision, Teachers, build_optimizer, epoch_lr, evaluate, memory_format, set_lr, teacher_outputs, train_batches, train_epoch
from lepton_ray.trial.files import ALLOCATION_FILE, DIVERGED_FILE, STUDENT_FILE, TRIAL_STATE_FILE, newest_readable_state
from lepton_ray.trial.per_layer import allocated_workflow, allocation_table
from lepton_ray.trial.sessions import RayTrainSession, TrialSession


def _restore(student: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer, compression: Compression, session: TrialSession) -> dict[str, Any]:
    """Resume from the trial's newest readable checkpoint (after a worker or driver failure), or start fresh."""
    folders = [folder for folder in session.checkpoint_folders() if (folder / TRIAL_STATE_FILE).exists()]  # not a divergence marker
    if not folders:
        return {"next_epoch": 0, "best": None, "restarts": 0}
    state = newest_readable_state(folders)
    state["restarts"] = state.get("restarts", 0) + 1
    for epoch in range(state["next_epoch"]):
        compression.on_epoch_start(unwrap(student), epoch)
    unwrap(student).load_state_dict(state["student"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point of a DDP worker; see `run_trial`."""
    run_trial(loop_config, RayTrainSession(loop_config.get("run_folder")))


def intra_op_threads(cpus_per_worker: float) -> int:
    """Torch threads for a CPU worker: the CPUs Ray reserved for it, rounded down, at least 1. More would make
    concurrent trials and DDP ranks fight over cores Ray gave to others (the 0.49-CPU workers of the shipped
    workflows get 1)."""
    return max(1, int(cpus_per_worker))


def run_trial(loop_config: dict[str, Any], session: TrialSession) -> None:
    """One trial, start to finish. `loop_config` (from `train.TrialInputs`): {"workflow": dict,
    "teachers": [payload, its ref or a module], "data": DataSplits, its ref or None, "teacher_cache": the cache, its ref, path or None}."""
    entered = time.perf_counter()
    wf = parse_workflow(loop_config["workflow"])
    device = session.device
    if device.type == "cpu":
        torch.set_num_threads(intra_op_threads(wf.resources.cpus_per_worker))
    data = trial_data(wf, loop_config, device)
    teachers = teacher_source(wf, loop_config, device) if wf.distillation.alpha > 0 else []  # alpha 0: labels only, no teacher forward
    budget = wf.compression.allocation.bits_per_weight
    wf, allocation = allocated_workflow(wf, loop_config.get("sensitivity"), data)  # per-layer bits and sparsity under the budget
    student, compression, objective, optimizer, precision = set_up_student(wf, data, teachers, session.prepare_model, device)
    allocated = {ALLOCATION_FILE: allocation_table(allocation, unwrap(student), budget)} if allocation is not None else {}
    reestimate_batchnorm(student, train_batches(wf, data, 0, device))  # channel pruning / low-rank changed what each BatchNorm sees
    planned = {metrics.PLANNED_SIZE_BYTES: planned_size_bytes(wf, unwrap(student), compression)}
    state = _restore(student, objective, optimizer, compression, session)
    best = state["best"]
    timing = {metrics.SETUP_S: time.perf_counter() - entered, metrics.COMPUTE_S: 0.0, metrics.REESTIMATE_S: 0.0}

    for epoch in range(state["next_epoch"], wf.training.epochs):
        epoch_started = time.perf_counter()
        compression.on_epoch_start(unwrap(student), epoch)
        set_lr(optimizer, epoch_lr(wf.training.lr, wf.training.lr_schedule, epoch, wf.training.epochs))
        view = augment_view(wf.data.augment, len(data.train), epoch, wf.data.seed)
        shard = train_indices(len(data.train), epoch, wf.training.seed)
        batches = iterate_batches(data.train, shard, wf.training.batch_size, device, view)
        train_loss = train_epoch(student, teachers, objective, batches, optimizer, precision)
        images_per_s = len(shard) * world()[1] / (time.perf_counter() - epoch_started)
        if compression.is_final(epoch):  # val accuracy may pick `best`; before, the running statistics are close enough for a curve
            timing[metrics.REESTIMATE_S] += timed(reestimate_batchnorm, student, train_batches(wf, data, epoch, device))
        val_accuracy, val_loss = evaluate(student, data.val, wf.training.batch_size, device)
        timing[metrics.COMPUTE_S] += time.perf_counter() - epoch_started
        epoch_metrics = {
            metrics.EPOCH: epoch + 1, metrics.TRAIN_LOSS: train_loss, metrics.VAL_ACCURACY: val_accuracy,
            metrics.VAL_LOSS: val_loss, metrics.RESTARTS: state["restarts"], metrics.IMAGES_PER_S: images_per_s, **planned, **timing,
        }
        if not math.isfinite(train_loss) or train_loss > wf.training.divergence_loss:
            session.report({**epoch_metrics, metrics.DIVERGED: 1}, {DIVERGED_FILE: {"epoch": epoch + 1, "train_loss": train_loss}})
            return
        if compression.is_final(epoch) and (best is None or val_accuracy > best["val_accuracy"]):
            best = {"val_accuracy": val_accuracy, "epoch": epoch + 1, "student": copy.deepcopy(unwrap(student).state_dict())}
        state = {
            "next_epoch": epoch + 1, "student": unwrap(student).state_dict(), "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(), "best": best, "restarts": state["restarts"],
        }
        if epoch + 1 < wf.training.epochs:
            session.report(epoch_metrics, {TRIAL_STATE_FILE: state})
            continue
        finish_started = time.perf_counter()
        final_metrics, student_payload = _finish(wf, student, compression, best, data, device)
        finish_s = time.perf_counter() - finish_started
        epoch_metrics[metrics.COMPUTE_S] += finish_s
        epoch_metrics[metrics.REESTIMATE_S] += final_metrics[metrics.REESTIMATE_S]
        final_metrics[metrics.FINISH_S] = finish_s - final_metrics.pop(metrics.REESTIMATE_S)  # each second counted once
        session.report({**epoch_metrics, **final_metrics}, {TRIAL_STATE_FILE: state, STUDENT_FILE: student_payload, **allocated})


def set_up_student(
    wf: WorkflowConfig, data: DataSplits, teachers: Teachers, prepare_model: Callable[[nn.Module], nn.Module], device: torch.device,
) -> tuple[nn.Module, Compression, DistillationObjective, torch.optim.Optimizer, Precision]:
    """The student as a trial trains it: compression prepared, loss adapters sized, then `prepare_model`
    (DDP wrap or a move to the device), the optimizer over student and adapters, the precision.

    Seeded here, after the teachers are loaded (building a live teacher draws random numbers and a
    cached one does not), so a trial starts from the same student with or without the teacher cache."""
    torch.manual_seed(wf.training.seed)
    student = build_model(wf.student, data.model_input, data.num_classes)
    compression = Compression(wf.compression, wf.training.epochs)
    example = next(iterate_batches(data.train, [0, 1], 2, torch.device("cpu"))).images
    student = compression.prepare(student, example)
    student = student.to(memory_format=memory_format(wf.training, student, example))
    objective = build_objective(wf, student, teachers, example)
    student = prepare_model(student)
    objective = objective.to(device)
    trainable = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    return student, compression, objective, build_optimizer(wf.training, trainable), Precision(wf.training.precision, device)


def _finish(wf: WorkflowConfig, student: nn.Module, compression: Compression, best: dict[str, Any], data: DataSplits, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bake the best fully-compressed student's compression, test that finalized student (what `student.pt`
    holds and the export ships), estimate its cost, and (rank 0, so ONNX Runtime runs uncontended) export
    it to the int8 file it would ship and measure that file."""
    module = unwrap(student)
    module.load_state_dict(best["student"])
    final = compression.finalize(copy.deepcopy(module))
    reestimate_s = timed(reestimate_batchnorm, final, train_batches(wf, data, wf.training.epochs - 1, device))  # activation fake-quant is gone
    test_accuracy, _ = evaluate(final, data.test, wf.training.batch_size, device)  # the student as saved and shipped
    final = final.cpu()
    quantization = wf.compression.quantization
    bits = student_weight_bits(wf, final)
    activation_bits = quantization.activation_bits if quantization.active else 32
    estimates = static_cost(final, data.model_input, bits, activation_bits, end_layer_bits(wf))
    shipped_bits = dict(zip(layer_names(final), bits)) if quantization.per_layer else bits  # the export's grid of each layer
    measured = _measure_shipped_file(final, data, wf, shipped_bits) if world()[0] == 0 else {}
    final_metrics = {metrics.TEST_ACCURACY: test_accuracy, metrics.BEST_VAL_ACCURACY: best["val_accuracy"], metrics.BEST_EPOCH: best["epoch"], **estimates, **measured}
    per_layer = {"weight_bits": shipped_bits} if quantization.per_layer else {}
    payload = model_payload(final, wf.student.name, wf.student.options, data, metrics={k: float(v) for k, v in final_metrics.items()}, workflow=wf.to_dict(),
                            **per_layer)
    return {**final_metrics, metrics.REESTIMATE_S: reestimate_s}, payload


def timed(step: Callable[..., Any], *args: Any) -> float:
    """Seconds `step(*args)` took."""
    started = time.perf_counter()
    step(*args)
    return time.perf_counter() - started


def planned_size_bytes(wf: WorkflowConfig, student: nn.Module, compression: Compression) -> float:
    """`size_bytes` of the student this trial will finish with, known before its first epoch (`Compression.planned`)."""
    with torch.no_grad():
        return packed_size_bytes(compression.planned(student), student_weight_bits(wf, student), end_layer_bits(wf))  # the size only: no forward pass at start-up


def student_weight_bits(wf: WorkflowConfig, student: nn.Module) -> int | list[int]:
    """Weight bits of the student's conv/linear layers for the cost figures: one per layer (`weight_layers` order) where
    `quantization.per_layer` names some, else the one width (32: float), with `end_layer_bits` beside it."""
    quantization = wf.compression.quantization
    return quantization.bits_of(layer_names(student)) if quantization.per_layer else quantization.bits or 32


def end_layer_bits(wf: WorkflowConfig) -> int | None:
    """Bits of the first and last layer, where a binary or ternary student keeps them wider."""
    layer_bits = wf.compression.quantization.layer_bits
    return layer_bits[0] if layer_bits else None


TRIAL_CALIBRATION_SAMPLES = 64
"""Calibration images for the int8 file a trial measures (the final export uses `export.calibration_samples`)."""


def _measure_shipped_file(final: nn.Module, data: DataSplits, wf: WorkflowConfig, weight_bits: int | dict[str, int]) -> dict[str, float]:
    """The int8 ONNX export of a finalized student (the publish step's route, float or quantized), measured:
    its bytes, gzip bytes, ORT latency where the workflow asks for it (`export.trial_latency`: `shipped_cost`),
    and its accuracy in ORT on the validation split.
    The file carries its input contract as a shipped one does (only the trial and sweep ids are left out)."""
    # here, not at the top: onnx and ORT's quantizer add ~0.7 s to every worker's start, and only rank 0 exports
    from lepton_ray.export.int8 import calibration_images, export_int8
    from lepton_ray.export.metadata import artifact_metadata
    from lepton_ray.export.runtime import onnx_accuracy
    from lepton_ray.export.shipped_cost import shipped_cost

    images = calibration_images(data.train, TRIAL_CALIBRATION_SAMPLES, wf.data.seed).cpu()
    with tempfile.TemporaryDirectory(prefix="lepton-shipped-") as folder:
        int8_path = export_int8(final, data.model_input, images, weight_bits, Path(folder), artifact_metadata(data.contract, wf.name)).int8
        measured = shipped_cost(int8_path, data.model_input, wf.export.latency_batch_size if wf.export.times_trials(wf.sweep.cost_metric) else None)
        return {**measured, metrics.INT8_VAL_ACCURACY: onnx_accuracy(int8_path, data.val)}


def build_objective(wf: WorkflowConfig, student: nn.Module, teachers: Teachers, example: torch.Tensor) -> DistillationObjective:
    """The workflow's losses, given feature shapes from one dry forward (adapters exist before DDP)."""
    objective = DistillationObjective(wf.distillation, uses_teacher=isinstance(teachers, TeacherCache) or bool(teachers))
    if objective.student_layers or objective.teacher_layers:
        source = teachers if isinstance(teachers, TeacherCache) else [copy.deepcopy(teachers[0]).cpu()]
        was_training = student.training
        student.eval()
        with torch.no_grad(), capture_features(student, objective.student_layers, "student layer") as student_features:
            student(example)
        _, teacher_features = teacher_outputs(source, Batch(example, torch.zeros(0), torch.arange(len(example))), objective.teacher_layers)
        student.train(was_training)
        for loss in objective.losses:
            loss.setup({k: v.shape for k, v in student_features.items()}, {k: v.shape for k, v in teacher_features.items()})
    return objective


def trial_data(wf: WorkflowConfig, loop_config: dict[str, Any], device: torch.device) -> DataSplits:
    """The sweep's splits from the object store when it put them there (no per-trial preparation), on `device`."""
    ref = loop_config.get("data")
    data = resolve(ref) if ref is not None else build_data(wf.data)
    return replace(data, train=on_device(data.train, device), val=on_device(data.val, device), test=on_device(data.test, device))


def teacher_source(wf: WorkflowConfig, loop_config: dict[str, Any], device: torch.device) -> Teachers:
    """The sweep's shared teacher cache (an object-store ref, or a file path when large) when it covers
    this trial's losses and data, else the live teachers."""
    cache_ref = loop_config.get("teacher_cache")
    if cache_ref is not None:
        cache = TeacherCache.load(cache_ref) if isinstance(cache_ref, str) else resolve(cache_ref)
        objective = DistillationObjective(wf.distillation)
        if cache.covers(len(loop_config["teachers"]), objective.teacher_layers, wf.data.model_dump(mode="json"), objective.needs_every_teacher_logit):
            return cache.to(device)
    return [teacher_module(teacher).to(device) for teacher in loop_config["teachers"]]


def teacher_module(teacher: Any) -> nn.Module:
    """A frozen teacher from a payload, its object ref, or (plain-process runs) the module itself."""
    return teacher if isinstance(teacher, nn.Module) else load_teacher_module(resolve(teacher))


def resolve(value: Any) -> Any:
    """The object behind a Ray object ref; anything else as it is (plain-process runs pass objects)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value
