"""The layers compression acts on, the default epoch at which compression is in force, and weight baking."""

from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn
from torch.nn.utils import parametrize

from lepton_ray.errors import ConfigError

WEIGHT_LAYER_TYPES = (nn.Conv2d, nn.Linear)
"""Layers whose weights are pruned, quantized and counted by the cost model."""


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYER_TYPES)]


def layer_bit_widths(count: int, bits: int | Sequence[int], end_layer_bits: int | None = None) -> list[int]:
    """Weight bits of each of `count` conv/linear layers in `weight_layers` order: a sequence is already per layer;
    an int is every layer's, with `end_layer_bits` for the first and the last where given (binary and ternary
    students). QAT and the size estimate both use it."""
    if not isinstance(bits, int):
        if len(bits) != count:
            raise ValueError(f"{len(bits)} bit-widths for {count} conv/linear layers")
        return list(bits)
    return [end_layer_bits if end_layer_bits is not None and index in (0, count - 1) else bits for index in range(count)]


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in weight_layers(model)]


def check_layer_names(field: str, named: Iterable[str], model: nn.Module) -> None:
    """`ConfigError` naming `field` when it names a layer the student does not have (a typo would compress nothing)."""
    known = layer_names(model)
    if unknown := sorted(set(named) - set(known)):
        raise ConfigError(f"{field}: no conv/linear layer named {unknown[0]!r} in the student; its layers are {', '.join(known)}")


def full_compression_epoch(epochs: int) -> int:
    """Default epoch from which pruning is at its target and QAT is on: two thirds of the run.

    The last third (rounded up) then fine-tunes the student exactly as it will ship.
    """
    return (2 * epochs) // 3


def bake_weights(model: nn.Module) -> None:
    """Replace each parametrized weight by its current value (mask and b-bit grid applied).

    `remove_parametrizations` removes the whole chain of a tensor at once, so whichever
    compressor finalizes first bakes all of them; calling it again is a no-op.
    """
    for _, layer in weight_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            _own_class(layer)
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


def _own_class(layer: nn.Module) -> None:
    """Give a parametrized layer a private copy of its generated class.

    `copy.deepcopy` of a parametrized module shares that class with the original, and
    `remove_parametrizations` deletes the weight property from the class: without this,
    baking a deep copy (as the trial does) breaks the live student.
    """
    cls = type(layer)
    namespace = {key: value for key, value in vars(cls).items() if key not in ("__dict__", "__weakref__")}
    layer.__class__ = type(cls.__name__, cls.__bases__, namespace)
