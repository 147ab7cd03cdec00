"""Losses on intermediate features of the student and the primary teacher, picked by module name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lepton_ray.errors import ConfigError
from lepton_ray.distill.losses.base import DistillationLoss, DistillInputs, LOSSES


def pool_to(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of a (batch, channels, h, w) map down to `size`; a no-op when it already fits."""
    return features if tuple(features.shape[-2:]) == size else F.adaptive_avg_pool2d(features, size)


def smaller_size(first: torch.Size, second: torch.Size) -> tuple[int, int]:
    """The common spatial size two 4D maps are pooled to: the smaller height and the smaller width."""
    return min(first[-2], second[-2]), min(first[-1], second[-1])


@LOSSES.register("hint")
class HintMSE(DistillationLoss):
    """FitNets (Romero et al., ICLR 2015): mean over elements of (r(s) - t)^2 on one layer pair.

    s, t: the outputs of modules `student_layer` and `teacher_layer`. r is a learned adapter, built
    in `setup` only when the feature sizes differ: a 1x1 conv (4D maps) or a linear layer (2D vectors, or
    3D token features (N, L, D) of the same length L: on D), student width -> teacher width. The paper's regressor is a conv; we use 1x1 because it adds the
    fewest parameters. Maps of different spatial size are both adaptive-average-pooled to the
    smaller height and width before the adapter. The paper's 1/2 * squared L2 sum becomes a mean, so
    the weight does not scale with the map size. The adapter trains with the student and is not exported.
    """

    def __init__(self, student_layer: str, teacher_layer: str) -> None:
        super().__init__()
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.adapter: nn.Module = nn.Identity()
        self.size: tuple[int, int] | None = None

    def setup(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        student, teacher = student_shapes[self.student_layers[0]], teacher_shapes[self.teacher_layers[0]]
        tokens = len(student) == len(teacher) == 3
        if len(student) != len(teacher) or len(student) not in (2, 3, 4) or (tokens and student[1] != teacher[1]):
            raise ConfigError(
                f"{self.field}.options: hint needs two 4D maps, two 2D vectors or two 3D token features of the same length, got student "
                f"{list(student)} and teacher {list(teacher)}; pick layers of the same kind"
            )
        if len(student) == 4:
            self.size = smaller_size(student, teacher)
        if student[-1 if tokens else 1] != teacher[-1 if tokens else 1]:
            self.adapter = nn.Conv2d(student[1], teacher[1], 1, bias=False) if len(student) == 4 else nn.Linear(student[-1], teacher[-1])

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student = inputs.student_features[self.student_layers[0]]
        teacher = inputs.teacher_features[self.teacher_layers[0]]
        if self.size is not None:
            student, teacher = pool_to(student, self.size), pool_to(teacher, self.size)
        return F.mse_loss(self.adapter(student).float(), teacher.float())


def attention_map(features: torch.Tensor, power: float, size: tuple[int, int]) -> torch.Tensor:
    """Q = vec(mean_c |A_c|^p) pooled to `size`, divided by its L2 norm: (batch, h*w)."""
    energy = features.float().abs().pow(power).mean(dim=1, keepdim=True)
    return F.normalize(pool_to(energy, size).flatten(1), dim=1)


def layer_pairs(pairs: list[str] | None, student_layers: list[str] | None, teacher_layers: list[str] | None) -> list[tuple[str, str]]:
    """Layer pairs from `pairs: ["s:t", ...]` or from two equal-length lists (exactly one form)."""
    if pairs is not None and (student_layers is not None or teacher_layers is not None):
        raise ValueError("pairs: give either pairs or student_layers + teacher_layers, not both")
    if pairs is not None:
        split = [pair.split(":") for pair in pairs]
        if not split or any(len(parts) != 2 or not all(parts) for parts in split):
            raise ValueError(f"pairs: expected a non-empty list of 'student_layer:teacher_layer', got {pairs}")
        return [(student, teacher) for student, teacher in split]
    if not student_layers or teacher_layers is None or len(student_layers) != len(teacher_layers):
        raise ValueError("student_layers: give pairs, or student_layers and teacher_layers of the same non-zero length")
    return list(zip(student_layers, teacher_layers))


@LOSSES.register("attention")
class AttentionTransfer(DistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, eq. 2): mean over pairs of ||Q_s - Q_t||_2, batch mean.

    Q = vec(F(A)) / ||vec(F(A))||_2 with F(A) = mean_c |A_c|^p, p = 2 (the paper's sum over channels;
    the mean only rescales, and the normalisation cancels it). The distance is the paper's p=2 norm,
    not squared; the paper's beta/2 (and its sum over pairs) is left to this loss's `weight`. The
    authors' code uses the squared distance averaged over positions with beta = 1000 instead. Maps of
    different spatial size are adaptive-average-pooled to the smaller one before normalising;
    channel counts may differ, so no adapter is needed.
    """

    def __init__(
        self,
        pairs: list[str] | None = None,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
        p: float = 2.0,
    ) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p: must be > 0, got {p}")
        self.pairs = layer_pairs(pairs, student_layers, teacher_layers)
        self.student_layers = tuple(student for student, _ in self.pairs)
        self.teacher_layers = tuple(teacher for _, teacher in self.pairs)
        self.power = p

    def setup(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for student, teacher in self.pairs:
            if len(student_shapes[student]) != 4 or len(teacher_shapes[teacher]) != 4:
                raise ConfigError(
                    f"{self.field}.options: attention needs 4D feature maps, got {student!r} {list(student_shapes[student])} "
                    f"and {teacher!r} {list(teacher_shapes[teacher])}; pick convolutional layers (for token features (N, L, D) use hint)"
                )

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        distances = []
        for student_name, teacher_name in self.pairs:
            student, teacher = inputs.student_features[student_name], inputs.teacher_features[teacher_name]
            size = smaller_size(student.shape, teacher.shape)
            difference = attention_map(student, self.power, size) - attention_map(teacher, self.power, size)
            distances.append(difference.norm(dim=1).mean())
        return torch.stack(distances).mean()
