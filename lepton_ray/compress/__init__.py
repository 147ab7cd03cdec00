"""Compression applied inside the trial, dispatched by config type (as torchao's quantize_ does).

The trial loop calls one `Compression` object at named points; each active sub-config is
handled by the `Compressor` registered for its type. Structural steps run before DDP wraps
the student, scheduled steps at each epoch start, and `finalize` bakes the result.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel
from torch import nn, Tensor

from lepton_ray.config import CompressionConfig


class Compressor:
    """One compression method. Hooks default to no-ops; `is_final` says the target is in force."""

    def __init__(self, cfg: BaseModel, epochs: int) -> None:
        self.cfg = cfg
        self.epochs = epochs

    def prepare(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        pass

    def is_final(self, epoch: int) -> bool:
        return True

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def rebuild(self, model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
        """Give a freshly built model the finalized structure that `state_dict` was saved from."""
        return model


COMPRESSORS: dict[type[BaseModel], Callable[[BaseModel, int], Compressor | None]] = {}
"""Config type -> factory returning a Compressor, or None when the config asks for nothing."""


def register_compressor(config_type: type[BaseModel]):
    def decorator(factory):
        COMPRESSORS[config_type] = factory
        return factory

    return decorator


class Compression:
    """All active compressors of a workflow, called in a fixed order (low-rank, channels, pruning, QAT)."""

    def __init__(self, cfg: CompressionConfig, epochs: int) -> None:
        sub_configs = [cfg.low_rank, cfg.channel_pruning, cfg.pruning, cfg.quantization]
        built = (COMPRESSORS[type(sub)](sub, epochs) for sub in sub_configs if type(sub) in COMPRESSORS)
        self.compressors: list[Compressor] = [compressor for compressor in built if compressor is not None]

    def prepare(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        for compressor in self.compressors:
            model = compressor.prepare(model, example_input)
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        for compressor in self.compressors:
            compressor.on_epoch_start(model, epoch)

    def is_final(self, epoch: int) -> bool:
        return all(compressor.is_final(epoch) for compressor in self.compressors)

    def finalize(self, model: nn.Module) -> nn.Module:
        for compressor in self.compressors:
            model = compressor.finalize(model)
        return model

    def rebuild(self, model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
        for compressor in self.compressors:
            model = compressor.rebuild(model, state_dict)
        return model


# Importing the compressor modules registers their factories (they import this module first).
from lepton_ray.compress import channels, lowrank, pruning, quantize  # noqa: E402,F401
