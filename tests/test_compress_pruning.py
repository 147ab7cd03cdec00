"""Magnitude pruning: the cubic schedule, exact global sparsity, and masks that hold through training."""

from __future__ import annotations

import copy

import pytest
import torch

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.pruning import cubic_sparsity
from lepton_ray.config import CompressionConfig, PruningConfig
from lepton_ray.compress.cost import weight_tensors
from lepton_ray.errors import ConfigError
from lepton_ray.models.zoo import cnn_small

SHAPE = (1, 8, 8)


def _pruned_student(sparsity: float, epochs: int, **pruning) -> tuple[torch.nn.Module, Compression]:
    torch.manual_seed(0)
    model = cnn_small(SHAPE, 10, channels=[8, 16], hidden=32)
    compression = Compression(CompressionConfig(pruning=PruningConfig(sparsity=sparsity, **pruning)), epochs)
    return compression.prepare(model, torch.randn(2, *SHAPE)), compression


def _zero_fraction(model: torch.nn.Module) -> float:
    weights = torch.cat([w.detach().flatten() for w in weight_tensors(model)])
    return float((weights == 0).float().mean())


def _train_steps(model: torch.nn.Module, steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    model.train()
    for step in range(steps):
        images = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(step))
        loss = model(images).square().mean() - model(images).std()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_cubic_schedule_matches_zhu_gupta_formula_by_hand():
    assert cubic_sparsity(0, 0.8, start=1, end=5) == 0.0
    assert cubic_sparsity(1, 0.8, start=1, end=5) == 0.0
    assert cubic_sparsity(2, 0.8, start=1, end=5) == pytest.approx(0.8 * (1 - 0.75**3))
    assert cubic_sparsity(4, 0.8, start=1, end=5) == pytest.approx(0.8 * (1 - 0.25**3))
    assert cubic_sparsity(5, 0.8, start=1, end=5) == 0.8
    assert cubic_sparsity(9, 0.8, start=1, end=5) == 0.8


@pytest.mark.parametrize("target", [0.3, 0.5, 0.9])
def test_measured_sparsity_equals_target_within_one_percent_at_end_epoch(target):
    model, compression = _pruned_student(target, epochs=6)
    for epoch in range(6):
        compression.on_epoch_start(model, epoch)
        _train_steps(model, 2)
    assert abs(_zero_fraction(model) - target) < 0.01


def test_pruning_is_global_every_pruned_weight_is_no_larger_than_every_kept_one():
    model, compression = _pruned_student(0.6, epochs=1)
    originals = [w.detach().abs().clone() for w in weight_tensors(model)]
    compression.on_epoch_start(model, 0)
    pruned = torch.cat([o[w == 0] for o, w in zip(originals, weight_tensors(model))])
    kept = torch.cat([o[w != 0] for o, w in zip(originals, weight_tensors(model))])
    assert pruned.max() <= kept.min()
    per_layer = [float((w == 0).float().mean()) for w in weight_tensors(model)]
    assert max(per_layer) - min(per_layer) > 0.05, "a global threshold prunes layers unevenly"


def test_masked_weights_stay_zero_after_further_optimizer_steps():
    model, compression = _pruned_student(0.5, epochs=4, end_epoch=1)
    for epoch in range(2):
        compression.on_epoch_start(model, epoch)
    zero_positions = [w.detach() == 0 for w in weight_tensors(model)]
    for epoch in range(2, 4):
        compression.on_epoch_start(model, epoch)
        _train_steps(model, 5)
    for was_zero, weight in zip(zero_positions, weight_tensors(model)):
        assert torch.equal(weight.detach() == 0, was_zero), "masks are fixed after end_epoch and pruned weights stay zero"


def test_sparsity_grows_on_schedule_and_pruned_weights_never_come_back():
    model, compression = _pruned_student(0.8, epochs=6, start_epoch=1, end_epoch=4)
    previous_zeros = None
    for epoch in range(6):
        compression.on_epoch_start(model, epoch)
        expected = cubic_sparsity(epoch, 0.8, 1, 4)
        assert abs(_zero_fraction(model) - expected) < 0.01
        zeros = [w.detach() == 0 for w in weight_tensors(model)]
        if previous_zeros is not None:
            assert all(bool((now | ~before).all()) for now, before in zip(zeros, previous_zeros))
        previous_zeros = zeros
        _train_steps(model, 2)
        assert compression.is_final(epoch) == (epoch >= 4)


def test_default_schedule_reaches_target_at_two_thirds_of_the_epochs():
    _, compression = _pruned_student(0.5, epochs=9)
    assert [compression.is_final(epoch) for epoch in range(9)] == [False] * 6 + [True] * 3


def test_start_epoch_past_the_run_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="compression.pruning.start_epoch"):
        Compression(CompressionConfig(pruning=PruningConfig(sparsity=0.5, start_epoch=4)), 4)


def test_zero_sparsity_installs_nothing():
    assert Compression(CompressionConfig(pruning=PruningConfig(sparsity=0.0)), 4).compressors == []


def test_pruned_student_deep_copies_after_backward():
    model, compression = _pruned_student(0.5, epochs=1)
    compression.on_epoch_start(model, 0)
    _train_steps(model, 1)
    copied = copy.deepcopy(model)
    images = torch.randn(4, *SHAPE)
    model.eval()
    copied.eval()
    assert torch.equal(model(images), copied(images))
