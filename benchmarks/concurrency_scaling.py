"""concurrency_scaling: sweep wall time with 2 concurrent trials / with 1, same trials, one run.

    .venv/bin/python -m benchmarks.concurrency_scaling [--quick]

Single-worker trials (each trains in its Tune actor), the quickstart workflow with a seed knob.
On 2 cores the ideal is 0.5; start-up, the driver and MLflow logging keep it above that.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, write_result
from benchmarks.sweep_overhead import benchmark_workflow, timed_sweep
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers

NAME = "concurrency_scaling"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials of 3 epochs: a smoke run")
    args = parser.parse_args(argv)
    trials, epochs = (4, 3) if args.quick else (8, 40)
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for concurrent in (1, 2):
            wf = benchmark_workflow(Path(tmp) / f"c{concurrent}", trials, epochs, workers=1, concurrent=concurrent)
            prepare_teachers(wf, build_data(wf.data), log=lambda _: None)
            walls[concurrent] = timed_sweep(wf).wall_s
    ratio = walls[2] / walls[1]
    print(f"{trials} trials: 1 concurrent {walls[1]:.1f}s, 2 concurrent {walls[2]:.1f}s -> ratio {ratio:.3f}")
    payload = {"setup": f"{trials} single-worker trials x {epochs} digits epochs", "wall_s_1_concurrent": walls[1], "wall_s_2_concurrent": walls[2], "ratio": ratio}
    return write_result(NAME, payload, args.quick)


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [Figure(NAME, "sweep wall, 2 concurrent / 1 concurrent", payload["ratio"])]


if __name__ == "__main__":
    main()
