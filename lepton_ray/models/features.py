"""Capture intermediate activations by module name with forward hooks that never outlive use."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from lepton_ray.errors import ConfigError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (layer names are relative to it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextmanager
def capture_features(model: nn.Module, layer_names: tuple[str, ...], field: str = "layer") -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict filled with each named layer's output during forwards run inside the block."""
    module = unwrap(model)
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layer_names:
            try:
                layer = module.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"{field}: no module named {name!r} in {type(module).__name__}") from None
            handles.append(layer.register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
