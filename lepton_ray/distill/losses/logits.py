"""Losses on the teachers' output logits: soft targets, hard targets, logit regression, ensembles, decoupled KD, DIST,
logit-standardised KD.

With several teachers (`teacher` plus `extra_teachers`) every loss here distils from the ensemble, as Hinton et al.
(2015, sec. 2) do: soft targets are the teachers' averaged probabilities, hard targets their argmax, logit regression
their mean logits (`multi_teacher` adds weights). With one teacher each loss is exactly its single-teacher form."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from lepton_ray.errors import ConfigError
from lepton_ray.distill.losses.base import DistillationLoss, DistillInputs, LOSSES, soft_target_kl


@LOSSES.register("kd")
class SoftTargetKD(DistillationLoss):
    """Hinton et al., 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean (T^2 keeps grads T-independent)."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return soft_target_kl(inputs.student_logits, teacher_probabilities(inputs).mean(dim=0), inputs.temperature)


@LOSSES.register("kd_std")
class StandardisedKD(DistillationLoss):
    """Logit standardisation (Sun et al., CVPR 2024): kd on each sample's z-scored logits, (z - mean) / std over the
    classes, for student and teacher alike. The student then matches the teacher's logit *relations*, not their
    range, which a small student cannot reach; T is a base temperature on unit-spread logits (the paper's 2).
    Needs every teacher logit (mean and std over all classes)."""

    needs_every_teacher_logit = True

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        teacher = teacher_probabilities(inputs, transform=_standardised).mean(dim=0)
        return soft_target_kl(_standardised(inputs.student_logits.float()), teacher, inputs.temperature)


