"""Low-rank factorization: a Linear or 1x1 Conv W (out x in) becomes two layers of rank r by truncated SVD.

W ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): the first layer maps in -> r, the second r -> out and
keeps the bias. Both are plain nn.Linear/nn.Conv2d in an nn.Sequential, so pruning, QAT, the
cost model and ONNX export treat them like any other layer. Applied at `prepare`, before
fine-tuning; layers whose factorization would not be smaller stay dense.
"""

from __future__ import annotations

import torch
from torch import nn

from lepton_ray.compress.base import Compressor, register_compressor
from lepton_ray.config import LowRankConfig

Factorizable = nn.Linear | nn.Conv2d


def is_factorizable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1 and layer.padding_mode == "zeros"


def _matrix_shape(layer: Factorizable) -> tuple[int, int]:
    return (layer.out_features, layer.in_features) if isinstance(layer, nn.Linear) else (layer.out_channels, layer.in_channels)


def rank_for(layer: Factorizable, rank_ratio: float) -> int:
    return max(1, round(rank_ratio * min(_matrix_shape(layer))))


def saves_parameters(layer: Factorizable, rank: int) -> bool:
    out_dim, in_dim = _matrix_shape(layer)
    return rank * (out_dim + in_dim) < out_dim * in_dim


def factorize(layer: Factorizable, rank: int) -> nn.Sequential:
    """Two layers whose product is the best rank-`rank` approximation of `layer` (exact at full rank)."""
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=has_bias)
    else:
        first = nn.Conv2d(layer.in_channels, rank, 1, stride=layer.stride, padding=layer.padding, bias=False)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
    first.to(layer.weight.device)
    second.to(layer.weight.device)
    with torch.no_grad():
        matrix = layer.weight.detach().flatten(1).double()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        root = s[:rank].sqrt()
        first.weight.copy_((root[:, None] * vh[:rank]).view_as(first.weight))
        second.weight.copy_((u[:, :rank] * root).view_as(second.weight))
        if has_bias:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class LowRank(Compressor):
    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        for name, layer in list(model.named_modules()):
            if is_factorizable(layer) and saves_parameters(layer, rank := rank_for(layer, self.cfg.rank_ratio)):
                _replace(model, name, factorize(layer, rank))
        return model

    def rebuild(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """Factorize the layers saved as `<name>.0.weight` / `<name>.1.weight`, at their saved rank."""
        for name, layer in list(model.named_modules()):
            if is_factorizable(layer) and f"{name}.weight" not in state_dict and f"{name}.0.weight" in state_dict:
                _replace(model, name, factorize(layer, state_dict[f"{name}.0.weight"].shape[0]))
        return model


@register_compressor(LowRankConfig)
def low_rank(cfg: LowRankConfig, epochs: int) -> LowRank | None:
    return LowRank(cfg, epochs) if cfg.rank_ratio is not None else None
