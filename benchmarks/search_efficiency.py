"""Hypervolume of the Pareto front found by the Optuna searcher / by random search, equal trial budget.

Both searchers run the quickstart search space (`search_spaces/quickstart.yaml`: temperature,
alpha, sparsity, bits) through the sweep's own `StudySearcher` over `open_study` (TPE
multi-objective or Optuna's RandomSampler, as `make_sampler` builds them), with the same sampler
seed. Each trial trains in this process (world size 1, no Ray) with the trial's own functions and
the sweep's teacher cache, for a few epochs; the objectives: best validation accuracy up, size_bytes
down (pinned to the estimate rather than the quickstart's measured `int8_gzip_bytes`, so the saved
results stay comparable; both searchers see the same axis). Hypervolume reference point: accuracy 0
and the size of the dense fp32 student; reported as the share of that box ([0, 1] x [0, dense size]) the front dominates.

    .venv/bin/python -m benchmarks.search_efficiency [--quick]    # writes benchmarks/results/search_efficiency.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import optuna
import torch

from benchmarks.common import REPO, Figure, figures_table, format_table, quickstart_workflow, train_student, write_result
from lepton_ray import metrics
from lepton_ray.config import SearchSpace, WorkflowConfig, apply_overrides, load_search_space, parse_workflow
from lepton_ray.compress.cost import static_cost
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.distill.teacher_cache import TeacherCache
from lepton_ray.trial.trainer import sweep_teacher_cache
from lepton_ray.models.saved import load_teacher_module

NAME = "search_efficiency"
SPACE = REPO / "search_spaces" / "quickstart.yaml"
SEARCHERS = ("optuna", "random")
TORCH_THREADS = 1
FULL = {"seeds": 3, "trials": 24, "epochs": 4}
QUICK = {"seeds": 1, "trials": 4, "epochs": 2}


def hypervolume_2d(accuracy: Sequence[float], cost: Sequence[float], reference: tuple[float, float]) -> float:
    """Area dominated by the points (accuracy up, cost down) within the box bounded by `reference` =
    (accuracy, cost); points not better than it on both axes, or not finite, add nothing. Sweeping by
    cost: from one point's cost to the next, the dominated height is the best accuracy so far."""
    reference_accuracy, reference_cost = reference
    points = sorted((c, a) for a, c in zip(accuracy, cost) if math.isfinite(a) and math.isfinite(c) and a > reference_accuracy and c < reference_cost)
    next_costs = [c for c, _ in points[1:]] + [reference_cost]
    area, best_accuracy = 0.0, reference_accuracy
    for (point_cost, point_accuracy), next_cost in zip(points, next_costs):
        best_accuracy = max(best_accuracy, point_accuracy)
        area += (next_cost - point_cost) * (best_accuracy - reference_accuracy)
    return area


def search(
    base: WorkflowConfig, space: SearchSpace, data: DataSplits, teacher: torch.nn.Module, cache: TeacherCache, searcher_name: str, seed: int, trials: int, folder: Path,
) -> list[dict[str, Any]]:
    """One sweep's worth of trials, asked and told through the sweep's searcher; its completed trials."""
    from lepton_ray.sweep.search import NUMBER_KEY, StudySearcher, open_study  # imports Ray Tune

    sweep = parse_workflow(apply_overrides(base.to_dict(), {"sweep.searcher": searcher_name, "sweep.seed": seed, "sweep.num_samples": trials})).sweep
    study = open_study(folder / f"{searcher_name}-{seed}", sweep)
    searcher = StudySearcher(study, space, sweep)
    for index in range(trials):
        trial_id = f"{searcher_name}-{seed}-{index}"
        config = searcher.suggest(trial_id)
        overrides = {path: value for path, value in config.items() if path != NUMBER_KEY}
        searcher.on_trial_complete(trial_id, train_student(parse_workflow(apply_overrides(base.to_dict(), overrides)), data, [teacher], cache))
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [{"params": trial.params, metrics.BEST_VAL_ACCURACY: trial.values[0], metrics.SIZE_BYTES: trial.values[1]} for trial in completed]


def run(seeds: int, trials: int, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(TORCH_THREADS)
    base = quickstart_workflow({"training.epochs": epochs, "sweep.cost_metric": metrics.SIZE_BYTES})
    space = load_search_space(SPACE)
    data = build_data(base.data)
    teachers = prepare_teachers(base, data)
    teacher = load_teacher_module(teachers[0].payload)
    dense_size = static_cost(build_model(base.student, data.input_shape, data.num_classes), data.input_shape)[metrics.SIZE_BYTES]
    reference = (0.0, dense_size)
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as scratch:
        cache, _ = sweep_teacher_cache(base, teachers, data, Path(scratch))  # built once, as a sweep does
        for seed in range(seeds):
            by_searcher = {}
            for searcher_name in SEARCHERS:
                completed = search(base, space, data, teacher, cache, searcher_name, seed, trials, Path(scratch))
                area = hypervolume_2d([t[metrics.BEST_VAL_ACCURACY] for t in completed], [t[metrics.SIZE_BYTES] for t in completed], reference)
                by_searcher[searcher_name] = {"hypervolume": area / dense_size, "completed": len(completed), "trials": completed}
                print(f"  seed {seed} {searcher_name:<6} hypervolume {area / dense_size:.4f} ({len(completed)}/{trials} completed, {time.perf_counter() - started:.0f} s)", flush=True)
            runs.append({"seed": seed, **by_searcher, "optuna_over_random": by_searcher["optuna"]["hypervolume"] / by_searcher["random"]["hypervolume"]})
    ratios = [run["optuna_over_random"] for run in runs]
    return {
        "setting": {
            "workflow": "workflows/digits_quickstart.yaml", "space": str(SPACE.relative_to(REPO)), "trials_per_search": trials,
            "student_epochs": epochs, "sampler_seeds": list(range(seeds)), "torch_threads": TORCH_THREADS,
            "objectives": f"{metrics.BEST_VAL_ACCURACY} up, {metrics.SIZE_BYTES} down",
            "reference_point": {metrics.BEST_VAL_ACCURACY: reference[0], metrics.SIZE_BYTES: dense_size, "why": "accuracy 0; size of the dense fp32 student"},
            "hypervolume_unit": "share of the box accuracy [0, 1] x size [0, dense fp32 size]",
        },
        "seconds": time.perf_counter() - started,
        "runs": runs,
        "optuna_over_random_mean": statistics.mean(ratios),
        "optuna_over_random_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    seeds = len(payload["runs"])
    return [Figure(NAME, f"Optuna / random hypervolume, {payload['setting']['trials_per_search']} trials (mean of {seeds} seeds)", payload["optuna_over_random_mean"])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    args = parser.parse_args(argv)
    payload = write_result(NAME, run(**(QUICK if args.quick else FULL)), args.quick)
    rows = [[str(run["seed"]), f"{run['optuna']['hypervolume']:.4f}", f"{run['random']['hypervolume']:.4f}", f"{run['optuna_over_random']:.4f}"] for run in payload["runs"]]
    print(format_table(["sampler seed", "hypervolume optuna", "hypervolume random", "optuna / random"], rows))
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
