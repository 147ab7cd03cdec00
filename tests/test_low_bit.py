"""Binary (1-bit) and ternary (2-bit) weights: trained with a straight-through gradient, first and last layers wider,
exported exactly onto the int8 grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.quantize import TERNARY_THRESHOLD, WeightFQ, binary_weight, ternary_weight
from lepton_ray.compress.layers import weight_layers
from lepton_ray.config import CompressionConfig, QuantizationConfig
from lepton_ray.export.int8 import export_int8, int8_weights
from lepton_ray.models.zoo import cnn_small

SHAPE = (1, 8, 8)


def test_binary_weights_are_plus_or_minus_the_channels_mean_magnitude():
    weight = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    binary = binary_weight(weight)
    for channel in range(5):
        alpha = weight[channel].abs().mean().item()
        assert binary[channel].unique().tolist() == pytest.approx([-alpha, alpha])
    assert torch.equal(torch.sign(binary), torch.sign(weight))


def test_ternary_weights_zero_the_small_ones_and_keep_the_mean_of_the_rest():
    weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    ternary = ternary_weight(weight)
    for channel in range(5):
        row, kept = weight[channel], weight[channel].abs() > TERNARY_THRESHOLD * weight[channel].abs().mean()
        alpha = row.abs()[kept].mean().item()
        assert torch.equal(ternary[channel] == 0, ~kept)
        assert ternary[channel].unique().tolist() == pytest.approx([-alpha, 0.0, alpha])


@pytest.mark.parametrize("bits", [1, 2])
def test_the_gradient_passes_straight_through_and_pruned_zeros_stay_zero(bits):
    quant = WeightFQ(bits)
    quant.enabled = True
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    weight[:, :2] = 0.0
    weight.requires_grad_()
    quant(weight).mul(torch.arange(24.0).view(4, 6)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(24.0).view(4, 6))
    assert (quant(weight.detach())[:, :2] == 0).all()


def _finalized(bits: int, end_layer_bits: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CompressionConfig.model_validate({"quantization": {"bits": bits, "end_layer_bits": end_layer_bits}})
    compression = Compression(config, 3)
    model = compression.prepare(cnn_small(SHAPE, 10, channels=[8, 16], hidden=16), torch.randn(2, *SHAPE))
    for epoch in range(3):
        compression.on_epoch_start(model, epoch)
    model(torch.randn(16, *SHAPE))  # the activation observers see data
    return compression.finalize(model.eval())


@pytest.mark.parametrize(("bits", "values"), [(1, 2), (2, 3)])
def test_the_int8_file_holds_exactly_two_or_three_values_per_channel_and_wider_end_layers(tmp_path, bits, values):
    student = _finalized(bits)
    names = [f"{name}.weight" for name, _ in weight_layers(student)]
    files = export_int8(student, SHAPE, torch.randn(32, *SHAPE), bits, tmp_path)  # raises unless every weight is exactly on the grid
    weights = int8_weights(files.int8)
    for name in names[1:-1]:
        codes, _, axis = weights[name]
        per_channel = np.moveaxis(codes, axis, 0).reshape(codes.shape[axis], -1)
        assert {len(np.unique(row)) for row in per_channel} == {values}, name
        assert set(np.unique(per_channel).tolist()) <= {-63, 0, 63}
    for name in (names[0], names[-1]):
        assert len(np.unique(weights[name][0])) > 3, f"{name}: kept at 7 bits"


def test_end_layer_bits_makes_the_ends_as_narrow_as_the_rest_and_is_only_for_low_bit_students():
    student = _finalized(1, end_layer_bits=1)
    first = next(layer for _, layer in weight_layers(student)).weight
    assert {len(row.unique()) for row in first.flatten(1)} == {2}
    with pytest.raises(ValidationError, match="end_layer_bits is for binary or ternary students"):
        QuantizationConfig(bits=4, end_layer_bits=7)
    with pytest.raises(ValidationError):
        QuantizationConfig(bits=3)
    assert QuantizationConfig(bits=2).layer_bits == (7, 2) and QuantizationConfig(bits=5).layer_bits == (5, 5)
