"""Int8 ONNX export of a finalized student, verified in ONNX Runtime (`deploy/publish.py` registers it in MLflow).

The route measured to work on this stack (see STACK.md): fp32 ONNX from `torch.onnx.export`
(dynamo, dynamic batch), ORT's `quant_pre_process`, then `quantize_static` in QDQ format with
per-channel int8 weights and uint8 activations calibrated on training images. Per-channel scale
overrides put the weights on the student's own b-bit grid (one for all layers, or one per layer: `WeightBits`), so a
4- or 6-bit student's weights survive exactly. Activation scales stay calibrated even for a QAT student: fixing each layer input to the range
its fake-quant trained with (`input_ranges`) was measured no closer to the PyTorch student over 12 digits and
Fashion-MNIST students (benchmarks/results/activation_ranges.md: within 1-3 test images either way, larger max
difference with the trial's 64 images, larger logit RMSE). The file is then compacted (`onnx_graph.compact_graph`),
checked bit-exact against the quantizer's. `deploy/publish.py` registers a model only after every check passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static
from torch import nn
from torch.utils.data import Dataset

from lepton_ray import metrics
from lepton_ray.compress.cost import FLOAT_BITS
from lepton_ray.compress.quantize import activation_qparams
from lepton_ray.config import LOW_BITS, MAX_WEIGHT_BITS, ExportConfig
from lepton_ray.data.inputs import ModelInput, as_model_input
from lepton_ray.errors import ExportError
from lepton_ray.export.metadata import stamp
from lepton_ray.export.onnx_graph import INPUT_NAME, compact_graph, export_fp32_onnx
from lepton_ray.export.runtime import dataset_images, measure_latency, onnx_accuracy, ort_session


FP32_FILE = "student.fp32.onnx"
INT8_FILE = "student.int8.onnx"
GRID_TOLERANCE = 1e-3
"""Largest |dequantized - fp32| weight error, in units of the channel's scale, for weights on a grid."""
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"})
"""Ops that, left in the ORT-optimized int8 graph, mean a Q/DQ pair was not fused (slower than fp32)."""
COMPACT_CHECK_IMAGES = 64
WeightBits = int | Mapping[str, int]
"""Declared weight bits: one width for every Conv/Gemm/MatMul weight, or layer name (torch module name, its weight is
the initializer `<layer>.weight`) -> bits, a layer left out being float (rounded to `MAX_WEIGHT_BITS`, not grid-checked)."""


# ---- fp32 and int8 files ---------------------------------------------------------------------

def _strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and doc strings: they are most of a small model's file."""
    del model.metadata_props[:]
    model.doc_string = model.graph.doc_string = ""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model


