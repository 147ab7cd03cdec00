"""Int8 export in ONNX Runtime: integer kernels, the b-bit grid kept exactly, accuracy guard, MLflow publishing,
and the artifact contract (the published files run on raw inputs from their own metadata).

A digits `cnn_small` is trained in-process for a few epochs and its weights are rounded onto a
4-bit per-channel grid here, as a QAT trial would bake them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from torch import nn
from torch.utils.data import TensorDataset

from lepton_ray import metrics
from lepton_ray.compress.quantize import ActivationFQ, activation_qparams, install_fake_quant, round_onto_weight_grid, trained_input_ranges
from lepton_ray.config import (
    DataConfig, ExportConfig, ModelSpec, SelectionConfig, TeacherConfig, TeacherTrainConfig, TrackingConfig, WorkflowConfig, load_workflow,
)
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.data.splits import split_indices
from lepton_ray.errors import ExportError
from lepton_ray.export.int8 import (
    CalibrationImages, Int8Checks, activation_overrides, calibration_images, check_int8_graph, check_same_outputs, check_weight_grid,
    export_int8, int8_input_qparams, int8_weights, measure_int8, verify_int8,
)
from lepton_ray.deploy.publish import FRONT_TAG, RAW_EXAMPLE_FILE
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.models.zoo import build_model
from lepton_ray.export.metadata import (
    DATASET_KEY, PREPROCESSING_KEY, SWEEP_RUN_KEY, TRIAL_KEY, WORKFLOW_KEY, class_names, preprocessing, read_metadata,
)
from lepton_ray.export.onnx_graph import INPUT_NAME, OUTPUT_NAME, compact_graph
from lepton_ray.export.runtime import onnx_accuracy
from lepton_ray.deploy.publish import ExportResult, select_and_export
from lepton_ray.deploy.published import REGISTERED_FILE
from lepton_ray.tracking.tracker import Tracker
from lepton_ray.data.batches import iterate_batches, train_indices
from lepton_ray.trial.epoch import Precision, evaluate, train_epoch

from conftest import QUICKSTART

BITS = 4
QMAX = 2 ** (BITS - 1) - 1
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return build_data(DataConfig())


@pytest.fixture(scope="module")
def float_student(digits: DataSplits) -> nn.Module:
    torch.manual_seed(0)
    return train_on_labels(build_model(ModelSpec(name="cnn_small"), digits.input_shape, digits.num_classes), digits, epochs=4)


def train_on_labels(model: nn.Module, digits: DataSplits, epochs: int) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(epochs):
        batches = iterate_batches(digits.train, train_indices(len(digits.train), epoch, 0), 32, CPU)
        train_epoch(model, [], DistillationObjective.hard_labels_only(), batches, optimizer, Precision("fp32", CPU))
    return model.eval()


@pytest.fixture(scope="module")
def student(float_student: nn.Module, digits: DataSplits) -> tuple[nn.Module, float]:
    """The 4-bit baked student and its torch validation accuracy (what the trial reports as best_val_accuracy)."""
    baked = round_onto_weight_grid(copy.deepcopy(float_student), BITS).eval()
    accuracy, _ = evaluate(baked, digits.val, 256, CPU)
    assert accuracy > 0.8, "the digits student did not train"
    return baked, accuracy


@pytest.fixture(scope="module")
def exported(student, digits: DataSplits, tmp_path_factory):
    model, _ = student
    return export_int8(model, digits.input_shape, calibration_images(digits.train, 512, 0), BITS, tmp_path_factory.mktemp("int8"))


def optimized_op_counts(path, tmp_path) -> Counter:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_int8_model_passes_checker_and_every_conv_and_gemm_runs_as_an_integer_kernel(exported, tmp_path):
    onnx.checker.check_model(str(exported.int8), full_check=True)
    fp32_ops = Counter(node.op_type for node in onnx.load(str(exported.fp32)).graph.node)
    int8_ops = optimized_op_counts(exported.int8, tmp_path)
    assert fp32_ops["Conv"] == 2 and fp32_ops["Gemm"] == 1
    assert int8_ops["QLinearConv"] == fp32_ops["Conv"]
    assert int8_ops["QGemm"] == fp32_ops["Gemm"]
    assert int8_ops["Conv"] == int8_ops["Gemm"] == int8_ops["MatMul"] == 0


def test_a_batchnorm_after_relu_gets_one_int8_scale_per_channel_and_no_axis_warning(digits, tmp_path, caplog):
    """quant_pre_process cannot fold a BatchNorm that follows a ReLU into its conv; ORT then quantizes its 1-D gamma."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.logspace(-2, 0.7, 8))  # gammas 0.01 .. 5: one scale for all would round the small ones to 0
    with caplog.at_level("WARNING"):
        files = export_int8(model, digits.input_shape, calibration_images(digits.train, 64, 0), 32, tmp_path)
    assert not [r for r in caplog.records if "out-of-range" in r.getMessage()], "ORT's default axis 1 does not exist on a 1-D gamma"
    graph = onnx.load(str(files.int8)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    (norm,) = [node for node in graph.node if node.op_type == "BatchNormalization"]
    gamma = producer[norm.input[1]]
    assert gamma.op_type == "DequantizeLinear" and initializers[gamma.input[1]].shape == (8,), "one scale per channel"
    shipped = initializers[gamma.input[0]].astype(np.float32) * initializers[gamma.input[1]]
    assert np.allclose(shipped, model[2].weight.detach().numpy(), rtol=0.01), "every gamma, the smallest too, within 1%"


def test_4bit_weight_grid_survives_exactly_in_the_int8_model(exported, student):
    model, _ = student
    fp32_weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(exported.fp32)).graph.initializer}
    torch_weights = {name: value.numpy() for name, value in model.state_dict().items()}
    weights = int8_weights(exported.int8)
    assert set(weights) == {"features.0.0.weight", "features.1.0.weight", "classifier.1.weight"}
    for name, (codes, scales, axis) in weights.items():
        assert codes.dtype == np.int8 and axis == 0
        assert np.abs(codes).max() == QMAX  # the grid's top code is used: scale = max|w_c| / 7
        per_channel = scales.reshape(-1, *[1] * (codes.ndim - 1))
        np.testing.assert_allclose(codes * per_channel, fp32_weights[name], rtol=1e-6, atol=1e-6 * scales.max())  # float32 rounding of code x scale: a few ulp
        # Folding BatchNorm scales each channel, so the torch codes reappear up to each channel's sign.
        torch_scale = np.abs(torch_weights[name]).reshape(len(codes), -1).max(axis=1).reshape(per_channel.shape) / QMAX
        assert np.array_equal(np.abs(codes), np.abs(np.rint(torch_weights[name] / torch_scale)).astype(np.int8))
    assert exported.max_weight_code == QMAX


