"""The shared teacher cache reproduces the live teacher exactly, augmentation included, and is keyed by what it depends on."""

from __future__ import annotations

import copy

import pytest
import torch

from lepton_ray.data.batches import augment_view, iterate_batches, train_indices
from lepton_ray.config import AugmentConfig, DataConfig, ModelSpec, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.models.zoo import build_model
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.distill.teacher_cache import TeacherCache, TopKLogits, build_teacher_cache, cache_key, load_or_build_cache
from lepton_ray.trial.epoch import Precision, build_optimizer, train_epoch
from lepton_ray.trial.loop import build_objective

from conftest import QUICKSTART

CPU = torch.device("cpu")
LOSSES = [{"name": "kd", "weight": 1.0}, {"name": "hint", "weight": 0.5, "options": {"student_layer": "features.1", "teacher_layer": "features.1"}}]
AUGMENT = {"hflip": True, "crop_padding": 1, "views": 3}
MIXUP = {**AUGMENT, "mix": "mixup"}
CUTMIX = {"mix": "cutmix", "views": 2, "mix_alpha": 0.5}


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


@pytest.mark.parametrize("augment", [None, AUGMENT, MIXUP, CUTMIX], ids=["plain", "augmented", "mixup", "cutmix"])
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


def test_mixing_is_replayed_and_blends_each_image_with_its_views_partner_in_its_share():
    cfg = AugmentConfig(**MIXUP)
    _, data, _ = _setup(MIXUP)
    view = augment_view(cfg, len(data.train), epoch=1, data_seed=0)
    plain = augment_view(AugmentConfig(**AUGMENT), len(data.train), epoch=1, data_seed=0)
    assert torch.equal(view.flips, plain.flips) and torch.equal(view.offsets, plain.offsets), "mixing leaves the flips and crops as they were"
    (batch,) = iterate_batches(data.train, list(range(8)), 8, CPU, view)
    (again,) = iterate_batches(data.train, list(range(8)), 8, CPU, augment_view(cfg, len(data.train), epoch=4, data_seed=0))
    assert torch.equal(batch.images, again.images) and torch.equal(batch.shares, again.shares), "epoch 4 replays view 1"
    images, labels = data.train.tensors[0], data.train.tensors[1]
    partners = view.mix.partners[:8]
    own, partner = view.apply(images[:8], torch.arange(8)), view.apply(images[partners], partners)
    weight = batch.shares.view(-1, 1, 1, 1)
    torch.testing.assert_close(batch.images, weight * own + (1 - weight) * partner)
    assert torch.equal(batch.partner_labels, labels[partners]) and bool(((batch.shares > 0) & (batch.shares < 1)).all())
    (other,) = iterate_batches(data.train, list(range(8)), 8, CPU, augment_view(cfg, len(data.train), epoch=2, data_seed=0))
    assert not torch.equal(other.shares, batch.shares)


def test_cutmix_pastes_one_box_of_the_partner_and_the_share_counts_the_pixels_left():
    view = augment_view(AugmentConfig(**CUTMIX), 64, epoch=0, data_seed=0)
    own, partner = torch.zeros(64, 2, 9, 7), torch.ones(64, 2, 9, 7)
    mixed, shares = view.mix.mix(own, partner, torch.arange(64))
    pasted = mixed[:, 0].bool()
    assert torch.equal(mixed[:, 0], mixed[:, 1]), "the same box in every channel"
    rectangle = pasted.any(dim=2)[:, :, None] & pasted.any(dim=1)[:, None, :]
    assert torch.equal(pasted, rectangle), "the pasted pixels form one box"
    torch.testing.assert_close(shares, 1 - pasted.float().mean(dim=(1, 2)))
    assert 0 < float(shares.min()) and float(shares.max()) <= 1 and pasted.any()


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
    assert base != cache_key(["abc"], DataConfig().model_dump(mode="json"), (), top_k=3)
    wf, data, teacher = _setup()
    path = tmp_path / "cache.pt"
    first = load_or_build_cache(path, [teacher], data.train, (), wf.data, "k1")
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(1.0)
    assert torch.equal(load_or_build_cache(path, [teacher], data.train, (), wf.data, "k1").logits[0], first.logits[0])
    rebuilt = load_or_build_cache(path, [teacher], data.train, (), wf.data, "k2")
    assert not torch.equal(rebuilt.logits[0], first.logits[0])


def test_top_k_logits_keep_the_top_k_probabilities_the_rest_mass_and_the_argmax_exactly():
    logits = torch.randn(2, 50, 1000, generator=torch.Generator().manual_seed(0)) * 3
    compact = TopKLogits.compress(logits, k=10)
    rebuilt = compact[1, torch.arange(50)]
    original, restored = logits[1].softmax(-1), rebuilt.softmax(-1)
    top = logits[1].topk(10, dim=-1).indices
    torch.testing.assert_close(restored.gather(-1, top), original.gather(-1, top), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(1 - restored.gather(-1, top).sum(-1), 1 - original.gather(-1, top).sum(-1), rtol=1e-4, atol=1e-6)
    assert torch.equal(rebuilt.argmax(-1), logits[1].argmax(-1))
    assert compact.classes.dtype == torch.int16
    assert logits.numel() * 4 / compact.size_bytes > 60, "1,000 classes at k=10: about 60x smaller"


def test_a_top_k_cache_survives_its_file_and_is_refused_to_losses_that_need_every_logit(tmp_path):
    wf, data, teacher = _setup()
    assert data.num_classes == 10
    path = tmp_path / "cache.pt"
    built = load_or_build_cache(path, [teacher], data.train, ("features.1",), wf.data, "k", top_k=3)  # kd + hint, as _setup's losses
    loaded = TeacherCache.load(path)  # weights_only: the top-k tables are stored as plain tensors
    assert loaded.top_k == 3 and isinstance(loaded.logits[0], TopKLogits)
    batch = next(iterate_batches(data.train, list(range(len(data.train))), 32, CPU, augment_view(wf.data.augment, len(data.train), 0, wf.data.seed)))
    (from_file,), _ = loaded.lookup(batch, ())
    (in_memory,), _ = built.lookup(batch, ())
    assert torch.equal(from_file, in_memory)
    with torch.no_grad():
        live = teacher(batch.images)
    assert torch.equal(from_file.argmax(-1), live.argmax(-1))
    torch.testing.assert_close(from_file.softmax(-1).topk(3).values, live.softmax(-1).topk(3).values, rtol=1e-5, atol=1e-6)

    data_config = wf.data.model_dump(mode="json")
    kd = DistillationObjective(load_workflow(QUICKSTART).distillation)
    mse = DistillationObjective(load_workflow(QUICKSTART, {"distillation.losses": [{"name": "logit_mse", "weight": 1.0}]}).distillation)
    assert not kd.needs_every_teacher_logit and mse.needs_every_teacher_logit
    assert loaded.covers(1, (), data_config, kd.needs_every_teacher_logit)
    assert not loaded.covers(1, (), data_config, mse.needs_every_teacher_logit), "logit_mse runs the live teacher"
    assert build_teacher_cache([teacher], data.train, (), wf.data, "k", top_k=10).top_k is None, "k >= classes: all logits kept"

    torch.manual_seed(1)
    student = build_model(wf.student, data.input_shape, data.num_classes)
    losses = _train(wf, data, loaded, student, epochs=2)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]
