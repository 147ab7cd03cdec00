"""Cost figures of a (compressed) student: parameters, stored size, MACs, BOPs, ONNX Runtime latency.

Pure torch + ONNX Runtime, no Ray or MLflow. MACs are measured with torch's FlopCounterMode
(conv and matmul), not a per-layer formula, so new layer types are counted without code here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lepton_ray import metrics
from lepton_ray.compress.layers import weight_layers
from lepton_ray.export.onnx_graph import INPUT_NAME, export_fp32_onnx

FLOAT_BITS = 32
LATENCY_WARMUP = 5
LATENCY_REPEATS = 30
"""Timed runs per batch size; the median over them is robust to the odd scheduler hiccup."""


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
    return [layer.weight for _, layer in weight_layers(model)]


def stored_weight_bits(weight: torch.Tensor, bits: int) -> int:
    """Bits to store one conv/linear weight tensor at `bits` per value.

    Format: dense (every value at `bits`) or, when smaller, a bitmap (1 bit per weight) plus the
    non-zeros at `bits`. Below 32 bits each output channel adds one fp32 scale.
    """
    numel = weight.numel()
    nonzero = int(torch.count_nonzero(weight))
    scale_bits = weight.shape[0] * FLOAT_BITS if bits < FLOAT_BITS else 0
    return min(numel * bits, numel + nonzero * bits) + scale_bits


def _other_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Biases and every parameter outside conv/linear layers (norms); a parametrized weight's original is not one."""
    layer_ids = {id(p) for _, layer in weight_layers(model) for p in layer.parameters()}
    biases = [layer.bias for _, layer in weight_layers(model) if layer.bias is not None]
    return [p for p in model.parameters() if id(p) not in layer_ids] + biases


def static_cost(model: nn.Module, input_shape: tuple[int, ...], weight_bits: int = FLOAT_BITS, activation_bits: int = FLOAT_BITS) -> dict[str, float]:
    """Params, non-zeros, sparsity, size in bytes, MACs and BOPs of `model` as it would be stored and run.

    Size: conv/linear weights as `stored_weight_bits`; every other parameter (biases, norms) at
    32 bits; buffers (BatchNorm running statistics) are not counted, they fold into the conv at export. Sparsity is over conv/linear weights. BOPs = MACs * weight_bits * activation_bits * density.
    """
    weights = weight_tensors(model)
    other = _other_parameters(model)
    weight_count = sum(w.numel() for w in weights)
    weight_nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    other_count = sum(p.numel() for p in other)
    density = weight_nonzero / weight_count if weight_count else 1.0
    size_bits = sum(stored_weight_bits(w, weight_bits) for w in weights) + other_count * FLOAT_BITS
    macs = count_macs(model, input_shape)
    return {
        metrics.PARAMS: weight_count + other_count,
        metrics.NONZERO_PARAMS: weight_nonzero + other_count,
        metrics.SPARSITY: 1.0 - density,
        metrics.BITS: weight_bits,
        metrics.SIZE_BYTES: size_bits / 8,
        metrics.MACS: macs,
        metrics.BOPS: macs * weight_bits * activation_bits * density,
    }


def measure_latency_ms(onnx_path: Path, input_shape: tuple[int, ...], batch_size: int, repeats: int = LATENCY_REPEATS) -> tuple[float, float]:
    """(batch-1, batch-`batch_size`) median milliseconds per run in ONNX Runtime (CPU, default threads), after warm-up."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    medians = []
    for batch in (1, batch_size):
        feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)}
        for _ in range(LATENCY_WARMUP):
            session.run(None, feed)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            timings.append((time.perf_counter() - start) * 1000.0)
        medians.append(statistics.median(timings))
    return medians[0], medians[1]


def trial_cost(
    model: nn.Module, input_shape: tuple[int, ...], weight_bits: int, activation_bits: int, latency_batch_size: int | None,
    shipped_onnx: Callable[[Path], Path] | None = None,
) -> dict[str, float]:
    """All cost figures of a finalized student, keyed by metric name, with its ONNX Runtime latency when a
    batch size is given: of the graph `shipped_onnx(folder)` writes (the int8 export of a quantized
    student), else of its fp32 ONNX."""
    cost = static_cost(model, input_shape, weight_bits, activation_bits)
    if latency_batch_size is None:
        return cost
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = shipped_onnx(Path(folder)) if shipped_onnx else export_fp32_onnx(model, input_shape, Path(folder) / "student.onnx")
        latency_ms, latency_batch_ms = measure_latency_ms(onnx_path, input_shape, latency_batch_size)
    return {**cost, metrics.LATENCY_MS: latency_ms, metrics.LATENCY_BATCH_MS: latency_batch_ms}
