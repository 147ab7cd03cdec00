"""worker_threads: the same trial as 1 worker x 1 thread, 1 worker x 2 threads and 2 DDP workers x 1 thread, on 2 cores.

    .venv/bin/python -m benchmarks.worker_threads [--quick]

A worker trains with as many torch threads as the CPUs it is given, rounded down (`trial/loop.py:
intra_op_threads`): `resources.cpus_per_worker` 1.0 -> 1 thread, 2.0 -> 2 threads; two DDP workers get 0.99
CPUs each (1 thread), so that with the trial driver's sliver they fit 2 CPUs. Each layout runs the same
trials (the quickstart workflow, seeds 0 and 1, one trial at a time) through the real sweep path; the figure
is the trials' own compute seconds (epochs, evaluation, finishing), summed, against the 1 x 1 layout.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, measured_commit, write_result
from benchmarks.sweep_overhead import benchmark_workflow, timed_sweep
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers

NAME = "worker_threads"
LAYOUTS = {"1 worker x 1 thread": (1, 1.0), "1 worker x 2 threads": (1, 2.0), "2 DDP workers x 1 thread": (2, 0.99)}
"""Name -> (resources.num_workers, resources.cpus_per_worker)."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 epochs: a smoke run")
    args = parser.parse_args(argv)
    commit = measured_commit()
    trials, epochs = (2, 2) if args.quick else (2, 30)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, (workers, cpus)) in enumerate(LAYOUTS.items()):
            wf = benchmark_workflow(Path(tmp) / f"l{index}", trials, epochs, workers=workers, concurrent=1, extra={"resources.cpus_per_worker": cpus})
            prepare_teachers(wf, build_data(wf.data), log=lambda _: None)
            timed = timed_sweep(wf)
            rows[name] = {"num_workers": workers, "cpus_per_worker": cpus, "wall_s": timed.wall_s, "trial_compute_s": timed.trial_compute_s}
            print(f"{name}: trial compute {timed.trial_compute_s:.1f} s, sweep wall {timed.wall_s:.1f} s")
    base = rows["1 worker x 1 thread"]["trial_compute_s"]
    payload = {"commit": commit, "setup": f"{trials} quickstart trials x {epochs} digits epochs, one at a time", "layouts": rows,
               "compute_vs_1x1": {name: row["trial_compute_s"] / base for name, row in rows.items()}}
    return write_result(NAME, payload, args.quick)


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [Figure(NAME, f"{name} / 1 worker x 1 thread, trial compute seconds", ratio) for name, ratio in payload["compute_vs_1x1"].items() if ratio != 1.0]


if __name__ == "__main__":
    main()
