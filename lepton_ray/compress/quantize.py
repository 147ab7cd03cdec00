"""Quantization-aware training: b-bit per-channel weights (ternary at 2, binary at 1), 8-bit per-tensor activations, in eager torch.

Why eager fake-quant and not torchao/PT2E (measured in STACK.md): it works on every registry
model (PT2E's X86InductorQuantizer fails on resnet18, torchao's QATConfig is Linear-only,
`torch.ao.quantization` is deprecated), it runs unchanged under DDP (a parametrization and a
forward pre-hook, no graph capture), and weights on the symmetric b-bit grid are exactly
representable in int8, so the int8 ONNX export reproduces the b-bit accuracy.

Everything is installed (disabled) at `prepare`, before DDP wraps the student, so DDP sees the
observer buffers and broadcasts rank 0's ranges; `on_epoch_start` only switches it on.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from lepton_ray.compress.base import Compressor, register_compressor
from lepton_ray.compress.layers import bake_weights, check_layer_names, full_compression_epoch, layer_bit_widths, layer_names, weight_layers
from lepton_ray.config import FLOAT_WEIGHT_BITS, QuantizationConfig
from lepton_ray.errors import ConfigError

_MIN_SCALE = 1e-12
"""Keeps an all-zero channel (fully pruned) from dividing by zero; its codes stay 0."""

OBSERVER_MOMENTUM = 0.01
"""EMA constant of the activation range, as torch.ao's MovingAverageMinMaxObserver uses for QAT."""

INPUT_QUANT = "input_quant"
"""Name of the activation fake-quant submodule added to each conv/linear layer."""


TERNARY_THRESHOLD = 0.7
"""Ternary weights: |w| at most this times the channel's mean |w| become 0 (Li & Liu 2016, ternary weight networks)."""


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) vector shaped to broadcast over a (C, ...) weight."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def binary_weight(weight: torch.Tensor) -> torch.Tensor:
    """{-a, +a} per output channel, a = mean |w| over its non-zero weights (XNOR-Net); pruned zeros stay 0."""
    magnitude = weight.abs().flatten(1)
    alpha = magnitude.sum(dim=1) / (magnitude > 0).sum(dim=1).clamp_min(1)
    return torch.sign(weight) * _per_channel(alpha, weight)


def ternary_weight(weight: torch.Tensor) -> torch.Tensor:
    """{-a, 0, +a} per output channel: 0 where |w| <= 0.7 mean |w|, a = mean |w| of the rest (TWN)."""
    magnitude = weight.abs()
    threshold = TERNARY_THRESHOLD * magnitude.flatten(1).mean(dim=1)
    kept = magnitude > _per_channel(threshold, weight)
    alpha = (magnitude * kept).flatten(1).sum(dim=1) / kept.flatten(1).sum(dim=1).clamp_min(1)
    return torch.sign(weight) * kept * _per_channel(alpha, weight)


LOW_BIT_WEIGHTS = {1: binary_weight, 2: ternary_weight}


class WeightFQ(nn.Module):
    """Parametrization: symmetric per-output-channel b-bit fake-quant, straight-through gradient.

    b >= 4: scale_c = max|w_c| / (2^(b-1) - 1); codes in [-(2^(b-1) - 1), 2^(b-1) - 1], so 0 is on the grid.
    b = 2: ternary, b = 1: binary (`LOW_BIT_WEIGHTS`); the gradient passes straight through to the float weight.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.enabled = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.bits in LOW_BIT_WEIGHTS:
            return LOW_BIT_WEIGHTS[self.bits](weight.detach()) + (weight - weight.detach())  # exactly the grid values forward
        qmax = 2 ** (self.bits - 1) - 1
        scale = (weight.detach().abs().flatten(1).amax(dim=1).float() / qmax).clamp_min(_MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -qmax, qmax)


class ActivationFQ(nn.Module):
    """Per-tensor affine fake-quant (uint8 codes) of a layer's input, as ONNX Runtime's QDQ model runs it.

    The range is an EMA of batch min/max while training and frozen in eval mode; it always
    includes 0 so zero padding and ReLU zeros are exact.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.qmax = 2**bits - 1
        self.enabled = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return inputs
        if self.training:
            self._observe(inputs.detach())
        elif not torch.isfinite(self.max_val):
            return inputs
        scale, zero_point = activation_qparams(self.min_val, self.max_val, self.qmax)
        return torch.fake_quantize_per_tensor_affine(inputs.float(), scale, zero_point, 0, self.qmax).to(inputs.dtype)

    def _observe(self, inputs: torch.Tensor) -> None:
        batch_min, batch_max = inputs.min().float(), inputs.max().float()
        seen = torch.isfinite(self.max_val)
        self.min_val.copy_(torch.where(seen, torch.lerp(self.min_val, batch_min, OBSERVER_MOMENTUM), batch_min))
        self.max_val.copy_(torch.where(seen, torch.lerp(self.max_val, batch_max, OBSERVER_MOMENTUM), batch_max))


