"""A measured table of every configuration of a compression grid, so that searchers can be compared by replay.

Fashion-MNIST (`workflows/fashion_mnist.yaml`) with a fixed seeded sample of the training and validation
splits and short training (3 epochs), temperature and alpha at the workflow's values. The grid spans the
knobs that change the shipped file: student width, channel pruning, unstructured pruning and weight bits.
Each configuration trains through the trial's own loop (`benchmarks.common.train_student`, no Ray), two at
a time in worker processes with one torch thread each (as a sweep's two trials share 2 CPUs), teacher
outputs from the sweep's teacher cache built once here and read back by the workers. Also measured: the
dense labels-only student (width 1, no compression, alpha 0), which sets the replay's reference point.
`benchmarks/search_efficiency.py` replays the table.

    .venv/bin/python -m benchmarks.search_grid [--teacher FILE]             # writes benchmarks/results/search_grid.json
    .venv/bin/python -m benchmarks.search_grid --quick --data-root DIR      # 3 configurations, 1 epoch: search_grid.quick.json

The teacher is the workflow's cached one (`--teacher` points elsewhere); it trains first where there is none.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, measured_commit, train_student_reports, write_result
from benchmarks.fashion_mnist import WORKFLOW, bench_workflow
from lepton_ray import metrics
from lepton_ray.config import load_workflow
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "search_grid"
WIDTH, CHANNELS, PRUNING, BITS = "student.options.width", "compression.channel_pruning.sparsity", "compression.pruning.sparsity", "compression.quantization.bits"
GRID: dict[str, list[float | int]] = {WIDTH: [0.25, 0.5, 0.75, 1.0], CHANNELS: [0.0, 0.25, 0.5], PRUNING: [0.0, 0.4, 0.8], BITS: [4, 5, 6, 7]}
"""Knob path -> values: evenly spaced, so that a search space of stepped floats and an int holds exactly these."""
QUICK_GRID: dict[str, list[float | int]] = {WIDTH: [1.0], CHANNELS: [0.0], PRUNING: [0.0, 0.4, 0.8], BITS: [7]}
DENSE_LABELS_ONLY = {WIDTH: 1.0, CHANNELS: 0.0, PRUNING: 0.0, BITS: None, "distillation.alpha": 0.0}
"""The reference student: the workflow's student at full width, uncompressed (its file ships 7-bit int8 codes), no teacher."""
EPOCHS = {False: 3, True: 1}
BATCH_SIZE = 32
"""Not the workflow's 128: 3 epochs of 6,000 images at 128 are 141 steps, which leaves every student far from
converged (measured once: dense labels-only 78.0%, KD 75.1%, width 0.5 61.5% val), and the front then holds width-1
students only; at 32 (564 steps, ~15-40% more CPU) 82.7%, 81.7% and 73.9%."""
TRAIN_SAMPLES, VAL_SAMPLES = 6000, 3000
"""Seeded samples of the 51k training / 9k validation images; the 10k test images stay whole."""
PROCESSES = 2
RECORDED = (metrics.BEST_VAL_ACCURACY, metrics.TEST_ACCURACY, metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES, metrics.INT8_VAL_ACCURACY, metrics.SIZE_BYTES)

_worker: dict[str, Any] = {}
"""What one worker process trains every configuration with: built once by `start_worker`."""