def _standardised(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored (sample standard deviation, as the authors' `torch.std`)."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


@LOSSES.register("hard")
class HardTeacherLabels(DistillationLoss):
    """Hard-target distillation: CE(s, argmax t), batch mean; several teachers: the argmax of their averaged
    probabilities (at T = 1, the ensemble's own prediction)."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return F.cross_entropy(inputs.student_logits, ensemble_logits(inputs, temperature=1.0).argmax(dim=-1))


@LOSSES.register("logit_mse")
class LogitMSE(DistillationLoss):
    """Ba & Caruana, 2014: mean over all elements of (s - t)^2; several teachers: t is their mean logits."""

    needs_every_teacher_logit = True

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return F.mse_loss(inputs.student_logits, torch.stack(inputs.teacher_logits).mean(dim=0))


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
        return soft_target_kl(inputs.student_logits, (weights * teacher_probabilities(inputs)).sum(dim=0), inputs.temperature)


def teacher_probabilities(
    inputs: DistillInputs, temperature: float | None = None, transform: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits,
) -> torch.Tensor:
    """(teachers, batch, classes): every teacher's softmax(transform(t)/T) in float32 (T: the loss's temperature unless
    given), what an ensemble's soft targets mix."""
    scale = inputs.temperature if temperature is None else temperature
    return torch.stack([F.softmax(transform(logits.float()) / scale, dim=-1) for logits in inputs.teacher_logits])


def ensemble_logits(inputs: DistillInputs, temperature: float | None = None) -> torch.Tensor:
    """(batch, classes) logits whose softmax is the teachers' averaged softmax(t/T) (T: the loss's unless given): one
    teacher's t/T itself, several teachers' log of their averaged probabilities, a logsumexp of their log-probabilities
    so that no probability underflows to log 0."""
    scale = inputs.temperature if temperature is None else temperature
    if len(inputs.teacher_logits) == 1:
        return inputs.teacher_logits[0].float() / scale
    logs = torch.stack([F.log_softmax(logits.float() / scale, dim=-1) for logits in inputs.teacher_logits])
    return logs.logsumexp(dim=0) - math.log(len(logs))


def target_classes(inputs: DistillInputs) -> torch.Tensor:
    """Each sample's target class: its label (of a mixed image, the label with the larger share), or (unlabeled
    samples, label -1) the teachers' prediction: the argmax of their averaged probabilities at T = 1 (as `hard`)."""
    labels = inputs.labels
    if inputs.shares is not None and inputs.partner_labels is not None:
        labels = torch.where(inputs.shares >= 0.5, labels, inputs.partner_labels)
    return torch.where(labels >= 0, labels, ensemble_logits(inputs, temperature=1.0).argmax(dim=-1))


@LOSSES.register("dkd")
class DecoupledKD(DistillationLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): kd split into a target and a non-target term, weighted apart.

    With p = softmax(z/T) and g the target class: TCKD = KL([p_t,g, 1 - p_t,g] || [p_s,g, 1 - p_s,g]) and
    NCKD = KL(softmax(t_/g / T) || softmax(s_/g / T)) over the classes other than g; the loss is
    T^2 * (alpha * TCKD + beta * NCKD), batch mean. Plain kd weighs NCKD by 1 - p_t,g, which a confident
    teacher drives to 0; `beta` (default 8, the paper's CIFAR setting) restores it. Unlabeled samples take the
    teacher's argmax as g. Needs every teacher logit (the non-target distribution). Several teachers: p_t is their
    averaged probabilities.
    """

    needs_every_teacher_logit = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        temperature = inputs.temperature
        student, teacher = inputs.student_logits.float() / temperature, ensemble_logits(inputs)
        is_target = F.one_hot(target_classes(inputs), student.shape[-1]).bool()
        log_p_student, log_p_teacher = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
        binary_student = _binary_log_probs(log_p_student, is_target)
        binary_teacher = _binary_log_probs(log_p_teacher, is_target)
        tckd = (binary_teacher.exp() * (binary_teacher - binary_student)).sum(dim=-1)
        # log-probabilities over the other classes; 0 at the target, so its term is 1 * (0 - 0) and no -inf reaches a gradient
        others_student = torch.where(is_target, 0.0, F.log_softmax(student.masked_fill(is_target, float("-inf")), dim=-1))
        others_teacher = torch.where(is_target, 0.0, F.log_softmax(teacher.masked_fill(is_target, float("-inf")), dim=-1))
        nckd = (others_teacher.exp() * (others_teacher - others_student)).sum(dim=-1)
        return temperature**2 * (self.alpha * tckd + self.beta * nckd).mean()


def _binary_log_probs(log_probs: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """(batch, 2) log [p_g, 1 - p_g] from log-probabilities over the classes, without cancellation in 1 - p_g."""
    target = log_probs.masked_fill(~is_target, float("-inf")).logsumexp(dim=-1)
    others = log_probs.masked_fill(is_target, float("-inf")).logsumexp(dim=-1)
    return torch.stack([target, others], dim=-1)


@LOSSES.register("dist")
class DIST(DistillationLoss):
    """DIST (Huang et al., NeurIPS 2022): match relations, not values, which tolerates a large teacher-student gap.

    With y = softmax(z/T): T^2 * (beta * (1 - mean over samples of pearson(y_s[b, :], y_t[b, :])) + gamma * (1 - mean
    over classes of pearson(y_s[:, c], y_t[:, c]))): inter-class relations per sample, intra-class relations across
    the batch. Defaults beta = gamma = 1 (the paper's). Needs every teacher logit. With several teachers (`teacher`
    plus `extra_teachers`), y_t is their averaged probabilities, the ensemble's soft targets as in `multi_teacher`.

    Refused for two classes: the inter-class Pearson of two centred probabilities is +-1 whatever they are (no
    gradient), and the intra-class one is blind to a shift of the student's probabilities, which is where its
    decision threshold lies. On the 2-class reviews it cost 5.0 and 6.4 pt against labels only (3 seeds,
    `benchmarks/results/text_kd.json`); seed 0's bag of embeddings squeezed its probabilities into 0.29-0.61 and
    predicted the minority class for 3% of the test reviews (labels only: 28%; true share 34%).
    """

    needs_every_teacher_logit = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if beta < 0 or gamma < 0:
            raise ValueError(f"beta: beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
        self.beta, self.gamma = beta, gamma

    def check_classes(self, count: int) -> None:
        if count < 3:
            raise ConfigError(f"{self.field}.name: dist relates classes to each other and needs 3 or more, the data has {count}; use kd")

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        temperature = inputs.temperature
        student = F.softmax(inputs.student_logits.float() / temperature, dim=-1)
        teacher = teacher_probabilities(inputs).mean(dim=0)
        inter = 1 - _pearson(student, teacher, dim=1).mean()
        intra = 1 - _pearson(student, teacher, dim=0).mean()
        return temperature**2 * (self.beta * inter + self.gamma * intra)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of `a` and `b` along `dim` (one value per slice of the other axis)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