def _output_channel_axis(node: onnx.NodeProto) -> int:
    """Axis of the weight (input 1) that indexes output channels."""
    if node.op_type == "Gemm":
        trans_b = next((attr.i for attr in node.attribute if attr.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1 if node.op_type == "MatMul" else 0


def shipped_weight_bits(weight_bits: int) -> int:
    """Bits of the int8 file's weight codes: a QAT student's own grid; a float student's weights are rounded
    to `config.MAX_WEIGHT_BITS` (7, |code| <= 63, ORT's `reduce_range`): on x86 CPUs without VNNI, ORT's
    u8 x s8 kernels add pairs of products in int16, which saturates for codes up to 127 (measured on an
    AVX2 EPYC: a float MLP lost 1 of 60 test images at 8 bits, none at 7). A binary or ternary student ships on
    the 7-bit grid: its {-a, 0, +a} are codes {-63, 0, 63} exactly, and its 7-bit first and last layers fit too."""
    return MAX_WEIGHT_BITS if weight_bits in LOW_BITS else min(weight_bits, MAX_WEIGHT_BITS)


def initializer_bits(weight_bits: WeightBits, initializer: str) -> int:
    """Declared bits of one weight initializer: the single width, or its layer's entry (`<layer>.weight`);
    `FLOAT_BITS` for a layer the mapping leaves out."""
    if not isinstance(weight_bits, Mapping):
        return int(weight_bits)
    return weight_bits.get(initializer.removesuffix(".weight"), FLOAT_BITS)


def _qmax(bits: int) -> int:
    """Largest |code| of the shipped symmetric grid for `bits` declared bits."""
    return 2 ** (shipped_weight_bits(bits) - 1) - 1


def _check_layer_names(weight_names: set[str], weight_bits: WeightBits) -> None:
    """A per-layer mapping may only name layers whose `<layer>.weight` is a Conv/Gemm/MatMul weight of the graph."""
    if not isinstance(weight_bits, Mapping):
        return
    if unknown := sorted(layer for layer in weight_bits if f"{layer}.weight" not in weight_names):
        raise ExportError(f"weight_bits: no Conv/Gemm/MatMul with weight '<layer>.weight' in the exported graph for layer(s) {unknown}; pass the student's own layer names")


def grid_overrides(model: onnx.ModelProto, weight_bits: WeightBits) -> dict[str, list[dict[str, Any]]]:
    """`TensorQuantOverrides` putting each Conv/Gemm/MatMul weight on the symmetric grid of its declared bits
    (`initializer_bits`); raises ExportError for a per-layer mapping naming a layer the graph lacks.

    scale_c = max|w_c| / (2^(b-1) - 1), zero point 0, per output channel. An all-zero (pruned)
    channel borrows the tensor's largest scale: its codes are 0 anyway, and a tiny scale would
    overflow the int32 bias (bias scale = input scale * weight scale).
    """
    initializers = {init.name: init for init in model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        axis = _output_channel_axis(node)
        qmax = _qmax(initializer_bits(weight_bits, node.input[1]))
        scales = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1) / qmax
        scales[scales == 0] = scales.max() if scales.max() > 0 else 1.0
        overrides[node.input[1]] = [{"axis": axis, "scale": np.float32(s), "zero_point": np.int8(0)} for s in scales]
    _check_layer_names(set(overrides), weight_bits)
    return overrides


def activation_overrides(model: onnx.ModelProto, input_ranges: Mapping[str, tuple[float, float]]) -> dict[str, list[dict[str, Any]]]:
    """`TensorQuantOverrides` giving the input tensor of each layer with a trained range (layer name -> (min, max),
    `quantize.trained_input_ranges`) the uint8 scale and zero point its fake-quant trained with.

    A layer is found by its weight initializer `<layer>.weight`; a tensor feeding several layers gets the union of
    their ranges. Activations without a trained range keep calibrated ones.
    """
    ranges: dict[str, tuple[float, float]] = {}
    found = set()
    for node in model.graph.node:
        layer = node.input[1].removesuffix(".weight") if node.op_type in WEIGHT_OPS and len(node.input) >= 2 else None
        if layer in input_ranges:
            low, high = input_ranges[layer]
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ExportError(f"input_ranges[{layer!r}] = ({low}, {high}) is not a finite (min, max) with min <= max")
            seen_low, seen_high = ranges.get(node.input[0], (low, high))
            ranges[node.input[0]] = (min(low, seen_low), max(high, seen_high))
            found.add(layer)
    if missing := sorted(set(input_ranges) - found):
        raise ExportError(f"input_ranges: no Conv/Gemm/MatMul with weight '<layer>.weight' in the exported graph for layer(s) {missing}; pass the student's own layer names")
    overrides = {}
    for tensor, (low, high) in ranges.items():
        scale, zero_point = activation_qparams(torch.tensor(low), torch.tensor(high))
        overrides[tensor] = [{"scale": np.array(scale.item(), np.float32), "zero_point": np.array(zero_point.item(), np.uint8)}]
    return overrides


class CalibrationImages(CalibrationDataReader):
    """Feeds calibration images to ORT's calibrator in batches (the ONNX batch dimension is dynamic)."""

    def __init__(self, images: torch.Tensor, batch_size: int = 64) -> None:
        self._batches = iter(images[i : i + batch_size].numpy() for i in range(0, len(images), batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


@dataclass(frozen=True)
class Int8Files:
    """Exported fp32 and int8 ONNX files and what the int8 weights look like."""

    fp32: Path
    int8: Path
    weight_bits: WeightBits
    max_weight_code: int
    """Largest |int8 weight code|: at most 2^(b-1)-1 for a b-bit grid."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The `metadata_props` both files carry (`export/metadata.py`): input contract, class names, provenance."""
    shipped_with: tuple[Path, ...] = ()
    """Files next to them that ship with the model (a text model's `tokenizer.json`)."""


PER_CHANNEL_AXIS = {"BatchNormalization": 0, "InstanceNormalization": 0, "LayerNormalization": 0}
"""Axis of the per-channel scale of normalisation layers left unfolded (a BatchNorm after a ReLU): their weight is 1-D.
ORT's default axis for them is 1, out of range for a 1-D tensor: it warned ("Axis 1 is out-of-range for weight
'bn.weight'") and fell back to one int8 scale for all channels, a grid of max|gamma|/127 that rounds a small gamma
next to large ones coarsely. Axis 0 gives each channel its own scale. On a Conv-ReLU-BN-Linear test net the logits'
max error stayed 0.398 either way (activation rounding dominates there); the warning is gone."""


def export_int8(
    student: nn.Module, input_shape: ModelInput | tuple[int, ...], calibration_images: torch.Tensor, weight_bits: WeightBits, out_dir: Path,
    metadata: Mapping[str, str] | None = None, input_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Int8Files:
    """fp32 ONNX -> pre-process -> static QDQ int8 (b-bit weight grid kept), checked; raises ExportError.

    `weight_bits` <= 7 declares the student's weights already on that symmetric per-channel grid
    (baked by QAT) and the export fails if they are not; above 7 (a float student) the weights
    are rounded to `MAX_WEIGHT_BITS` (7). A mapping (`WeightBits`) declares this per layer, a layer it leaves
    out being float. Both files carry `metadata` (`export/metadata.artifact_metadata`: how to preprocess raw
    inputs, the class names) so a deployer can run them without this code.
    `input_ranges` (layer name -> trained (min, max)) fixes those layers' input scales
    (`activation_overrides`); every other activation is calibrated on the images.
    """
    metadata = dict(metadata or {})
    model_input = as_model_input(input_shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out_dir / FP32_FILE, out_dir / INT8_FILE
    with tempfile.TemporaryDirectory(prefix="lepton-export-") as scratch:
        raw = export_fp32_onnx(student.cpu(), model_input, Path(scratch) / "raw.onnx")
        onnx.save(_strip_metadata(onnx.load(str(raw))), str(raw))
        quant_pre_process(str(raw), str(fp32_path))
        if metadata:
            onnx.save(stamp(onnx.load(str(fp32_path)), metadata), str(fp32_path))
        quantized = Path(scratch) / "quantized.onnx"
        images = model_input.cast(calibration_images).cpu()
        fp32_model = onnx.load(str(fp32_path))
        overrides = grid_overrides(fp32_model, weight_bits) | activation_overrides(fp32_model, input_ranges or {})
        quantize_static(
            str(fp32_path), str(quantized), CalibrationImages(images), quant_format=QuantFormat.QDQ, per_channel=True,
            op_types_to_quantize=model_input.quantized_ops,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            extra_options={"TensorQuantOverrides": overrides, "QDQDisableWeightAdjustForInt32Bias": True, "QDQOpTypePerChannelSupportToAxis": PER_CHANNEL_AXIS},
        )
        max_code = check_weight_grid(fp32_path, quantized, weight_bits)
        onnx.save(stamp(compact_graph(onnx.load(str(quantized))), metadata), str(int8_path))
        check_same_outputs(quantized, int8_path, images[:COMPACT_CHECK_IMAGES])
    try:
        onnx.checker.check_model(str(int8_path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"int8 model {int8_path} fails onnx.checker: {str(err).splitlines()[0]}") from None
    check_int8_graph(int8_path)
    return Int8Files(fp32_path, int8_path, weight_bits, max_code, metadata)


def check_same_outputs(reference: Path, compacted: Path, images: torch.Tensor) -> None:
    """The compacted graph must compute bit for bit what the quantizer wrote."""
    expected = ort_session(reference).run(None, {INPUT_NAME: images.numpy()})[0]
    got = ort_session(compacted).run(None, {INPUT_NAME: images.numpy()})[0]
    if not np.array_equal(expected, got):
        raise ExportError(f"int8 model {compacted}: compacting the graph changed its outputs (max |diff| {np.abs(expected - got).max():.3g}); please report this")


def check_int8_graph(int8_path: Path) -> None:
    """Every Conv/Gemm/MatMul must run as an integer kernel (QLinearConv, QGemm, ...) once ORT has fused the graph.

    Q/DQ pairs left around a float op run slower than fp32 (STACK.md: the PT2E route did this).
    """
    with tempfile.TemporaryDirectory(prefix="lepton-ortopt-") as scratch:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    left_float = [f"{node.op_type} {node.name!r}" for node in optimized.graph.node if node.op_type in FLOAT_COMPUTE_OPS]
    if left_float:
        raise ExportError(
            f"int8 model {int8_path}: {len(left_float)} op(s) still run in float after ORT's fusion "
            f"({', '.join(left_float[:5])}); their Q/DQ pairs were not fused, so the model would not run as int8"
        )


def int8_weights(int8_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """fp32 weight name -> (int8 codes, per-channel scales, axis), read from the QDQ graph's DequantizeLinear nodes that
    feed a Conv/Gemm/MatMul (an embedding table feeding a Gather is looked up, not multiplied: not on the b-bit grid)."""
    model = onnx.load(str(int8_path))
    initializers = {init.name: init for init in model.graph.initializer}
    multiplied = {name for node in model.graph.node if node.op_type in WEIGHT_OPS for name in node.input}
    weights = {}
    for node in model.graph.node:
        codes = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.output[0] in multiplied else None
        if codes is None or codes.data_type != onnx.TensorProto.INT8:
            continue
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1)
        scales = numpy_helper.to_array(initializers[node.input[1]])
        weights[node.input[0].removesuffix("_quantized")] = (numpy_helper.to_array(codes), scales, axis)
    return weights


def int8_input_qparams(int8_path: Path) -> dict[str, tuple[float, int]]:
    """Layer name -> (scale, zero point) of its quantized input, read from the DequantizeLinear feeding each Conv/Gemm/MatMul."""
    model = onnx.load(str(int8_path))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    qparams = {}
    for node in model.graph.node:
        activation, weight = (producers.get(name) for name in node.input[:2]) if node.op_type in WEIGHT_OPS else (None, None)
        if weight is None or activation is None or weight.op_type != "DequantizeLinear" or activation.op_type != "DequantizeLinear":
            continue
        zero_point = initializers[activation.input[2]] if len(activation.input) == 3 else 0
        layer = weight.input[0].removesuffix("_quantized").removesuffix(".weight")
        qparams[layer] = (float(initializers[activation.input[1]]), int(zero_point))
    return qparams


def check_weight_grid(fp32_path: Path, int8_path: Path, weight_bits: WeightBits) -> int:
    """Largest |weight code|; for each weight declared on a b-bit grid (b <= 7, `initializer_bits`), fail unless its
    codes fit that grid and dequantize to the fp32 weights."""
    fp32_weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(fp32_path)).graph.initializer}
    max_code = 0
    for name, (codes, scales, axis) in int8_weights(int8_path).items():
        max_code = max(max_code, int(np.abs(codes.astype(np.int32)).max(initial=0)))
        bits = initializer_bits(weight_bits, name)
        if bits > MAX_WEIGHT_BITS:
            continue
        if name not in fp32_weights:
            raise ExportError(f"int8 weight {name!r} has no fp32 counterpart in {fp32_path}; the quantizer renamed it")
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale = scales.reshape(shape) if scales.ndim else scales
        error = float((np.abs(codes * scale - fp32_weights[name]) / scale).max(initial=0))
        if np.abs(codes.astype(np.int32)).max(initial=0) > _qmax(bits) or error > GRID_TOLERANCE:
            raise ExportError(
                f"weight {name!r} is not on the declared {bits}-bit grid (error {error:.3g} of a step); "
                "export the student as finalized by its QAT run, or declare its real bit width"
            )
    return max_code


# ---- checks in ONNX Runtime (`runtime.py` runs the files) -----------------------------------------

def calibration_images(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """A seeded random sample of `count` training images (all of them when the set is smaller)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return dataset_images(dataset, sorted(order.tolist()))[0]


@dataclass(frozen=True)
class Int8Checks:
    """What verification measured: accuracies (fractions), file sizes, latency per batch size.

    The check compares validation figures (the trial's `best_val_accuracy` against both files on the validation
    split), so publishing is decided on validation as the pick was; `int8_test_accuracy` is the estimate of what
    ships, measured once on the test split, reported and never compared."""

    trial_accuracy: float
    fp32_accuracy: float
    int8_accuracy: float
    tolerance_points: float
    fp32_bytes: int
    int8_bytes: int
    latency_ms: dict[int, dict[str, float]] = field(default_factory=dict)
    """batch size -> {"fp32": ms, "int8": ms}."""
    int8_test_accuracy: float = float("nan")

    @property
    def drop_points(self) -> float:
        return (self.trial_accuracy - self.int8_accuracy) * 100

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.tolerance_points + 1e-9

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes

    def speedup(self, batch_size: int) -> float:
        """fp32 latency / int8 latency: above 1 means int8 is faster."""
        return self.latency_ms[batch_size]["fp32"] / self.latency_ms[batch_size]["int8"]

    def as_metrics(self) -> dict[str, float]:
        """The exported file's figures on the sweep run. Named apart from the trials' (`int8_val_accuracy`,
        `latency_ms`): the export is a second file (more calibration images) and the sweep run's headline is the pick's
        trial figures under the trials' names."""
        values = {
            "export_int8_val_accuracy": self.int8_accuracy, "fp32_onnx_val_accuracy": self.fp32_accuracy, "int8_test_accuracy": self.int8_test_accuracy,
            "int8_accuracy_drop_points": self.drop_points, metrics.INT8_FILE_BYTES: self.int8_bytes, "fp32_onnx_bytes": self.fp32_bytes,
        }
        for batch_size, latency in self.latency_ms.items():
            values |= {f"int8_latency_ms_b{batch_size}": latency["int8"], f"fp32_onnx_latency_ms_b{batch_size}": latency["fp32"]}
        return values


def measure_int8(
    files: Int8Files, val_set: Dataset, test_set: Dataset | None, input_shape: ModelInput | tuple[int, ...], trial_val_accuracy: float, cfg: ExportConfig,
) -> Int8Checks:
    """Accuracy of both ONNX files on the validation split (what the check compares with the trial's validation
    accuracy) and of the int8 file on the test split (reported), their sizes, and interleaved latency at batch 1 and
    `cfg.latency_batch_size`."""
    models = {"fp32": files.fp32, "int8": files.int8}
    latency = {batch: measure_latency(models, input_shape, batch) for batch in sorted({1, cfg.latency_batch_size})}
    return Int8Checks(
        trial_accuracy=float(trial_val_accuracy), fp32_accuracy=onnx_accuracy(files.fp32, val_set), int8_accuracy=onnx_accuracy(files.int8, val_set),
        tolerance_points=cfg.tolerance, fp32_bytes=files.fp32.stat().st_size, int8_bytes=files.int8.stat().st_size, latency_ms=latency,
        int8_test_accuracy=onnx_accuracy(files.int8, test_set) if test_set is not None else float("nan"),
    )


def verify_int8(checks: Int8Checks) -> None:
    """Raise ExportError when the int8 model is more than the tolerance below the trial's fake-quant accuracy."""
    if not checks.passed:
        raise ExportError(
            f"int8 model's validation accuracy {checks.int8_accuracy:.4f} in ONNX Runtime is {checks.drop_points:.2f} pt below the trial's "
            f"{checks.trial_accuracy:.4f} (export.tolerance {checks.tolerance_points} pt); nothing was published; the trials are kept: "
            "export another with `lepton-ray export WORKFLOW --trial N`, or raise export.tolerance"
        )
