"""QAT: b-bit weight grid per channel, straight-through gradients, 8-bit activations frozen in eval."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.quantize import INPUT_QUANT, ActivationFQ, QuantizationAwareTraining, WeightFQ, trained_input_ranges
from lepton_ray.config import CompressionConfig, PruningConfig, QuantizationConfig
from lepton_ray.compress.cost import weight_tensors
from lepton_ray.errors import ConfigError
from lepton_ray.models.zoo import cnn_small

SHAPE = (1, 8, 8)


def _enabled(module: nn.Module) -> nn.Module:
    module.enabled = True
    return module


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
def test_fake_quantized_weight_has_at_most_2_pow_b_distinct_values_per_output_channel(bits):
    weight = torch.randn(6, 40, 3, 3) * torch.linspace(0.01, 3.0, 6)[:, None, None, None]
    quantized = _enabled(WeightFQ(bits))(weight)
    for channel, original in zip(quantized, weight):
        assert len(torch.unique(channel)) <= 2**bits - 1
        qmax = 2 ** (bits - 1) - 1
        scale = original.abs().max() / qmax
        codes = channel / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3), "values are integer multiples of max|w_c| / (2^(b-1)-1)"
        assert codes.abs().max() <= qmax + 1e-3
        assert (channel - original).abs().max() <= scale / 2 + 1e-6


def test_weight_fake_quant_gradient_is_straight_through():
    weight = torch.randn(4, 9, requires_grad=True)
    upstream = torch.randn(4, 9)
    (_enabled(WeightFQ(4))(weight) * upstream).sum().backward()
    assert torch.allclose(weight.grad, upstream)


def test_all_zero_channel_stays_zero_without_nan():
    weight = torch.randn(3, 5)
    weight[1] = 0
    quantized = _enabled(WeightFQ(4))(weight)
    assert torch.isfinite(quantized).all() and torch.equal(quantized[1], torch.zeros(5))


def test_activation_fake_quant_tracks_range_in_training_and_freezes_in_eval():
    quant = _enabled(ActivationFQ(8))
    first = torch.linspace(-1.0, 3.0, 1000)
    out = quant.train()(first)
    assert (quant.min_val.item(), quant.max_val.item()) == (-1.0, 3.0)
    assert len(torch.unique(out)) <= 256
    assert (out - first).abs().max() <= 4.0 / 255 / 2 + 1e-6
    quant(first * 2)
    assert quant.max_val.item() == pytest.approx(3.0 + 0.01 * (6.0 - 3.0))
    frozen = quant.min_val.clone(), quant.max_val.clone()
    quant.eval()(first * 10)
    assert (quant.min_val, quant.max_val) == frozen


def test_disabled_fake_quant_is_the_identity():
    weight = torch.randn(4, 9)
    assert torch.equal(WeightFQ(4)(weight), weight)
    assert torch.equal(ActivationFQ(8).train()(weight), weight)


def test_qat_switches_on_at_start_epoch_and_puts_layer_inputs_on_an_8_bit_grid():
    torch.manual_seed(0)
    model = cnn_small(SHAPE, 10, channels=[8, 16])
    compression = Compression(CompressionConfig(quantization=QuantizationConfig(bits=4, start_epoch=2)), 4)
    model = compression.prepare(model, torch.randn(2, *SHAPE))
    seen_inputs = []
    model.classifier[1].register_forward_hook(lambda _m, args, _o: seen_inputs.append(args[0]))
    compression.on_epoch_start(model, 1)
    model.train()(torch.randn(32, *SHAPE))
    assert len(torch.unique(seen_inputs[-1])) > 256 and not compression.is_final(1)
    compression.on_epoch_start(model, 2)
    model(torch.randn(32, *SHAPE))
    assert len(torch.unique(seen_inputs[-1])) <= 256 and compression.is_final(2)
    for weight in weight_tensors(model):
        assert all(len(torch.unique(channel)) <= 15 for channel in weight)


def test_mask_then_quant_keeps_pruned_zeros_exactly_zero():
    torch.manual_seed(0)
    model = cnn_small(SHAPE, 10, channels=[8, 16])
    cfg = CompressionConfig(pruning=PruningConfig(sparsity=0.7, end_epoch=0), quantization=QuantizationConfig(bits=4, start_epoch=0))
    compression = Compression(cfg, 2)
    model = compression.prepare(model, torch.randn(2, *SHAPE))
    compression.on_epoch_start(model, 0)
    masks = [layer.parametrizations.weight[0].mask for layer in model.modules() if hasattr(layer, "parametrizations")]
    for mask, weight in zip(masks, weight_tensors(model)):
        assert torch.equal(weight[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_default_qat_start_is_two_thirds_of_the_epochs():
    compression = Compression(CompressionConfig(quantization=QuantizationConfig(bits=7)), 8)
    assert [compression.is_final(epoch) for epoch in range(8)] == [False] * 5 + [True] * 3


def test_qat_start_past_the_run_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="compression.quantization.start_epoch"):
        Compression(CompressionConfig(quantization=QuantizationConfig(bits=7, start_epoch=5)), 5)


def test_trained_input_ranges_are_the_observers_of_layers_that_saw_data_and_empty_for_a_float_student():
    model = cnn_small(SHAPE, 3)
    assert trained_input_ranges(model) == {}
    qat = QuantizationAwareTraining(QuantizationConfig(bits=4), epochs=3)
    qat.prepare(model, torch.zeros(2, *SHAPE))
    qat.on_epoch_start(model, 2)
    assert trained_input_ranges(model) == {}, "no observer has seen data yet"
    model.train()(torch.randn(4, *SHAPE))
    observers = {name: getattr(layer, INPUT_QUANT) for name, layer in model.named_modules() if hasattr(layer, INPUT_QUANT)}
    assert trained_input_ranges(model) == {name: (q.min_val.item(), q.max_val.item()) for name, q in observers.items()}
    assert len(observers) == 3 and trained_input_ranges(qat.finalize(model)) == {}
