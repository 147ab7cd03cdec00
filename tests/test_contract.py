"""The input contract each data set fills (`data/contract.py`) and the ONNX metadata that carries it
(`export/metadata.py`): raw inputs put through the documented formula are the tensors the model trained on.

The formula is written out here as a deployer would write it from the docs, not imported. The
end-to-end check (a published student run from its metadata alone) is in test_export.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract
from lepton_ray.data.datasets import FASHION_MNIST_CLASSES, IDX_FILES, DataSplits, build_data
from lepton_ray.data.splits import split_indices
from lepton_ray.errors import DataError, ExportError
from lepton_ray.export.metadata import (
    CLASS_NAMES_KEY, PREPROCESSING_KEY, SWEEP_RUN_KEY, TRIAL_KEY, WORKFLOW_KEY, artifact_metadata, describe, preprocessing, read_metadata, stamp,
)

from test_data import write_release


def model_input(raw: np.ndarray, facts: dict) -> np.ndarray:
    """input = (raw * scale - mean[c]) / std[c] in float32, NCHW: the formula the metadata states."""
    channel = (1, -1, 1, 1)
    return (np.asarray(raw, np.float32) * np.float32(facts["scale"]) - np.float32(facts["mean"]).reshape(channel)) / np.float32(facts["std"]).reshape(channel)


def test_digits_raw_pixels_through_the_contract_are_the_test_tensors_bit_for_bit():
    from sklearn.datasets import load_digits

    cfg = DataConfig()
    data, bunch = build_data(cfg), load_digits()
    _, _, test, _ = split_indices(bunch.target, cfg, with_test=True)
    contract = data.contract
    assert (contract.dataset, contract.input_shape, contract.raw_range, contract.scale) == ("digits", (1, 8, 8), (0, 16), 1 / 16)
    assert contract.class_names == tuple("0123456789")
    assert np.array_equal(model_input(bunch.images[test][:, None], contract.as_dict()), data.test.tensors[0].numpy())
    assert np.array_equal(contract.to_raw(data.test.tensors[0].numpy()), bunch.images[test][:, None])


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_raw_bytes_through_the_contract_are_the_test_tensors_and_classes_are_named(tmp_path, name):
    arrays = write_release(tmp_path, gz=False)
    data = build_data(DataConfig(name=name, root=tmp_path))
    facts = data.contract.as_dict()
    assert (facts["layout"], facts["input_shape"], facts["raw_range"]) == ("NCHW", [1, 28, 28], [0, 255])
    np.testing.assert_allclose(model_input(arrays[IDX_FILES[2]][:, None], facts), data.test.tensors[0].numpy(), rtol=0, atol=1e-5)
    expected = FASHION_MNIST_CLASSES if name == "fashion_mnist" else tuple("0123456789")
    assert data.contract.class_names == expected


def test_imagefolder_contract_names_the_folders_and_maps_resized_grey_pixels_onto_its_tensors(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(6):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / split / label / f"{index}.png")
    options = {"image_size": 8, "channels": 1, "test_root": str(tmp_path / "test")}
    data = build_data(DataConfig(name="imagefolder", root=tmp_path / "train", options=options))
    assert data.contract.class_names == ("cat", "dog") and data.contract.input_shape == (1, 8, 8)
    image, _ = data.test[0]  # the test tree's first image: cat/0.png
    raw = np.asarray(Image.open(tmp_path / "test" / "cat" / "0.png").convert("RGB").resize((8, 8), Image.BILINEAR).convert("L"))[None, None]
    np.testing.assert_allclose(model_input(raw, data.contract.as_dict())[0], image.numpy(), rtol=0, atol=1e-6)


def test_synthetic_data_is_its_own_raw_input():
    data = build_data(DataConfig(name="synthetic", options={"num_classes": 3, "channels": 2}))
    facts = data.contract.as_dict()
    assert (facts["scale"], facts["mean"], facts["std"], facts["raw_range"]) == (1.0, [0.0, 0.0], [1.0, 1.0], None)
    assert data.contract.class_names == ("class_0", "class_1", "class_2")


@pytest.mark.parametrize("field, change, fix", [
    ("std", {"std": (0.0,)}, "finite and above 0"),
    ("mean", {"mean": (0.1, 0.2)}, "one value per channel"),
    ("class_names", {"class_names": ("a", "a")}, "one distinct name per class"),
    ("scale", {"scale": float("nan")}, "finite and above 0"),
])
def test_a_bad_contract_is_a_one_line_data_error_naming_the_field_and_the_fix(field, change, fix):
    good = dict(dataset="mine", input_shape=(1, 4, 4), class_names=("a", "b"), raw="grey 0-255", raw_range=(0, 255), scale=1 / 255, mean=(0.5,), std=(0.5,))
    with pytest.raises(DataError, match=rf"^DataContract\.{field} of data set 'mine': .* is invalid; .*{fix}") as caught:
        DataContract(**(good | change))
    assert "\n" not in str(caught.value)


def test_splits_whose_contract_names_another_shape_or_class_count_are_refused():
    data = build_data(DataConfig(name="synthetic", options={"num_classes": 3}))
    with pytest.raises(DataError, match=r"^DataSplits\.contract of 'synthetic': .* build the contract from the same data$"):
        DataSplits(data.train, data.val, data.test, 4, data.input_shape, data.contract)


def tiny_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_metadata_written_into_a_file_reads_back_in_onnxruntime_with_the_other_props_kept(tmp_path):
    contract = DataContract.unnormalised("mine", (1, 4, 4), ["no", "yes"], "grey 0-255", (0, 255), 1 / 255).with_statistics([0.25], [0.5])
    model = tiny_model()
    onnx.helper.set_model_props(model, {"author": "someone", "lepton.stale": "old"})
    metadata = artifact_metadata(contract, workflow="wf", trial=3)
    onnx.save(stamp(model, metadata), str(tmp_path / "m.onnx"))

    read = read_metadata(tmp_path / "m.onnx")
    assert read == metadata and SWEEP_RUN_KEY not in read, "unknown provenance is left out, stale lepton keys dropped"
    assert {prop.key: prop.value for prop in onnx.load(str(tmp_path / "m.onnx")).metadata_props}["author"] == "someone"
    assert (read[WORKFLOW_KEY], read[TRIAL_KEY], json.loads(read[CLASS_NAMES_KEY])) == ("wf", "3", ["no", "yes"])
    facts = preprocessing(read)
    assert (facts["input_name"], facts["output_name"], facts["mean"], facts["std"]) == ("input", "logits", [0.25], [0.5])
    assert "(raw * 0.00392157 - mean[c]) / std[c], mean [0.25], std [0.5]" in describe(read)


def test_a_file_without_the_contract_is_an_export_error_naming_the_key_and_the_fix():
    with pytest.raises(ExportError, match=rf"^{PREPROCESSING_KEY}: missing from the model's metadata; re-export .*`lepton-ray export`"):
        preprocessing({})
    assert describe({}) == ""


def test_float32_statistics_survive_the_json_exactly():
    stats = torch.tensor([0.30530083179473877, 0.1], dtype=torch.float32)
    contract = DataContract.unnormalised("mine", (2, 1, 1), ["a"], "floats", None, 1.0).with_statistics(stats.tolist(), [1.0, 1.0])
    facts = preprocessing(artifact_metadata(contract))
    assert np.array_equal(np.float32(facts["mean"]), stats.numpy())
