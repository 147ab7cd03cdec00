"""Per-epoch cost of distillation against training on labels alone, with and without the teacher cache.

In one process (torch 1 thread, as a trial's worker on CPU) three copies of the Fashion-MNIST workflow's student
(`workflows/fashion_mnist.yaml`: cnn_small [16, 32, 64], batch 128, DIST) train side by side on the first
`TRAIN_SAMPLES` training images: (a) on labels alone, no teacher; (b) with the live teacher's forward pass on every
batch; (c) reading the sweep's teacher cache (`build_teacher_cache`). The teacher is the workflow's (the committed
asset: cnn_large [32, 64, 128], 15x the student's MACs, the case the cache exists for); MACs of both come from
`lepton_ray.compress.cost.count_macs`. Epochs run in interleaved rounds (the order rotates each round, round 0 is
warm-up) and the medians are compared. Building the cache (over the same images) is timed on its own and amortised
over the workflow sweep's trials x epochs, as a sweep pays for it.

    .venv/bin/python -m benchmarks.kd_overhead [--quick]    # writes benchmarks/results/kd_overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Figure, StudentRun, figures_table, first_training_images, format_table, write_result
from benchmarks.fashion_mnist import bench_workflow
from lepton_ray.compress.cost import count_macs
from lepton_ray.data.datasets import build_data
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.distill.teacher_cache import build_teacher_cache, cache_key
from lepton_ray.models.saved import load_teacher_module

NAME = "kd_overhead"
LABELS_ONLY, LIVE_TEACHER, CACHED_TEACHER = "labels_only", "live_teacher", "cached_teacher"
ROUNDS, QUICK_ROUNDS = 10, 2
CACHE_BUILDS, QUICK_CACHE_BUILDS = 3, 1
TRAIN_SAMPLES, QUICK_SAMPLES = 6_000, 1_000
TORCH_THREADS = 1


def time_epochs(runs: dict[str, StudentRun], rounds: int) -> dict[str, list[float]]:
    """Seconds per epoch of each run, one epoch each per round in a rotating order; round 0 is not kept."""
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            runs[name].train_epoch(round_index)
            if round_index:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def run(rounds: int, cache_builds: int, train_samples: int, quick: bool) -> dict[str, Any]:
    torch.set_num_threads(TORCH_THREADS)
    with tempfile.TemporaryDirectory(prefix="lepton-kd-overhead-") as folder:
        wf = bench_workflow(Path(folder), quick, None)[0]
        data = build_data(wf.data)
        (prepared,) = prepare_teachers(wf, data)
    data = first_training_images(data, train_samples)
    teacher = load_teacher_module(prepared.payload)
    layers = DistillationObjective(wf.distillation).teacher_layers
    key = cache_key([prepared.sha256], wf.data.model_dump(mode="json"), layers)
    build_seconds = []
    for _ in range(cache_builds):
        started = time.perf_counter()
        cache = build_teacher_cache([teacher], data.train, layers, wf.data, key)
        build_seconds.append(time.perf_counter() - started)
    runs = {LABELS_ONLY: StudentRun(wf, data, []), LIVE_TEACHER: StudentRun(wf, data, [teacher]), CACHED_TEACHER: StudentRun(wf, data, cache)}
    macs = {"student": count_macs(runs[LABELS_ONLY].student, data.input_shape), "teacher": count_macs(teacher, data.input_shape)}
    seconds = time_epochs(runs, rounds)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    sweep_epochs = wf.sweep.num_samples * wf.training.epochs
    build_per_epoch = statistics.median(build_seconds) / sweep_epochs
    return {
        "setting": {
            "workflow": "workflows/fashion_mnist.yaml", "student": wf.student.model_dump(), "teacher": wf.teacher.model_dump(mode="json", include={"name", "options"}),
            "losses": [loss.name for loss in wf.distillation.losses], "teacher_test_accuracy": prepared.test_accuracy,
            "train_samples": len(data.train), "batch_size": wf.training.batch_size, "torch_threads": TORCH_THREADS,
            "rounds": rounds, "timing": "median of interleaved epochs (order rotates per round) after one warm-up round",
            "amortised_over": f"the workflow's sweep: {wf.sweep.num_samples} trials x {wf.training.epochs} epochs = {sweep_epochs} epochs",
        },
        "macs": macs,
        "teacher_over_student_macs": macs["teacher"] / macs["student"],
        "epoch_seconds_median": median,
        "epoch_seconds": seconds,
        "cache_build_seconds": build_seconds,
        "cache_bytes": cache.size_bytes,
        "live_over_labels": median[LIVE_TEACHER] / median[LABELS_ONLY],
        "cached_over_labels": median[CACHED_TEACHER] / median[LABELS_ONLY],
        "cached_with_build_over_labels": (median[CACHED_TEACHER] + build_per_epoch) / median[LABELS_ONLY],
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [
        Figure(NAME, "cached teacher / labels only, per epoch (cache build amortised)", payload["cached_with_build_over_labels"], at_most=1.15),
        Figure(NAME, "live teacher / labels only, per epoch", payload["live_over_labels"]),
        Figure(NAME, "teacher / student MACs", payload["teacher_over_student_macs"], at_least=10),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROUNDS} rounds on {QUICK_SAMPLES} images, the 1-epoch quick teacher")
    args = parser.parse_args(argv)
    settings = (QUICK_ROUNDS, QUICK_CACHE_BUILDS, QUICK_SAMPLES) if args.quick else (ROUNDS, CACHE_BUILDS, TRAIN_SAMPLES)
    payload = write_result(NAME, run(*settings, args.quick), args.quick)
    labels_only = payload["epoch_seconds_median"][LABELS_ONLY]
    rows = [[name, f"{seconds * 1000:.1f}", f"{seconds / labels_only:.3f}"] for name, seconds in payload["epoch_seconds_median"].items()]
    print(format_table(["student trained with", "ms per epoch (median)", "/ labels only"], rows))
    print(f"cache build {statistics.median(payload['cache_build_seconds']) * 1000:.1f} ms ({payload['cache_bytes']:,} bytes); "
          f"teacher {payload['macs']['teacher']:,} MACs = {payload['teacher_over_student_macs']:.1f}x the student's")
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
