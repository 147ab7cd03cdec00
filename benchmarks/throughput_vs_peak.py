"""Achieved training FLOP/s of the quickstart student against a square fp32 matmul's FLOP/s, same run.

The student (`cnn_small`, channels [16, 32], digits, batch 16, labels only) trains whole epochs;
its FLOPs per epoch are `training_flops(macs, samples)` with MACs from `lepton_ray.compress.cost.count_macs`
(conv and linear layers; norms, activations and the optimizer step are not counted). The
reference is `torch.mm` of two n x n fp32 matrices (2 n^3 FLOPs), timed in the same process
with the same thread count, in rounds interleaved with the epochs; medians of both.

    .venv/bin/python -m benchmarks.throughput_vs_peak [--quick]    # writes benchmarks/results/throughput_vs_peak.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.common import Figure, StudentRun, figures_table, quickstart_workflow, write_result
from lepton_ray.compress.cost import count_macs
from lepton_ray.data.datasets import build_data

NAME = "throughput_vs_peak"
TORCH_THREADS = 1
MATMUL_SIZE, QUICK_MATMUL_SIZE = 1024, 512
MATMULS_PER_ROUND = 5
ROUNDS, QUICK_ROUNDS = 30, 3


def training_flops(macs_per_sample: int, samples: int) -> int:
    """FLOPs of training on `samples`: forward 2 x MACs, backward about twice the forward (input and weight grads)."""
    return 3 * 2 * macs_per_sample * samples


def matmul_flops(size: int) -> int:
    return 2 * size**3


def time_matmul(left: torch.Tensor, right: torch.Tensor) -> float:
    """Median seconds of one `left @ right` over a few back-to-back runs."""
    seconds = []
    for _ in range(MATMULS_PER_ROUND):
        started = time.perf_counter()
        torch.mm(left, right)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def run(rounds: int, matmul_size: int) -> dict[str, Any]:
    torch.set_num_threads(TORCH_THREADS)
    wf = quickstart_workflow()
    data = build_data(wf.data)
    student = StudentRun(wf, data, [])
    macs = count_macs(student.student, data.input_shape)
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(matmul_size, matmul_size, generator=generator) for _ in range(2))
    epoch_seconds, matmul_seconds = [], []
    for round_index in range(rounds + 1):  # round 0 warms up
        started = time.perf_counter()
        student.train_epoch(round_index)
        epoch = time.perf_counter() - started
        matmul = time_matmul(left, right)
        if round_index:
            epoch_seconds.append(epoch)
            matmul_seconds.append(matmul)
    samples = len(data.train)
    training_flop_s = training_flops(macs, samples) / statistics.median(epoch_seconds)
    matmul_flop_s = matmul_flops(matmul_size) / statistics.median(matmul_seconds)
    return {
        "setting": {
            "workflow": "workflows/digits_quickstart.yaml", "student": wf.student.model_dump(), "train_samples": samples,
            "batch_size": wf.training.batch_size, "torch_threads": TORCH_THREADS, "rounds": rounds, "matmul_size": matmul_size,
            "flops": "training: 3 x 2 x MACs per sample (conv + linear only); matmul: 2 n^3",
        },
        "student_macs": macs,
        "epoch_seconds": epoch_seconds,
        "matmul_seconds": matmul_seconds,
        "training_gflop_s": training_flop_s / 1e9,
        "matmul_gflop_s": matmul_flop_s / 1e9,
        "training_over_matmul": training_flop_s / matmul_flop_s,
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [
        Figure(NAME, "student training FLOP/s / fp32 matmul FLOP/s", payload["training_over_matmul"]),
        Figure(NAME, "student training GFLOP/s", payload["training_gflop_s"]),
        Figure(NAME, f"fp32 matmul GFLOP/s (n={payload['setting']['matmul_size']}, {payload['setting']['torch_threads']} thread)", payload["matmul_gflop_s"]),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROUNDS} rounds, {QUICK_MATMUL_SIZE}^2 matmul")
    args = parser.parse_args(argv)
    payload = write_result(NAME, run(QUICK_ROUNDS if args.quick else ROUNDS, QUICK_MATMUL_SIZE if args.quick else MATMUL_SIZE), args.quick)
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