def activation_qparams(min_val: torch.Tensor, max_val: torch.Tensor, qmax: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, int32 zero point) of an affine [0, qmax] grid over [min, max] widened to include 0: the training
    fake-quant's, and the int8 export's for a trained range (`export/int8.py: activation_overrides`)."""
    low, high = min_val.clamp(max=0.0), max_val.clamp(min=0.0)
    scale = ((high - low) / qmax).clamp_min(_MIN_SCALE)
    return scale, (-low / scale).round().clamp(0, qmax).to(torch.int32)


def trained_input_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Layer name -> (min, max) of its input as its activation fake-quant observed it in training; read it
    before `finalize` removes the fake-quant. Empty for a float student; layers never observed are left out."""
    ranges = {}
    for name, layer in weight_layers(model):
        observer = getattr(layer, INPUT_QUANT, None)
        if observer is not None and torch.isfinite(observer.min_val) and torch.isfinite(observer.max_val):
            ranges[name] = (float(observer.min_val), float(observer.max_val))
    return ranges


def _quantize_input(layer: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook; a module-level function (not a closure) so deep copies keep working."""
    return (getattr(layer, INPUT_QUANT)(args[0]), *args[1:])


def install_fake_quant(model: nn.Module, weight_bits: int | Sequence[int], activation_bits: int, end_layer_bits: int | None = None) -> None:
    """Add (disabled) weight and input fake-quant to every conv/linear layer: `weight_bits` per layer (a sequence, as
    `QuantizationConfig.bits_of` gives), or one width with the first and the last at `end_layer_bits` when given.
    A layer at `FLOAT_WEIGHT_BITS` keeps float weights; its input is still fake-quantized (the int8 file quantizes it)."""
    layers = [layer for _, layer in weight_layers(model)]
    for layer, bits in zip(layers, layer_bit_widths(len(layers), weight_bits, end_layer_bits)):
        if bits < FLOAT_WEIGHT_BITS:
            parametrize.register_parametrization(layer, "weight", WeightFQ(bits))
        layer.add_module(INPUT_QUANT, ActivationFQ(activation_bits))
        layer.register_forward_pre_hook(_quantize_input)


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, (WeightFQ, ActivationFQ)):
            module.enabled = enabled


def remove_input_quant(model: nn.Module) -> None:
    """Drop the activation fake-quant; the hook is found by identity because a deep copy has no handle to it."""
    for _, layer in weight_layers(model):
        if hasattr(layer, INPUT_QUANT):
            for key in [key for key, hook in layer._forward_pre_hooks.items() if hook is _quantize_input]:
                del layer._forward_pre_hooks[key]
            delattr(layer, INPUT_QUANT)


def round_onto_weight_grid(model: nn.Module, bits: int) -> nn.Module:
    """Put a float model's conv/linear weights on the b-bit grid exactly as a QAT trial's finalize leaves
    them (benchmarks and tests export such students without training them with QAT)."""
    install_fake_quant(model, bits, activation_bits=8)
    set_fake_quant(model, True)
    bake_weights(model)
    remove_input_quant(model)
    return model


class QuantizationAwareTraining(Compressor):
    """Fake-quant on from `start_epoch` (default: the last third of the run) to the end."""

    def __init__(self, cfg: QuantizationConfig, epochs: int) -> None:
        super().__init__(cfg, epochs)
        if cfg.start_epoch is not None and cfg.start_epoch >= epochs:
            raise ConfigError(f"compression.quantization.start_epoch must be < training.epochs={epochs}, got {cfg.start_epoch}")
        self.start_epoch = cfg.start_epoch if cfg.start_epoch is not None else full_compression_epoch(epochs)

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        check_layer_names("compression.quantization.per_layer", self.cfg.per_layer, model)
        install_fake_quant(model, self.cfg.bits_of(layer_names(model)), self.cfg.activation_bits)
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        set_fake_quant(model, epoch >= self.start_epoch)

    def is_final(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def finalize(self, model: nn.Module) -> nn.Module:
        bake_weights(model)
        remove_input_quant(model)
        return model


@register_compressor(QuantizationConfig)
def quantization_aware_training(cfg: QuantizationConfig, epochs: int) -> QuantizationAwareTraining | None:
    return QuantizationAwareTraining(cfg, epochs) if cfg.active else None
