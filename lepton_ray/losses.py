"""Distillation-loss registry and the objective that combines them with the hard-label loss.

total = (1 - alpha) * CE(student, labels) + alpha * sum_i weight_i * loss_i(inputs)

Each loss is a small module registered by name; its docstring gives the formula and paper.
Losses that need intermediate features name the layers; the trial loop captures them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lepton_ray.config import DistillationConfig, LossSpec
from lepton_ray.errors import ConfigError
from lepton_ray.registry import Registry


@dataclass
class DistillInputs:
    """Everything a loss may read for one batch. Teacher tensors carry no grad."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: list[torch.Tensor]
    """One (batch, classes) tensor per teacher; index 0 is the primary teacher."""
    temperature: float
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    """Primary teacher's features by layer name."""


class DistillationLoss(nn.Module):
    """Base class. Subclasses return a scalar averaged over the batch."""

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()

    def setup(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Called once with the captured feature shapes, before DDP wrapping (build adapters here)."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[DistillationLoss]] = Registry("distillation loss", "distillation.losses.name")


def soft_target_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student/T)), mean over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean") * temperature**2


@LOSSES.register("kd")
class SoftTargetKD(DistillationLoss):
    """Hinton et al., 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        teacher_probs = F.softmax(inputs.teacher_logits[0] / inputs.temperature, dim=-1)
        return soft_target_kl(inputs.student_logits, teacher_probs, inputs.temperature)


@LOSSES.register("hard")
class HardTeacherLabels(DistillationLoss):
    """Hard-target distillation: CE(s, argmax t), batch mean."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return F.cross_entropy(inputs.student_logits, inputs.teacher_logits[0].argmax(dim=-1))


@LOSSES.register("logit_mse")
class LogitMSE(DistillationLoss):
    """Ba & Caruana, 2014: mean over all elements of (s - t)^2."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return F.mse_loss(inputs.student_logits, inputs.teacher_logits[0])


def labeled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE averaged over labeled samples only (label -1 = unlabeled); 0 for a batch with none."""
    per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    labeled = (labels >= 0).to(per_sample.dtype)
    return (per_sample * labeled).sum() / labeled.sum().clamp(min=1)


def build_loss(spec: LossSpec, index: int) -> DistillationLoss:
    loss_cls = LOSSES.get(spec.name)
    try:
        return loss_cls(**spec.options)
    except TypeError as err:
        raise ConfigError(f"distillation.losses.{index}.options: {err}; see the {spec.name!r} loss docs") from None


class DistillationObjective(nn.Module):
    """Blends the hard-label CE with the weighted distillation losses; owns any adapters."""

    def __init__(self, cfg: DistillationConfig, uses_teacher: bool = True) -> None:
        super().__init__()
        self.alpha = cfg.alpha if uses_teacher else 0.0
        self.temperature = cfg.temperature
        self.weights = [spec.weight for spec in cfg.losses] if uses_teacher else []
        self.losses = nn.ModuleList(build_loss(spec, i) for i, spec in enumerate(cfg.losses)) if uses_teacher else nn.ModuleList()

    @classmethod
    def hard_labels_only(cls) -> "DistillationObjective":
        return cls(DistillationConfig(alpha=0.0), uses_teacher=False)

    @property
    def student_layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for loss in self.losses for name in loss.student_layers))

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for loss in self.losses for name in loss.teacher_layers))

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        hard = labeled_cross_entropy(inputs.student_logits, inputs.labels)
        if self.alpha == 0.0:
            return hard
        distill = sum(weight * loss(inputs) for weight, loss in zip(self.weights, self.losses))
        return (1 - self.alpha) * hard + self.alpha * distill
