"""Binary, ternary, 4-bit and 7-bit Fashion-MNIST students with KD, side by side over seeds: accuracy and what the file costs.

The workflow's student (`workflows/fashion_mnist.yaml`, full width, no pruning, KD at the workflow's temperature and
alpha) at `compression.quantization.bits` 1 (binary), 2 (ternary), 4 and 7 (the widest grid offered: 8 does not run
exactly on CPUs without VNNI), each with 3 training seeds, on a fixed seeded sample of the training and validation
splits (the 10k test images whole), trained through the trial's own loop two at a time, one thread each
(`benchmarks/search_grid.py`'s workers). Binary and ternary students keep their first and last layer at 7 bits (the default).
Reported per bit-width: test accuracy in PyTorch and of the int8 file in ONNX Runtime on the validation split against
the trial's, and the measured file costs.

    .venv/bin/python -m benchmarks.low_bit [--quick] [--data-root DIR] [--teacher FILE]    # writes benchmarks/results/low_bit.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, format_table, measured_commit, write_result
from benchmarks.fashion_mnist import bench_workflow
from benchmarks.search_grid import BITS, start_worker, train_point
from lepton_ray import metrics

NAME = "low_bit"
BIT_WIDTHS = (1, 2, 4, 7)
SETTINGS = {False: {"seeds": (0, 1, 2), "epochs": 5, "train": 12000, "val": 3000}, True: {"seeds": (0,), "epochs": 1, "train": 600, "val": 300}}
PROCESSES = 2


def run(quick: bool, data_root, teacher_file) -> dict[str, Any]:
    commit = measured_commit()
    setting = SETTINGS[quick]
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    shutil.rmtree(folder, ignore_errors=True)
    _, overrides = bench_workflow(folder, quick, data_root, {**MEASURED_KERNELS, "training.epochs": setting["epochs"], "compression.pruning.sparsity": 0.0,
                                                             "compression.channel_pruning.sparsity": 0.0, "student.options.width": 1.0,
                                                             **({"teacher.checkpoint": str(teacher_file)} if teacher_file else {})})
    points = [{BITS: bits, "training.seed": seed} for bits in BIT_WIDTHS for seed in setting["seeds"]]
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=start_worker, initargs=(overrides, setting["train"], setting["val"], folder)) as pool:
        rows = list(pool.map(train_point, points))
    summary = {}
    for bits in BIT_WIDTHS:
        own = [row for row in rows if row["knobs"][BITS] == bits]
        accuracy = [row[metrics.TEST_ACCURACY] for row in own]
        summary[str(bits)] = {
            "test_accuracy": {"mean": statistics.mean(accuracy), "sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0, "per_seed": accuracy},
            "max_trial_minus_int8_val_pt": max(100 * (row[metrics.BEST_VAL_ACCURACY] - row[metrics.INT8_VAL_ACCURACY]) for row in own),
            **{name: statistics.mean(row[name] for row in own) for name in (metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES, metrics.SIZE_BYTES)},
        }
    return {"commit": commit, "setting": {**setting, "seeds": list(setting["seeds"]), "bit_widths": list(BIT_WIDTHS), "processes": PROCESSES,
                                          "overrides": {k: v for k, v in overrides.items() if k not in ("output_dir", "tracking.uri")}},
            "seconds": time.perf_counter() - started, "summary": summary, "runs": rows}


def figures(payload: dict[str, Any]) -> list[Figure]:
    summary = payload["summary"]
    out = [Figure(NAME, f"{bits}-bit student test accuracy (mean of {len(payload['setting']['seeds'])} seeds)", s["test_accuracy"]["mean"]) for bits, s in summary.items()]
    out += [Figure(NAME, f"{bits}-bit int8 gzip bytes / 7-bit's", s[metrics.INT8_GZIP_BYTES] / summary["7"][metrics.INT8_GZIP_BYTES]) for bits, s in summary.items() if bits != "7"]
    out.append(Figure(NAME, "max trial - int8 ORT validation accuracy over all runs (pt)", max(s["max_trial_minus_int8_val_pt"] for s in summary.values()), at_most=1.0))
    return out


def table(payload: dict[str, Any]) -> str:
    rows = [[bits, f"{100 * s['test_accuracy']['mean']:.2f} +- {100 * s['test_accuracy']['sd']:.2f}", f"{s[metrics.INT8_GZIP_BYTES]:,.0f}",
             f"{s[metrics.INT8_FILE_BYTES]:,.0f}", f"{s[metrics.SIZE_BYTES]:,.0f}", f"{s['max_trial_minus_int8_val_pt']:.2f}"] for bits, s in payload["summary"].items()]
    return format_table(["bits", "test accuracy % (mean +- sd)", "int8 gzip bytes", "int8 file bytes", "size_bytes (packed estimate)", "max trial - int8 val (pt)"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, 1 epoch, 600 images")
    parser.add_argument("--data-root", default=None, help="folder of the four Fashion-MNIST idx files (default: the workflow's)")
    parser.add_argument("--teacher", default=None, help="teacher file (default: the workflow's, under this repo's runs/teachers/)")
    args = parser.parse_args(argv)
    payload = write_result(NAME, run(args.quick, args.data_root, args.teacher), args.quick)
    print(table(payload))
    return payload


if __name__ == "__main__":
    main()
