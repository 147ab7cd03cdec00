"""Achieved training FLOP/s of the Fashion-MNIST student against a square fp32 matmul's FLOP/s, same run.

The workflow's student (`workflows/fashion_mnist.yaml`: cnn_small [16, 32, 64], batch 128, Adam, KD on the
sweep's teacher cache) trains whole epochs over the first `TRAIN_SAMPLES` training images, one thread, as the
trial trains it with the workflow's defaults (`ours`: channels_last, a fused optimizer and precision auto, bf16 on
an AMX CPU, since issue 32), with them off (`ours-off`, the fp32 defaults before), and as a plain PyTorch loop with the same two knobs on
(`plain+fast`, `benchmarks/plain_loop.py`): the ceiling this student reaches
on this CPU. FLOPs per epoch are `training_flops(macs, samples)`, MACs from `lepton_ray.compress.cost.count_macs`
(conv and linear layers; norms, activations and the optimizer step are not counted). The reference is `torch.mm`
of two n x n fp32 matrices (2 n^3 FLOPs), timed in the same process with the same thread count after every round
of epochs; medians of both. Where the defaults train in bf16, the bf16 matmul's FLOP/s is timed beside it and
reported too: against the fp32 peak the goal reads what the defaults buy, against the bf16 one how far from the
ceiling of their own precision they are.

    .venv/bin/python -m benchmarks.throughput_vs_peak [--quick]    # writes benchmarks/results/throughput_vs_peak.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Figure, figures_table, write_result
from benchmarks.plain_loop import fashion_mnist_arms, time_rounds
from lepton_ray.trial.epoch import resolve_precision
from lepton_ray.compress.cost import count_macs
from lepton_ray.models.zoo import build_model

NAME = "throughput_vs_peak"
TORCH_THREADS = 1
MATMUL_SIZE, QUICK_MATMUL_SIZE = 1024, 512
MATMULS_PER_ROUND = 5
ROUNDS, QUICK_ROUNDS = 5, 1
TRAIN_SAMPLES, QUICK_SAMPLES = 12_000, 2_000


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


def run(rounds: int, matmul_size: int, train_samples: int) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lepton-peak-") as folder:
        arms = fashion_mnist_arms(Path(folder), train_samples, plain_arms=("plain+fast",))
        torch.set_num_threads(TORCH_THREADS)
        macs = count_macs(build_model(arms.wf.student, arms.data.input_shape, arms.data.num_classes), arms.data.input_shape)
        generator = torch.Generator().manual_seed(0)
        left, right = (torch.randn(matmul_size, matmul_size, generator=generator) for _ in range(2))
        matmul_seconds: list[float] = []
        bf16_seconds: list[float] = []

        def between() -> None:
            matmul_seconds.append(time_matmul(left, right))
            bf16_seconds.append(time_matmul(left.bfloat16(), right.bfloat16()))

        epoch_seconds, _ = time_rounds(arms, rounds, between=between)
    matmul_flop_s = matmul_flops(matmul_size) / statistics.median(matmul_seconds[1:])  # after round 0, the warm-up
    bf16_flop_s = matmul_flops(matmul_size) / statistics.median(bf16_seconds[1:])
    samples = len(arms.data.train)
    training_flop_s = {name: training_flops(macs, samples) / statistics.median(seconds) for name, seconds in epoch_seconds.items()}
    return {
        "setting": {
            "workflow": "workflows/fashion_mnist.yaml", "student": arms.wf.student.model_dump(), "train_samples": samples,
            "batch_size": arms.wf.training.batch_size, "torch_threads": TORCH_THREADS, "rounds": rounds, "matmul_size": matmul_size,
            "default_precision": resolve_precision(arms.wf.training.precision, torch.device("cpu")),
            "flops": "training: 3 x 2 x MACs per sample (conv + linear only); matmul: 2 n^3",
        },
        "student_macs": macs,
        "epoch_seconds": epoch_seconds,
        "matmul_seconds": matmul_seconds,
        "training_gflop_s": {name: value / 1e9 for name, value in training_flop_s.items()},
        "matmul_gflop_s": matmul_flop_s / 1e9,
        "bf16_matmul_gflop_s": bf16_flop_s / 1e9,
        "training_over_matmul": {name: value / matmul_flop_s for name, value in training_flop_s.items()},
        "training_over_bf16_matmul": {name: value / bf16_flop_s for name, value in training_flop_s.items()},
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    ratio, gflop_s = payload["training_over_matmul"], payload["training_gflop_s"]
    return [
        Figure(NAME, "Fashion-MNIST student training FLOP/s (workflow defaults) / fp32 matmul FLOP/s", ratio["ours"], at_least=0.3),
        *(Figure(NAME, f"same, {name}", ratio[name]) for name in ratio if name != "ours"),
        Figure(NAME, "student training GFLOP/s", gflop_s["ours"]),
        Figure(NAME, f"fp32 matmul GFLOP/s (n={payload['setting']['matmul_size']}, {payload['setting']['torch_threads']} thread)", payload["matmul_gflop_s"]),
        *([Figure(NAME, "same defaults / bf16 matmul FLOP/s (the peak of the precision they train in)", payload["training_over_bf16_matmul"]["ours"]),
           Figure(NAME, "bf16 matmul GFLOP/s", payload["bf16_matmul_gflop_s"])] if "bf16_matmul_gflop_s" in payload else []),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROUNDS} rounds, {QUICK_MATMUL_SIZE}^2 matmul")
    args = parser.parse_args(argv)
    settings = (QUICK_ROUNDS, QUICK_MATMUL_SIZE, QUICK_SAMPLES) if args.quick else (ROUNDS, MATMUL_SIZE, TRAIN_SAMPLES)
    payload = write_result(NAME, run(*settings), args.quick)
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
