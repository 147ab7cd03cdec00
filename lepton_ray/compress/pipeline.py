"""All of a workflow's compression, applied inside the trial at named points.

The trial loop calls one `Compression` object; each active sub-config is handled by the
`Compressor` registered for its type. Structural steps run before DDP wraps the student,
scheduled steps at each epoch start, and `finalize` bakes the result.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from lepton_ray.compress import channels, lowrank, pruning, quantize  # noqa: F401  (importing them registers their compressors)
from lepton_ray.compress.base import COMPRESSORS, Compressor
from lepton_ray.config import CompressionConfig


class Compression:
    """All active compressors of a workflow, called in a fixed order (low-rank, channels, pruning, QAT)."""

    def __init__(self, cfg: CompressionConfig, epochs: int) -> None:
        sub_configs = [cfg.low_rank, cfg.channel_pruning, cfg.pruning, cfg.quantization]
        built = (COMPRESSORS[type(sub)](sub, epochs) for sub in sub_configs if type(sub) in COMPRESSORS)
        self.compressors: list[Compressor] = [compressor for compressor in built if compressor is not None]
        self.epochs = epochs

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

    def planned(self, model: nn.Module) -> nn.Module:
        """A copy of `model` as this compression will finish it: every epoch's scheduled step applied in turn (a
        schedule may end before the last epoch), then baked. Its structure, sparsity and bits are the finished
        student's; its weights are only today's."""
        final = copy.deepcopy(model)
        for epoch in range(self.epochs):
            self.on_epoch_start(final, epoch)
        return self.finalize(final)

    def rebuild(self, model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
        for compressor in self.compressors:
            model = compressor.rebuild(model, state_dict)
        return model
