"""sweep_overhead: what Ray Tune + Train add to a sweep, measured side by side in one run.

    .venv/bin/python -m benchmarks.sweep_overhead [--quick]

The same N trials (quickstart workflow, a seed knob so each trial is distinct) run three ways,
one trial at a time: in this plain process (the loop with an `InProcessSession`, no Ray: the
pure training time), as a sweep of single-worker trials (they train inside Tune's trial actor),
and as a sweep of 2-worker DDP trials (a `TorchTrainer` each). Figures: sweep wall time / sum of
the plain-process trial times, and the fixed overhead per trial in seconds
((sweep wall - sum of plain times) / N; the sweep wall includes starting Ray and MLflow).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import QUICKSTART, Figure, write_result
from lepton_ray.checks import check_workflow
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data import build_data
from lepton_ray.sessions import InProcessSession
from lepton_ray.teacher import prepare_teachers

NAME = "sweep_overhead"
SEED_SPACE = "params:\n  training.seed: {type: int, low: 0, high: 100000}\n"


def benchmark_workflow(folder: Path, trials: int, epochs: int, workers: int, concurrent: int) -> WorkflowConfig:
    """The quickstart with its own storage, MLflow file and a seed-only search space (random sampler)."""
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "seed_space.yaml"
    space.write_text(SEED_SPACE)
    return load_workflow(QUICKSTART, {
        "name": f"bench-w{workers}-c{concurrent}", "output_dir": str(folder / "runs"),
        "teacher.checkpoint": str(folder / "teacher.pt"), "tracking.uri": f"sqlite:///{folder / 'mlflow.db'}",
        "tracking.experiment": f"bench-w{workers}-c{concurrent}", "sweep.space": str(space), "sweep.searcher": "random",
        "sweep.num_samples": trials, "training.epochs": epochs, "resources.num_workers": workers,
        "resources.max_concurrent_trials": concurrent,
    })


def timed_sweep(wf: WorkflowConfig) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds of `run_sweep` (Ray started inside, shut down after) and the trials' knobs."""
    import ray

    from lepton_ray.sweep import run_sweep

    started = time.perf_counter()
    outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)
    wall = time.perf_counter() - started
    ray.shutdown()
    finished = outcome.trials[outcome.trials["status"] == "finished"]
    if len(finished) != wf.sweep.num_samples:
        raise RuntimeError(f"{wf.name}: only {len(finished)} of {wf.sweep.num_samples} trials finished")
    return wall, [{"training.seed": int(seed)} for seed in finished["training.seed"]]


def plain_process_seconds(wf: WorkflowConfig, knobs: list[dict[str, Any]]) -> list[float]:
    """Each trial's loop run here, without Ray (data and teacher ready, as the sweep shares them)."""
    from lepton_ray.config import apply_overrides, parse_workflow
    from lepton_ray.trial import run_trial

    data = build_data(wf.data)
    teachers = prepare_teachers(wf, data, log=lambda _: None)
    torch.set_num_threads(1)
    seconds = []
    for overrides in knobs:
        trial_wf = parse_workflow(apply_overrides(wf.to_dict(), overrides))
        loop_config = {"workflow": trial_wf.to_dict(), "teachers": [t.payload for t in teachers], "data": data, "teacher_cache": None}
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            run_trial(loop_config, InProcessSession(Path(folder), lambda _: None, torch.device("cpu")))
            seconds.append(time.perf_counter() - started)
    return seconds


def measure(folder: Path, trials: int, epochs: int, workers: int) -> dict[str, Any]:
    wf = benchmark_workflow(folder / f"w{workers}", trials, epochs, workers, concurrent=1)
    prepare_teachers(wf, build_data(wf.data), log=lambda _: None)  # trained once, outside both timings
    sweep_wall, knobs = timed_sweep(wf)
    plain = plain_process_seconds(wf, knobs)
    return {
        "workers_per_trial": workers, "trials": trials, "epochs": epochs, "sweep_wall_s": sweep_wall,
        "plain_process_trial_s": plain, "plain_process_sum_s": sum(plain),
        "ratio": sweep_wall / sum(plain), "fixed_overhead_per_trial_s": (sweep_wall - sum(plain)) / trials,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 3 epochs: a smoke run")
    args = parser.parse_args(argv)
    trials, epochs = (2, 3) if args.quick else (8, 60)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(Path(tmp), trials, epochs, workers) for workers in (1, 2)]
    payload = {"setup": f"{trials} trials x {epochs} digits epochs, one trial at a time; plain process = same loop, no Ray", "runs": runs}
    for run in runs:
        print(f"{run['workers_per_trial']} worker(s)/trial: sweep {run['sweep_wall_s']:.1f}s vs plain {run['plain_process_sum_s']:.1f}s "
              f"-> ratio {run['ratio']:.3f}, {run['fixed_overhead_per_trial_s']:.2f}s fixed overhead per trial")
    return write_result(NAME, payload, args.quick)


def figures(payload: dict[str, Any]) -> list[Figure]:
    result = []
    for run in payload["runs"]:
        label = "single-worker" if run["workers_per_trial"] == 1 else f"{run['workers_per_trial']}-worker DDP"
        result.append(Figure(NAME, f"sweep / plain-process time, {label} trials", run["ratio"], at_most=1.3))
        result.append(Figure(NAME, f"fixed overhead per {label} trial (s)", run["fixed_overhead_per_trial_s"], at_most=5.0))
    return result


if __name__ == "__main__":
    main()
