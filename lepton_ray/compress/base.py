"""One compression method (`Compressor`) and the registry that dispatches on config type, as torchao's
`quantize_` does: a method registers a factory for its config class."""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel
from torch import Tensor, nn


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