def test_fp32_onnx_matches_torch_and_int8_accuracy_is_within_tolerance(exported, student, digits):
    model, trial_accuracy = student
    images = digits.test.tensors[0][:64]
    onnx_logits = ort.InferenceSession(str(exported.fp32)).run(None, {INPUT_NAME: images.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, model(images).detach().numpy(), atol=1e-4, rtol=1e-4)
    checks = measure_int8(exported, digits.val, digits.test, digits.input_shape, trial_accuracy, ExportConfig(latency_batch_size=32))
    assert checks.fp32_accuracy == pytest.approx(trial_accuracy, abs=1.5 / len(digits.val)), "both on the validation split"
    assert abs(checks.int8_accuracy - trial_accuracy) * 100 <= 1.0
    assert checks.int8_test_accuracy == onnx_accuracy(exported.int8, digits.test), "the test figure is the int8 file's, on test"
    assert set(checks.latency_ms) == {1, 32}
    assert all(ms > 0 for latency in checks.latency_ms.values() for ms in latency.values())
    assert checks.int8_bytes == exported.int8.stat().st_size < checks.fp32_bytes
    verify_int8(checks)


def test_compacted_int8_file_computes_exactly_what_the_quantizer_wrote_in_far_fewer_bytes(exported, digits, tmp_path):
    plain = tmp_path / "plain.int8.onnx"
    images = calibration_images(digits.train, 512, 0)
    quantize_static(
        str(exported.fp32), str(plain), CalibrationImages(images), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    compact = tmp_path / "compact.int8.onnx"
    onnx.save(compact_graph(onnx.load(str(plain))), str(compact))
    check_same_outputs(plain, compact, digits.test.tensors[0])
    assert optimized_op_counts(compact, tmp_path) == optimized_op_counts(plain, tmp_path), "ORT fuses both into the same kernels"
    assert compact.stat().st_size < 0.8 * plain.stat().st_size
    graph = onnx.load(str(compact)).graph
    assert not [node.name for node in graph.node if node.name] and not graph.value_info
    assert {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8 and init.dims} >= {
        "features.0.0.weight_quantized", "features.1.0.weight_quantized", "classifier.1.weight_quantized"}, "weights keep their module names"

    broken = onnx.load(str(compact))
    weight = next(init for init in broken.graph.initializer if init.name == "classifier.1.weight_quantized")
    codes = numpy_helper.to_array(weight).copy()
    codes[0, 0] = -codes[0, 0] or 1
    weight.CopyFrom(numpy_helper.from_array(codes, weight.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(ExportError, match="compacting the graph changed its outputs"):
        check_same_outputs(plain, tmp_path / "broken.onnx", digits.test.tensors[0])


def test_a_student_trained_in_channels_last_exports_the_file_its_checkpoint_exports(student, exported, digits, tmp_path):
    """A trial measures the int8 file of its in-memory student, whose conv weights are channels_last; publish exports
    the same student loaded from its checkpoint (contiguous). Both are the same bytes: the cost a sweep ranks by is
    the cost of what ships (before, the trial's graph carried its flatten as Shape/Range/Gather: 5.8% more gzip bytes on a tiny student)."""
    model, _ = student
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    files = export_int8(channels_last, digits.input_shape, calibration_images(digits.train, 512, 0), BITS, tmp_path)
    assert files.int8.read_bytes() == exported.int8.read_bytes()
    assert channels_last.training and channels_last.features[0][0].weight.is_contiguous(memory_format=torch.channels_last), \
        "the caller's student is left as it was"


def test_float_student_gets_7bit_weights_and_is_refused_as_a_4bit_grid(float_student, digits, tmp_path):
    files = export_int8(float_student, digits.input_shape, calibration_images(digits.train, 128, 0), 32, tmp_path)
    assert files.max_weight_code == 63
    check_weight_grid(files.fp32, files.int8, 32)
    with pytest.raises(ExportError, match="not on the declared 4-bit grid"):
        check_weight_grid(files.fp32, files.int8, BITS)


def observed_input_ranges(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Each layer's input range as QAT's activation observers record it on these images (BatchNorm left in eval)."""
    probe = copy.deepcopy(model).eval()
    install_fake_quant(probe, BITS, activation_bits=8)
    for observer in (module for module in probe.modules() if isinstance(module, ActivationFQ)):
        observer.enabled = True
        observer.train()
    with torch.no_grad():
        for batch in images.split(64):
            probe(batch)
    return trained_input_ranges(probe)


def test_trained_input_ranges_set_the_int8_input_scales_and_other_layers_stay_calibrated(student, exported, digits, tmp_path):
    model, trial_accuracy = student
    images = calibration_images(digits.train, 512, 0)
    ranges = {layer: span for layer, span in observed_input_ranges(model, images).items() if layer.startswith("features.")}
    assert set(ranges) == {"features.0.0", "features.1.0"}
    files = export_int8(model, digits.input_shape, images, BITS, tmp_path, input_ranges=ranges)
    qparams = int8_input_qparams(files.int8)
    for layer, (low, high) in ranges.items():
        scale, zero_point = activation_qparams(torch.tensor(low), torch.tensor(high))
        assert qparams[layer] == (np.float32(scale.item()), zero_point.item()), layer
    assert qparams["classifier.1"] == int8_input_qparams(exported.int8)["classifier.1"], "no trained range: calibrated as before"
    assert abs(onnx_accuracy(files.int8, digits.test) - trial_accuracy) * 100 <= ExportConfig().tolerance


def test_input_ranges_naming_an_unknown_layer_or_an_empty_range_fail_with_one_line(exported):
    fp32 = onnx.load(str(exported.fp32))
    with pytest.raises(ExportError, match=r"no Conv/Gemm/MatMul with weight '<layer>.weight' .* \['features.9'\]"):
        activation_overrides(fp32, {"features.9": (0.0, 1.0)})
    with pytest.raises(ExportError, match=r"input_ranges\['features.1.0'\] = \(1.0, -1.0\) is not a finite \(min, max\)"):
        activation_overrides(fp32, {"features.1.0": (1.0, -1.0)})


def session_outputs(path, images: torch.Tensor, level: ort.GraphOptimizationLevel) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: images.numpy()})[0]


def test_a_float_students_int8_file_predicts_with_ort_integer_kernels_what_its_qdq_math_predicts(float_student, digits, tmp_path):
    """Unoptimized, ORT runs the QDQ graph as float math; optimized, as u8 x s8 integer kernels. On AVX2 CPUs
    those saturate for weight codes past 63, so the shipped file must agree with its own math on any CPU."""
    files = export_int8(float_student, digits.input_shape, calibration_images(digits.train, 512, 0), 32, tmp_path)
    images = digits.test.tensors[0]
    reference = session_outputs(files.int8, images, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    kernels = session_outputs(files.int8, images, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert (reference.argmax(axis=1) == kernels.argmax(axis=1)).all()


def test_graph_check_rejects_a_conv_left_in_float(exported, digits, tmp_path):
    first_conv = next(node.name for node in onnx.load(str(exported.fp32)).graph.node if node.op_type == "Conv")
    partial = tmp_path / "partial.int8.onnx"
    quantize_static(
        str(exported.fp32), str(partial), CalibrationImages(calibration_images(digits.train, 64, 0)), quant_format=QuantFormat.QDQ,
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=[first_conv],
    )
    with pytest.raises(ExportError, match=r"1 op\(s\) still run in float .*Conv"):
        check_int8_graph(partial)


def test_verify_fails_showing_both_accuracies_when_the_drop_exceeds_tolerance():
    checks = Int8Checks(trial_accuracy=0.95, fp32_accuracy=0.95, int8_accuracy=0.93, tolerance_points=1.0, fp32_bytes=100, int8_bytes=30)
    assert checks.drop_points == pytest.approx(2.0)
    with pytest.raises(ExportError, match=r"accuracy 0.9300 .* 2.00 pt below the trial's 0.9500 \(export.tolerance 1.0 pt\); nothing was published; .*`lepton-ray export WORKFLOW --trial N`"):
        verify_int8(checks)
    verify_int8(Int8Checks(0.95, 0.95, 0.94, 1.0, 100, 30))  # exactly 1 pt: allowed


# ---- select, export, publish through MLflow ------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); tests use their own experiment and model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def workflow(tmp_path, uri: str, model_name: str, policy: SelectionConfig) -> WorkflowConfig:
    return WorkflowConfig(
        name="digits-export", output_dir=tmp_path / "runs",
        teacher=TeacherConfig(name="cnn_large", train=TeacherTrainConfig()), student=ModelSpec(name="cnn_small"),
        tracking=TrackingConfig(uri=uri, experiment=f"export-{model_name}", model_name=model_name),
        selection=policy, export=ExportConfig(calibration_samples=256, latency_batch_size=16),
    )


def sweep_runs(wf: WorkflowConfig, student_accuracy: float):
    """A tracker, a parent run and four trial runs; trial 2 is the picked point (knee of the front on the default cost)."""
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    parent = tracker.start_run("sweep", "sweep", {}, {})
    rows = [(1, student_accuracy - 0.30, 1_000.0), (2, student_accuracy, 3_000.0), (3, student_accuracy + 0.005, 9_000.0), (4, student_accuracy - 0.1, 9_500.0)]
    trials = pd.DataFrame(rows, columns=["trial", metrics.SELECTION_ACCURACY, wf.sweep.cost_metric])
    trials[metrics.BEST_VAL_ACCURACY] = trials[metrics.SELECTION_ACCURACY]
    trials[metrics.TEST_ACCURACY] = [1.0, 0.5, 1.0, 1.0]  # ranks the trials otherwise: no decision may read it
    trials["size_bytes"] = [500.0, 2_000.0, 1_500.0, 4_000.0]  # the estimate ranks trials 2 and 3 the other way round
    trials["run_id"] = [tracker.start_run(f"t{t}", f"trial-{t}", {}, {}, parent_run_id=parent) for t, _, _ in rows]
    trials["distillation.alpha"] = [0.1, 0.5, 0.9, 0.3]  # a searched knob, as the leaderboard names it
    return tracker, parent, trials


def loader_for(model: nn.Module, trial: int):
    def load_student(row: dict) -> tuple[nn.Module, dict]:
        assert row["trial"] == trial, "only the picked trial is loaded"
        return copy.deepcopy(model), {"bits": BITS, metrics.BEST_VAL_ACCURACY: row[metrics.BEST_VAL_ACCURACY]}

    return load_student


class Champion(NamedTuple):
    wf: WorkflowConfig
    tracker: Tracker
    parent: str
    trials: pd.DataFrame
    result: ExportResult


@pytest.fixture(scope="module")
def champion(student, digits, mlflow_uri, tmp_path_factory) -> Champion:
    """The knee trial of a made-up sweep, exported, verified and published once for the tests below."""
    model, accuracy = student
    tmp_path = tmp_path_factory.mktemp("champion")
    wf = workflow(tmp_path, mlflow_uri, "digits-student", SelectionConfig(policy="knee"))
    tracker, parent, trials = sweep_runs(wf, accuracy)
    result = select_and_export(wf, trials, 0.99, loader_for(model, 2), digits, tracker, parent, tmp_path / "export")
    return Champion(wf, tracker, parent, trials, result)


def wf_cost(champion) -> str:
    return champion.wf.sweep.cost_metric


def test_select_and_export_publishes_the_picked_trial_as_champion(champion, digits):
    import mlflow.pyfunc

    tracker, parent, trials, result = champion.tracker, champion.parent, champion.trials, champion.result
    assert result.selection.trial == 2
    champion_version = tracker.client.get_model_version_by_alias("digits-student", "champion")
    assert str(champion_version.version) == result.published.version == "1"
    assert champion_version.tags["lepton.trial"] == "2"
    trial_run = trials.set_index("trial").loc[2, "run_id"]
    (logged,) = tracker.client.search_logged_models([tracker.experiment_id])
    assert logged.source_run_id == trial_run == champion_version.run_id, "the version's source is the trial that trained it"
    assert logged.params == {"distillation.alpha": "0.5"}, "the knobs the pick trained with, not the base workflow's"
    assert champion_version.tags["lepton.sweep_run_id"] == parent
    trial_tags = tracker.client.get_run(trial_run).data.tags
    assert trial_tags["lepton.champion"] == "true" and trial_tags["lepton.registered_version"] == "models:/digits-student/1"
    assert trial_tags["mlflow.note.content"].startswith("**Champion**: trial 2, registered as `models:/digits-student/1`")
    sweep_run = tracker.client.get_run(parent).data
    assert sweep_run.tags["mlflow.note.content"] == trial_tags["mlflow.note.content"] and result.selection.explanation in sweep_run.tags["mlflow.note.content"]
    assert sweep_run.metrics[metrics.SELECTION_ACCURACY] == pytest.approx(result.selection.row[metrics.SELECTION_ACCURACY])
    assert sweep_run.metrics[wf_cost(champion)] == pytest.approx(result.selection.row[wf_cost(champion)]), "headline figures on the sweep run"
    assert metrics.INT8_FILE_BYTES in sweep_run.metrics and "int8_bytes" not in sweep_run.metrics, "one name per figure across run levels"
    history = tracker.client.get_metric_history(parent, metrics.SELECTION_ACCURACY)
    assert len(history) == 1, "one figure per name: the exported file's own accuracy is export_int8_val_accuracy"
    assert sweep_run.metrics["export_int8_val_accuracy"] == pytest.approx(result.checks.int8_accuracy)
    assert "lepton.champion" not in tracker.client.get_run(trials.set_index("trial").loc[1, "run_id"]).data.tags
    assert "mlflow.note.content" in tracker.client.get_experiment(tracker.experiment_id).tags
    loaded = mlflow.pyfunc.load_model("models:/digits-student@champion")
    images = digits.test.tensors[0][:8].numpy()
    expected = ort.InferenceSession(str(result.files.int8)).run(None, {INPUT_NAME: images})[0]
    np.testing.assert_allclose(np.asarray(loaded.predict({INPUT_NAME: images})[OUTPUT_NAME]), expected, rtol=1e-5, atol=1e-5)
    front_tags = {int(t): tracker.client.get_run(run_id).data.tags[FRONT_TAG] for t, run_id in zip(trials["trial"], trials["run_id"])}
    assert front_tags == {1: "true", 2: "true", 3: "true", 4: "false"}
    artifacts = {item.path for item in tracker.client.list_artifacts(parent, "selection")}
    assert artifacts == {"selection/pareto.png", "selection/report.md", "selection/leaderboard.csv"}
    report = result.report.read_text()
    assert "**passed**" in report and "version 1 (alias `champion`)" in report and result.selection.explanation in report
    assert "Spearman rank correlation of `size_bytes` (estimate) with `int8_gzip_bytes` (measured): 0.800 over 4 finished trials" in report
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_logged_report_shows_its_plot_in_the_mlflow_ui_names_the_registered_file_and_a_leaderboard_sits_beside_it(champion, monkeypatch, tmp_path):
    """The UI renders report.md with react-markdown, which leaves a relative image link as written, so the browser
    resolves it against the UI's root page: the link must fetch the logged PNG from MLflow's own server there."""
    import urllib.parse

    import mlflow
    from mlflow.server import app, handlers

    tracker, parent, result = champion.tracker, champion.parent, champion.result
    logged = Path(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="selection/report.md", tracking_uri=tracker.uri, dst_path=str(tmp_path)))
    report = logged.read_text()
    (image,) = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    page = f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{parent}/artifacts/selection/report.md"
    url = urllib.parse.urlsplit(urllib.parse.urljoin(page, image))
    monkeypatch.setattr(handlers, "_tracking_store", None)  # the in-process server reads this test's store
    handlers._get_tracking_store(tracker.uri)
    response = app.test_client().get(f"{url.path}?{url.query}")
    assert response.status_code == 200 and response.data == result.plot.read_bytes(), "the UI fetches the logged pareto.png"
    assert f"its file is `{REGISTERED_FILE}`" in report and f"For `{REGISTERED_FILE}` of `models:/digits-student/1` (the same code runs the export folder's `student.int8.onnx`):" in report
    assert "e+0" not in report, "sizes as 14,270, never 1.427e+04"

    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="selection/leaderboard.csv", tracking_uri=tracker.uri, dst_path=str(tmp_path)))
    assert list(board["trial"]) == [3, 2, 4, 1], "most accurate first"
    assert list(board.columns[:2]) == ["trial", metrics.SELECTION_ACCURACY] and "distillation.alpha" in board.columns
    assert list(board.loc[board["picked"], "trial"]) == [2] and set(board["run_id"]) == set(champion.trials["run_id"])


# ---- the artifact contract: a deployer runs the champion from its metadata alone ----------------

def raw_digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The test split as scikit-learn ships it (N, 1, 8, 8 pixel values 0-16) and its labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    _, _, test, _ = split_indices(bunch.target, DataConfig(), with_test=True)
    return bunch.images[test][:, None], bunch.target[test]


def run_as_the_report_says(report: str, model_file: Path, raw: np.ndarray) -> list[str]:
    """Execute the report's onnxruntime snippet, which reads only the file's metadata, on `raw`."""
    code = re.search(r"```python\n(.*?)```", report, re.S).group(1)
    assert f'"{REGISTERED_FILE}"' in code, "the report's code opens the registered file"
    namespace = {"raw": raw}
    exec(code.replace(f'"{REGISTERED_FILE}"', repr(str(model_file))), namespace)
    return namespace["predicted"]


def test_the_champions_files_run_on_raw_digits_from_their_metadata_alone_score_what_the_export_measured(champion, digits):
    raw, labels = raw_digits_test_split()
    assert raw.min() == 0 and raw.max() == 16 and np.array_equal(labels, digits.test.tensors[1].numpy())
    report, files, checks = champion.result.report.read_text(), champion.result.files, champion.result.checks
    for path in (files.int8, files.fp32):
        predicted = run_as_the_report_says(report, path, raw)
        measured = ort.InferenceSession(str(path)).run(None, {INPUT_NAME: digits.test.tensors[0].numpy()})[0].argmax(axis=1)
        assert predicted == [str(index) for index in measured], f"{path.name}: not the predictions the export measured"
        if path == files.int8:
            assert np.mean(np.array(predicted) == labels.astype(str)) == pytest.approx(checks.int8_test_accuracy, abs=1e-12)


def test_the_registered_champion_carries_a_description_signature_input_examples_and_its_contract_as_tags(champion, digits, tmp_path):
    import mlflow
    from mlflow.models import Model

    version = champion.tracker.client.get_model_version_by_alias("digits-student", "champion")
    file_metadata = read_metadata(champion.result.files.int8)
    assert {key: version.tags.get(key) for key in file_metadata} == file_metadata
    assert (file_metadata[DATASET_KEY], file_metadata[WORKFLOW_KEY], file_metadata[TRIAL_KEY], file_metadata[SWEEP_RUN_KEY]) == (
        "digits", "digits-export", "2", champion.parent)
    assert class_names(file_metadata) == [str(digit) for digit in range(10)]
    assert "(raw * 0.0625 - mean[c]) / std[c]" in version.description and PREPROCESSING_KEY in version.description
    assert f"extra_files/{RAW_EXAMPLE_FILE}" in version.description

    local = Path(mlflow.artifacts.download_artifacts(f"models:/digits-student/{version.version}", dst_path=str(tmp_path)))
    model = Model.load(str(local))
    assert [(spec.name, spec.type, spec.shape) for spec in model.signature.inputs.inputs] == [(INPUT_NAME, np.dtype(np.float32), (-1, 1, 8, 8))]
    assert [(spec.name, spec.shape) for spec in model.signature.outputs.inputs] == [(OUTPUT_NAME, (-1, 10))]
    assert [node.name for node in onnx.load(str(local / "model.onnx")).graph.input] == [INPUT_NAME], "the signature names the file's own tensors"
    assert read_metadata(local / "model.onnx") == file_metadata
    example = model.load_input_example(str(local))[INPUT_NAME]
    assert np.array_equal(example, digits.test.tensors[0][:1].numpy()), "the logged example is model-ready"
    raw_example = json.loads((local / "extra_files" / RAW_EXAMPLE_FILE).read_text())
    raw = np.array(raw_example["raw"])
    assert raw.dtype.kind == "i" and raw.shape == (1, 1, 8, 8) and 0 <= raw.min() and raw.max() <= 16
    assert raw_example["label"] == str(int(digits.test.tensors[1][0]))
    prep = preprocessing(file_metadata)
    model_input = (raw.astype(np.float32) * np.float32(prep["scale"]) - np.float32(prep["mean"])) / np.float32(prep["std"])
    assert np.array_equal(model_input, example), "the raw example maps onto the logged example through the contract"


def test_int8_model_that_loses_accuracy_is_never_registered(student, digits, mlflow_uri, tmp_path):
    model, accuracy = student
    wf = workflow(tmp_path, mlflow_uri, "digits-student-broken", SelectionConfig(policy="max_accuracy_under_cost", options={"budget": 5_000}))
    tracker, parent, trials = sweep_runs(wf, accuracy)
    # Calibrating on images 100x too small clips every real activation: a broken int8 model.
    train_images, train_labels = digits.train.tensors
    corrupt = dataclasses.replace(digits, train=TensorDataset(train_images * 0.01, train_labels))
    with pytest.raises(ExportError, match=r"int8 model's validation accuracy 0\.\d{4} .* pt below the trial's 0\.\d{4}"):
        select_and_export(wf, trials, 0.99, loader_for(model, 2), corrupt, tracker, parent, tmp_path / "export")
    assert tracker.client.search_model_versions("name = 'digits-student-broken'") == []
    assert list(tracker.client.search_logged_models([tracker.experiment_id])) == []
    assert "**FAILED**" in (tmp_path / "export" / "report.md").read_text()
    assert "published: **no**" in (tmp_path / "export" / "report.md").read_text()


def test_the_quickstart_students_int8_file_is_under_30_percent_of_its_fp32_file(digits, tmp_path):
    """Issue 5's size goal, on the quickstart's own student architecture (4-bit grid, as its QAT trials bake it)."""
    torch.manual_seed(0)
    model = round_onto_weight_grid(build_model(load_workflow(QUICKSTART).student, digits.input_shape, digits.num_classes), BITS).eval()
    files = export_int8(model, digits.input_shape, calibration_images(digits.train, 128, 0), BITS, tmp_path)
    assert files.int8.stat().st_size < 0.30 * files.fp32.stat().st_size
