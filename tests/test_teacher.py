"""The teacher stage: a teacher is trained and saved only where no file exists; a file the user pointed to
is never overwritten (training is faked: these tests are about which file is read and written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lepton_ray.config import DataConfig, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.errors import CheckpointError
from lepton_ray.models.saved import model_payload
from lepton_ray.models.zoo import build_model
from lepton_ray.trial import teacher
from lepton_ray.trial.teacher import fingerprint, prepare_teachers

from conftest import QUICKSTART, REPO


@pytest.fixture(scope="module")
def data():
    return build_data(DataConfig())


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replaces teacher training by an untrained model of the right shape; lists the epochs of each training."""
    runs: list[int] = []

    def train(cfg, data, seed, fingerprint_value, log=print, kernels=None):
        runs.append(cfg.train.epochs)
        model = build_model(cfg, data.input_shape, data.num_classes, field="teacher")
        return model_payload(model, cfg.name, cfg.options, data, test_accuracy=0.5, fingerprint=fingerprint_value)

    monkeypatch.setattr(teacher, "train_teacher", train)
    return runs


def workflow(tmp_path: Path, epochs: int = 15, train: bool = True):
    return load_workflow(QUICKSTART, {
        "output_dir": str(tmp_path / "runs"), "teacher.checkpoint": str(tmp_path / "teachers" / "large.pt"),
        "teacher.train": {"epochs": epochs} if train else None,
    })


def test_a_teacher_is_trained_and_saved_where_no_file_exists_and_reused_after(tmp_path, data, trained):
    wf = workflow(tmp_path)
    (first,) = prepare_teachers(wf, data, log=lambda _: None)
    assert first.path == tmp_path / "teachers" / "large.pt" and first.payload["fingerprint"] == fingerprint(wf.teacher, wf.data, wf.training.seed)
    (again,) = prepare_teachers(wf, data, log=lambda _: None)
    assert trained == [15] and again.sha256 == first.sha256


@pytest.mark.parametrize("pinned, expected_channels_last", [(False, False), (True, None), (None, None)])
def test_the_teacher_trains_with_the_workflows_kernels(tmp_path, data, monkeypatch, pinned, expected_channels_last):
    """A benchmark or user pinning `training` kernels pins the teacher stage too; channels_last: true (checked against the
    student only) becomes 'where the teacher runs it'."""
    kernels_seen = []
    real = teacher.train_teacher
    monkeypatch.setattr(teacher, "train_teacher", lambda *args: kernels_seen.append(args[5]) or real(*args))
    wf = load_workflow(QUICKSTART, {"output_dir": str(tmp_path / "runs"), "teacher.checkpoint": str(tmp_path / "t.pt"), "teacher.train": {"epochs": 1},
                                    "training.precision": "fp32", "training.fused_optimizer": False, "training.channels_last": pinned})
    prepare_teachers(wf, data, log=lambda _: None)
    (kernels,) = kernels_seen
    assert (kernels.precision, kernels.fused_optimizer, kernels.channels_last) == ("fp32", False, expected_channels_last)


def test_a_teacher_trained_for_other_settings_is_kept_and_this_workflows_own_goes_to_the_run_folder(tmp_path, data, trained):
    prepare_teachers(workflow(tmp_path, epochs=15), data, log=lambda _: None)
    pointed = tmp_path / "teachers" / "large.pt"
    before = pointed.read_bytes()
    changed = workflow(tmp_path, epochs=3)
    lines: list[str] = []
    (own,) = prepare_teachers(changed, data, log=lines.append)
    assert pointed.read_bytes() == before, "the file teacher.checkpoint names was overwritten"
    assert own.path.parent == changed.run_dir and fingerprint(changed.teacher, changed.data, changed.training.seed) in own.path.name
    assert any("it is kept" in line for line in lines)
    prepare_teachers(changed, data, log=lambda _: None)
    assert trained == [15, 3], "the run folder's teacher is reused, not trained again"


