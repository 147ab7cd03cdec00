"""Structured channel pruning with Torch-Pruning's dependency graph: channels are really removed.

Each coupled group of channels (a conv's outputs, its BatchNorm, the next layers' inputs,
residual partners) loses `sparsity` of its channels, ranked by L2 magnitude. The layer that
emits the logits is never pruned, so the model keeps `num_classes` outputs. Torch-Pruning is
imported lazily: importing it costs about 2 s.
"""

from __future__ import annotations

import torch
from torch import nn

from lepton_ray.compress.base import Compressor, register_compressor
from lepton_ray.compress.layers import weight_layers
from lepton_ray.config import ChannelPruningConfig


def output_layer(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The conv/linear layer that runs last in a forward pass: the classifier head."""
    called: list[nn.Module] = []
    handles = [layer.register_forward_hook(lambda module, _i, _o: called.append(module)) for _, layer in weight_layers(model)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return called[-1]


def prune_channels(model: nn.Module, example_input: torch.Tensor, sparsity: float) -> nn.Module:
    """Remove `sparsity` of the channels of every prunable group in place (BatchNorm stats untouched)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    pruner = tp.pruner.BasePruner(
        model,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=sparsity,
        ignored_layers=[output_layer(model, example_input)],
    )
    pruner.step()
    model.train(was_training)
    return model


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Give every tensor the shape saved in `state_dict` and fix the layers' size attributes.

    Values are left uninitialized: the caller loads `state_dict` next.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        changed = False
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            saved = state_dict.get(prefix + key)
            if saved is not None and saved.shape != tensor.shape:
                empty = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
                setattr(module, key, nn.Parameter(empty, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty)
                changed = True
        if changed:
            _sync_size_attributes(module)
    return model


def _sync_size_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = module.weight.shape[0]
        module.groups = module.out_channels if depthwise else module.groups
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0]


class ChannelPruning(Compressor):
    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        return prune_channels(model, example_input, self.cfg.sparsity)

    def rebuild(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        return resize_to_state_dict(model, state_dict)


@register_compressor(ChannelPruningConfig)
def channel_pruning(cfg: ChannelPruningConfig, epochs: int) -> ChannelPruning | None:
    return ChannelPruning(cfg, epochs) if cfg.sparsity > 0 else None
