"""One epoch: the train and evaluation passes, precision and the collectives they need.

Shared by every trial (per DDP worker, or in-process) and by teacher training, so there is one
step function in the package.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from lepton_ray.config import TrainingConfig, WorkflowConfig
from lepton_ray.data.batches import Batch, augment_view, eval_indices, iterate_batches, train_indices, world
from lepton_ray.distill.losses import DistillationObjective, DistillInputs
from lepton_ray.distill.teacher_cache import TeacherCache
from lepton_ray.models.features import capture_features

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    _, world_size = world()
    if world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def resolve_precision(name: str, device: torch.device) -> str:
    """`training.precision` as it runs: `auto` is bf16 where the hardware multiplies bf16 natively, else fp32.
    On CPU that means AMX tiles (oneDNN's bf16 convolutions and matmuls; measured on a Sapphire Rapids core: a
    Fashion-MNIST teacher step 2.5x, a student step 1.4x faster than fp32 with channels_last). AVX512-BF16 alone
    was not measured, so it keeps fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and torch.cpu._is_amx_tile_supported() else "fp32"


@dataclass
class Precision:
    """Autocast + grad scaling for `training.precision` (fp16 only on GPU, with a GradScaler)."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.name = resolve_precision(self.name, self.device)
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
        return teachers.lookup(batch, layers)
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
        # teachers in fp32, as the teacher cache holds them (a live and a cached teacher give the same targets)
        teacher_logits, teacher_features = teacher_outputs(teachers, batch, objective.teacher_layers)
        with precision.autocast():  # the student's forward; the losses below read it in fp32, as a bf16 softmax would round it
            with capture_features(student, objective.student_layers, "student layer") as student_features:
                student_logits = student(images)
        loss = objective(DistillInputs(
            student_logits.float(), labels, [logits.float() for logits in teacher_logits], objective.temperature,
            {name: value.float() for name, value in student_features.items()}, {name: value.float() for name, value in teacher_features.items()},
            batch.partner_labels, batch.shares,
        ))
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
        for batch in iterate_batches(dataset, eval_indices(len(dataset)), batch_size, device):
            images, labels = batch.images, batch.labels
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            count += len(labels)
    correct, loss_sum, count = all_reduce_sums(correct, loss_sum, count, device=device)
    return correct / max(count, 1), loss_sum / max(count, 1)


def epoch_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of a whole epoch. `cosine` takes the cosine curve from `base_lr` to 0 at the
    epoch's midpoint, so the first epoch trains near `base_lr` and the last near 0; a function of the
    epoch alone, so a resumed trial continues on the same curve with no scheduler state to restore."""
    if schedule == "constant":
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch + 0.5) / epochs))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(cfg: TrainingConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """`training.optimizer` over `params`; `training.fused_optimizer` asks for torch's fused step (None: torch's default, foreach)."""
    fused = True if cfg.fused_optimizer else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def memory_format(cfg: TrainingConfig, student: nn.Module, example: torch.Tensor) -> torch.memory_format:
    """Layout of the student's 4-D (conv) weights; activations follow the weights' layout through each conv.
    `training.channels_last` unset: channels_last wherever the student has conv weights and runs on them."""
    if cfg.channels_last is None:
        wanted = any(param.dim() == 4 for param in student.parameters()) and runs_channels_last(student, example) is None
    else:
        wanted = cfg.channels_last
    return torch.channels_last if wanted else torch.contiguous_format


def runs_channels_last(student: nn.Module, example: torch.Tensor) -> str | None:
    """None when a copy of `student` with channels_last weights forwards `example` (eval mode, no grad), else the
    first line of its error (a forward that `.view`s a conv output)."""
    probe = copy.deepcopy(student).eval().to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            probe(example)
    except RuntimeError as err:
        return str(err).strip().splitlines()[0][:160]
    return None


def train_batches(wf: WorkflowConfig, data: "DataSplits", epoch: int, device: torch.device) -> Iterator[Batch]:
    """This rank's training batches of `epoch` as the loop draws them: the epoch's shard and augmentation view."""
    view = augment_view(wf.data.augment, len(data.train), epoch, wf.data.seed)
    return iterate_batches(data.train, train_indices(len(data.train), epoch, wf.training.seed), wf.training.batch_size, device, view)
