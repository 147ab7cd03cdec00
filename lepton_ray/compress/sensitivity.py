"""Per-layer sensitivity profile (issue 33): how far the student's outputs move when only one conv/linear layer is
compressed to a candidate setting (bits x sparsity), the rest as trained; with that layer's stored bytes.

The estimator is post-training perturbation, the cheapest sound one: one copy of the trained student per (layer,
setting), that layer's weights pruned to the sparsity (smallest |w| within the layer) and put on the b-bit grid the
QAT trains on (`WeightFQ`: symmetric per channel, ternary at 2 bits), the caller's settle step run (in a trial:
BatchNorm re-estimated on training batches), then the mean KL divergence of its validation outputs from the
unperturbed student's. KL to the student's own
outputs, not the loss against labels: it is 0 for a layer the setting leaves alone and does not depend on how
often the student was right. Cost: layers x settings forwards of the validation split and of the re-estimation
batches, no backward pass (a Hessian trace as in HAWQ needs several backward passes per layer).
"""

from __future__ import annotations

import copy
from itertools import product
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lepton_ray.compress.allocation import LayerOption
from lepton_ray.compress.cost import stored_weight_bits
from lepton_ray.compress.layers import weight_layers
from lepton_ray.compress.quantize import WeightFQ

CANDIDATE_BITS = (2, 4, 7)
CANDIDATE_SPARSITY = (0.0, 0.5, 0.8)


def compressed_weight(weight: torch.Tensor, bits: int, sparsity: float) -> torch.Tensor:
    """`weight` with its `sparsity` fraction of smallest |w| set to 0, then on the b-bit QAT grid."""
    pruned = weight.detach().clone()
    count = round(sparsity * pruned.numel())
    if count:
        pruned.view(-1)[torch.topk(pruned.abs().flatten(), count, largest=False).indices] = 0.0
    grid = WeightFQ(bits)
    grid.enabled = True
    return grid(pruned)


def layer_bytes(weight: torch.Tensor, bits: int) -> float:
    """Bytes the layer's weights take stored at `bits` (`compress/cost.py: stored_weight_bits`, zeros as a bitmap when smaller)."""
    return stored_weight_bits(weight, bits) / 8


def output_shift(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(reference || perturbed) over the samples, from logits."""
    return float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean"))


@torch.no_grad()
def validation_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[start:start + batch_size]) for start in range(0, len(images), batch_size)])


def sensitivity_profile(
    student: nn.Module, val_images: torch.Tensor, settle: Callable[[nn.Module], object],
    bits: Iterable[int] = CANDIDATE_BITS, sparsities: Iterable[float] = CANDIDATE_SPARSITY,
) -> dict[str, list[LayerOption]]:
    """Every conv/linear layer of `student` (by module name) with one `LayerOption` per (bits, sparsity): its setting,
    its bytes at that setting and the output shift when only it is compressed. `settle(probe)` runs after each
    compression, before the outputs are read (the trial passes BatchNorm re-estimation on its training batches).
    `student` is left as it was."""
    reference = validation_logits(student, val_images)
    profile: dict[str, list[LayerOption]] = {}
    for name, _ in weight_layers(student):
        options = []
        for width, sparsity in product(bits, sparsities):
            probe = copy.deepcopy(student)
            layer = dict(weight_layers(probe))[name]
            with torch.no_grad():
                layer.weight.copy_(compressed_weight(layer.weight, width, sparsity))
            settle(probe)
            options.append(LayerOption({"bits": width, "sparsity": sparsity}, layer_bytes(layer.weight, width),
                                       output_shift(reference, validation_logits(probe, val_images))))
        profile[name] = options
    return profile
