"""What distillation buys on Fashion-MNIST, recipe by recipe: each recipe trained with its teacher and labels-only
on the same schedule and data pipeline (same seeds), for the dense student and the FM champion's compressed
configuration (width, channel pruning, sparsity, bits, read from benchmarks/results/fashion_mnist.json).

    .venv/bin/python -m benchmarks.distill_gain [--recipes kd,kd_aug] [--configs dense,champion] [--seeds 3] [--quick]

Each (config, recipe, arm, seed) is one run of the trial's own loop in a worker process (two at a time, one thread
each, as a sweep's trials run), the teacher's outputs read from a teacher cache built once per data pipeline here.
A finished run is kept as JSON under runs/bench-distill_gain/ and read back, so a benchmark that stopped (a run
costs 2-10 min on 2 cores; the whole table hours) continues where it was. Results, with seconds per run:
benchmarks/results/distill_gain.{json,md}. The gain of a recipe is the mean over seeds of (teacher - labels-only)
test accuracy, in points, with the standard deviation of those paired differences.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, RESULTS, Figure, format_table, train_student, write_page, write_result
from benchmarks.fashion_mnist import bench_workflow
from lepton_ray import metrics
from lepton_ray.data.datasets import build_data
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.teacher import Teacher, prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "distill_gain"
AUGMENT = {"hflip": True, "crop_padding": 2}
PATIENT_EPOCHS = 30
RECIPES: dict[str, dict[str, Any]] = {
    "kd": {"both": {}, "teacher": {}, "what": "the workflow's kd (T 4, alpha 0.7), 10 epochs, no augmentation"},
    "kd_aug": {"both": {"data.augment": {**AUGMENT, "views": 10}}, "teacher": {}, "what": "+ consistent flip/crop views (teacher sees the same view)"},
    "kd_aug_patient": {"both": {"data.augment": {**AUGMENT, "views": PATIENT_EPOCHS}, "training.epochs": PATIENT_EPOCHS}, "teacher": {},
                       "what": f"+ a patient schedule: {PATIENT_EPOCHS} epochs, a fresh view each"},
    "function_matching": {"both": {"data.augment": {**AUGMENT, "views": PATIENT_EPOCHS, "mix": "mixup"}, "training.epochs": PATIENT_EPOCHS},
                          "teacher": {"distillation.alpha": 1.0}, "what": "+ mixup labelled by the teacher alone (alpha 1; labels-only: mixed labels)"},
    "dkd": {"both": {}, "teacher": {"distillation.alpha": 0.5, "distillation.losses": [{"name": "dkd", "weight": 1.0, "options": {"alpha": 1.0, "beta": 8.0}}]},
            "what": "decoupled KD (alpha 1, beta 8, T 4), 10 epochs"},
    "dist": {"both": {}, "teacher": {"distillation.alpha": 0.5, "distillation.losses": [{"name": "dist", "weight": 1.0}]}, "what": "DIST (beta = gamma = 1, T 4), 10 epochs"},
}
CONFIG_KNOBS = ("student.", "compression.")
QUICK_EPOCHS, QUICK_VIEWS = 1, 2
LABELS_ONLY, WITH_TEACHER = "labels_only", "teacher"


def champion_knobs() -> dict[str, Any]:
    """The student and compression knobs of the committed FM champion (its front point in fashion_mnist.json)."""
    payload = json.loads((RESULTS / "fashion_mnist.json").read_text())
    point = next(p for p in payload["front"]["points"] if p["trial"] == payload["champion"]["trial"])
    return {key: value for key, value in point.items() if key.startswith(CONFIG_KNOBS)}


def run_overrides(config: dict[str, Any], recipe: str, arm: str, seed: int, quick: bool = False) -> dict[str, Any]:
    """A run's workflow overrides: the config's knobs, the recipe's pipeline, the arm's distillation, the seed
    (`quick`: one epoch over at most two views)."""
    spec = RECIPES[recipe]
    arm_overrides = spec["teacher"] if arm == WITH_TEACHER else {"distillation.alpha": 0.0}
    overrides = {**config, **spec["both"], **arm_overrides, "training.seed": seed}
    if quick:
        overrides["training.epochs"] = QUICK_EPOCHS
        if "data.augment" in overrides:
            overrides["data.augment"] = {**overrides["data.augment"], "views": QUICK_VIEWS}
    return overrides


def run_key(config: str, recipe: str, arm: str, seed: int) -> str:
    return f"{config}-{recipe}-{arm}-seed{seed}"


def one_run(overrides: dict[str, Any], teacher: Teacher | None, folder: Path, quick: bool, out: Path) -> dict[str, Any]:
    """One run in a worker process, its final metrics written to `out` (read back by a later benchmark run)."""
    torch.set_num_threads(1)
    wf = bench_workflow(folder, quick, None, overrides)[0]
    data = build_data(wf.data)
    uses_teacher = teacher is not None and wf.distillation.alpha > 0
    cache = sweep_teacher_cache(wf, [teacher], data, folder)[0] if uses_teacher else None
    started = time.perf_counter()
    final = train_student(wf, data, [load_teacher_module(teacher.payload)] if uses_teacher else [], cache)
    result = {"seconds": time.perf_counter() - started, **{k: final[k] for k in (metrics.TEST_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.INT8_VAL_ACCURACY, metrics.INT8_GZIP_BYTES)}}
    out.write_text(json.dumps(result) + "\n")
    return result


def run(configs: list[str], recipes: list[str], seeds: list[int], quick: bool, processes: int) -> dict[str, Any]:
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    knobs = {"dense": {}, "champion": champion_knobs()}
    wf = bench_workflow(folder, quick, None)[0]
    data = build_data(wf.data)
    (teacher,) = prepare_teachers(wf, data)
    jobs = [(c, r, a, s) for c in configs for r in recipes for a in (WITH_TEACHER, LABELS_ONLY) for s in seeds]
    for recipe in recipes:  # each data pipeline's cache built once here, not by two workers at once
        piped = bench_workflow(folder, quick, None, run_overrides({}, recipe, WITH_TEACHER, 0, quick))[0]
        sweep_teacher_cache(piped, [teacher], build_data(piped.data), folder)
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for job in jobs:
            out = folder / f"{run_key(*job)}.json"
            if out.is_file():
                results[run_key(*job)] = json.loads(out.read_text())
                continue
            overrides = run_overrides(knobs[job[0]], job[1], job[2], job[3], quick)
            futures[job] = pool.submit(one_run, overrides, teacher if job[2] == WITH_TEACHER else None, folder, quick, out)
        for job, future in futures.items():
            results[run_key(*job)] = future.result()
            print(f"  {run_key(*job)}: test {results[run_key(*job)][metrics.TEST_ACCURACY]:.4f} ({results[run_key(*job)]['seconds']:.0f} s)", flush=True)
    rows = {f"{config}/{recipe}": gain_row([results[run_key(config, recipe, arm, s)] for s in seeds for arm in (WITH_TEACHER, LABELS_ONLY)], seeds)
            for config in configs for recipe in recipes}
    return {"setting": {"workflow": "workflows/fashion_mnist.yaml", "seeds": seeds, "configs": {c: knobs[c] for c in configs},
                        "recipes": {r: RECIPES[r] for r in recipes}, "teacher_test_accuracy": teacher.test_accuracy, "processes": processes},
            "rows": rows}


def gain_row(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """`runs` alternate (teacher, labels-only) per seed: the mean of each arm and of the paired differences (points)."""
    teacher, labels = runs[0::2], runs[1::2]
    differences = [100 * (t[metrics.TEST_ACCURACY] - lab[metrics.TEST_ACCURACY]) for t, lab in zip(teacher, labels)]
    return {
        "teacher_test_accuracy": [t[metrics.TEST_ACCURACY] for t in teacher], "labels_only_test_accuracy": [lab[metrics.TEST_ACCURACY] for lab in labels],
        "gain_points": statistics.mean(differences), "gain_sd_points": statistics.stdev(differences) if len(seeds) > 1 else float("nan"),
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [Figure(NAME, f"{row}: teacher - labels only (pt, {len(payload['setting']['seeds'])} seeds)", values["gain_points"])
            for row, values in payload["rows"].items()]


def markdown(payload: dict[str, Any]) -> str:
    seeds = payload["setting"]["seeds"]
    rows = [[row, RECIPES[row.split("/")[1]]["what"], f"{100 * statistics.mean(v['teacher_test_accuracy']):.2f}", f"{100 * statistics.mean(v['labels_only_test_accuracy']):.2f}",
             f"{v['gain_points']:+.2f} +- {v['gain_sd_points']:.2f}", f"{v['seconds_per_run']:.0f}"] for row, v in payload["rows"].items()]
    return "\n".join([
        "# What distillation buys on Fashion-MNIST, recipe by recipe", "",
        f"Measured at commit `{payload['commit']}`, {payload['measured_at']}, seeds {seeds}{' (--quick smoke run)' if payload['quick'] else ''}; "
        f"teacher test accuracy {payload['setting']['teacher_test_accuracy']:.4f}. Test accuracy in %, mean over seeds; gain: mean +- sd of the paired differences.", "",
        format_table(["config/recipe", "recipe", "with teacher", "labels only", "gain (pt)", "s per run"], rows), "",
        f"Configs: {json.dumps(payload['setting']['configs'])}.", "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--configs", default="dense,champion", help="dense, champion or both")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1, the same for both arms of every row")
    parser.add_argument("--processes", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, at most 2 views, the 1-epoch quick teacher")
    args = parser.parse_args(argv)
    recipes, configs = args.recipes.split(","), args.configs.split(",")
    unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(configs) - {"dense", "champion"})
    if unknown:
        parser.error(f"unknown recipe or config: {', '.join(unknown)}")
    payload = write_result(NAME, run(configs, recipes, list(range(args.seeds)), args.quick, args.processes), args.quick)
    write_page(NAME, markdown(payload), args.quick)
    return payload


if __name__ == "__main__":
    main()
