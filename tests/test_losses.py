"""Distillation losses against hand computations, their gradients, hooks, adapters and shipped workflows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lepton_ray.config import DistillationConfig, LossSpec, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.errors import ConfigError, DataError
from lepton_ray.models.features import capture_features
from lepton_ray.distill.losses import DistillationObjective, DistillInputs, LOSSES, build_loss
from lepton_ray.models.zoo import build_model
from lepton_ray.data.batches import iterate_batches, train_indices
from lepton_ray.trial.epoch import Precision, build_optimizer, train_epoch
from lepton_ray.trial.loop import build_objective

from conftest import REPO
from test_data import write_release

CPU = torch.device("cpu")
METHODS = ["kd", "hard", "logit_mse", "hint", "attention", "multi_teacher", "dkd", "dist", "kd_std"]

STUDENT_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER_LOGITS = [[2.0, 1.0, 0.0], [1.0, 0.5, 2.5]]
SECOND_TEACHER = [[0.0, 3.0, 1.0], [4.0, 0.0, 0.0]]


def softmax_rows(rows: list[list[float]], temperature: float = 1.0) -> list[list[float]]:
    out = []
    for row in rows:
        exps = [math.exp(v / temperature) for v in row]
        out.append([e / sum(exps) for e in exps])
    return out


def hand_kl(target: list[list[float]], student: list[list[float]], temperature: float) -> float:
    """T^2 * (1/B) * sum_b sum_c p_bc * log(p_bc / q_bc), q = softmax(student/T)."""
    q = softmax_rows(student, temperature)
    total = sum(p * math.log(p / qc) for prow, qrow in zip(target, q) for p, qc in zip(prow, qrow))
    return temperature**2 * total / len(target)


def inputs(temperature: float = 1.0, teachers=(TEACHER_LOGITS,), labels=(1, 2), **features) -> DistillInputs:
    return DistillInputs(
        torch.tensor(STUDENT_LOGITS), torch.tensor(labels), [torch.tensor(t) for t in teachers], temperature, **features
    )


def make(name: str, **options) -> nn.Module:
    return build_loss(LossSpec(name=name, options=options), 0)


# ---- logit losses ---------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_t_squared_kl_of_softened_distributions_with_batchmean(temperature):
    expected = hand_kl(softmax_rows(TEACHER_LOGITS, temperature), STUDENT_LOGITS, temperature)
    assert make("kd")(inputs(temperature)).item() == pytest.approx(expected, rel=1e-5)


def test_kd_t_squared_factor_keeps_the_gradient_scale_of_soft_targets():
    """Hinton: d/ds of T^2*KL is T*(q - p); without T^2 it would shrink as 1/T."""
    student = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    temperature = 4.0
    make("kd")(DistillInputs(student, torch.tensor([1, 2]), [torch.tensor(TEACHER_LOGITS)], temperature)).backward()
    q = torch.tensor(softmax_rows(STUDENT_LOGITS, temperature))
    p = torch.tensor(softmax_rows(TEACHER_LOGITS, temperature))
    torch.testing.assert_close(student.grad, temperature * (q - p) / 2)


def test_hard_is_cross_entropy_against_teacher_argmax():
    q = softmax_rows(STUDENT_LOGITS)
    teacher_labels = [0, 2]  # argmax of TEACHER_LOGITS rows
    expected = -sum(math.log(q[b][c]) for b, c in enumerate(teacher_labels)) / 2
    assert make("hard")(inputs()).item() == pytest.approx(expected, rel=1e-6)


def test_logit_mse_is_mean_over_all_elements():
    diffs = [(s - t) ** 2 for srow, trow in zip(STUDENT_LOGITS, TEACHER_LOGITS) for s, t in zip(srow, trow)]
    assert make("logit_mse")(inputs()).item() == pytest.approx(sum(diffs) / 6, rel=1e-6)


def test_multi_teacher_with_fixed_weights_is_kd_against_the_weighted_mean_of_soft_targets():
    temperature = 2.0
    first, second = softmax_rows(TEACHER_LOGITS, temperature), softmax_rows(SECOND_TEACHER, temperature)
    target = [[0.75 * a + 0.25 * b for a, b in zip(ra, rb)] for ra, rb in zip(first, second)]
    loss = make("multi_teacher", weights=[3.0, 1.0])(inputs(temperature, teachers=(TEACHER_LOGITS, SECOND_TEACHER)))
    assert loss.item() == pytest.approx(hand_kl(target, STUDENT_LOGITS, temperature), rel=1e-5)


def test_multi_teacher_with_one_teacher_equals_kd():
    batch = inputs(3.0)
    assert make("multi_teacher")(batch).item() == pytest.approx(make("kd")(batch).item(), rel=1e-6)


def test_multi_teacher_confidence_weights_each_sample_by_each_teachers_max_probability():
    temperature = 2.0
    conf_a = [max(r) for r in softmax_rows(TEACHER_LOGITS)]
    conf_b = [max(r) for r in softmax_rows(SECOND_TEACHER)]
    first, second = softmax_rows(TEACHER_LOGITS, temperature), softmax_rows(SECOND_TEACHER, temperature)
    target = [
        [(ca * a + cb * b) / (ca + cb) for a, b in zip(ra, rb)]
        for ra, rb, ca, cb in zip(first, second, conf_a, conf_b)
    ]
    loss = make("multi_teacher", weighting="confidence")(inputs(temperature, teachers=(TEACHER_LOGITS, SECOND_TEACHER)))
    assert loss.item() == pytest.approx(hand_kl(target, STUDENT_LOGITS, temperature), rel=1e-5)


def test_multi_teacher_weights_of_the_wrong_length_name_the_field():
    cfg = DistillationConfig(losses=[LossSpec(name="kd"), LossSpec(name="multi_teacher", options={"weights": [1.0, 1.0, 1.0]})])
    objective = DistillationObjective(cfg)
    with pytest.raises(ConfigError, match=r"distillation\.losses\.1\.options\.weights: 3 weights for 2 teachers"):
        objective(inputs(teachers=(TEACHER_LOGITS, SECOND_TEACHER)))


def reference_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller's `dkd_loss` (github.com/megvii-research/mdistiller, distillers/DKD.py), as published."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        return torch.cat([(t * mask1).sum(dim=1, keepdims=True), (t * mask2).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(torch.softmax(logits_student / temperature, dim=1), gt_mask, other_mask)
    pred_teacher = cat_mask(torch.softmax(logits_teacher / temperature, dim=1), gt_mask, other_mask)
    tckd = torch.nn.functional.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pred_teacher_part2 = torch.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = torch.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = torch.nn.functional.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def reference_dist(z_s, z_t, beta, gamma, tau):
    """The DIST authors' loss (github.com/hunto/DIST_KD, classification/lib/models/losses/dist_kd.py), as published."""

    def pearson_correlation(a, b, eps=1e-8):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * (1 - pearson_correlation(y_s, y_t).mean())
    intra_loss = tau**2 * (1 - pearson_correlation(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean())
    return beta * inter_loss + gamma * intra_loss


def reference_kd_std(logits_student_in, logits_teacher_in, temperature):
    """The logit-standardisation authors' kd (github.com/sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py,
    `kd_loss` with logit_stand=True), as published."""

    def normalize(logit):
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    logits_student, logits_teacher = normalize(logits_student_in), normalize(logits_teacher_in)
    log_pred_student = torch.nn.functional.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = torch.nn.functional.softmax(logits_teacher / temperature, dim=1)
    loss_kd = torch.nn.functional.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def random_batch(seed: int, temperature: float, labels: torch.Tensor | None = None, classes: int = 10) -> DistillInputs:
    generator = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(16, classes, generator=generator) * 3, torch.randn(16, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (16,), generator=generator) if labels is None else labels
    return DistillInputs(student, labels, [teacher], temperature)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 8.0), (0.5, 2.0)])
