"""The one training loop: distill + compress + evaluate + report, run by every DDP worker.

Read top to bottom: build data, teachers and student; compression hooks at named points
(`prepare`, `on_epoch_start`, `is_final`, `finalize`); one report per epoch; the last
report carries the test accuracy and cost figures of the best fully-compressed student.
The same `train_epoch`/`evaluate` also train teachers in-process (no Ray, no DDP).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe, save_atomic
from lepton_ray.errors import CheckpointError
from lepton_ray.compress import Compression
from lepton_ray.config import TrainingConfig, WorkflowConfig, parse_workflow
from lepton_ray.cost import trial_cost
from lepton_ray.data import DataSplits, build_data
from lepton_ray.features import capture_features, unwrap
from lepton_ray.losses import DistillationObjective, DistillInputs
from lepton_ray.models import build_model
from lepton_ray.teacher_cache import TeacherCache

TRIAL_STATE_FILE = "trial_state.pt"
STUDENT_FILE = "student.pt"
DIVERGED = "diverged"
DIVERGED_FILE = "diverged.pt"
"""Metric set to 1 when the loss became NaN/inf; the trial driver turns it into a failure."""


# ---- batching -------------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_indices(num_samples: int, epoch: int, seed: int) -> list[int]:
    """This rank's disjoint shard of a seeded per-epoch shuffle; equal length on every rank (DDP needs it)."""
    rank, world_size = world()
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 10_007 + epoch)).tolist()
    per_rank = num_samples // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def eval_indices(num_samples: int) -> list[int]:
    """Strided shard with no padding, so all-reduced counts cover each sample exactly once."""
    rank, world_size = world()
    return list(range(rank, num_samples, world_size))


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    """Positions of the samples in their split (keys of the teacher cache)."""


def iterate_batches(dataset: Dataset, indices: list[int], batch_size: int, device: torch.device) -> Iterator[Batch]:
    """In-memory tensors are batched by indexing (no per-sample DataLoader); other data sets use a DataLoader."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[:2]
        for start in range(0, len(indices), batch_size):
            batch = torch.as_tensor(indices[start : start + batch_size])
            yield Batch(images[batch].to(device, non_blocking=True), labels[batch].to(device, non_blocking=True), batch)
        return
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0)
    for start, (images, labels) in zip(range(0, len(indices), batch_size), loader):
        yield Batch(images.to(device), labels.to(device), torch.as_tensor(indices[start : start + batch_size]))


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    _, world_size = world()
    if world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---- one epoch --------------------------------------------------------------------------------

@dataclass
class Precision:
    """Autocast + grad scaling for `training.precision` (fp16 only on GPU, with a GradScaler)."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler("cuda") if self.name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def average_grads(module: nn.Module) -> None:
    """All-reduce grads of a module DDP does not wrap (loss adapters) so ranks stay identical."""
    _, world_size = world()
    if world_size == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world_size


Teachers = Union[list[nn.Module], TeacherCache]
"""Live frozen teacher modules, or their outputs cached once per sweep (same values, no forward)."""


