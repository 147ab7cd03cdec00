"""The model and data-set registries: every model builds for both input sizes; splits are seeded and disjoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lepton_ray.data.batches import AugmentView, MixPlan, iterate_batches
from lepton_ray.config import DataConfig, ModelSpec
from lepton_ray.data.datasets import build_data
from lepton_ray.data.splits import UNLABELED
from lepton_ray.models.zoo import MODELS, build_model


TEXT_MODELS = ("bag_of_embeddings", "text_transformer")
"""Models over token ids (tests/test_text.py builds them)."""


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)], ids=["digits-8px", "cifar-32px"])
@pytest.mark.parametrize("name", [name for name in MODELS.names() if name not in TEXT_MODELS])
def test_every_registered_model_builds_for_small_and_cifar_sized_inputs_and_gives_logits(name, input_shape):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name), input_shape, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def _indices_of(split) -> set[tuple]:
    return {tuple(image.flatten().tolist()) for image in split.tensors[0]}


def test_convnet_with_one_conv_per_stage_keeps_the_parameter_names_saved_teachers_use():
    one = build_model(ModelSpec(name="cnn_large", options={"channels": [8, 16]}), (1, 8, 8), 10)
    assert [name for name, _ in one.named_parameters()][:3] == ["features.0.0.weight", "features.0.1.weight", "features.0.1.bias"]
    two = build_model(ModelSpec(name="cnn_large", options={"channels": [8, 16], "convs_per_stage": 2}), (1, 8, 8), 10)
    convs = [m for m in two.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (1, 1), (2, 2), (1, 1)]
    assert two(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_digits_splits_are_seeded_disjoint_and_cover_the_data_set():
    first, again, other = build_data(DataConfig(seed=0)), build_data(DataConfig(seed=0)), build_data(DataConfig(seed=1))
    sizes = [len(first.train), len(first.val), len(first.test)]
    assert sum(sizes) == 1797 and first.num_classes == 10 and first.input_shape == (1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(first.train.tensors, again.train.tensors))
    assert not torch.equal(first.train.tensors[1], other.train.tensors[1])
    train, val, test = (_indices_of(s) for s in (first.train, first.val, first.test))
    assert not (train & test) and not (val & test)
    assert set(first.test.tensors[1].tolist()) == set(range(10)), "stratified: every class in test"


def test_label_fraction_hides_training_labels_only():
    data = build_data(DataConfig(label_fraction=0.1))
    hidden = (data.train.tensors[1] == UNLABELED).float().mean().item()
    assert 0.85 < hidden < 0.95
    assert (data.val.tensors[1] != UNLABELED).all() and (data.test.tensors[1] != UNLABELED).all()


class NotInMemory(torch.utils.data.Dataset):
    """Any data set that is not a TensorDataset (a user's own, read from files): batched through a DataLoader."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        return self.inner[index]


def test_a_class_tree_batches_through_the_file_backed_path_with_the_views_flip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "emu"):
        (tmp_path / label).mkdir()
        for index in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / label / f"{index}.png")
    data = build_data(DataConfig(name="imagefolder", root=tmp_path, options={"image_size": 16}))
    assert data.num_classes == 3 and data.input_shape == (3, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 36
    data = replace(data, train=NotInMemory(data.train))
    view = AugmentView(0, torch.ones(len(data.train), dtype=torch.bool), torch.zeros(len(data.train), 2, dtype=torch.long), 0)
    batches = list(iterate_batches(data.train, list(range(len(data.train))), 8, torch.device("cpu"), view))
    assert sum(len(b.labels) for b in batches) == len(data.train)
    first_plain = next(iterate_batches(data.train, [0], 1, torch.device("cpu"))).images
    assert torch.equal(batches[0].images[:1], first_plain.flip(-1)), "the view's flip applies to file-backed images too"
    assert batches[-1].indices.tolist() == list(range(8 * (len(batches) - 1), len(data.train)))

    mixing = AugmentView(0, view.flips, view.offsets, 0, MixPlan("mixup", torch.arange(len(data.train)).roll(1), torch.full((len(data.train),), 0.25), torch.zeros(len(data.train), 2)))
    (mixed,) = iterate_batches(data.train, [0, 1], 2, torch.device("cpu"), mixing)
    partner_images, partner_labels = (torch.stack(column) if i == 0 else torch.tensor(column) for i, column in enumerate(zip(data.train[len(data.train) - 1], data.train[0])))
    torch.testing.assert_close(mixed.images, 0.25 * torch.stack([data.train[0][0], data.train[1][0]]).flip(-1) + 0.75 * partner_images.flip(-1))
    assert mixed.partner_labels.tolist() == partner_labels.tolist(), "partners are read from the file-backed set too"
