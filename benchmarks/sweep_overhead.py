"""sweep_overhead: what Ray Tune + Train add to a sweep, measured side by side in one run.

    .venv/bin/python -m benchmarks.sweep_overhead [--quick]

The same N trials (quickstart workflow, a seed knob so each trial is distinct) run three ways,
one trial at a time: in this plain process (the loop with an `InProcessSession`, no Ray: the
pure training time), as a sweep of single-worker trials (they train inside Tune's trial actor),
and as a sweep of 2-worker DDP trials (a `TorchTrainer` each). Figures: sweep wall time / sum of
the plain-process trial times, and the fixed overhead per trial in seconds
((sweep wall - sum of plain times) / N; the sweep wall includes starting Ray and MLflow).
The DDP row has no goal here: most of it is `TorchTrainer.fit()`'s own start-up (10-14 s per fit on 2 cores),
so its goal is set against a bare `fit()` side by side, in `ddp_fixed_cost`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MEASURED_KERNELS, QUICKSTART, Figure, write_result
from lepton_ray import metrics
from lepton_ray.checks import check_workflow
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.sessions import InProcessSession
from lepton_ray.trial.teacher import prepare_teachers

NAME = "sweep_overhead"
SEED_SPACE = "params:\n  training.seed: {type: int, low: 0, high: 100000}\n"


def benchmark_workflow(folder: Path, trials: int, epochs: int, workers: int, concurrent: int, extra: dict[str, Any] | None = None) -> WorkflowConfig:
    """The quickstart with its own storage, MLflow file, a seed-only search space (random sampler) and the kernels its
    benchmarks' committed figures were measured with (`MEASURED_KERNELS`); `extra` overrides on top."""
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "seed_space.yaml"
    space.write_text(SEED_SPACE)
    return load_workflow(QUICKSTART, {
        **MEASURED_KERNELS, "name": f"bench-w{workers}-c{concurrent}", "output_dir": str(folder / "runs"),
        "teacher.checkpoint": str(folder / "teacher.pt"), "tracking.uri": f"sqlite:///{folder / 'mlflow.db'}",
        "tracking.experiment": f"bench-w{workers}-c{concurrent}", "sweep.space": str(space), "sweep.searcher": "random",
        "sweep.num_samples": trials, "training.epochs": epochs, "resources.num_workers": workers,
        "resources.max_concurrent_trials": concurrent, **(extra or {}),
    })


@dataclass(frozen=True)
class TimedSweep:
    wall_s: float
    """`run_sweep` start to end: Ray and MLflow start-up, the teacher cache, the trials, the leaderboard."""
    trial_compute_s: float
    """Sum of the trials' own `compute_s` (their epochs, evaluation and finishing, as the loop timed them)."""
    knobs: list[dict[str, Any]]


def timed_sweep(wf: WorkflowConfig) -> TimedSweep:
    """Run the workflow's sweep (Ray started inside, shut down after) and time it."""
    import ray

    from lepton_ray.sweep.runner import run_sweep
    from lepton_ray.tracking.tracker import PARENT_TAG, Tracker

    started = time.perf_counter()
    outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)
    wall = time.perf_counter() - started
    ray.shutdown()
    finished = outcome.trials[outcome.trials["status"] == "finished"]
    if len(finished) != wf.sweep.num_samples:
        raise RuntimeError(f"{wf.name}: only {len(finished)} of {wf.sweep.num_samples} trials finished")
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    compute = sum(run.data.metrics[metrics.COMPUTE_S] for run in runs)
    return TimedSweep(wall, compute, [{"training.seed": int(seed)} for seed in finished["training.seed"]])


def plain_process_seconds(wf: WorkflowConfig, knobs: list[dict[str, Any]]) -> list[float]:
    """Each trial's loop run here, without Ray (data, teacher and teacher cache ready, as the sweep shares them)."""
    from lepton_ray.config import apply_overrides, parse_workflow
    from lepton_ray.trial.loop import run_trial

    from lepton_ray.trial.trainer import sweep_teacher_cache

    data = build_data(wf.data)
    teachers = prepare_teachers(wf, data, log=lambda _: None)
    cache = sweep_teacher_cache(wf, teachers, data, wf.run_dir)[0] if wf.sweep.teacher_cache else None  # as the sweep's trials get it
    torch.set_num_threads(1)
    seconds = []
    for overrides in knobs:
        trial_wf = parse_workflow(apply_overrides(wf.to_dict(), overrides))
        loop_config = {"workflow": trial_wf.to_dict(), "teachers": [t.payload for t in teachers], "data": data, "teacher_cache": cache}
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            run_trial(loop_config, InProcessSession(Path(folder), lambda _: None, torch.device("cpu")))
            seconds.append(time.perf_counter() - started)
    return seconds


def measure(folder: Path, trials: int, epochs: int, workers: int) -> dict[str, Any]:
    wf = benchmark_workflow(folder / f"w{workers}", trials, epochs, workers, concurrent=1)
    prepare_teachers(wf, build_data(wf.data), log=lambda _: None)  # trained once, outside both timings
    sweep = timed_sweep(wf)
    plain = plain_process_seconds(wf, sweep.knobs)
    return {
        "workers_per_trial": workers, "trials": trials, "epochs": epochs, "sweep_wall_s": sweep.wall_s,
        "plain_process_trial_s": plain, "plain_process_sum_s": sum(plain), "trials_own_compute_sum_s": sweep.trial_compute_s,
        "ratio": sweep.wall_s / sum(plain), "fixed_overhead_per_trial_s": (sweep.wall_s - sum(plain)) / trials,
        "overhead_per_trial_beyond_own_compute_s": (sweep.wall_s - sweep.trial_compute_s) / trials,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 3 epochs: a smoke run")
    args = parser.parse_args(argv)
    trials = 2 if args.quick else 8
    epochs = {1: 3, 2: 3} if args.quick else {1: 200, 2: 20}  # single-worker trials: >= 20 s of training each (teacher cached)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(Path(tmp), trials, epochs[workers], workers) for workers in (1, 2)]
    payload = {
        "setup": f"{trials} trials per run, one at a time, digits; plain process = the same loop, no Ray. The DDP run trains fewer "
        "epochs: 2-worker DDP of a 5k-parameter student is slower per epoch than one process, so its plain-process ratio measures "
        "DDP, not overhead; its fixed cost is the sweep wall minus the trials' own compute_s",
        "runs": runs,
    }
    for run in runs:
        print(f"{run['workers_per_trial']} worker(s)/trial: sweep {run['sweep_wall_s']:.1f}s vs plain {run['plain_process_sum_s']:.1f}s "
              f"-> ratio {run['ratio']:.3f}, {run['fixed_overhead_per_trial_s']:.2f}s per trial over plain, "
              f"{run['overhead_per_trial_beyond_own_compute_s']:.2f}s per trial beyond the trials' own compute")
    return write_result(NAME, payload, args.quick)


def figures(payload: dict[str, Any]) -> list[Figure]:
    single, ddp = payload["runs"]
    return [
        Figure(NAME, "sweep / plain-process time, single-worker trials", single["ratio"], at_most=1.3),
        Figure(NAME, "fixed overhead per single-worker trial (s)", single["fixed_overhead_per_trial_s"], at_most=5.0),
        Figure(NAME, f"overhead per {ddp['workers_per_trial']}-worker DDP trial beyond its own compute (s; Ray Train's fit() floor included)", ddp["overhead_per_trial_beyond_own_compute_s"]),
    ]


if __name__ == "__main__":
    main()
