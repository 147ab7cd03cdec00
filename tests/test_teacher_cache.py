"""The shared teacher cache reproduces the live teacher exactly, augmentation included, and is keyed by what it depends on."""

from __future__ import annotations

import copy

import pytest
import torch

from lepton_ray.batches import augment_view, iterate_batches, train_indices
from lepton_ray.config import AugmentConfig, DataConfig, ModelSpec, load_workflow
from lepton_ray.data import build_data
from lepton_ray.models import build_model
from lepton_ray.teacher_cache import build_teacher_cache, cache_key, load_or_build_cache
from lepton_ray.trial import Precision, build_objective, build_optimizer, train_epoch

from conftest import QUICKSTART

CPU = torch.device("cpu")
LOSSES = [{"name": "kd", "weight": 1.0}, {"name": "hint", "weight": 0.5, "options": {"student_layer": "features.1", "teacher_layer": "features.1"}}]
AUGMENT = {"hflip": True, "crop_padding": 1, "views": 3}


def _setup(augment: dict | None = None, seed: int = 0):
    wf = load_workflow(QUICKSTART, {"data.name": "synthetic", "data.augment": augment, "distillation.losses": LOSSES, "teacher.name": "cnn_small"})
    data = build_data(wf.data)
    torch.manual_seed(seed)
    teacher = build_model(ModelSpec(name="cnn_small"), data.input_shape, data.num_classes).eval()
    return wf, data, teacher


def _train(wf, data, teachers, student, epochs: int) -> list[float]:
    objective = build_objective(wf, student, teachers, data.train.tensors[0][:2])
    optimizer = build_optimizer(wf.training, [*student.parameters(), *objective.parameters()])
    losses = []
    for epoch in range(epochs):
        view = augment_view(wf.data.augment, len(data.train), epoch, wf.data.seed)
        batches = iterate_batches(data.train, train_indices(len(data.train), epoch, 0), 16, CPU, view)
        losses.append(train_epoch(student, teachers, objective, batches, optimizer, Precision("fp32", CPU)))
    return losses


@pytest.mark.parametrize("augment", [None, AUGMENT], ids=["plain", "augmented"])
def test_cached_teacher_outputs_give_the_same_losses_and_weights_as_the_live_teacher(augment):
    """Four epochs cycle through every augmentation view (and back to view 0) on the same batches."""
    torch.set_num_threads(1)
    wf, data, teacher = _setup(augment)
    cache = build_teacher_cache([teacher], data.train, ("features.1",), wf.data, key="k")
    torch.manual_seed(1)
    student = build_model(wf.student, data.input_shape, data.num_classes)
    twin = copy.deepcopy(student)
    torch.manual_seed(2)
    live = _train(wf, data, [teacher], student, epochs=4)
    torch.manual_seed(2)
    cached = _train(wf, data, cache, twin, epochs=4)
    assert cached == pytest.approx(live, rel=1e-5, abs=1e-6)
    for a, b in zip(student.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_augmentation_views_are_replayed_exactly_and_differ_between_views():
    cfg = AugmentConfig(**AUGMENT)
    _, data, _ = _setup(AUGMENT)
    images = data.train.tensors[0][:8]
    indices = torch.arange(8)
    first = augment_view(cfg, len(data.train), epoch=0, data_seed=0).apply(images, indices)
    again = augment_view(cfg, len(data.train), epoch=3, data_seed=0).apply(images, indices)  # 3 views: epoch 3 is view 0
    other = augment_view(cfg, len(data.train), epoch=1, data_seed=0).apply(images, indices)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == images.shape and not torch.equal(first, images)


def test_flip_and_crop_move_pixels_where_they_should():
    view = augment_view(AugmentConfig(hflip=True, crop_padding=1, views=1), 1, 0, 0)
    image = torch.arange(9.0).reshape(1, 1, 3, 3)
    flipped_only = type(view)(0, torch.tensor([True]), torch.tensor([[1, 1]]), 1).apply(image, torch.tensor([0]))
    assert torch.equal(flipped_only, image.flip(-1))
    shifted = type(view)(0, torch.tensor([False]), torch.tensor([[0, 0]]), 1).apply(image, torch.tensor([0]))
    assert torch.equal(shifted[0, 0], torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 3, 4]]))


def test_cache_covers_only_the_layers_teachers_and_data_it_holds():
    wf, data, teacher = _setup()
    data_config = wf.data.model_dump(mode="json")
    cache = build_teacher_cache([teacher], data.train, ("features.0",), wf.data, key="k")
    assert cache.covers(1, ("features.0",), data_config) and cache.covers(1, (), data_config)
    assert not cache.covers(1, ("features.1",), data_config)
    assert not cache.covers(2, (), data_config)
    assert not cache.covers(1, (), {**data_config, "seed": 1})
    assert cache.logits[0].shape == (1, len(data.train), data.num_classes)


def test_cache_key_changes_with_teacher_data_or_layers_and_the_file_is_reused_only_on_match(tmp_path):
    base = cache_key(["abc"], DataConfig().model_dump(mode="json"), ())
    assert base != cache_key(["abd"], DataConfig().model_dump(mode="json"), ())
    assert base != cache_key(["abc"], DataConfig(seed=1).model_dump(mode="json"), ())
    assert base != cache_key(["abc"], DataConfig(augment=AugmentConfig(hflip=True)).model_dump(mode="json"), ())
    assert base != cache_key(["abc"], DataConfig().model_dump(mode="json"), ("features.0",))
    wf, data, teacher = _setup()
    path = tmp_path / "cache.pt"
    first = load_or_build_cache(path, [teacher], data.train, (), wf.data, "k1")
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(1.0)
    assert torch.equal(load_or_build_cache(path, [teacher], data.train, (), wf.data, "k1").logits[0], first.logits[0])
    rebuilt = load_or_build_cache(path, [teacher], data.train, (), wf.data, "k2")
    assert not torch.equal(rebuilt.logits[0], first.logits[0])
