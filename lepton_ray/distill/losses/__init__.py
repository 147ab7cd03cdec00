"""Distillation-loss registry and the objective that combines them with the hard-label loss.

total = (1 - alpha) * CE(student, labels) + alpha * sum_i weight_i * loss_i(inputs)

CE takes `distillation.label_smoothing` (0 by default).

Each loss is a small module registered by name (`logits.py`: kd, hard, logit_mse, multi_teacher;
`feature_maps.py`: hint, attention); its docstring gives the formula and the paper. Losses that need
intermediate features name the layers; the trial loop captures them with forward hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lepton_ray.config import DistillationConfig, LossSpec
from lepton_ray.distill.losses import feature_maps as _feature_map_losses, logits as _logit_losses  # noqa: F401  (importing them registers the losses)
from lepton_ray.distill.losses.base import LOSSES, DistillationLoss, DistillInputs, soft_target_kl
from lepton_ray.errors import ConfigError

__all__ = ["LOSSES", "DistillationLoss", "DistillInputs", "DistillationObjective", "build_loss", "labeled_cross_entropy", "soft_target_kl"]


def build_loss(spec: LossSpec, index: int) -> DistillationLoss:
    """One loss from its spec; bad option names or values become a ConfigError naming the option."""
    loss_cls = LOSSES.get(spec.name, f"distillation.losses.{index}.name")
    field = f"distillation.losses.{index}"
    try:
        loss = loss_cls(**spec.options)
    except TypeError as err:
        raise ConfigError(f"{field}.options: {err}; see the {spec.name!r} loss docs") from None
    except ValueError as err:
        raise ConfigError(f"{field}.options.{err}") from None
    loss.field = field
    return loss


def labeled_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor | None = None, shares: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE averaged over labeled samples only (label -1 = unlabeled); 0 for a batch with none. A mixed batch
    (`shares`: each image's own share) weighs each image's label by its share and its partner's by the rest.
    `label_smoothing` applies to every label, a partner's too."""
    per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    labeled = (labels >= 0).to(per_sample.dtype)
    if shares is None:
        return (per_sample * labeled).sum() / labeled.sum().clamp(min=1)
    assert partner_labels is not None
    share = shares.to(per_sample.dtype)
    partner = F.cross_entropy(logits, partner_labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    partner_labeled = (partner_labels >= 0).to(per_sample.dtype)
    weights = share * labeled + (1 - share) * partner_labeled
    total = (share * labeled * per_sample + (1 - share) * partner_labeled * partner).sum()
    return torch.where(weights.sum() > 0, total / weights.sum().clamp(min=1e-12), total)


class DistillationObjective(nn.Module):
    """Blends the hard-label CE with the weighted distillation losses; owns any adapters."""

    def __init__(self, cfg: DistillationConfig, uses_teacher: bool = True) -> None:
        super().__init__()
        self.alpha = cfg.alpha if uses_teacher else 0.0
        self.temperature = cfg.temperature
        self.label_smoothing = cfg.label_smoothing
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

    @property
    def needs_every_teacher_logit(self) -> bool:
        return any(loss.needs_every_teacher_logit for loss in self.losses)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        hard = labeled_cross_entropy(inputs.student_logits, inputs.labels, inputs.partner_labels, inputs.shares, self.label_smoothing)
        if self.alpha == 0.0:
            return hard
        distill = sum(weight * loss(inputs) for weight, loss in zip(self.weights, self.losses))
        return (1 - self.alpha) * hard + self.alpha * distill
