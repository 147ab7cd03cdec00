"""ddp_fixed_cost: a DDP trial's fixed cost against Ray Train's own floor, side by side in one Ray session.

    .venv/bin/python -m benchmarks.ddp_fixed_cost [--quick]

Three `TorchTrainer.fit()` calls with the same `ScalingConfig` (2 workers x 0.49 CPU, gloo), interleaved
round by round so each sees the same machine load:
  bare       the loop does one all-reduce (Ray Train's floor);
  bare+optim the loop also builds the trial's optimizer and takes one step: PyTorch's floor for any
             training loop (`torch.optim` imports `torch._dynamo`, ~2 s, in every process that builds one);
  ours       one quickstart trial (`trial.trainer.build_trainer`, as a sweep's trial driver calls it) at
             `EPOCHS` epochs, the teacher cache and data in the object store as a sweep puts them.
Fixed cost = fit() wall - the work the loop reports (`compute_s`: epochs, evaluation, finishing; 0 for bare).
Each worker's start-up (`setup_s`, process entry to the first epoch) is reported alongside, and the two parts of
ours - bare: PyTorch's own (bare+optim - bare: building any `torch.optim` optimizer imports `torch._dynamo`) and
ours beyond that floor (ours - bare+optim: the loop's imports, data and teacher-cache hand-off, model set-up, reports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import Figure, write_result
from benchmarks.sweep_overhead import benchmark_workflow
from lepton_ray import metrics
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers

NAME = "ddp_fixed_cost"
EPOCHS = 2


def bare_loop(config: dict[str, Any]) -> None:
    """Ray Train's floor: the process group is up, one all-reduce, done."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.all_reduce(torch.ones(1))


def optimizer_loop(config: dict[str, Any]) -> None:
    """The floor of a training loop: the process group, the trial's optimizer built and stepped once, one all-reduce."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    dist.all_reduce(torch.ones(1))


def bare_fit(loop: Callable[[dict[str, Any]], None], storage: Path, name: str) -> float:
    """Wall seconds of `fit()` of a `TorchTrainer` with the trial's scaling config."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        loop, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.49}),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def our_fit(wf, inputs, storage: Path, name: str) -> dict[str, float]:
    """One trial through `build_trainer(...).fit()`: its wall, its own compute and its workers' start-up."""
    from lepton_ray.trial.trainer import build_trainer

    started = time.perf_counter()
    result = build_trainer(wf, inputs, storage, name).fit()
    wall = time.perf_counter() - started
    reported = result.metrics or {}
    return {"wall_s": wall, "compute_s": float(reported[metrics.COMPUTE_S]), "setup_s": float(reported[metrics.SETUP_S])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import ray

    from lepton_ray.cluster.ray_runtime import init_ray
    from lepton_ray.trial.trainer import TRAIN_POLL_INTERVAL_S, put_trial_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wf = benchmark_workflow(folder, trials=1, epochs=EPOCHS, workers=2, concurrent=1)
        data = build_data(wf.data)
        teachers = prepare_teachers(wf, data, log=lambda _: None)
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)  # every arm polls as a trial does
        init_ray()
        try:
            inputs = put_trial_inputs(wf, teachers, data, folder / "cache", log=lambda _: None)
            bare_fit(bare_loop, folder, "warm-up")  # the first fit() also starts Ray Train's controller machinery
            rows: dict[str, list[dict[str, float]]] = {"bare": [], "bare+optim": [], "ours": []}
            for round_index in range(rounds):
                rows["bare"].append({"wall_s": bare_fit(bare_loop, folder, f"bare-{round_index}"), "compute_s": 0.0})
                rows["bare+optim"].append({"wall_s": bare_fit(optimizer_loop, folder, f"optim-{round_index}"), "compute_s": 0.0})
                rows["ours"].append(our_fit(wf, inputs, folder / "trials", f"ours-{round_index}"))
        finally:
            ray.shutdown()
    fixed = {arm: statistics.median(row["wall_s"] - row["compute_s"] for row in arm_rows) for arm, arm_rows in rows.items()}
    payload = {
        "setup": f"{rounds} interleaved rounds in one Ray session (num_cpus=2); 2 workers x 0.49 CPU, gloo; ours = one digits "
        f"quickstart trial of {EPOCHS} epochs through trial.trainer.build_trainer; fixed cost = fit() wall - the loop's compute_s, median",
        "rounds": rows, "fixed_cost_median_s": fixed,
        "ours_setup_s_median": statistics.median(row["setup_s"] for row in rows["ours"]),
        "ours_over_bare": fixed["ours"] / fixed["bare"], "ours_over_bare_optim": fixed["ours"] / fixed["bare+optim"],
    }
    print({arm: round(value, 2) for arm, value in fixed.items()}, f"ours/bare {payload['ours_over_bare']:.3f}, ours/bare+optim {payload['ours_over_bare_optim']:.3f}")
    return write_result(NAME, payload, args.quick)


def figures(payload: dict[str, Any]) -> list[Figure]:
    fixed = payload["fixed_cost_median_s"]
    return [
        Figure(NAME, "DDP trial fixed cost / bare TorchTrainer.fit() (one all-reduce)", payload["ours_over_bare"], at_most=1.15),
        Figure(NAME, "DDP trial fixed cost / bare fit() whose loop also builds and steps an optimizer (torch imports dynamo)", payload["ours_over_bare_optim"]),
        Figure(NAME, "torch.optim's import of torch._dynamo: bare+optim - bare fixed cost (s)", fixed["bare+optim"] - fixed["bare"]),
        Figure(NAME, "ours beyond PyTorch's floor: ours - bare+optim fixed cost (s)", fixed["ours"] - fixed["bare+optim"]),
        Figure(NAME, "DDP trial fixed cost (s)", fixed["ours"]),
        Figure(NAME, "bare TorchTrainer.fit() (s)", fixed["bare"]),
    ]


if __name__ == "__main__":
    main()
