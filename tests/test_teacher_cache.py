"""The shared teacher cache reproduces the live teacher exactly and is keyed by what it depends on."""

from __future__ import annotations

import copy

import pytest
import torch

from lepton_ray.config import DataConfig, ModelSpec, load_workflow
from lepton_ray.data import build_data
from lepton_ray.models import build_model
from lepton_ray.teacher_cache import build_teacher_cache, cache_key, load_or_build_cache
from lepton_ray.trial import Precision, build_objective, build_optimizer, iterate_batches, train_epoch, train_indices

from conftest import QUICKSTART

CPU = torch.device("cpu")
LOSSES = [{"name": "kd", "weight": 1.0}, {"name": "hint", "weight": 0.5, "options": {"student_layer": "features.1", "teacher_layer": "features.1"}}]


def _setup(seed: int = 0):
    wf = load_workflow(QUICKSTART, {"data.name": "synthetic", "distillation.losses": LOSSES, "teacher.name": "cnn_small"})
    data = build_data(wf.data)
    torch.manual_seed(seed)
    teacher = build_model(ModelSpec(name="cnn_small"), data.input_shape, data.num_classes).eval()
    return wf, data, teacher


def _train(wf, data, teachers, student, epochs: int = 2) -> list[float]:
    objective = build_objective(wf, student, teachers, data.train.tensors[0][:2])
    optimizer = build_optimizer(wf.training, [*student.parameters(), *objective.parameters()])
    losses = []
    for epoch in range(epochs):
        batches = iterate_batches(data.train, train_indices(len(data.train), epoch, 0), 16, CPU)
        losses.append(train_epoch(student, teachers, objective, batches, optimizer, Precision("fp32", CPU)))
    return losses


def test_cached_teacher_outputs_give_the_same_losses_and_weights_as_the_live_teacher():
    torch.set_num_threads(1)
    wf, data, teacher = _setup()
    cache = build_teacher_cache([teacher], data.train, ("features.1",), key="k")
    torch.manual_seed(1)
    student = build_model(wf.student, data.input_shape, data.num_classes)
    twin = copy.deepcopy(student)
    torch.manual_seed(2)
    live = _train(wf, data, [teacher], student)
    torch.manual_seed(2)
    cached = _train(wf, data, cache, twin)
    assert cached == pytest.approx(live, rel=1e-5, abs=1e-6)
    for a, b in zip(student.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cache_covers_only_the_layers_and_teachers_it_holds():
    _, data, teacher = _setup()
    cache = build_teacher_cache([teacher], data.train, ("features.0",), key="k")
    assert cache.covers(1, ("features.0",)) and cache.covers(1, ())
    assert not cache.covers(1, ("features.1",))
    assert not cache.covers(2, ())
    assert cache.logits[0].shape == (len(data.train), data.num_classes)


def test_cache_key_changes_with_teacher_data_or_layers_and_the_file_is_reused_only_on_match(tmp_path):
    base = cache_key(["abc"], DataConfig().model_dump(mode="json"), ())
    assert base != cache_key(["abd"], DataConfig().model_dump(mode="json"), ())
    assert base != cache_key(["abc"], DataConfig(seed=1).model_dump(mode="json"), ())
    assert base != cache_key(["abc"], DataConfig().model_dump(mode="json"), ("features.0",))
    _, data, teacher = _setup()
    path = tmp_path / "cache.pt"
    first = load_or_build_cache(path, [teacher], data.train, (), "k1")
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(1.0)
    assert torch.equal(load_or_build_cache(path, [teacher], data.train, (), "k1").logits[0], first.logits[0])
    rebuilt = load_or_build_cache(path, [teacher], data.train, (), "k2")
    assert not torch.equal(rebuilt.logits[0], first.logits[0])
