"""`data.name: imagefolder`: own test/val trees, shape from the images, decoded once, class order checked against the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import TensorDataset

from lepton_ray.config import DataConfig
from lepton_ray.data.datasets import build_data
from lepton_ray.errors import CheckpointError, DataError
from lepton_ray.models.saved import model_payload
from lepton_ray.models.zoo import MODELS
from lepton_ray.trial.teacher import check_teacher_fits


def write_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (10, 12), grey: bool = True, seed: int = 0) -> None:
    """`count` images per class; each class's pixels centre on its own level, so that a model can tell them apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.clip(rng.normal(40 + 60 * label, 10, (size[1], size[0]) if grey else (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")


CLASSES = {"ankle_boot": 10, "bag": 10, "coat": 10}


def test_a_grey_tree_of_one_size_gives_its_own_shape_in_memory(tmp_path):
    write_tree(tmp_path / "train", CLASSES)
    data = build_data(DataConfig(name="imagefolder", root=tmp_path / "train"))
    assert data.input_shape == (1, 12, 10) and data.contract.class_names == tuple(CLASSES)
    assert all(isinstance(split, TensorDataset) for split in (data.train, data.val, data.test)), "decoded once: in-memory tensors"
    assert len(data.train) + len(data.val) + len(data.test) == 30
    assert data.train.tensors[0].mean(dim=(0, 2, 3)).abs().max() < 1e-5, "scaled by the training split's statistics"


def test_a_separate_test_and_val_tree_are_used_whole_and_never_carved_from_train(tmp_path):
    write_tree(tmp_path / "train", CLASSES)
    write_tree(tmp_path / "test", {name: 4 for name in CLASSES}, seed=1)
    write_tree(tmp_path / "val", {name: 3 for name in CLASSES}, seed=2)
    only_test = build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options={"test_root": str(tmp_path / "test")}))
    assert len(only_test.test) == 12 and len(only_test.train) + len(only_test.val) == 30
    both = build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options={"test_root": str(tmp_path / "test"), "val_root": str(tmp_path / "val")}))
    assert (len(both.train), len(both.val), len(both.test)) == (30, 9, 12)
    assert both.test.tensors[1].bincount().tolist() == [4, 4, 4]
    only_val = build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options={"val_root": str(tmp_path / "val")}))
    assert len(only_val.val) == 9 and len(only_val.train) + len(only_val.test) == 30


def test_colour_images_of_mixed_sizes_need_a_size_and_then_resize(tmp_path):
    write_tree(tmp_path / "train", {"a": 4}, size=(10, 12), grey=False)
    write_tree(tmp_path / "more", {"b": 4}, size=(16, 16), grey=False)
    (tmp_path / "more" / "b").rename(tmp_path / "train" / "b")
    with pytest.raises(DataError, match=r"^data\.options\.image_size: .* 2 sizes \(e\.g\. 10x12 and 16x16\)"):
        build_data(DataConfig(name="imagefolder", root=tmp_path / "train"))
    data = build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options={"image_size": 8}))
    assert data.input_shape == (3, 8, 8)


@pytest.mark.parametrize(("change", "field"), [
    (lambda root: (root / "test" / "coat").rename(root / "test" / "jacket"), "data.options.test_root: class folders"),
    (lambda root: (root / "train" / "bag" / "0.png").write_bytes(b"not a png"), "data.root: "),
    (lambda root: (root / "test" / "bag" / "0.png").write_bytes(b"not a png"), "data.options.test_root: "),
    (lambda root: [p.unlink() for p in (root / "train" / "bag").iterdir()], "data.root: class folder 'bag'"),
])
def test_a_broken_tree_is_one_line_naming_the_field(tmp_path, change, field):
    write_tree(tmp_path / "train", CLASSES)
    write_tree(tmp_path / "test", {name: 2 for name in CLASSES})
    change(tmp_path)
    with pytest.raises(DataError) as caught:
        build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options={"test_root": str(tmp_path / "test")}))
    assert str(caught.value).startswith(field) and "\n" not in str(caught.value)


def test_a_teacher_trained_with_another_class_order_is_refused_by_name(tmp_path):
    """The folders sort as the data's classes; a teacher whose file records another order would score near chance."""
    write_tree(tmp_path / "train", CLASSES)
    data = build_data(DataConfig(name="imagefolder", root=tmp_path / "train"))
    teacher = MODELS.get("mlp")(data.input_shape, data.num_classes, hidden=[8])
    payload = model_payload(teacher, "mlp", {"hidden": [8]}, data)
    assert payload["class_names"] == list(CLASSES)
    check_teacher_fits(payload, data, "teacher")
    with pytest.raises(CheckpointError, match=r"^teacher\.checkpoint: teacher was trained with classes \['bag', 'ankle_boot', 'coat'\]"):
        check_teacher_fits({**payload, "class_names": ["bag", "ankle_boot", "coat"]}, data, "teacher")
    check_teacher_fits({key: value for key, value in payload.items() if key != "class_names"}, data, "teacher")  # files saved before class names: still load
