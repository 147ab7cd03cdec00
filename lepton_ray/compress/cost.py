"""Cost figures of a (compressed) student estimated from the torch module (measured ones: `export/shipped_cost.py`).

Estimates (`static_cost`): parameters, non-zeros, sparsity, `size_bytes` (weights packed at b bits,
zeros skipped), MACs, BOPs: what the student would cost in a format that packs bits and skips zeros.
The file a student ships as is not such a format: its int8 ONNX file stores every weight as one
byte, so measured figures (`export/shipped_cost.py`) come from that file: its bytes, its gzip bytes, ONNX
Runtime latency. MACs are measured with torch's FlopCounterMode (conv and matmul), not a per-layer
formula, so new layer types are counted without code here. No Ray or MLflow.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lepton_ray import metrics
from lepton_ray.compress.layers import layer_bit_widths, weight_layers
from lepton_ray.compression_config import stored_bits
from lepton_ray.data.inputs import ModelInput, as_model_input

FLOAT_BITS = 32
"""A trial times its file for at most `LATENCY_ROUNDS` rounds or about this long, whichever comes first."""


def count_macs(model: nn.Module, input_shape: ModelInput | tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a single sample (FLOPs / 2); a plain shape is a float input."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(as_model_input(input_shape).example(1, next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Weights of conv and linear layers: what pruning and quantization act on."""
    return [layer.weight for _, layer in weight_layers(model)]


def stored_weight_bits(weight: torch.Tensor, bits: int) -> int:
    """Bits to store one conv/linear weight tensor at `bits` per value.

    Format: dense (every value at `bits`) or, when smaller, a bitmap (1 bit per weight) plus the
    non-zeros at `bits`. Below 32 bits each output channel adds one fp32 scale.
    """
    numel = weight.numel()
    nonzero = int(torch.count_nonzero(weight))
    scale_bits = weight.shape[0] * FLOAT_BITS if bits < FLOAT_BITS else 0
    return int(stored_bits(numel, nonzero, bits)) + scale_bits


def _other_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Biases and every parameter outside conv/linear layers (norms); a parametrized weight's original is not one."""
    layer_ids = {id(p) for _, layer in weight_layers(model) for p in layer.parameters()}
    biases = [layer.bias for _, layer in weight_layers(model) if layer.bias is not None]
    return [p for p in model.parameters() if id(p) not in layer_ids] + biases


def packed_size_bytes(model: nn.Module, weight_bits: int | Sequence[int] = FLOAT_BITS, end_layer_bits: int | None = None) -> float:
    """`size_bytes` alone (no forward pass): conv/linear weights as `stored_weight_bits` at each layer's bits
    (`layer_bit_widths`: one width, or one per layer), every other parameter at 32 bits."""
    weights = weight_tensors(model)
    size_bits = sum(stored_weight_bits(w, bits) for w, bits in zip(weights, layer_bit_widths(len(weights), weight_bits, end_layer_bits)))
    return (size_bits + sum(p.numel() for p in _other_parameters(model)) * FLOAT_BITS) / 8


def static_cost(
    model: nn.Module, input_shape: ModelInput | tuple[int, ...], weight_bits: int | Sequence[int] = FLOAT_BITS, activation_bits: int = FLOAT_BITS,
    end_layer_bits: int | None = None,
) -> dict[str, float]:
    """Estimates: params, non-zeros, sparsity, packed size in bytes, MACs and BOPs of `model` in a format that
    stores `weight_bits` per weight and skips zeros (the int8 file does neither; `shipped_cost` measures it).

    Size: conv/linear weights as `stored_weight_bits`; every other parameter (biases, norms) at
    32 bits; buffers (BatchNorm running statistics) are not counted, they fold into the conv at export. Sparsity is over conv/linear weights. BOPs = MACs * weight_bits * activation_bits * density.
    `end_layer_bits`: the first and last conv/linear layer's bits where they differ (binary and ternary students);
    `weight_bits` may instead be one width per layer. `bits` is then the weights' mean width, weighted by their count.
    """
    weights = weight_tensors(model)
    widths = layer_bit_widths(len(weights), weight_bits, end_layer_bits)
    other = _other_parameters(model)
    weight_count = sum(w.numel() for w in weights)
    weight_nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    other_count = sum(p.numel() for p in other)
    density = weight_nonzero / weight_count if weight_count else 1.0
    macs = count_macs(model, input_shape)
    mean_bits = sum(bits * w.numel() for bits, w in zip(widths, weights)) / weight_count if weight_count else FLOAT_BITS
    return {
        metrics.PARAMS: weight_count + other_count,
        metrics.NONZERO_PARAMS: weight_nonzero + other_count,
        metrics.SPARSITY: 1.0 - density,
        metrics.BITS: weight_bits if isinstance(weight_bits, int) else mean_bits,
        metrics.SIZE_BYTES: packed_size_bytes(model, widths),
        metrics.MACS: macs,
        metrics.BOPS: macs * mean_bits * activation_bits * density,
    }
