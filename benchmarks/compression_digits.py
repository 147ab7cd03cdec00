"""Dense fp32 vs sparse/quantized students on digits, trained in-process through the trial's own loop.

Usage (from the repository root): `.venv/bin/python -m benchmarks.compression_digits [--seeds 0 1 2]`.
Trains the quickstart student (teacher from `prepare_teachers`, cached under runs/teachers/) once
per variant and seed on one process (world size 1, no Ray) with `trial/loop.py: run_trial`, which keeps the
best fully-compressed epoch by validation accuracy, then tests and costs it.
Writes benchmarks/results/compression_digits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from benchmarks.common import MEASURED_KERNELS, QUICKSTART, REPO, RESULTS, measured_commit, quickstart_workflow, train_student
from lepton_ray import metrics
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.models.saved import load_teacher_module

RESULT = RESULTS / "compression_digits.json"
VARIANTS: dict[str, dict[str, Any]] = {
    "dense_fp32": {},
    "dense_7bit": {"compression.quantization.bits": 7},
    "sparse50_7bit": {"compression.pruning.sparsity": 0.5, "compression.quantization.bits": 7},
    "dense_4bit": {"compression.quantization.bits": 4},
    "sparse50_4bit": {"compression.pruning.sparsity": 0.5, "compression.quantization.bits": 4},
}
REPORTED = (
    metrics.TEST_ACCURACY, metrics.INT8_VAL_ACCURACY, metrics.SIZE_BYTES, metrics.INT8_FILE_BYTES, metrics.INT8_GZIP_BYTES, metrics.MACS, metrics.BOPS,
    metrics.SPARSITY, metrics.LATENCY_MS, metrics.LATENCY_BATCH_MS, metrics.BEST_EPOCH,
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in REPORTED:
        values = [run[name] for run in runs]
        summary[name] = statistics.mean(values)
        summary[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = quickstart_workflow({**MEASURED_KERNELS, "export.trial_latency": True})  # the pin reaches the teacher too; latency is one of the figures compared
    data = build_data(base.data)
    (teacher_entry,) = prepare_teachers(base, data)
    teacher = load_teacher_module(teacher_entry.payload)
    results: dict[str, Any] = {
        "workflow": str(QUICKSTART.relative_to(REPO)),
        "setup": "one process (world size 1, no Ray), torch 1 thread; accuracy in [0, 1] on the test split; "
        "latency: the int8 ONNX file the trial would ship, in ONNX Runtime, median ms, batch 1 and batch export.latency_batch_size",
        "commit": measured_commit(),
        "seeds": args.seeds,
        "teacher_test_accuracy": teacher_entry.test_accuracy,
        "variants": {},
    }
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            wf = quickstart_workflow({**MEASURED_KERNELS, **VARIANTS[variant], "training.seed": seed})
            started = time.perf_counter()
            final_metrics = train_student(wf, data, [teacher])
            runs.append({name: final_metrics[name] for name in REPORTED})
            print(f"{variant} seed {seed}: {runs[-1]} ({time.perf_counter() - started:.1f} s)", flush=True)
        results["variants"][variant] = {"overrides": VARIANTS[variant], **summarize(runs), "runs": runs}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({name: {k: v[k] for k in (metrics.TEST_ACCURACY, metrics.SIZE_BYTES, metrics.MACS, metrics.LATENCY_MS)} for name, v in results["variants"].items()}, indent=2))


if __name__ == "__main__":
    main()
