"""Losses on the teachers' output logits: soft targets, hard targets, logit regression, ensembles."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lepton_ray.errors import ConfigError
from lepton_ray.distill.losses.base import DistillationLoss, DistillInputs, LOSSES, soft_target_kl


@LOSSES.register("kd")
class SoftTargetKD(DistillationLoss):
    """Hinton et al., 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean (T^2 keeps grads T-independent)."""

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

    needs_every_teacher_logit = True

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return F.mse_loss(inputs.student_logits, inputs.teacher_logits[0])


@LOSSES.register("multi_teacher")
class MultiTeacherKD(DistillationLoss):
    """Ensemble distillation (Hinton et al., 2015, sec. 2; You et al., KDD 2017): kd against averaged soft targets.

    p = sum_i w_i softmax(t_i/T) with sum_i w_i = 1, then T^2 * KL(p || softmax(s/T)), batch mean.
    `weights`: one non-negative weight per teacher (workflow `teacher` then `extra_teachers`), normalised
    to sum 1; default equal. `weighting: confidence`: per sample, w_i = max_c softmax(t_i)_c (at T=1,
    the teacher's own confidence) normalised over teachers. A `weights` list of the wrong length is
    refused by `check_teachers` (run by `validate` and again at each forward).
    """

    def __init__(self, weights: list[float] | None = None, weighting: str = "fixed") -> None:
        super().__init__()
        if weighting not in ("fixed", "confidence"):
            raise ValueError(f"weighting: must be 'fixed' or 'confidence', got {weighting!r}")
        if weighting == "confidence" and weights is not None:
            raise ValueError("weights: not used with weighting 'confidence'; remove one of the two")
        if weights is not None and (not weights or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"weights: need one non-negative weight per teacher with a positive sum, got {weights}")
        self.weights = weights
        self.weighting = weighting

    def check_teachers(self, count: int) -> None:
        if self.weights is not None and len(self.weights) != count:
            raise ConfigError(
                f"{self.field}.options.weights: {len(self.weights)} weights for {count} teachers "
                "(teacher + extra_teachers); give one weight per teacher"
            )

    def teacher_weights(self, teacher_logits: list[torch.Tensor]) -> torch.Tensor:
        """(teachers, batch, 1) weights that sum to 1 over teachers for every sample."""
        count, batch = len(teacher_logits), teacher_logits[0].shape[0]
        if self.weighting == "confidence":
            confidence = torch.stack([F.softmax(logits.float(), dim=-1).amax(dim=-1) for logits in teacher_logits])
            return (confidence / confidence.sum(dim=0, keepdim=True)).unsqueeze(-1)
        self.check_teachers(count)
        fixed = torch.tensor(self.weights or [1.0] * count, dtype=torch.float32, device=teacher_logits[0].device)
        return (fixed / fixed.sum()).view(count, 1, 1).expand(count, batch, 1)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        weights = self.teacher_weights(inputs.teacher_logits)
        probs = torch.stack([F.softmax(logits.float() / inputs.temperature, dim=-1) for logits in inputs.teacher_logits])
        return soft_target_kl(inputs.student_logits, (weights * probs).sum(dim=0), inputs.temperature)