def test_dkd_equals_the_published_implementation(temperature, alpha, beta):
    for seed in range(3):
        batch = random_batch(seed, temperature)
        expected = reference_dkd(batch.student_logits, batch.teacher_logits[0], batch.labels, alpha, beta, temperature)
        torch.testing.assert_close(make("dkd", alpha=alpha, beta=beta)(batch), expected, rtol=1e-5, atol=1e-6)


def test_dkd_with_beta_one_and_alpha_one_is_kd_only_when_the_teacher_target_probability_is_zero_weighted_out():
    """kd = TCKD + (1 - p_t,g) * NCKD (the paper's eq. 3): DKD with alpha 1, beta = 1 - p_t,g equals kd, sample by sample."""
    batch = random_batch(0, 2.0)
    single = [DistillInputs(batch.student_logits[i:i + 1], batch.labels[i:i + 1], [batch.teacher_logits[0][i:i + 1]], 2.0) for i in range(4)]
    for one in single:
        p_target = torch.softmax(one.teacher_logits[0] / 2.0, dim=-1)[0, int(one.labels[0])]
        torch.testing.assert_close(make("dkd", alpha=1.0, beta=float(1 - p_target))(one), make("kd")(one), rtol=1e-5, atol=1e-6)


def test_dkd_takes_the_teachers_argmax_as_the_target_of_unlabeled_samples():
    batch = random_batch(1, 4.0)
    unlabeled = DistillInputs(batch.student_logits, torch.full((16,), -1), batch.teacher_logits, 4.0)
    expected = reference_dkd(batch.student_logits, batch.teacher_logits[0], batch.teacher_logits[0].argmax(dim=1), 1.0, 8.0, 4.0)
    torch.testing.assert_close(make("dkd")(unlabeled), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize(("beta", "gamma"), [(1.0, 1.0), (2.0, 0.5)])
def test_dist_equals_the_published_implementation(temperature, beta, gamma):
    for seed in range(3):
        batch = random_batch(seed, temperature)
        expected = reference_dist(batch.student_logits, batch.teacher_logits[0], beta, gamma, temperature)
        torch.testing.assert_close(make("dist", beta=beta, gamma=gamma)(batch), expected, rtol=1e-5, atol=1e-6)


def test_dist_is_zero_for_a_student_whose_probabilities_are_an_affine_copy_of_the_teachers():
    """Pearson correlation ignores scale and shift: identical soft outputs give no loss."""
    batch = random_batch(2, 1.0)
    same = DistillInputs(batch.teacher_logits[0].clone(), batch.labels, batch.teacher_logits, 1.0)
    assert float(make("dist")(same)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_std_equals_the_published_implementation(temperature):
    for seed in range(3):
        batch = random_batch(seed, temperature)
        expected = reference_kd_std(batch.student_logits, batch.teacher_logits[0], temperature)
        torch.testing.assert_close(make("kd_std")(batch), expected, rtol=1e-5, atol=1e-6)


def test_kd_std_ignores_each_samples_logit_scale_and_shift_where_kd_does_not():
    """A student whose logits are an affine copy of the teacher's (per sample, positive scale) has no kd_std loss left."""
    batch = random_batch(3, 2.0)
    scale, shift = torch.rand(16, 1) * 3 + 0.2, torch.randn(16, 1) * 5
    affine = DistillInputs(batch.teacher_logits[0] * scale + shift, batch.labels, batch.teacher_logits, 2.0)
    assert float(make("kd_std")(affine)) == pytest.approx(0.0, abs=1e-5)
    assert float(make("kd")(affine)) > 1e-3


def ensemble_teacher(teachers: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """One teacher's logits whose softmax(z/T) is the teachers' averaged softmax(t/T): T * log of that average."""
    return temperature * torch.stack([(t / temperature).softmax(dim=1) for t in teachers]).mean(dim=0).log()


@pytest.mark.parametrize(("name", "options"), [("kd", {}), ("dkd", {}), ("dkd", {"alpha": 0.5, "beta": 2.0}), ("dist", {})])
def test_each_soft_target_loss_with_several_teachers_distils_from_their_averaged_probabilities(name, options):
    """Hinton et al. (2015, sec. 2): an ensemble's soft targets are its teachers' averaged softmax(t/T); every soft-target
    loss given `extra_teachers` must equal itself against one teacher with those probabilities, not the first teacher's."""
    for seed, temperature in [(0, 4.0), (1, 1.0), (2, 2.0)]:
        batch, more = random_batch(seed, temperature), [random_batch(seed + 10 + k, temperature).teacher_logits[0] for k in range(2)]
        teachers = [batch.teacher_logits[0], *more]
        several = DistillInputs(batch.student_logits, batch.labels, teachers, temperature)
        one = DistillInputs(batch.student_logits, batch.labels, [ensemble_teacher(teachers, temperature)], temperature)
        torch.testing.assert_close(make(name, **options)(several), make(name, **options)(one), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(make(name, **options)(several), make(name, **options)(batch)), "the extra teachers must count"


def test_dkd_with_several_teachers_takes_their_averaged_prediction_as_the_target_of_unlabeled_samples():
    batch, second = random_batch(4, 4.0), random_batch(14, 4.0).teacher_logits[0]
    teachers = [batch.teacher_logits[0], second]
    averaged = torch.stack([t.softmax(dim=1) for t in teachers]).mean(dim=0)
    unlabeled = DistillInputs(batch.student_logits, torch.full((16,), -1), teachers, 4.0)
    assert (averaged.argmax(dim=1) != batch.teacher_logits[0].argmax(dim=1)).any(), "the batch must tell the two targets apart"
    expected = reference_dkd(batch.student_logits, ensemble_teacher(teachers, 4.0), averaged.argmax(dim=1), 1.0, 8.0, 4.0)
    torch.testing.assert_close(make("dkd")(unlabeled), expected, rtol=1e-5, atol=1e-6)


def test_kd_std_with_several_teachers_averages_the_probabilities_of_their_standardised_logits():
    temperature = 2.0
    batch, second = random_batch(5, temperature), random_batch(15, temperature).teacher_logits[0] * 4 + 3
    teachers = [batch.teacher_logits[0], second]

    def standardised(z: torch.Tensor) -> torch.Tensor:  # the authors' normalize()
        return (z - z.mean(dim=-1, keepdim=True)) / (1e-7 + z.std(dim=-1, keepdim=True))

    target = torch.stack([(standardised(t) / temperature).softmax(dim=1) for t in teachers]).mean(dim=0)
    log_student = (standardised(batch.student_logits) / temperature).log_softmax(dim=1)
    expected = torch.nn.functional.kl_div(log_student, target, reduction="none").sum(1).mean() * temperature**2
    several = DistillInputs(batch.student_logits, batch.labels, teachers, temperature)
    torch.testing.assert_close(make("kd_std")(several), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(make("kd_std")(several), make("kd_std")(batch)), "the second teacher must count"


def test_hard_with_several_teachers_is_cross_entropy_against_the_argmax_of_their_averaged_probabilities():
    """Sample 0: the first teacher says class 0; the ensemble (softmax at T 1, averaged) says class 1."""
    q = softmax_rows(STUDENT_LOGITS)
    averaged = [[(a + b) / 2 for a, b in zip(ra, rb)] for ra, rb in zip(softmax_rows(TEACHER_LOGITS), softmax_rows(SECOND_TEACHER))]
    ensemble_labels = [row.index(max(row)) for row in averaged]
    assert ensemble_labels != [0, 2], "the ensemble must disagree with the first teacher somewhere"
    expected = -sum(math.log(q[b][c]) for b, c in enumerate(ensemble_labels)) / 2
    assert make("hard")(inputs(4.0, teachers=(TEACHER_LOGITS, SECOND_TEACHER))).item() == pytest.approx(expected, rel=1e-6)


def test_logit_mse_with_several_teachers_regresses_onto_their_mean_logits():
    mean = [[(a + b) / 2 for a, b in zip(ra, rb)] for ra, rb in zip(TEACHER_LOGITS, SECOND_TEACHER)]
    diffs = [(s - t) ** 2 for srow, trow in zip(STUDENT_LOGITS, mean) for s, t in zip(srow, trow)]
    assert make("logit_mse")(inputs(teachers=(TEACHER_LOGITS, SECOND_TEACHER))).item() == pytest.approx(sum(diffs) / 6, rel=1e-6)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("multi_teacher", {"weights": [1.0], "weighting": "confidence"}, r"options\.weights: not used"),
        ("multi_teacher", {"weights": [-1.0, 2.0]}, r"options\.weights: need one non-negative"),
        ("multi_teacher", {"weighting": "vote"}, r"options\.weighting: must be"),
        ("attention", {"pairs": ["features.0"]}, r"options\.pairs: expected"),
        ("attention", {"student_layers": ["a", "b"], "teacher_layers": ["a"]}, r"options\.student_layers"),
        ("hint", {"student_layer": "a"}, r"options: .*teacher_layer"),
        ("dkd", {"beta": -1.0}, r"options\.alpha: alpha and beta must be >= 0"),
        ("dist", {"gamma": -1.0}, r"options\.beta: beta and gamma must be >= 0"),
    ],
)
def test_bad_loss_options_raise_config_error_naming_the_option(name, options, expected):
    with pytest.raises(ConfigError, match=r"distillation\.losses\.0\." + expected):
        make(name, **options)


# ---- the objective ------------------------------------------------------------------------------

def test_objective_blends_hard_ce_and_weighted_losses_and_honours_the_alpha_limits():
    batch = inputs(4.0)
    q = softmax_rows(STUDENT_LOGITS)
    ce = -(math.log(q[0][1]) + math.log(q[1][2])) / 2
    kd = hand_kl(softmax_rows(TEACHER_LOGITS, 4.0), STUDENT_LOGITS, 4.0)
    mse = sum((s - t) ** 2 for sr, tr in zip(STUDENT_LOGITS, TEACHER_LOGITS) for s, t in zip(sr, tr)) / 6
    losses = [LossSpec(name="kd", weight=2.0), LossSpec(name="logit_mse", weight=0.5)]

    def total(alpha: float) -> float:
        return DistillationObjective(DistillationConfig(alpha=alpha, temperature=4.0, losses=losses))(batch).item()

    assert total(0.0) == pytest.approx(ce, rel=1e-6)
    assert total(1.0) == pytest.approx(2.0 * kd + 0.5 * mse, rel=1e-5)
    assert total(0.3) == pytest.approx(0.7 * ce + 0.3 * (2.0 * kd + 0.5 * mse), rel=1e-5)


def test_objective_hard_label_term_skips_unlabeled_samples():
    batch = inputs(labels=(1, -1))
    q = softmax_rows(STUDENT_LOGITS)
    assert DistillationObjective(DistillationConfig(alpha=0.0))(batch).item() == pytest.approx(-math.log(q[0][1]), rel=1e-6)
    assert DistillationObjective(DistillationConfig(alpha=0.0))(inputs(labels=(-1, -1))).item() == 0.0


def test_the_hard_label_term_of_a_mixed_batch_weighs_each_label_by_its_share_of_the_image():
    """Sample 0: 70% its own label 1, 30% its partner's 0; sample 1: 40% its own 2, 60% an unlabeled partner's (left out)."""
    q = softmax_rows(STUDENT_LOGITS)
    mixed = inputs(labels=(1, 2), partner_labels=torch.tensor([0, -1]), shares=torch.tensor([0.7, 0.4]))
    expected = -(0.7 * math.log(q[0][1]) + 0.3 * math.log(q[0][0]) + 0.4 * math.log(q[1][2])) / (0.7 + 0.3 + 0.4)
    assert DistillationObjective(DistillationConfig(alpha=0.0))(mixed).item() == pytest.approx(expected, rel=1e-6)
    whole = inputs(labels=(1, 2), partner_labels=torch.tensor([0, 0]), shares=torch.ones(2))
    assert DistillationObjective(DistillationConfig(alpha=0.0))(whole).item() == pytest.approx(DistillationObjective(DistillationConfig(alpha=0.0))(inputs(labels=(1, 2))).item(), rel=1e-6)
    assert make("dkd")(inputs(labels=(1, 2), partner_labels=torch.tensor([0, 0]), shares=torch.tensor([0.3, 0.9]))).item() == pytest.approx(
        make("dkd")(inputs(labels=(0, 2))).item(), rel=1e-6), "DKD's target is the label with the larger share"


def test_label_smoothing_smooths_the_hard_label_term_only_with_or_without_a_teacher_and_a_partners_label_too():
    """Smoothed CE of one sample: (1 - eps) * -log q_y + eps * mean_k -log q_k (Szegedy et al. 2016; torch's definition)."""
    eps, q = 0.1, softmax_rows(STUDENT_LOGITS)

    def smoothed(row: int, label: int) -> float:
        return (1 - eps) * -math.log(q[row][label]) + eps * sum(-math.log(p) for p in q[row]) / len(q[row])

    def objective(alpha: float, smoothing: float, losses=(LossSpec(name="kd"),)) -> DistillationObjective:
        return DistillationObjective(DistillationConfig(alpha=alpha, temperature=4.0, losses=list(losses), label_smoothing=smoothing))

    ce = (smoothed(0, 1) + smoothed(1, 2)) / 2
    assert objective(0.0, eps)(inputs(4.0)).item() == pytest.approx(ce, rel=1e-6)
    assert objective(0.0, eps)(inputs(4.0)).item() != pytest.approx(objective(0.0, 0.0)(inputs(4.0)).item(), rel=1e-3)
    kd = objective(1.0, 0.0)(inputs(4.0)).item()
    assert objective(0.3, eps)(inputs(4.0)).item() == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-5)
    mixed = inputs(labels=(1, 2), partner_labels=torch.tensor([0, -1]), shares=torch.tensor([0.7, 0.4]))
    expected = (0.7 * smoothed(0, 1) + 0.3 * smoothed(0, 0) + 0.4 * smoothed(1, 2)) / (0.7 + 0.3 + 0.4)
    assert objective(0.0, eps)(mixed).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothing_outside_zero_to_one_is_a_config_error_naming_the_field(smoothing):
    with pytest.raises(ConfigError, match=r"distillation\.label_smoothing"):
        load_workflow(REPO / "workflows" / "digits_quickstart.yaml", {"distillation.label_smoothing": smoothing})


# ---- feature losses --------------------------------------------------------------------------------

def features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hint_inputs(student: torch.Tensor, teacher: torch.Tensor) -> DistillInputs:
    return inputs(student_features={"s": student}, teacher_features={"t": teacher})


def test_hint_with_equal_shapes_is_plain_mse_and_has_no_adapter():
    student, teacher = features(0, 2, 3, 4, 4), features(1, 2, 3, 4, 4)
    loss = make("hint", student_layer="s", teacher_layer="t")
    loss.setup({"s": student.shape}, {"t": teacher.shape})
    assert not list(loss.parameters())
    assert loss(hint_inputs(student, teacher)).item() == pytest.approx(((student - teacher) ** 2).mean().item(), rel=1e-6)


def test_hint_adapts_channels_with_a_1x1_conv_and_pools_the_larger_map_to_the_smaller():
    student, teacher = features(0, 2, 3, 2, 2), features(1, 2, 5, 4, 4)
    loss = make("hint", student_layer="s", teacher_layer="t")
    loss.setup({"s": student.shape}, {"t": teacher.shape})
    weight = dict(loss.named_parameters())["adapter.weight"]
    assert weight.shape == (5, 3, 1, 1)
    adapted = torch.einsum("oc,bchw->bohw", weight.detach()[:, :, 0, 0], student)
    pooled = teacher.reshape(2, 5, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 average blocks of the 4x4 map
    assert loss(hint_inputs(student, teacher)).item() == pytest.approx(((adapted - pooled) ** 2).mean().item(), rel=1e-5)


def test_hint_pools_the_student_map_when_it_is_the_larger_one():
    student, teacher = features(0, 2, 4, 4, 4), features(1, 2, 4, 2, 2)
    loss = make("hint", student_layer="s", teacher_layer="t")
    loss.setup({"s": student.shape}, {"t": teacher.shape})
    pooled = student.reshape(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))
    assert loss(hint_inputs(student, teacher)).item() == pytest.approx(((pooled - teacher) ** 2).mean().item(), rel=1e-5)


def test_hint_adapts_vectors_with_a_linear_layer():
    student, teacher = features(0, 2, 3), features(1, 2, 6)
    loss = make("hint", student_layer="s", teacher_layer="t")
    loss.setup({"s": student.shape}, {"t": teacher.shape})
    adapter = loss.adapter
    assert isinstance(adapter, nn.Linear) and adapter.weight.shape == (6, 3)
    expected = ((student @ adapter.weight.detach().T + adapter.bias.detach() - teacher) ** 2).mean()
    assert loss(hint_inputs(student, teacher)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hint_between_a_map_and_a_vector_is_a_config_error():
    loss = build_loss(LossSpec(name="hint", options={"student_layer": "s", "teacher_layer": "t"}), 2)
    with pytest.raises(ConfigError, match=r"distillation\.losses\.2\.options: hint needs"):
        loss.setup({"s": torch.Size([2, 3, 4, 4])}, {"t": torch.Size([2, 3])})


def brute_force_attention(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Per sample: Q = sum_c A_c^2 flattened, divided by its norm; distance is the L2 norm; mean over batch."""
    total = 0.0
    for s, t in zip(student, teacher):
        qs, qt = (s**2).sum(dim=0).flatten(), (t**2).sum(dim=0).flatten()
        qs, qt = qs / math.sqrt(float((qs**2).sum())), qt / math.sqrt(float((qt**2).sum()))
        total += math.sqrt(float(((qs - qt) ** 2).sum()))
    return total / len(student)


def test_attention_is_mean_over_pairs_of_l2_distance_between_normalised_attention_maps():
    s0, t0 = features(0, 3, 4, 4, 4), features(1, 3, 16, 4, 4)
    s1, t1 = features(2, 3, 8, 2, 2), features(3, 3, 32, 2, 2)
    batch = inputs(student_features={"a": s0, "b": s1}, teacher_features={"x": t0, "y": t1})
    expected = (brute_force_attention(s0, t0) + brute_force_attention(s1, t1)) / 2
    by_pairs = make("attention", pairs=["a:x", "b:y"])
    by_lists = make("attention", student_layers=["a", "b"], teacher_layers=["x", "y"])
    assert by_pairs.student_layers == ("a", "b") and by_pairs.teacher_layers == ("x", "y")
    assert by_pairs(batch).item() == pytest.approx(expected, rel=1e-5)
    assert by_lists(batch).item() == pytest.approx(expected, rel=1e-5)


def test_attention_pools_the_larger_attention_map_to_the_smaller():
    student, teacher = features(0, 2, 4, 2, 2), features(1, 2, 6, 4, 4)
    teacher_energy = (teacher**2).mean(dim=1).reshape(2, 2, 2, 2, 2).mean(dim=(2, 4))  # 4x4 -> 2x2 blocks
    qs = torch.nn.functional.normalize((student**2).mean(dim=1).flatten(1), dim=1)
    qt = torch.nn.functional.normalize(teacher_energy.flatten(1), dim=1)
    expected = (qs - qt).norm(dim=1).mean().item()
    loss = make("attention", pairs=["s:t"])
    assert loss(inputs(student_features={"s": student}, teacher_features={"t": teacher})).item() == pytest.approx(expected, rel=1e-5)


# ---- gradients -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_gradient_reaches_student_tensors_and_adapters_but_never_teacher_tensors(name):
    options = {"hint": {"student_layer": "s", "teacher_layer": "t"}, "attention": {"pairs": ["s:t"]}}.get(name, {})
    loss = make(name, **options)
    student_logits = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    student_map = features(0, 2, 3, 4, 4).requires_grad_()
    teacher_logits = [torch.tensor(TEACHER_LOGITS, requires_grad=True), torch.tensor(SECOND_TEACHER, requires_grad=True)]
    teacher_map = features(1, 2, 5, 4, 4).requires_grad_()
    loss.setup({"s": student_map.shape}, {"t": teacher_map.shape})
    batch = DistillInputs(student_logits, torch.tensor([1, 2]), teacher_logits, 2.0, {"s": student_map}, {"t": teacher_map})
    loss(batch).backward()
    assert all(t.grad is None for t in [*teacher_logits, teacher_map])
    student_grads = [g for g in (student_logits.grad, student_map.grad) if g is not None]
    assert student_grads and all(g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert (name == "hint") == bool(list(loss.parameters()))


# ---- hooks and adapters in the loop ----------------------------------------------------------------

def no_hooks_left(model: nn.Module) -> bool:
    return all(not module._forward_hooks for module in model.modules())


def test_capture_features_removes_its_hooks_after_the_block_and_after_an_exception():
    model = build_model(load_workflow(REPO / "workflows" / "digits_hint.yaml").student, (1, 8, 8), 10)
    with capture_features(model, ("features.0", "features.1")) as captured:
        model(torch.zeros(2, 1, 8, 8))
    assert set(captured) == {"features.0", "features.1"} and no_hooks_left(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features(model, ("features.0", "features.1")):
            raise RuntimeError("boom")
    assert no_hooks_left(model)
    with pytest.raises(ConfigError, match="no module named 'features.9'"):
        with capture_features(model, ("features.0", "features.9"), "student layer"):
            pass
    assert no_hooks_left(model)


def student_and_objective(wf, data, teachers: list[nn.Module]) -> tuple[nn.Module, DistillationObjective]:
    """The trial's own construction, in-process: seeded student, then objective (adapters from a dry forward)."""
    torch.manual_seed(0)
    student = build_model(wf.student, data.input_shape, data.num_classes)
    return student, build_objective(wf, student, teachers, data.train.tensors[0][:2])


def run_epoch(wf, data, teachers, student, objective, batch_size: int, samples: int) -> float:
    """`train_epoch` over the first `samples` of the epoch's shuffled shard (a few batches keep tests fast)."""
    optimizer = build_optimizer(wf.training, [*student.parameters(), *objective.parameters()])
    batches = iterate_batches(data.train, train_indices(len(data.train), 0, 0)[:samples], batch_size, CPU)
    return train_epoch(student, teachers, objective, batches, optimizer, Precision("fp32", CPU))


def frozen(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def workflow_teachers(wf, data) -> list[nn.Module]:
    torch.manual_seed(1)
    return [frozen(build_model(t, data.input_shape, data.num_classes, "teacher")) for t in [wf.teacher, *wf.extra_teachers]]


def test_a_student_trained_with_a_hint_loss_exports_no_adapter_parameters():
    wf = load_workflow(REPO / "workflows" / "digits_hint.yaml", {"data.label_fraction": 0.1})
    data = build_data(wf.data)
    teachers = workflow_teachers(wf, data)
    student, objective = student_and_objective(wf, data, teachers)
    adapters_before = [p.detach().clone() for p in objective.parameters()]
    run_epoch(wf, data, teachers, student, objective, 32, 128)
    fresh = build_model(wf.student, data.input_shape, data.num_classes)
    assert set(student.state_dict()) == set(fresh.state_dict())
    assert adapters_before and all(not torch.equal(a, b) for a, b in zip(adapters_before, objective.parameters())), "adapter did not train"
    assert no_hooks_left(student) and all(no_hooks_left(t) for t in teachers)


# ---- shipped workflows -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_method_workflow_names_its_loss_and_trains_an_epoch_in_the_trial_loop(method):
    wf = load_workflow(REPO / "workflows" / f"digits_{method}.yaml", {"data.label_fraction": 0.2})
    assert wf.name == f"digits_{method}"
    assert method in [spec.name for spec in wf.distillation.losses]
    assert (method == "multi_teacher") == bool(wf.extra_teachers)
    data = build_data(wf.data)
    teachers = workflow_teachers(wf, data)
    loss = run_epoch(wf, data, teachers, *student_and_objective(wf, data, teachers), wf.training.batch_size, 96)
    assert math.isfinite(loss) and loss > 0


CIFAR = REPO / "workflows" / "cifar10_resnet50_to_mobilenetv2.yaml"


def test_cifar_workflow_trains_on_generated_32px_images_with_kd_and_hint():
    generated = {"name": "synthetic", "root": None, "options": {"num_samples": 40, "channels": 3, "image_size": 32, "num_classes": 4}}
    wf = load_workflow(CIFAR, {"data": generated})
    assert {spec.name for spec in wf.distillation.losses} == {"kd", "hint"}
    data = build_data(wf.data)
    teachers = workflow_teachers(wf, data)
    student, objective = student_and_objective(wf, data, teachers)
    assert [p.shape for p in objective.parameters()] == [(1024, 32, 1, 1)]  # features.6 (32 ch) -> layer3 (1024 ch)
    assert math.isfinite(run_epoch(wf, data, teachers, student, objective, 4, 8))
    assert set(student.state_dict()) == set(build_model(wf.student, data.input_shape, data.num_classes).state_dict())


def test_cifar_workflow_without_the_files_on_disk_fails_with_a_data_error_naming_data_root(tmp_path: Path):
    wf = load_workflow(CIFAR, {"data.root": str(tmp_path)})
    with pytest.raises(DataError, match=r"^data\.root: CIFAR10 files not found"):
        build_data(wf.data)


FASHION_MNIST = REPO / "workflows" / "fashion_mnist.yaml"


def test_fashion_mnist_workflow_trains_on_tiny_idx_files_and_its_searched_width_changes_the_student(tmp_path: Path):
    write_release(tmp_path / "fmnist", gz=True)
    wf = load_workflow(FASHION_MNIST, {"data.root": str(tmp_path / "fmnist"), "data.val_fraction": 0.2})
    data = build_data(wf.data)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    teachers = workflow_teachers(wf, data)
    student, objective = student_and_objective(wf, data, teachers)
    assert math.isfinite(run_epoch(wf, data, teachers, student, objective, 16, 32))
    params = {width: sum(p.numel() for p in build_model(wf.student.model_copy(update={"options": {**wf.student.options, "width": width}}),
                                                        data.input_shape, 10).parameters()) for width in (0.25, 1.0)}
    assert params[0.25] * 4 < params[1.0]
    teacher_params = sum(p.numel() for p in teachers[0].parameters())
    assert teacher_params > 10 * params[1.0]


def test_every_registered_loss_has_a_shipped_digits_workflow():
    assert sorted(LOSSES.names()) == sorted(METHODS)
    assert all((REPO / "workflows" / f"digits_{m}.yaml").is_file() for m in LOSSES.names())
