"""Channel pruning really removes channels (measured MACs and params fall) and rebuilds from a state dict."""

from __future__ import annotations

import pytest
import torch

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.channels import resize_to_state_dict
from lepton_ray.config import ChannelPruningConfig, CompressionConfig
from lepton_ray.compress.cost import count_macs
from lepton_ray.models.zoo import MODELS, count_params

CASES = [("cnn_small", (1, 8, 8), {"channels": [8, 16]}), ("resnet18", (3, 32, 32), {}), ("mobilenet_v2", (3, 32, 32), {})]


def _channel_pruned(name: str, shape: tuple[int, ...], options: dict, sparsity: float = 0.5) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    dense = MODELS.get(name)(shape, 10, **options)
    pruned = MODELS.get(name)(shape, 10, **options)
    pruned.load_state_dict(dense.state_dict())
    compression = Compression(CompressionConfig(channel_pruning=ChannelPruningConfig(sparsity=sparsity)), 3)
    return dense, compression.prepare(pruned, torch.randn(2, *shape))


@pytest.mark.parametrize("name,shape,options", CASES[:2], ids=[case[0] for case in CASES[:2]])
def test_channel_pruned_model_has_fewer_macs_and_params_and_still_classifies(name, shape, options):
    dense, pruned = _channel_pruned(name, shape, options)
    assert count_macs(pruned, shape) < 0.5 * count_macs(dense, shape)
    assert count_params(pruned) < 0.5 * count_params(dense)
    pruned.train()
    logits = pruned(torch.randn(4, *shape))
    assert logits.shape == (4, 10)
    logits.sum().backward()


def test_cnn_small_loses_half_of_each_hidden_width():
    _, pruned = _channel_pruned("cnn_small", (1, 8, 8), {"channels": [8, 16]})
    assert [stage[0].out_channels for stage in pruned.features] == [4, 8]
    assert [stage[1].num_features for stage in pruned.features] == [4, 8]
    assert pruned.classifier[-1].in_features == 8 and pruned.classifier[-1].out_features == 10


def test_a_2x2_pooled_head_loses_four_inputs_per_removed_channel_and_rebuilds_from_its_state_dict():
    dense, pruned = _channel_pruned("cnn_small", (1, 8, 8), {"channels": [8, 16], "pool_size": 2})
    assert dense.classifier[-1].in_features == 16 * 4
    assert pruned.features[-1][0].out_channels == 8 and pruned.classifier[-1].in_features == 8 * 4
    rebuilt = resize_to_state_dict(MODELS.get("cnn_small")((1, 8, 8), 10, channels=[8, 16], pool_size=2), pruned.state_dict())
    rebuilt.load_state_dict(pruned.state_dict())
    images = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt.eval()(images), pruned.eval()(images))


@pytest.mark.parametrize("name,shape,options", CASES[1:], ids=[case[0] for case in CASES[1:]])
def test_fresh_model_resized_to_a_pruned_state_dict_loads_it_and_gives_identical_outputs(name, shape, options):
    _, pruned = _channel_pruned(name, shape, options)
    state = pruned.state_dict()
    rebuilt = resize_to_state_dict(MODELS.get(name)(shape, 10, **options), state)
    rebuilt.load_state_dict(state)
    images = torch.randn(3, *shape)
    assert torch.equal(rebuilt.eval()(images), pruned.eval()(images))
