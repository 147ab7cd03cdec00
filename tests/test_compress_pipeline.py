"""All compressors together, as the trial calls them: prepare, epochs, resume, finalize, rebuild."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.quantize import INPUT_QUANT
from lepton_ray.config import CompressionConfig
from lepton_ray.compress.cost import weight_tensors
from lepton_ray.models.zoo import MODELS

ALL_FOUR = {
    "low_rank": {"rank_ratio": 0.5},
    "channel_pruning": {"sparsity": 0.5},
    "pruning": {"sparsity": 0.5, "end_epoch": 2},
    "quantization": {"bits": 4, "start_epoch": 2},
}
EPOCHS = 4
CASES = [("cnn_small", (1, 8, 8), {"channels": [8, 16], "hidden": 32}), ("resnet18", (3, 8, 8), {})]


def _fresh(name: str, shape: tuple[int, ...], options: dict, seed: int) -> tuple[nn.Module, Compression]:
    torch.manual_seed(seed)
    compression = Compression(CompressionConfig.model_validate(ALL_FOUR), EPOCHS)
    model = MODELS.get(name)(shape, 10, **options)
    return compression.prepare(model, torch.randn(2, *shape)), compression


def _epoch(model: nn.Module, compression: Compression, epoch: int, shape: tuple[int, ...]) -> None:
    compression.on_epoch_start(model, epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(1):
        images = torch.randn(8, *shape, generator=torch.Generator().manual_seed(100 * epoch + step))
        loss = nn.functional.cross_entropy(model(images), torch.arange(8) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module", params=CASES, ids=[case[0] for case in CASES])
def trained(request):
    name, shape, options = request.param
    model, compression = _fresh(name, shape, options, seed=0)
    keys_per_epoch = []
    for epoch in range(EPOCHS):
        _epoch(model, compression, epoch, shape)
        keys_per_epoch.append(list(model.state_dict()))
    return name, shape, options, model, compression, keys_per_epoch


def test_finalize_state_dict_rebuild_load_gives_identical_outputs(trained):
    name, shape, options, model, compression, _ = trained
    final = compression.finalize(copy.deepcopy(model).cpu())
    state = final.state_dict()
    rebuilt = compression.rebuild(MODELS.get(name)(shape, 10, **options), state)
    rebuilt.load_state_dict(state)
    images = torch.randn(5, *shape)
    assert torch.equal(rebuilt.eval()(images), final.eval()(images))


def test_finalized_student_is_a_plain_module_with_sparse_weights_on_the_4_bit_grid(trained):
    _, shape, _, model, compression, _ = trained
    final = compression.finalize(copy.deepcopy(model).cpu())
    for module in final.modules():
        assert not parametrize.is_parametrized(module)
        assert not hasattr(module, INPUT_QUANT) and not module._forward_pre_hooks
    weights = weight_tensors(final)
    assert all(len(torch.unique(channel)) <= 15 for weight in weights for channel in weight)
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.5 <= zeros < 0.51, "the 4-bit grid may round a few more small weights to zero"
    assert final(torch.randn(2, *shape)).shape == (2, 10)


def test_state_dict_keys_are_the_same_at_every_epoch(trained):
    keys_per_epoch = trained[-1]
    assert all(keys == keys_per_epoch[0] for keys in keys_per_epoch)


def test_resume_replays_epochs_on_a_fresh_model_then_loads_the_saved_state_exactly():
    name, shape, options = CASES[0]
    original, compression = _fresh(name, shape, options, seed=0)
    for epoch in range(3):
        _epoch(original, compression, epoch, shape)
    saved = copy.deepcopy(original.state_dict())
    resumed, resumed_compression = _fresh(name, shape, options, seed=1)
    for epoch in range(3):
        resumed_compression.on_epoch_start(resumed, epoch)
    resumed.load_state_dict(saved)
    _epoch(original, compression, 3, shape)
    _epoch(resumed, resumed_compression, 3, shape)
    images = torch.randn(4, *shape)
    assert torch.equal(resumed.eval()(images), original.eval()(images))


def test_compressed_student_deep_copies_mid_training_and_baking_the_copy_leaves_the_original_working():
    name, shape, options = CASES[0]
    model, compression = _fresh(name, shape, options, seed=0)
    for epoch in range(EPOCHS):
        _epoch(model, compression, epoch, shape)
    model(torch.randn(4, *shape)).sum().backward()
    copied = copy.deepcopy(model)
    images = torch.randn(3, *shape)
    assert torch.equal(copied.eval()(images), model.eval()(images))
    compression.finalize(copied)
    assert torch.equal(model(images), model(images)) and parametrize.is_parametrized(model.classifier[1][0])


def test_is_final_needs_sparsity_reached_and_qat_on():
    config = {"pruning": {"sparsity": 0.5, "end_epoch": 3}, "quantization": {"bits": 7, "start_epoch": 1}}
    compression = Compression(CompressionConfig.model_validate(config), 5)
    assert [compression.is_final(epoch) for epoch in range(5)] == [False, False, False, True, True]
    assert Compression(CompressionConfig(), 5).is_final(0)
