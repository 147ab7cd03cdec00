"""Cost figures against hand computations on tiny models, and ONNX Runtime latency of the fp32 export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lepton_ray import metrics
from lepton_ray.compress.pipeline import Compression
from lepton_ray.config import CompressionConfig, PruningConfig
from lepton_ray.compress.cost import count_macs, measure_latency_ms, static_cost, trial_cost
from lepton_ray.export.onnx_graph import INPUT_NAME, export_fp32_onnx

SHAPE = (2, 5, 5)
CONV_WEIGHTS, LINEAR_WEIGHTS, BIASES, OUT_CHANNELS = 4 * 2 * 3 * 3, 100 * 3, 4 + 3, 4 + 3


def _tiny() -> nn.Sequential:
    """Conv 2->4 (3x3, same padding) on 5x5, then Linear 100->3."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(100, 3))


def test_macs_of_conv_and_linear_equal_the_hand_formula():
    conv_macs = (4 * 5 * 5) * (2 * 3 * 3)
    linear_macs = 100 * 3
    assert count_macs(_tiny(), SHAPE) == conv_macs + linear_macs


def test_dense_fp32_size_is_four_bytes_per_parameter():
    cost = static_cost(_tiny(), SHAPE)
    assert cost[metrics.PARAMS] == CONV_WEIGHTS + LINEAR_WEIGHTS + BIASES
    assert cost[metrics.SIZE_BYTES] == 4 * (CONV_WEIGHTS + LINEAR_WEIGHTS + BIASES)
    assert cost[metrics.SPARSITY] == 0.0


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_size_counts_weights_at_b_bits_plus_one_fp32_scale_per_channel(bits):
    expected_bits = (CONV_WEIGHTS + LINEAR_WEIGHTS) * bits + OUT_CHANNELS * 32 + BIASES * 32
    assert static_cost(_tiny(), SHAPE, weight_bits=bits)[metrics.SIZE_BYTES] == expected_bits / 8


def test_size_at_4_bits_is_about_half_of_8_bits_when_weights_dominate():
    model = nn.Sequential(nn.Flatten(), nn.Linear(50, 512, bias=False), nn.Linear(512, 256, bias=False))
    ratio = static_cost(model, SHAPE, weight_bits=4)[metrics.SIZE_BYTES] / static_cost(model, SHAPE, weight_bits=8)[metrics.SIZE_BYTES]
    assert ratio == pytest.approx(0.5, abs=0.02)


def test_sparse_tensor_is_stored_as_bitmap_plus_nonzeros_only_when_that_is_smaller():
    model = _tiny()
    with torch.no_grad():
        model[3].weight.view(-1)[::2] = 0.0
        model[0].weight.view(-1)[::10] = 0.0
    linear_nonzero = LINEAR_WEIGHTS // 2
    conv_nonzero = CONV_WEIGHTS - math.ceil(CONV_WEIGHTS / 10)
    linear_bits = min(LINEAR_WEIGHTS * 8, LINEAR_WEIGHTS + linear_nonzero * 8)
    conv_bits = min(CONV_WEIGHTS * 8, CONV_WEIGHTS + conv_nonzero * 8)
    assert (linear_bits, conv_bits) == (LINEAR_WEIGHTS + linear_nonzero * 8, CONV_WEIGHTS * 8)
    cost = static_cost(model, SHAPE, weight_bits=8, activation_bits=8)
    assert cost[metrics.SIZE_BYTES] == (linear_bits + conv_bits + OUT_CHANNELS * 32 + BIASES * 32) / 8
    density = (linear_nonzero + conv_nonzero) / (LINEAR_WEIGHTS + CONV_WEIGHTS)
    assert cost[metrics.SPARSITY] == pytest.approx(1 - density)
    assert cost[metrics.NONZERO_PARAMS] == linear_nonzero + conv_nonzero + BIASES
    assert cost[metrics.BOPS] == pytest.approx(count_macs(model, SHAPE) * 8 * 8 * density)


def test_parametrized_student_costs_the_same_as_its_finalized_copy():
    compression = Compression(CompressionConfig(pruning=PruningConfig(sparsity=0.5)), 1)
    model = compression.prepare(_tiny(), torch.randn(2, *SHAPE))
    compression.on_epoch_start(model, 0)
    live = static_cost(model, SHAPE, weight_bits=8, activation_bits=8)
    assert live == static_cost(compression.finalize(model), SHAPE, weight_bits=8, activation_bits=8)
    assert live[metrics.PARAMS] == CONV_WEIGHTS + LINEAR_WEIGHTS + BIASES
    assert live[metrics.SPARSITY] == pytest.approx(0.5, abs=0.01)


def test_fp32_onnx_export_has_a_dynamic_batch_and_matches_torch(tmp_path):
    import onnxruntime as ort

    model = _tiny().eval()
    session = ort.InferenceSession(str(export_fp32_onnx(model, SHAPE, tmp_path / "tiny.onnx")), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = torch.randn(batch, *SHAPE)
        (logits,) = session.run(None, {INPUT_NAME: images.numpy()})
        np.testing.assert_allclose(logits, model(images).detach().numpy(), atol=1e-5)


def test_latency_is_measured_for_batch_1_and_batch_n(tmp_path):
    onnx_path = export_fp32_onnx(_tiny(), SHAPE, tmp_path / "tiny.onnx")
    single, batched = measure_latency_ms(onnx_path, SHAPE, batch_size=16, repeats=5)
    assert 0 < single < 1000 and 0 < batched < 1000


def test_trial_cost_reports_every_cost_metric_and_times_only_when_asked():
    with_latency = trial_cost(_tiny(), SHAPE, weight_bits=4, activation_bits=8, latency_batch_size=8)
    wanted = {metrics.PARAMS, metrics.NONZERO_PARAMS, metrics.SPARSITY, metrics.BITS, metrics.SIZE_BYTES, metrics.MACS, metrics.BOPS}
    assert set(with_latency) == wanted | {metrics.LATENCY_MS, metrics.LATENCY_BATCH_MS}
    assert with_latency[metrics.BITS] == 4
    assert set(trial_cost(_tiny(), SHAPE, 4, 8, latency_batch_size=None)) == wanted
