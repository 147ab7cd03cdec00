"""Global unstructured magnitude pruning on the cubic schedule of Zhu & Gupta (2017).

Masks are a `torch.nn.utils.parametrize` parametrization (w -> w * mask) installed before DDP
wraps the student, rather than `torch.nn.utils.prune`: a parametrized module survives
`copy.deepcopy` (a pruned one does not), the mask composes with the QAT weight fake-quant on
the same tensor (mask first, so zeros stay zeros), and the state-dict keys are the same at
every epoch, which makes resuming a trial trivial. The mask is a buffer: saved, restored and
identical on every rank.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from lepton_ray.compress.base import Compressor, register_compressor
from lepton_ray.compress.layers import bake_weights, check_layer_names, full_compression_epoch, weight_layers
from lepton_ray.config import PruningConfig
from lepton_ray.errors import ConfigError


class WeightMask(nn.Module):
    """Parametrization w -> w * mask; masked weights get no gradient and read as exact zeros."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def cubic_sparsity(epoch: int, target: float, start: int, end: int) -> float:
    """Zhu & Gupta: s_t = s_f * (1 - (1 - (t - t0) / (t_end - t0))^3); 0 before t0, s_f from t_end on."""
    if epoch < start:
        return 0.0
    if epoch >= end:
        return target
    progress = (epoch - start) / (end - start)
    return target * (1.0 - (1.0 - progress) ** 3)


def weight_mask(layer: nn.Module) -> WeightMask:
    return next(p for p in layer.parametrizations.weight if isinstance(p, WeightMask))


def set_global_magnitude_masks(layers: list[nn.Module], sparsity: float) -> None:
    """Mask the `sparsity` fraction of smallest |w| across all layers together (exact count).

    Scores are the masked, unquantized weights, so weights pruned earlier score 0 and stay
    pruned as the target grows.
    """
    masks = [weight_mask(layer) for layer in layers]
    scores = [(layer.parametrizations.weight.original.detach() * mask.mask).abs().flatten() for layer, mask in zip(layers, masks)]
    flat_scores = torch.cat(scores)
    keep = torch.ones_like(flat_scores)
    num_pruned = round(sparsity * flat_scores.numel())
    if num_pruned:
        keep[torch.topk(flat_scores, num_pruned, largest=False).indices] = 0.0
    for mask, kept in zip(masks, keep.split([s.numel() for s in scores])):
        mask.mask.copy_(kept.view_as(mask.mask))


class MagnitudePruning(Compressor):
    """Masks installed at `prepare`, tightened at each epoch start from `start_epoch` to `end_epoch`, then held."""

    def __init__(self, cfg: PruningConfig, epochs: int) -> None:
        super().__init__(cfg, epochs)
        if cfg.start_epoch >= epochs:
            raise ConfigError(f"compression.pruning.start_epoch must be < training.epochs={epochs}, got {cfg.start_epoch}")
        self.start_epoch = cfg.start_epoch
        self.end_epoch = cfg.end_epoch if cfg.end_epoch is not None else min(max(cfg.start_epoch, full_compression_epoch(epochs)), epochs - 1)

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        check_layer_names("compression.pruning.per_layer", self.cfg.per_layer, model)
        for _, layer in weight_layers(model):
            parametrize.register_parametrization(layer, "weight", WeightMask(layer.weight))
        return model

    def sparsity_at(self, epoch: int) -> float:
        return cubic_sparsity(epoch, self.cfg.sparsity, self.start_epoch, self.end_epoch)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if not self.start_epoch <= epoch <= self.end_epoch:
            return
        with torch.no_grad():
            if not self.cfg.per_layer:
                set_global_magnitude_masks([layer for _, layer in weight_layers(model)], self.sparsity_at(epoch))
                return
            for name, layer in weight_layers(model):  # each named layer on its own cubic schedule to its own target
                if name in self.cfg.per_layer:
                    set_global_magnitude_masks([layer], cubic_sparsity(epoch, self.cfg.per_layer[name], self.start_epoch, self.end_epoch))

    def is_final(self, epoch: int) -> bool:
        return epoch >= self.end_epoch

    def finalize(self, model: nn.Module) -> nn.Module:
        bake_weights(model)
        return model


@register_compressor(PruningConfig)
def magnitude_pruning(cfg: PruningConfig, epochs: int) -> MagnitudePruning | None:
    return MagnitudePruning(cfg, epochs) if cfg.active else None
