"""What every distillation loss sees and is: the per-batch inputs, the base class, the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lepton_ray.registry import Registry


@dataclass
class DistillInputs:
    """Everything a loss may read for one batch. Teacher tensors are detached here, so no loss can push grad into them."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: list[torch.Tensor]
    """One (batch, classes) tensor per teacher; index 0 is the primary teacher."""
    temperature: float
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    """Primary teacher's features by layer name."""
    partner_labels: torch.Tensor | None = None
    shares: torch.Tensor | None = None
    """Mixed inputs (`data.augment.mix`): each image's partner label and its own share of the mix (`data/batches.py`)."""

    def __post_init__(self) -> None:
        self.teacher_logits = [logits.detach() for logits in self.teacher_logits]
        self.teacher_features = {name: value.detach() for name, value in self.teacher_features.items()}


class DistillationLoss(nn.Module):
    """Base class. Subclasses return a scalar averaged over the batch.

    Option errors found in `__init__` are raised as `ValueError("<option>: <fix>")`; the objective
    turns them into a `ConfigError` naming `distillation.losses.<i>.options.<option>`. `field` is that
    `distillation.losses.<i>` prefix, for errors found later (in `setup` or the first forward).
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    field: str = "distillation.losses"
    needs_every_teacher_logit: bool = False
    """True when a top-k teacher cache would change the loss (it keeps the top-k probabilities exact, not every logit)."""

    def check_teachers(self, count: int) -> None:
        """Called with the number of teachers (`teacher` plus `extra_teachers`) before anything trains, so
        options that depend on it are refused by `validate`, not at a trial's first batch."""

    def check_classes(self, count: int) -> None:
        """Called by `validate` with the data set's number of classes, for losses that are not defined for every count."""

    def setup(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Called once with the captured feature shapes, before DDP wrapping (build adapters here)."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[DistillationLoss]] = Registry("distillation loss", "distillation.losses.name")


def soft_target_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student/T)), summed over classes, mean over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean") * temperature**2