def test_a_users_own_teacher_next_to_a_train_block_is_used_as_it_is(tmp_path, data, trained):
    pointed = tmp_path / "teachers" / "large.pt"
    pointed.parent.mkdir()
    model = build_model(workflow(tmp_path).teacher, data.input_shape, data.num_classes)
    torch.save(model_payload(model, "cnn_large", {}, data), pointed)  # saved by the user: no fingerprint
    before = pointed.read_bytes()
    lines: list[str] = []
    (used,) = prepare_teachers(workflow(tmp_path), data, log=lines.append)
    assert trained == [] and used.path == pointed and pointed.read_bytes() == before
    assert any("using your teacher" in line for line in lines)


@pytest.mark.parametrize("content", [b"", b"weights are in the other folder\n", "bare state_dict"])
def test_an_unusable_file_next_to_a_train_block_is_refused_and_left_as_it_is(tmp_path, data, trained, content):
    pointed = tmp_path / "teachers" / "large.pt"
    pointed.parent.mkdir()
    if content == "bare state_dict":
        torch.save({"features.0.weight": torch.zeros(2, 1, 3, 3)}, pointed)
    else:
        pointed.write_bytes(content)
    before = pointed.read_bytes()
    expected = "the weights do not fit model 'cnn_large'" if content == "bare state_dict" else "lepton-ray never overwrites it: delete it or point teacher.checkpoint at a new file"
    with pytest.raises(CheckpointError, match=expected):
        prepare_teachers(workflow(tmp_path), data, log=lambda _: None)
    assert trained == [] and pointed.read_bytes() == before


def test_a_folder_named_as_the_teacher_checkpoint_is_refused_before_any_training(tmp_path, data, trained):
    wf = load_workflow(QUICKSTART, {"output_dir": str(tmp_path / "runs"), "teacher.checkpoint": str(tmp_path)})
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        prepare_teachers(wf, data, log=lambda _: None)
    assert trained == []


def test_a_teacher_file_trained_before_teacher_train_augment_existed_keeps_its_fingerprint():
    wf = load_workflow(QUICKSTART)
    assert fingerprint(wf.teacher, wf.data, wf.training.seed) == "36a06c208ec9d930"  # what 09ecd06 wrote into the quickstart's teacher
    augmented = load_workflow(QUICKSTART, {"teacher.train.augment": {"hflip": True, "crop_padding": 1}})
    assert fingerprint(augmented.teacher, augmented.data, augmented.training.seed) != "36a06c208ec9d930"


def test_teachers_trained_with_augmentation_keep_their_fingerprint_now_that_mixing_exists():
    """The values c7f9149 (before data.augment.mix) computed; a changed fingerprint retrains the Fashion-MNIST teacher (20-56 min)."""
    fm = REPO / "workflows" / "fashion_mnist.yaml"
    for overrides, expected in [({}, "e016093507c9ee83"), ({"data.augment": {"hflip": True, "crop_padding": 2}}, "8cff8d447e22d22f")]:
        wf = load_workflow(fm, overrides)
        assert fingerprint(wf.teacher, wf.data, wf.training.seed) == expected, overrides
    mixed = load_workflow(fm, {"data.augment": {"hflip": True, "crop_padding": 2, "mix": "mixup"}})
    assert fingerprint(mixed.teacher, mixed.data, mixed.training.seed) != "8cff8d447e22d22f"


def test_teacher_train_augment_changes_what_the_teacher_learns_from(data):
    plain = load_workflow(QUICKSTART, {"teacher.train.epochs": 1})
    augmented = load_workflow(QUICKSTART, {"teacher.train.epochs": 1, "teacher.train.augment": {"hflip": True, "crop_padding": 1}})
    weights = [teacher.train_teacher(wf.teacher, data, 0, "-", log=lambda _: None)["state_dict"] for wf in (plain, augmented)]
    again = teacher.train_teacher(augmented.teacher, data, 0, "-", log=lambda _: None)["state_dict"]
    first_conv = next(key for key in weights[0] if key.endswith("weight"))
    assert not torch.equal(weights[0][first_conv], weights[1][first_conv])
    assert torch.equal(weights[1][first_conv], again[first_conv])  # replayed views: the same teacher twice
