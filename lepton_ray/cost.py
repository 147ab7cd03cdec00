"""Cost figures of a (compressed) student: parameters, stored size, MACs, BOPs.

Pure torch, no Ray or MLflow. MACs are measured with torch's FlopCounterMode (conv and matmul),
not a per-layer formula, so new layer types are counted without code here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lepton_ray import metrics


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a single sample (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *input_shape), device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Weights of conv and linear layers: what pruning and quantization act on."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def static_cost(model: nn.Module, input_shape: tuple[int, ...], weight_bits: int = 32, activation_bits: int = 32) -> dict[str, float]:
    """Params, non-zeros, size in bytes at `weight_bits` (zeros of sparse weights are not stored), MACs, BOPs.

    Size counts conv/linear weights at `weight_bits` (non-zeros only, plus one bit per weight of
    sparsity mask when sparse) and every other parameter at 32 bits.
    BOPs = MACs * weight_bits * activation_bits * density.
    """
    weights = weight_tensors(model)
    weight_ids = {id(w) for w in weights}
    params = sum(p.numel() for p in model.parameters())
    weight_count = sum(w.numel() for w in weights)
    weight_nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    other = sum(p.numel() for p in model.parameters() if id(p) not in weight_ids)
    density = weight_nonzero / weight_count if weight_count else 1.0
    mask_bits = weight_count if density < 1.0 else 0
    size_bits = weight_nonzero * weight_bits + mask_bits + other * 32
    macs = count_macs(model, input_shape)
    return {
        metrics.PARAMS: params,
        metrics.NONZERO_PARAMS: weight_nonzero + other,
        metrics.SPARSITY: 1.0 - density,
        metrics.BITS: weight_bits,
        metrics.SIZE_BYTES: size_bits / 8,
        metrics.MACS: macs,
        metrics.BOPS: macs * weight_bits * activation_bits * density,
    }
