"""int8 vs fp32 ONNX Runtime latency on this CPU, for lepton-ray's int8 export.

Models: two digits `cnn_small` students, the quickstart's and the default width (trained here for
a few epochs, weights baked on a 4-bit grid, exported with `lepton_ray.export.export_int8`), and torchvision mobilenet_v2 / resnet18
students with random weights (latency does not depend on the values) at 32 px (batch 1 and 64)
and 224 px (batch 1). Each configuration times fp32, our int8 export and ORT's plain
`quantize_static` of the same fp32 file (no scale overrides) in interleaved rounds after warm-up,
and reports medians: speed-up = fp32 / int8, and ours / plain latency; and each int8 file's size
against its fp32 file.

Run: .venv/bin/python -m benchmarks.int8_speedup [--quick]   (about 1-2 minutes on 2 cores; --quick:
the digits students and resnet18 at 32 px, 1 s per configuration). Writes
benchmarks/results/int8_speedup.json and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from torch import nn

from benchmarks.common import Figure, figures_table, write_result
from lepton_ray.compress.quantize import round_onto_weight_grid
from lepton_ray.config import DataConfig, ModelSpec, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.export.int8 import CalibrationImages, INT8_FILE, calibration_images, export_int8
from lepton_ray.export.runtime import measure_latency, onnx_accuracy
from lepton_ray.models.zoo import build_model
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.data.batches import iterate_batches, train_indices
from lepton_ray.trial.epoch import Precision, evaluate, train_epoch

NAME = "int8_speedup"
REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
DIGITS_BITS = 4
CALIBRATION_IMAGES = 64
SECONDS_PER_CONFIG, QUICK_SECONDS_PER_CONFIG = 4.0, 1.0
TORCHVISION_CASES = [
    # (label, registry name, image size, batch sizes)
    ("mobilenet_v2@32", "mobilenet_v2", 32, (1, 64)),
    ("resnet18@32", "resnet18", 32, (1, 64)),
    ("mobilenet_v2@224", "mobilenet_v2", 224, (1,)),
    ("resnet18@224", "resnet18", 224, (1,)),
]
QUICK_CASES = ["resnet18@32"]
SIZE_GOAL = 0.30
"""int8 file / fp32 file (issue 5). Int8 weights alone give 0.25; a small model's QDQ graph adds a fixed part on top."""
DIGITS_STUDENTS = [
    # (label, student spec): the quickstart's student, and cnn_small's default width
    ("digits_quickstart_4bit", load_workflow(REPO / "workflows" / "digits_quickstart.yaml").student),
    ("digits_cnn_small_4bit", ModelSpec(name="cnn_small")),
]
SIZE_FLOOR_ONLY = {"digits_cnn_small_4bit"}
"""Reported without the size goal: at 5k parameters the QDQ graph's fixed ~2 KB is a tenth of the fp32 file (floor ~0.33)."""


