"""Estimated cost figures against hand computations on tiny models; figures measured on int8 ONNX files."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from torch import nn

from lepton_ray import metrics
from lepton_ray.compress.pipeline import Compression
from lepton_ray.config import CompressionConfig, DataConfig, ModelSpec, PruningConfig
from lepton_ray.compress.cost import count_macs, static_cost
from lepton_ray.export.shipped_cost import file_cost, latency_cost, median_and_iqr, shipped_cost
from lepton_ray.compress.quantize import round_onto_weight_grid
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.export.int8 import calibration_images, export_int8
from lepton_ray.export.onnx_graph import INPUT_NAME, export_fp32_onnx
from lepton_ray.models.zoo import build_model

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


def test_median_and_iqr_of_timings_match_a_hand_computation():
    assert median_and_iqr([4.0, 1.0, 3.0, 2.0, 5.0]) == (3.0, 2.0)  # quartiles 2 and 4 (linear interpolation)


def test_latency_medians_and_spreads_at_batch_1_and_n_are_positive_and_finite(tmp_path):
    onnx_path = export_fp32_onnx(_tiny(), SHAPE, tmp_path / "tiny.onnx")
    latency = latency_cost(onnx_path, SHAPE, batch_size=16, rounds=20, seconds=0.5)
    assert set(latency) == {metrics.LATENCY_MS, metrics.LATENCY_IQR_MS, metrics.LATENCY_BATCH_MS, metrics.LATENCY_BATCH_IQR_MS}
    assert all(math.isfinite(value) and value >= 0 for value in latency.values())
    assert latency[metrics.LATENCY_MS] > 0 and latency[metrics.LATENCY_BATCH_MS] > 0


def test_latency_at_batch_1_only_is_timed_once_per_round(tmp_path):
    latency = latency_cost(export_fp32_onnx(_tiny(), SHAPE, tmp_path / "tiny.onnx"), SHAPE, batch_size=1, rounds=10, seconds=0.1)
    assert latency[metrics.LATENCY_MS] == latency[metrics.LATENCY_BATCH_MS]


def test_file_cost_is_the_files_bytes_and_its_gzip_level_9_bytes(tmp_path):
    path = export_fp32_onnx(_tiny(), SHAPE, tmp_path / "tiny.onnx")
    data = path.read_bytes()
    assert file_cost(path) == {metrics.INT8_FILE_BYTES: len(data), metrics.INT8_GZIP_BYTES: len(gzip.compress(data, compresslevel=9, mtime=0))}


# ---- what the int8 file a student ships as costs, measured ------------------------------------

@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return build_data(DataConfig())


def int8_file_cost(model: nn.Module, digits: DataSplits, weight_bits: int, folder) -> dict[str, float]:
    """Export as a trial does (64 calibration images) and measure the file."""
    files = export_int8(model.eval(), digits.input_shape, calibration_images(digits.train, 64, 0), weight_bits, folder)
    return shipped_cost(files.int8, digits.input_shape, latency_batch_size=8)


def cnn(digits: DataSplits, channels: list[int]) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(name="cnn_small", options={"channels": channels}), digits.input_shape, digits.num_classes)


@pytest.fixture(scope="module")
def dense_cost(digits, tmp_path_factory) -> dict[str, float]:
    return int8_file_cost(cnn(digits, [16, 32]), digits, 32, tmp_path_factory.mktemp("dense"))


def test_unstructured_sparsity_at_the_same_width_keeps_the_int8_file_bytes_and_lowers_its_gzip_bytes(digits, dense_cost, tmp_path):
    compression = Compression(CompressionConfig(pruning=PruningConfig(sparsity=0.6)), 1)
    model = compression.prepare(cnn(digits, [16, 32]), digits.train.tensors[0][:2])
    compression.on_epoch_start(model, 0)
    sparse = compression.finalize(model)
    assert static_cost(sparse, digits.input_shape)[metrics.SPARSITY] == pytest.approx(0.6, abs=0.01)
    sparse_cost = int8_file_cost(sparse, digits, 32, tmp_path)
    assert sparse_cost[metrics.INT8_FILE_BYTES] == dense_cost[metrics.INT8_FILE_BYTES]
    assert sparse_cost[metrics.INT8_GZIP_BYTES] < 0.85 * dense_cost[metrics.INT8_GZIP_BYTES]


def test_a_4bit_grid_keeps_the_int8_file_bytes_of_a_7bit_grid_and_lowers_its_gzip_bytes(digits, tmp_path):
    costs = {bits: int8_file_cost(round_onto_weight_grid(cnn(digits, [16, 32]), bits), digits, bits, tmp_path / str(bits)) for bits in (4, 7)}
    assert costs[4][metrics.INT8_FILE_BYTES] == costs[7][metrics.INT8_FILE_BYTES]
    assert costs[4][metrics.INT8_GZIP_BYTES] < 0.85 * costs[7][metrics.INT8_GZIP_BYTES]


def test_a_narrower_student_has_a_smaller_int8_file(digits, dense_cost, tmp_path):
    narrow_cost = int8_file_cost(cnn(digits, [8, 16]), digits, 32, tmp_path)
    assert narrow_cost[metrics.INT8_FILE_BYTES] < 0.7 * dense_cost[metrics.INT8_FILE_BYTES]
    assert narrow_cost[metrics.INT8_GZIP_BYTES] < dense_cost[metrics.INT8_GZIP_BYTES]
