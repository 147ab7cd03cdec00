"""Int8 export with per-layer weight bits (issue 33): each named layer on its own grid and checked against it,
a layer left out exported as float, a name the graph lacks refused."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from lepton_ray.compress.quantize import WeightFQ
from lepton_ray.deploy.publish import PER_LAYER_BITS_KEY, export_weight_bits
from lepton_ray.deploy.report import weight_grids
from lepton_ray.errors import ExportError
from lepton_ray.export.int8 import export_int8, initializer_bits, int8_weights
from lepton_ray.export.onnx_graph import INPUT_NAME
from lepton_ray.export.runtime import ort_session

SHAPE = (1, 8, 8)
LAYER_BITS = {"features.0": 7, "features.2": 2, "classifier": 4}
QMAX = {"features.0": 63, "features.2": 63, "classifier": 7}
"""Largest |code| of each layer's shipped grid: a ternary layer ships on the 7-bit grid as codes {-63, 0, 63}."""


def conv_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU()),
        flatten=nn.Flatten(),
        classifier=nn.Linear(8 * 4 * 4, 10),
    )).eval()


def on_grids(student: nn.Module, layer_bits: dict[str, int]) -> nn.Module:
    """`student` with each named layer's weight put on its bits' QAT grid, as `sensitivity.compressed_weight` does."""
    layers = dict(student.named_modules())
    for name, bits in layer_bits.items():
        grid = WeightFQ(bits)
        grid.enabled = True
        with torch.no_grad():
            layers[name].weight.copy_(grid(layers[name].weight))
    return student


def calibration() -> torch.Tensor:
    return torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def student() -> nn.Module:
    return on_grids(conv_student(), LAYER_BITS)


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    return export_int8(copy.deepcopy(student), SHAPE, calibration(), LAYER_BITS, tmp_path_factory.mktemp("per-layer"))


def dequantized(codes: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * codes.ndim
    shape[axis] = -1
    return codes.astype(np.float32) * scales.reshape(shape)


def test_each_layer_ships_on_its_own_grid_and_dequantizes_to_the_torch_weights(student, exported):
    weights = int8_weights(exported.int8)
    layers = dict(student.named_modules())
    for layer, qmax in QMAX.items():
        codes, scales, axis = weights[f"{layer}.weight"]
        assert np.abs(codes.astype(np.int32)).max() <= qmax, layer
        torch_weight = layers[layer].weight.detach().numpy()
        assert np.abs(dequantized(codes, scales, axis) - torch_weight).max() <= 1e-5 * np.abs(torch_weight).max(), layer
    assert len(np.unique(weights["classifier.weight"][0])) <= 15
    assert set(np.unique(weights["features.2.weight"][0]).tolist()) <= {-63, 0, 63}
    assert len(np.unique(weights["features.0.weight"][0])) > 15, "the 7-bit layer uses its finer grid"
    assert exported.weight_bits == LAYER_BITS and exported.max_weight_code == 63


def test_a_7bit_layer_declared_as_4_bits_is_refused_naming_it(student, tmp_path):
    with pytest.raises(ExportError, match=r"'features\.0\.weight' is not on the declared 4-bit grid"):
        export_int8(copy.deepcopy(student), SHAPE, calibration(), {**LAYER_BITS, "features.0": 4}, tmp_path)


def test_a_layer_the_graph_lacks_is_refused_in_one_line_naming_it(student, tmp_path):
    with pytest.raises(ExportError, match=r"layer\(s\) \['features\.9'\]") as error:
        export_int8(copy.deepcopy(student), SHAPE, calibration(), {**LAYER_BITS, "features.9": 4}, tmp_path)
    assert "\n" not in str(error.value)


def test_a_layer_left_out_is_float_rounded_to_7_bits_while_the_named_ones_stay_checked(tmp_path):
    student = on_grids(conv_student(), {"features.0": 7, "features.2": 2})  # classifier stays float, on no grid
    named = {"features.0": 7, "features.2": 2}
    files = export_int8(copy.deepcopy(student), SHAPE, calibration(), named, tmp_path / "float-classifier")
    codes, scales, axis = int8_weights(files.int8)["classifier.weight"]
    float_weight = student.classifier.weight.detach().numpy()
    assert np.abs(codes.astype(np.int32)).max() == 63
    assert np.abs(dequantized(codes, scales, axis) - float_weight).max() <= 0.5 * scales.max() * (1 + 1e-5)
    assert set(np.unique(int8_weights(files.int8)["features.2.weight"][0]).tolist()) <= {-63, 0, 63}
    with pytest.raises(ExportError, match=r"'classifier\.weight' is not on the declared 7-bit grid"):
        export_int8(copy.deepcopy(student), SHAPE, calibration(), {**named, "classifier": 7}, tmp_path / "declared")
    with pytest.raises(ExportError, match=r"'features\.0\.weight' is not on the declared 4-bit grid"):
        export_int8(copy.deepcopy(student), SHAPE, calibration(), {**named, "features.0": 4}, tmp_path / "wrong")


def test_onnx_runtime_predicts_what_the_torch_student_predicts(student, exported):
    images = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = student(images).numpy()
    got = ort_session(exported.int8).run(None, {INPUT_NAME: images.numpy()})[0]
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.9


def test_one_width_and_a_mapping_answer_the_bits_of_an_initializer():
    assert initializer_bits(4, "features.0.weight") == 4
    assert initializer_bits(LAYER_BITS, "features.2.weight") == 2
    assert initializer_bits(LAYER_BITS, "features.5.weight") == 32, "a layer left out is float"


def test_publish_exports_the_payloads_per_layer_map_else_the_metrics_width():
    assert export_weight_bits({"bits": 4, PER_LAYER_BITS_KEY: {"features.0": 7, "classifier": 2}}) == {"features.0": 7, "classifier": 2}
    assert export_weight_bits({"bits": 4}) == 4
    assert export_weight_bits({}) == 32


def test_the_report_names_per_layer_grids_in_one_short_line_and_one_width_as_before():
    assert weight_grids(LAYER_BITS) == "per-layer grids (2-7 bits: features.0 7, features.2 2, classifier 4)"
    assert weight_grids(4) == "4-bit grid" and weight_grids(32) == "8-bit grid"
    assert "every layer float" in weight_grids({})