def digits_student(spec: ModelSpec) -> tuple[nn.Module, float, object]:
    """The student trained 4 epochs on digits, weights rounded onto the 4-bit per-channel grid as QAT bakes them."""
    torch.manual_seed(0)
    data = build_data(DataConfig())
    model = build_model(spec, data.input_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(4):
        batches = iterate_batches(data.train, train_indices(len(data.train), epoch, 0), 32, CPU)
        train_epoch(model, [], DistillationObjective.hard_labels_only(), batches, optimizer, Precision("fp32", CPU))
    round_onto_weight_grid(model, DIGITS_BITS)
    model.eval()
    return model, evaluate(model, data.test, 256, CPU)[0], data


def plain_int8(fp32_path: Path, images: torch.Tensor, path: Path) -> Path:
    """ORT's quantize_static with the same format and calibration, but no scale overrides."""
    quantize_static(
        str(fp32_path), str(path), CalibrationImages(images), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    return path


def bench(label: str, model: nn.Module, input_shape: tuple[int, ...], images: torch.Tensor, weight_bits: int, batches: tuple[int, ...], folder: Path, seconds: float) -> tuple[list[dict], dict]:
    start = time.perf_counter()
    files = export_int8(model, input_shape, images, weight_bits, folder / label)
    plain = plain_int8(files.fp32, images, folder / label / "student.int8_plain.onnx")
    export_seconds = time.perf_counter() - start
    models = {"fp32": files.fp32, "int8": files.int8, "int8_plain": plain}
    rows = []
    for batch in batches:
        ms = measure_latency(models, input_shape, batch, max_rounds=500, seconds=seconds)
        rows.append({
            "model": label, "batch": batch, "fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "int8_plain_ms": ms["int8_plain"],
            "int8_speedup": ms["fp32"] / ms["int8"], "ours_over_plain_latency": ms["int8"] / ms["int8_plain"],
        })
    ours_ops, plain_ops = optimized_ops(files.int8), optimized_ops(plain)
    sizes = {"model": label, "fp32_bytes": files.fp32.stat().st_size, "int8_bytes": files.int8.stat().st_size,
             "int8_plain_bytes": plain.stat().st_size, "export_seconds": round(export_seconds, 1),
             "optimized_ops_ours": ours_ops, "same_optimized_graph_as_plain": ours_ops == plain_ops}
    return rows, sizes


def optimized_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (after its fusions): equal counts mean equal kernels,
    so a latency gap between two such files is timing noise."""
    import collections

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".ort-optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(sorted(collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node).items()))


def run(seconds: float, cases: list[tuple[str, str, int, tuple[int, ...]]]) -> dict:
    torch.set_num_threads(1)  # training and export only; ORT sessions use their own thread pool
    setting = {"ort_threads": "ORT default (intra-op = physical cores)", "timing": f"median of interleaved rounds, {seconds} s per configuration after 3 warm-up runs"}
    report = {"setting": setting, "latency": [], "files": []}
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        folder = Path(scratch)
        for label, spec in DIGITS_STUDENTS:
            student, torch_accuracy, data = digits_student(spec)
            rows, sizes = bench(label, student, data.input_shape, calibration_images(data.train, 512, 0), DIGITS_BITS, (1, 64), folder, seconds)
            sizes |= {"torch_test_accuracy": torch_accuracy, "int8_test_accuracy": onnx_accuracy(folder / label / INT8_FILE, data.test)}
            report["latency"] += rows
            report["files"].append(sizes)
        for label, name, size, batches in cases:
            input_shape = (3, size, size)
            model = build_model(ModelSpec(name=name), input_shape, 10).eval()
            images = torch.randn((CALIBRATION_IMAGES, *input_shape), generator=torch.Generator().manual_seed(0))
            rows, sizes = bench(label, model, input_shape, images, 32, batches, folder, seconds)
            report["latency"] += rows
            report["files"].append(sizes)
            print(f"  {label}: done", flush=True)
    return report


def figures(payload: dict) -> list[Figure]:
    """The issue's goals: speed-up at resnet18 224 px batch 1 and 32 px batch 64 (rows a quick run lacks are left out),
    and our export against plain `quantize_static` at its worst over all rows (plain / ours latency)."""
    speedup = {(row["model"], row["batch"]): row["int8_speedup"] for row in payload["latency"]}
    goals = [("resnet18@224", 1, 2.0), ("resnet18@32", 64, 1.4)]
    found = [Figure(NAME, f"fp32 / int8 latency, {model} batch {batch}", speedup[model, batch], at_least=bound) for model, batch, bound in goals if (model, batch) in speedup]
    ratios = sorted(1 / row["ours_over_plain_latency"] for row in payload["latency"])
    worst = max(payload["latency"], key=lambda row: row["ours_over_plain_latency"])
    same = [entry["same_optimized_graph_as_plain"] for entry in payload["files"] if "same_optimized_graph_as_plain" in entry]
    sizes = [
        Figure(
            NAME, f"int8 / fp32 ONNX file size, {entry['model']} ({entry['fp32_bytes'] / 1024:,.0f} KiB fp32)", entry["int8_bytes"] / entry["fp32_bytes"],
            at_most=None if entry["model"] in SIZE_FLOOR_ONLY else SIZE_GOAL,
        )
        for entry in payload["files"]
    ]
    return found + sizes + [
        Figure(NAME, "plain quantize_static / our int8 latency, median over rows", ratios[len(ratios) // 2], at_least=0.95),
        Figure(NAME, f"plain quantize_static / our int8 latency, worst row ({worst['model']} batch {worst['batch']})", 1 / worst["ours_over_plain_latency"]),
        *([Figure(NAME, "share of models whose ORT-optimized graph equals plain quantize_static's", sum(same) / len(same), at_least=1.0)] if same else []),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: digits student and {QUICK_CASES}, {QUICK_SECONDS_PER_CONFIG} s per configuration")
    args = parser.parse_args(argv)
    cases = [case for case in TORCHVISION_CASES if case[0] in QUICK_CASES] if args.quick else TORCHVISION_CASES
    report = write_result(NAME, run(QUICK_SECONDS_PER_CONFIG if args.quick else SECONDS_PER_CONFIG, cases), args.quick)
    print(f"{'model':<26} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'plain ms':>9} {'speed-up':>9} {'ours/plain':>11}")
    for row in report["latency"]:
        print(f"{row['model']:<26} {row['batch']:>5} {row['fp32_ms']:>9.3f} {row['int8_ms']:>9.3f} {row['int8_plain_ms']:>9.3f} "
              f"{row['int8_speedup']:>8.2f}x {row['ours_over_plain_latency']:>10.2f}x")
    for sizes in report["files"]:
        print(f"{sizes['model']:<26} fp32 {sizes['fp32_bytes']:,} B, int8 {sizes['int8_bytes']:,} B ({sizes['int8_bytes'] / sizes['fp32_bytes']:.2f}x)")
    print(figures_table(figures(report)))
    return report


if __name__ == "__main__":
    main()