def teacher_outputs(teachers: Teachers, batch: Batch, layers: tuple[str, ...]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Logits of every teacher and the primary teacher's named features, without grad."""
    if isinstance(teachers, TeacherCache):
        return teachers.lookup(batch.indices, layers, batch.images.device)
    if not teachers:
        return [], {}
    with torch.no_grad(), capture_features(teachers[0], layers, "teacher layer") as features:
        logits = [teacher(batch.images) for teacher in teachers]
    return logits, dict(features)


def train_epoch(
    student: nn.Module,
    teachers: Teachers,
    objective: DistillationObjective,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
) -> float:
    """One pass over this rank's shard; returns the all-reduced mean loss (NaN if it diverged)."""
    student.train()
    loss_sum, count = 0.0, 0
    for batch in batches:
        images, labels = batch.images, batch.labels
        with precision.autocast():
            teacher_logits, teacher_features = teacher_outputs(teachers, batch, objective.teacher_layers)
            with capture_features(student, objective.student_layers, "student layer") as student_features:
                student_logits = student(images)
            loss = objective(DistillInputs(student_logits, labels, teacher_logits, objective.temperature, dict(student_features), teacher_features))
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        average_grads(objective)
        precision.step(optimizer)
        loss_sum += loss.item() * len(labels)
        count += len(labels)
    loss_sum, count = all_reduce_sums(loss_sum, count, device=precision.device)
    return loss_sum / max(count, 1)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the whole split, all-reduced across ranks."""
    model.eval()
    correct, loss_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for images, labels, _ in iterate_batches(dataset, eval_indices(len(dataset)), batch_size, device):
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            count += len(labels)
    correct, loss_sum, count = all_reduce_sums(correct, loss_sum, count, device=device)
    return correct / max(count, 1), loss_sum / max(count, 1)


def build_optimizer(cfg: TrainingConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ---- models in and out -------------------------------------------------------------------------

def model_payload(model: nn.Module, spec_name: str, options: dict, data: DataSplits, **extra: Any) -> dict[str, Any]:
    """What a student/teacher file holds: plain data that `torch.load(weights_only=True)` accepts."""
    state = {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()}
    return {"model": spec_name, "options": dict(options), "input_shape": list(data.input_shape), "num_classes": data.num_classes, "state_dict": state, **extra}


def load_student(wf: WorkflowConfig, payload: dict[str, Any]) -> nn.Module:
    """Rebuild a finalized student (compressed structure included) from its saved payload."""
    from lepton_ray.config import ModelSpec

    model = build_model(ModelSpec(name=payload["model"], options=payload["options"]), tuple(payload["input_shape"]), payload["num_classes"])
    model = Compression(wf.compression, wf.training.epochs).rebuild(model, payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


# ---- the per-worker loop -----------------------------------------------------------------------

def newest_readable_state(folders: list[Path], warn=print) -> dict[str, Any]:
    """Trial state from the newest kept checkpoint that loads; a truncated newest one falls back."""
    problems = []
    for folder in sorted(folders, key=lambda f: f.name, reverse=True):
        try:
            return load_safe(folder / TRIAL_STATE_FILE, "trial checkpoint")
        except CheckpointError as err:
            problems.append(str(err))
            warn(f"skipping unreadable checkpoint {folder.name}: {err}")
    raise CheckpointError("trial checkpoint: no kept checkpoint is readable (" + "; ".join(problems) + "); restart the trial from scratch")


def _restore(student: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer, compression: Compression) -> dict[str, Any]:
    """Resume from the trial's newest readable checkpoint (after a worker or driver failure), or start fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"next_epoch": 0, "best": None, "restarts": 0}
    if Path(checkpoint.path).is_dir():  # local or shared file system: the kept checkpoints are siblings
        run_folder = Path(checkpoint.path).parent
        state = newest_readable_state([f for f in run_folder.iterdir() if f.is_dir() and f.name.startswith("checkpoint_")])
    else:
        with checkpoint.as_directory() as folder:
            state = newest_readable_state([Path(folder)])
    state["restarts"] = state.get("restarts", 0) + 1
    for epoch in range(state["next_epoch"]):
        compression.on_epoch_start(unwrap(student), epoch)
    unwrap(student).load_state_dict(state["student"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def _report(epoch_metrics: dict[str, Any], state: dict[str, Any] | None, extra_files: dict[str, Any] | None = None) -> None:
    """Every rank reports; rank 0 attaches a checkpoint (trial state and/or extra files).

    Only reports that carry a checkpoint reach `Result.metrics` in Ray Train V2, so anything the
    driver must read after `fit()` (final metrics, divergence) goes with one.
    """
    import ray.train

    rank, _ = world()
    if rank != 0 or (state is None and not extra_files):
        ray.train.report(epoch_metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        if state is not None:
            save_atomic(state, Path(folder) / TRIAL_STATE_FILE)
        for name, payload in (extra_files or {}).items():
            save_atomic(payload, Path(folder) / name)
        ray.train.report(epoch_metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. `loop_config`: {"workflow": dict, "teachers": [ObjectRef of payload],
    "teacher_cache": ObjectRef of a TeacherCache or None}."""
    import ray
    import ray.train.torch

    wf = parse_workflow(loop_config["workflow"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(wf.training.seed)
    data = build_data(wf.data)
    teachers = teacher_source(wf, loop_config, device)

    student = build_model(wf.student, data.input_shape, data.num_classes)
    compression = Compression(wf.compression, wf.training.epochs)
    example = next(iterate_batches(data.train, [0, 1], 2, torch.device("cpu")))[0]
    student = compression.prepare(student, example)
    objective = build_objective(wf, student, teachers, example)
    student = ray.train.torch.prepare_model(student)
    objective = objective.to(device)
    trainable = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = build_optimizer(wf.training, trainable)
    precision = Precision(wf.training.precision, device)
    state = _restore(student, objective, optimizer, compression)
    best = state["best"]

    for epoch in range(state["next_epoch"], wf.training.epochs):
        compression.on_epoch_start(unwrap(student), epoch)
        batches = iterate_batches(data.train, train_indices(len(data.train), epoch, wf.training.seed), wf.training.batch_size, device)
        train_loss = train_epoch(student, teachers, objective, batches, optimizer, precision)
        val_accuracy, val_loss = evaluate(student, data.val, wf.training.batch_size, device)
        epoch_metrics = {
            metrics.EPOCH: epoch + 1, metrics.TRAIN_LOSS: train_loss, metrics.VAL_ACCURACY: val_accuracy,
            metrics.VAL_LOSS: val_loss, metrics.RESTARTS: state["restarts"],
        }
        if not math.isfinite(train_loss) or train_loss > wf.training.divergence_loss:
            _report({**epoch_metrics, DIVERGED: 1}, None, {DIVERGED_FILE: {"epoch": epoch + 1, "train_loss": train_loss}})
            return
        if compression.is_final(epoch) and (best is None or val_accuracy > best["val_accuracy"]):
            best = {"val_accuracy": val_accuracy, "epoch": epoch + 1, "student": copy.deepcopy(unwrap(student).state_dict())}
        state = {
            "next_epoch": epoch + 1, "student": unwrap(student).state_dict(), "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(), "best": best, "restarts": state["restarts"],
        }
        if epoch + 1 < wf.training.epochs:
            _report(epoch_metrics, state)
            continue
        final_metrics, student_payload = _finish(wf, student, compression, best, data, device)
        _report({**epoch_metrics, **final_metrics}, state, {STUDENT_FILE: student_payload})


def _finish(wf: WorkflowConfig, student: nn.Module, compression: Compression, best: dict[str, Any], data: DataSplits, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test the best fully-compressed student as it will ship, then bake its compression and cost it."""
    module = unwrap(student)
    module.load_state_dict(best["student"])
    test_accuracy, _ = evaluate(module, data.test, wf.training.batch_size, device)
    final = compression.finalize(copy.deepcopy(module).cpu())
    bits = wf.compression.quantization.bits or 32
    latency_batch_size = wf.export.latency_batch_size if world()[0] == 0 else None  # one rank times ORT, uncontended
    cost = trial_cost(final, data.input_shape, bits, wf.compression.quantization.activation_bits if bits < 32 else 32, latency_batch_size)
    final_metrics = {metrics.TEST_ACCURACY: test_accuracy, metrics.BEST_VAL_ACCURACY: best["val_accuracy"], metrics.BEST_EPOCH: best["epoch"], **cost}
    payload = model_payload(final, wf.student.name, wf.student.options, data, metrics={k: float(v) for k, v in final_metrics.items()}, workflow=wf.to_dict())
    return final_metrics, payload


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


def teacher_source(wf: WorkflowConfig, loop_config: dict[str, Any], device: torch.device) -> Teachers:
    """The sweep's shared teacher cache when it covers this trial's losses, else the live teachers."""
    import ray

    cache_ref = loop_config.get("teacher_cache")
    if cache_ref is not None:
        cache: TeacherCache = ray.get(cache_ref)
        if cache.covers(len(loop_config["teachers"]), DistillationObjective(wf.distillation).teacher_layers):
            return cache.to(device)
    return [load_teacher_module(ray.get(ref)).to(device) for ref in loop_config["teachers"]]


def load_teacher_module(payload: dict[str, Any]) -> nn.Module:
    """A frozen teacher in eval mode (never wrapped in DDP, never trained here)."""
    from lepton_ray.config import ModelSpec

    teacher = build_model(ModelSpec(name=payload["model"], options=payload["options"]), tuple(payload["input_shape"]), payload["num_classes"], field="teacher")
    teacher.load_state_dict(payload["state_dict"])
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