def grid_points(grid: dict[str, list[float | int]]) -> list[dict[str, float | int]]:
    """Every combination of the grid's values, as knob path -> value, in a fixed order."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def sampled(data: DataSplits, train_samples: int, val_samples: int, seed: int) -> DataSplits:
    """A fixed seeded sample of the training and validation splits (in-memory tensors); test stays whole."""
    def sample(split: TensorDataset, count: int, salt: int) -> TensorDataset:
        if count >= len(split):
            return split
        chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed * 1000 + salt))[:count].sort().values
        return TensorDataset(*(tensor[chosen] for tensor in split.tensors))

    return replace(data, train=sample(data.train, train_samples, 0), val=sample(data.val, val_samples, 1))


def prepare(overrides: dict[str, Any], train_samples: int, val_samples: int, folder: Path) -> dict[str, Any]:
    """The sampled data, the teacher and the teacher cache for `folder`. The teacher is the workflow's, on the whole
    splits (where there is none it trains there, as the product would: its file must not hold a teacher of the sample)."""
    wf = load_workflow(WORKFLOW, overrides)
    whole = build_data(wf.data)
    (teacher,) = prepare_teachers(wf, whole, log=lambda _: None)
    data = sampled(whole, train_samples, val_samples, wf.data.seed)
    cache, _ = sweep_teacher_cache(wf, [teacher], data, folder)  # in `folder` only: its key does not cover the sampling
    return {"overrides": overrides, "data": data, "teacher": teacher, "teachers": [load_teacher_module(teacher.payload)], "cache": cache}


def start_worker(overrides: dict[str, Any], train_samples: int, val_samples: int, folder: Path) -> None:
    """Worker-process initializer: one torch thread, everything shared read back once (the cache from disk)."""
    torch.set_num_threads(1)
    _worker.update(prepare(overrides, train_samples, val_samples, folder))


def train_point(knobs: dict[str, Any]) -> dict[str, Any]:
    """One configuration trained in this worker: its knobs, recorded metrics, its learning curve (validation accuracy and
    cumulative compute seconds per epoch: what a multi-fidelity replay stops on), wall seconds and CPU seconds (this
    process and its ONNX Runtime threads: on a busy machine, the better guide to what the grid costs on a free one)."""
    wf = load_workflow(WORKFLOW, {**_worker["overrides"], **knobs})
    distilled = wf.distillation.alpha > 0
    started, cpu_started = time.perf_counter(), time.process_time()
    reports = train_student_reports(wf, _worker["data"], _worker["teachers"] if distilled else [], _worker["cache"] if distilled else None)
    final = reports[-1]
    curve = [{"epoch": int(report[metrics.EPOCH]), metrics.VAL_ACCURACY: report[metrics.VAL_ACCURACY], metrics.COMPUTE_S: report[metrics.COMPUTE_S]} for report in reports]
    return {"knobs": knobs, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
            "diverged": bool(final.get(metrics.DIVERGED)), "curve": curve, **{name: final[name] for name in RECORDED if name in final}}


def run(quick: bool, data_root: Path | None, teacher_file: Path | None, train_samples: int, val_samples: int) -> dict[str, Any]:
    commit = measured_commit()  # at the start: the tree may move during a long run
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    shutil.rmtree(folder, ignore_errors=True)  # the teacher cache here must be this run's sample's
    extra = {**MEASURED_KERNELS, "training.epochs": EPOCHS[quick], "training.batch_size": BATCH_SIZE, **({"teacher.checkpoint": str(teacher_file)} if teacher_file else {})}
    wf, overrides = bench_workflow(folder, quick, data_root, extra)
    started = time.perf_counter()
    shared = prepare(overrides, train_samples, val_samples, folder)  # trains the teacher if needed, builds the cache once
    prepare_seconds = time.perf_counter() - started
    points = [DENSE_LABELS_ONLY, *grid_points(QUICK_GRID if quick else GRID)]
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=start_worker, initargs=(overrides, train_samples, val_samples, folder)) as pool:
        rows = []
        for index, row in enumerate(pool.map(train_point, points)):
            rows.append(row)
            shown = ", ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in row["knobs"].items())
            print(f"  [{index + 1}/{len(points)}] {shown}: val {row.get(metrics.BEST_VAL_ACCURACY, float('nan')):.4f}, "
                  f"{row.get(metrics.INT8_GZIP_BYTES, float('nan')):,.0f} gzip bytes ({row['seconds']:.1f} s)", flush=True)
    data = shared["data"]
    return {
        "commit": commit,
        "setting": {
            "workflow": str(WORKFLOW.relative_to(REPO)), "overrides": {k: v for k, v in overrides.items() if k not in ("output_dir", "tracking.uri")},
            "epochs": wf.training.epochs, "batch_size": wf.training.batch_size, "temperature": wf.distillation.temperature, "alpha": wf.distillation.alpha,
            "train_samples": len(data.train), "val_samples": len(data.val), "test_samples": len(data.test), "sample_seed": wf.data.seed,
            "grid": QUICK_GRID if quick else GRID, "processes": PROCESSES, "torch_threads_per_process": 1,
        },
        "teacher": {"file": str(shared["teacher"].path), "test_accuracy": shared["teacher"].test_accuracy},
        "prepare_seconds": prepare_seconds,
        "grid_wall_seconds": time.perf_counter() - started,
        "dense_labels_only": rows[0],
        "configs": rows[1:],
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    """None of its own: the table is what `search_efficiency` replays, and its figures are there."""
    return []


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {len(grid_points(QUICK_GRID))} configurations, {EPOCHS[True]} epoch")
    parser.add_argument("--data-root", type=Path, default=None, help="folder of the four idx files (default: the workflow's)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher file (default: the workflow's, under this repo's runs/teachers/)")
    parser.add_argument("--train-samples", type=int, default=TRAIN_SAMPLES)
    parser.add_argument("--val-samples", type=int, default=VAL_SAMPLES)
    args = parser.parse_args(argv)
    payload = run(args.quick, args.data_root, args.teacher, args.train_samples, args.val_samples)
    seconds = [row["seconds"] for row in payload["configs"]]
    cpu_seconds = [row["cpu_seconds"] for row in payload["configs"]]
    print(f"{len(seconds)} configurations in {payload['grid_wall_seconds']:.0f} s wall; each {sum(seconds) / len(seconds):.1f} s wall, "
          f"{sum(cpu_seconds) / len(cpu_seconds):.1f} s CPU in its process (mean)")
    return write_result(NAME, payload, args.quick)


if __name__ == "__main__":
    main()
