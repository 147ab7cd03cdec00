"""What distillation buys on Fashion-MNIST, recipe by recipe: each recipe trained with its teacher and labels-only
on the same schedule and data pipeline (same seeds), for the dense student and the FM champion's compressed
configuration and its most accurate point within 10.8 KB (width, channel pruning, sparsity, bits: CONFIGS). Every
recipe and pipeline sets its own epochs, views, losses, T and alpha: the workflow file changing leaves them as they are.

    .venv/bin/python -m benchmarks.distill_gain [--recipes kd,kd_aug] [--configs dense,champion] [--seeds 3] [--quick]

Each (config, recipe, arm, seed) is one run of the trial's own loop in a worker process (two at a time, one thread
each, as a sweep's trials run), the teacher's outputs read from a teacher cache built once per data pipeline here.
A finished run is kept as JSON under runs/bench-distill_gain/ and read back, so a benchmark that stopped (a run
costs 2-15 min on 2 cores; the whole table hours) continues where it was; rows of the previous results file whose runs
are not on disk (another machine measured them) are carried over, each row naming the commits its runs were trained at. Results, with seconds per run:
benchmarks/results/distill_gain.{json,md}. The gain of a recipe is the mean over seeds of (teacher - labels-only)
test accuracy, in points, with the standard deviation of those paired differences.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, format_table, measured_commit, result_path, train_student, write_page, write_result
from benchmarks.fashion_mnist import QUICK, WORKFLOW, bench_workflow
from lepton_ray import metrics
from lepton_ray.config import load_workflow
from lepton_ray.data.batches import iterate_batches
from lepton_ray.data.datasets import build_data
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.teacher import Teacher, prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "distill_gain"
AUGMENT = {"hflip": True, "crop_padding": 2}
PATIENT_EPOCHS = 30
VERY_PATIENT_EPOCHS = 60
LABEL_SMOOTHING = 0.1
"""The usual value (Szegedy et al. 2016; Mueller et al. 2019): a soft-target loss also smooths, so a fair labels-only arm may too."""
# A pipeline is what both arms share (epochs, views, mixing): recipes on one pipeline share its labels-only runs.
PIPELINES: dict[str, dict[str, Any]] = {
    "plain": {"training.epochs": 10},
    "aug": {"data.augment": {**AUGMENT, "views": 10}, "training.epochs": 10},
    "patient": {"data.augment": {**AUGMENT, "views": PATIENT_EPOCHS}, "training.epochs": PATIENT_EPOCHS},
    "mixup": {"data.augment": {**AUGMENT, "views": PATIENT_EPOCHS, "mix": "mixup"}, "training.epochs": PATIENT_EPOCHS},
    "long": {"training.epochs": PATIENT_EPOCHS},
    "longer": {"training.epochs": VERY_PATIENT_EPOCHS},
    "plain_ls": {"training.epochs": 10, "distillation.label_smoothing": LABEL_SMOOTHING},
    "long_ls": {"training.epochs": PATIENT_EPOCHS, "distillation.label_smoothing": LABEL_SMOOTHING},
}
SETUP_KNOBS = {"training.epochs", "distillation.label_smoothing"}
"""What each arm may choose for itself on validation (`best_setup_gains`): how long it trains and whether its labels are smoothed."""
KD = {"distillation.losses": [{"name": "kd", "weight": 1.0}], "distillation.temperature": 4.0, "distillation.alpha": 0.7}
"""What workflows/fashion_mnist.yaml distilled with until the distill_gain measurements."""
DIST = {"distillation.losses": [{"name": "dist", "weight": 1.0}], "distillation.temperature": 4.0, "distillation.alpha": 0.5}
"""DIST as workflows/fashion_mnist.yaml distils with it since d1bd05a (beta = gamma = 1)."""
ENSEMBLE_SEEDS = (1, 2)
"""Training seeds of the teachers an ensemble recipe adds to the workflow's (seed 0): its recipe, data and split."""
RECIPES: dict[str, dict[str, Any]] = {
    "kd": {"pipeline": "plain", "teacher": KD, "what": "kd (T 4, alpha 0.7), 10 epochs, no augmentation"},
    "dkd": {"pipeline": "plain", "teacher": {"distillation.alpha": 0.5, "distillation.temperature": 4.0,
                                                  "distillation.losses": [{"name": "dkd", "weight": 1.0, "options": {"alpha": 1.0, "beta": 8.0}}]},
            "what": "decoupled KD (alpha 1, beta 8, T 4), 10 epochs"},
    "dist": {"pipeline": "plain", "teacher": DIST,
             "what": "DIST (beta = gamma = 1, T 4), 10 epochs"},
    "kd_std": {"pipeline": "plain", "teacher": {"distillation.losses": [{"name": "kd_std", "weight": 1.0}], "distillation.temperature": 2.0,
                                                "distillation.alpha": 0.9},
               "what": "logit-standardised kd (Sun et al. 2024: T 2 on z-scored logits, alpha 0.9 as the paper's teacher-heavy weights), 10 epochs"},
    "dist_long": {"pipeline": "long", "teacher": DIST,
                  "what": f"DIST (T 4, alpha 0.5), a patient schedule without augmentation: {PATIENT_EPOCHS} epochs"},
    "dist_long_t1": {"pipeline": "long", "teacher": {**DIST, "distillation.temperature": 1.0},
                     "what": f"DIST (T 1, the FM rerun's searcher's choice on 8 of its 12 front points; alpha 0.5), {PATIENT_EPOCHS} epochs without augmentation"},
    "dist_long_a75": {"pipeline": "long", "teacher": {**DIST, "distillation.alpha": 0.75},
                      "what": f"DIST (T 4, alpha 0.75: the teacher's share up), {PATIENT_EPOCHS} epochs without augmentation"},
    "dist_long_ensemble": {"pipeline": "long", "teacher": DIST, "teachers": 1 + len(ENSEMBLE_SEEDS),
                           "what": f"DIST (T 4, alpha 0.5) against a {1 + len(ENSEMBLE_SEEDS)}-teacher ensemble's averaged probabilities "
                                   f"(the teacher + the same recipe trained with seeds {', '.join(map(str, ENSEMBLE_SEEDS))}), {PATIENT_EPOCHS} epochs"},
    "dist_ls": {"pipeline": "plain_ls", "teacher": DIST,
                "what": f"DIST (beta = gamma = 1, T 4), 10 epochs, label smoothing {LABEL_SMOOTHING} on both arms' hard-label term"},
    "dist_long_ls": {"pipeline": "long_ls", "teacher": DIST,
                     "what": f"DIST (T 4, alpha 0.5), {PATIENT_EPOCHS} epochs, label smoothing {LABEL_SMOOTHING} on both arms' hard-label term "
                             "(the labels-only arm as smooth as a soft target)"},
    "dist_longer": {"pipeline": "longer", "teacher": DIST,
                    "what": f"DIST (T 4, alpha 0.5), {VERY_PATIENT_EPOCHS} epochs without augmentation: does the gain keep growing with the schedule?"},
    "kd_aug": {"pipeline": "aug", "teacher": KD, "what": "kd + consistent flip/crop views (teacher sees the same view), 10 epochs"},
    "kd_aug_patient": {"pipeline": "patient", "teacher": KD, "what": f"kd + consistent views + a patient schedule: {PATIENT_EPOCHS} epochs, a fresh view each"},
    "function_matching": {"pipeline": "mixup", "teacher": {**KD, "distillation.alpha": 1.0},
                          "what": f"mixup views labelled by the teacher alone (alpha 1; labels-only: mixed labels), {PATIENT_EPOCHS} epochs"},
}
QUICK_EPOCHS, QUICK_VIEWS = 1, 2
LABELS_ONLY, WITH_TEACHER = "labels_only", "teacher"


CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {},
    # Two points of the FM front chosen on validation at 199d9e1 (benchmarks/results/fashion_mnist.json then), fixed here
    # so that a rerun of that benchmark does not change what the runs on disk were trained with.
    "champion": {"compression.channel_pruning.sparsity": 0.235685, "compression.pruning.sparsity": 0, "compression.quantization.bits": 7,
                 "student.options.width": 1},  # trial 13, the pick: 15.5 KB gzip
    "compact": {"compression.channel_pruning.sparsity": 0.0397581, "compression.pruning.sparsity": 0.8, "compression.quantization.bits": 7,
                "student.options.width": 1},  # trial 15, the most accurate point within the 10.8 KB goal: 10.6 KB gzip
    # The pick of the DIST rerun at d1bd05a (trial 11: 16.4 KB gzip, 4 bits, nothing pruned).
    "pick": {"compression.channel_pruning.sparsity": 0, "compression.pruning.sparsity": 0, "compression.quantization.bits": 4, "student.options.width": 1},
    # The FM rerun at b861c23's most accurate front point within 10.8 KB (trial 13: 8.9 KB gzip), the size goal's student.
    "size": {"compression.channel_pruning.sparsity": 0.33886, "compression.pruning.sparsity": 0, "compression.quantization.bits": 4, "student.options.width": 1},
}


def run_overrides(config: dict[str, Any], recipe: str, arm: str, seed: int, quick: bool = False) -> dict[str, Any]:
    """A run's workflow overrides: the config's knobs, the recipe's pipeline, the arm's distillation, the seed
    (`quick`: one epoch over at most two views)."""
    spec = RECIPES[recipe]
    arm_overrides = {**spec["teacher"], **extra_teacher_overrides(spec.get("teachers", 1) - 1, quick)} if arm == WITH_TEACHER else {"distillation.alpha": 0.0}
    overrides = {**MEASURED_KERNELS, **config, **PIPELINES[spec["pipeline"]], **arm_overrides, "training.seed": seed}
    if quick:
        overrides["training.epochs"] = QUICK_EPOCHS
        if "data.augment" in overrides:
            overrides["data.augment"] = {**overrides["data.augment"], "views": QUICK_VIEWS}
    return overrides


def extra_teacher_file(seed: int, quick: bool) -> Path:
    """Where the ensemble's teacher of training seed `seed` is kept: next to the workflow's (runs/teachers/)."""
    teacher = REPO / Path(load_workflow(WORKFLOW).teacher.checkpoint).with_suffix(".quick.pt" if quick else ".pt")
    return teacher.with_name(f"{teacher.stem}.seed{seed}{teacher.suffix}")


def extra_teacher_overrides(count: int, quick: bool) -> dict[str, Any]:
    """`extra_teachers`: the workflow's teacher spec with the files of the first `count` ensemble seeds."""
    if count == 0:
        return {}
    spec = load_workflow(WORKFLOW, QUICK if quick else {}).teacher.model_dump(mode="json")
    return {"extra_teachers": [{**spec, "checkpoint": str(extra_teacher_file(seed, quick))} for seed in ENSEMBLE_SEEDS[:count]]}


def ensemble_teachers(folder: Path, quick: bool, data: Any, count: int) -> list[Teacher]:
    """The first `count` extra teachers, each trained by the product's teacher stage with its own training seed
    (same split: the data's seed is separate) the first time, then read back from its file."""
    teachers = []
    for seed in ENSEMBLE_SEEDS[:count]:
        seeded = bench_workflow(folder, quick, None, {"training.seed": seed, "teacher.checkpoint": str(extra_teacher_file(seed, quick))})[0]
        teachers += prepare_teachers(seeded, data)
    return teachers


def ensemble_accuracy(teachers: list[Teacher], split: Any) -> float:
    """Test accuracy of the teachers' averaged probabilities (at T 1), what an ensemble recipe distils from."""
    modules = [load_teacher_module(t.payload).eval() for t in teachers]
    correct = 0
    with torch.no_grad():
        for batch in iterate_batches(split, list(range(len(split))), 512, torch.device("cpu")):
            averaged = torch.stack([module(batch.images).float().softmax(dim=-1) for module in modules]).mean(dim=0)
            correct += int((averaged.argmax(dim=-1) == batch.labels).sum())
    return correct / len(split)


def run_key(config: str, recipe: str, arm: str, seed: int) -> str:
    """A run's name: labels-only runs are named by their pipeline, so the recipes that share it share them."""
    return f"{config}-{recipe if arm == WITH_TEACHER else RECIPES[recipe]['pipeline']}-{arm}-seed{seed}"


def one_run(overrides: dict[str, Any], teachers: list[Teacher], folder: Path, quick: bool, out: Path) -> dict[str, Any]:
    """One run in a worker process (`teachers`: none for the labels-only arm), its final metrics written to `out`
    (read back by a later benchmark run)."""
    torch.set_num_threads(1)
    wf = bench_workflow(folder, quick, None, overrides)[0]
    data = build_data(wf.data)
    used = teachers if wf.distillation.alpha > 0 else []
    cache = sweep_teacher_cache(wf, used, data, folder)[0] if used else None
    started = time.perf_counter()
    final = train_student(wf, data, [load_teacher_module(t.payload) for t in used], cache)
    result = {"seconds": time.perf_counter() - started, "commit": measured_commit(), **{k: final[k] for k in (metrics.TEST_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.INT8_VAL_ACCURACY, metrics.INT8_GZIP_BYTES)}}
    out.write_text(json.dumps(result) + "\n")
    return result


def planned_jobs(configs: list[str], recipes: list[str], seeds: list[int]) -> list[tuple[str, str, str, int]]:
    """Every (config, recipe, arm, seed) once per run name, seed by seed and the short pipelines first, so a
    benchmark stopped part-way has whole seeds of the cheap rows."""
    order = sorted(recipes, key=lambda r: (list(PIPELINES).index(RECIPES[r]["pipeline"]), r))
    jobs, names = [], set()
    for seed in seeds:
        for recipe in order:
            for config in configs:
                for arm in (WITH_TEACHER, LABELS_ONLY):
                    if run_key(config, recipe, arm, seed) not in names:
                        names.add(run_key(config, recipe, arm, seed))
                        jobs.append((config, recipe, arm, seed))
    return jobs


def run(configs: list[str], recipes: list[str], seeds: list[int], quick: bool, processes: int) -> dict[str, Any]:
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    knobs = CONFIGS
    wf = bench_workflow(folder, quick, None)[0]
    data = build_data(wf.data)
    teachers = prepare_teachers(wf, data)
    teachers += ensemble_teachers(folder, quick, data, max(RECIPES[r].get("teachers", 1) for r in recipes) - 1)
    for recipe in recipes:  # each (pipeline, teachers) cache built once here, not by two workers at once
        piped = bench_workflow(folder, quick, None, run_overrides({}, recipe, WITH_TEACHER, 0, quick))[0]
        sweep_teacher_cache(piped, teachers[:RECIPES[recipe].get("teachers", 1)], build_data(piped.data), folder)
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for job in planned_jobs(configs, recipes, seeds):
            out = folder / f"{run_key(*job)}.json"
            if out.is_file():
                results[run_key(*job)] = json.loads(out.read_text())
                continue
            overrides = run_overrides(knobs[job[0]], job[1], job[2], job[3], quick)
            used = teachers[:RECIPES[job[1]].get("teachers", 1)] if job[2] == WITH_TEACHER else []
            futures[job] = pool.submit(one_run, overrides, used, folder, quick, out)
        for job, future in futures.items():
            results[run_key(*job)] = future.result()
            print(f"  {run_key(*job)}: test {results[run_key(*job)][metrics.TEST_ACCURACY]:.4f} ({results[run_key(*job)]['seconds']:.0f} s)", flush=True)
    return {"setting": {"workflow": "workflows/fashion_mnist.yaml", "seeds_asked": seeds, "configs": knobs, "recipes": RECIPES, "pipelines": PIPELINES,
                        "teacher_test_accuracy": teachers[0].test_accuracy, "processes": processes,
                        "ensemble": {"teacher_test_accuracy": [t.test_accuracy for t in teachers],
                                     "averaged_test_accuracy": ensemble_accuracy(teachers, data.test)} if len(teachers) > 1
                                    else carried_ensemble(result_path(NAME, quick))},
            "rows": {**carried_rows(result_path(NAME, quick)), **finished_rows(folder)}}


def carried_rows(previous: Path) -> dict[str, dict[str, Any]]:
    """The previous results file's rows (runs this machine no longer has), each naming the commits it was measured at."""
    if not previous.is_file():
        return {}
    payload = json.loads(previous.read_text())
    return {row: {"commits": [payload["commit"]], **values} for row, values in payload.get("rows", {}).items() if row.split("/")[1] in RECIPES}


def carried_ensemble(previous: Path) -> dict[str, Any] | None:
    """The previous results file's ensemble teachers' accuracies, for an invocation that loaded no ensemble (its carried
    ensemble rows still need them on the page)."""
    return json.loads(previous.read_text())["setting"].get("ensemble") if previous.is_file() else None


def finished_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Every (config, recipe) row with the seeds whose both arms are on disk, this invocation's and earlier ones'
    (a screen at one seed and a confirmation at three land in one table, each row saying its seeds and the commits
    its runs were trained at)."""
    done = {path.stem: json.loads(path.read_text()) for path in folder.glob("*-seed*.json")}
    rows = {}
    for config in CONFIGS:
        for recipe in RECIPES:
            seeds = [s for s in range(100) if all(run_key(config, recipe, arm, s) in done for arm in (WITH_TEACHER, LABELS_ONLY))]
            if seeds:
                runs = [done[run_key(config, recipe, arm, s)] for s in seeds for arm in (WITH_TEACHER, LABELS_ONLY)]
                rows[f"{config}/{recipe}"] = {"seeds": seeds, "commits": sorted({r.get("commit", "not recorded") for r in runs}), **gain_row(runs, seeds)}
    return rows


def gain_row(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """`runs` alternate (teacher, labels-only) per seed: the mean of each arm and of the paired differences (points)."""
    teacher, labels = runs[0::2], runs[1::2]
    differences = [100 * (t[metrics.TEST_ACCURACY] - lab[metrics.TEST_ACCURACY]) for t, lab in zip(teacher, labels)]
    return {
        "teacher_test_accuracy": [t[metrics.TEST_ACCURACY] for t in teacher], "labels_only_test_accuracy": [lab[metrics.TEST_ACCURACY] for lab in labels],
        "teacher_val_accuracy": [t[metrics.BEST_VAL_ACCURACY] for t in teacher], "labels_only_val_accuracy": [lab[metrics.BEST_VAL_ACCURACY] for lab in labels],
        "gain_points": statistics.mean(differences), "gain_sd_points": statistics.stdev(differences) if len(seeds) > 1 else float("nan"),
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    """Issue 31's goals: a gain of at least 0.5 pt for the dense student and 1.0 pt for a compressed one, and (rows with
    several seeds) larger than twice the pooled seed standard deviation of the two arms."""
    out = []
    for row, values in payload["rows"].items():
        out.append(Figure(NAME, f"{row}: teacher - labels only (pt, {len(values['seeds'])} seeds)", values["gain_points"],
                          at_least=0.5 if row.startswith("dense/") else 1.0))
        if len(values["seeds"]) > 1:
            out.append(Figure(NAME, f"{row}: gain / pooled seed sd of the two arms", gain_over_pooled_sd(values), at_least=2.0))
    for config, family, (teacher_row, labels_row), gain in best_setup_gains(payload["rows"]):
        out.append(Figure(NAME, f"{config}/{family}: each arm at its own setup, chosen on validation ({teacher_row.split('/')[1]} vs "
                                f"{RECIPES[labels_row.split('/')[1]]['pipeline']} labels only; pt, {len(gain)} seeds)", statistics.mean(gain),
                          at_least=0.5 if config == "dense" else 1.0))
    return out


def setup_family(recipe: str) -> str:
    """The recipes one differs from only in its training setup, `SETUP_KNOBS` (same teachers, loss, T, alpha, no
    augmentation or mixing), named by the shortest one: dist, dist_long, dist_longer and dist_long_ls are the family `dist`."""
    spec = RECIPES[recipe]
    same = [name for name, other in RECIPES.items() if other["teacher"] == spec["teacher"] and other.get("teachers", 1) == spec.get("teachers", 1)
            and set(PIPELINES[other["pipeline"]]) <= SETUP_KNOBS]
    return min(same, key=lambda name: (recipe_epochs(name), name)) if recipe in same else recipe


def recipe_epochs(recipe: str) -> int:
    """The epochs both arms of a recipe train for (its pipeline's)."""
    return PIPELINES[RECIPES[recipe]["pipeline"]]["training.epochs"]


def setup_families(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(config, setup family, its rows) for each family with two or more setups measured on the same seeds (two or more)."""
    out = []
    for config in CONFIGS:
        families: dict[str, list[str]] = {}
        for row in rows:
            if row.startswith(f"{config}/"):
                families.setdefault(setup_family(row.split("/")[1]), []).append(row)
        for family, members in families.items():
            seeds = rows[members[0]]["seeds"]
            if len(members) >= 2 and len(seeds) >= 2 and all(rows[m]["seeds"] == seeds for m in members):
                out.append((config, family, members))
    return out


def by_validation(rows: dict[str, dict[str, Any]], members: list[str], arm: str) -> list[str]:
    """`members` best first by the arm's mean validation accuracy (`arm`: teacher or labels_only); ties keep their order."""
    return sorted(members, key=lambda m: statistics.mean(rows[m][f"{arm}_val_accuracy"]), reverse=True)


def best_setup_gains(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, tuple[str, str], list[float]]]:
    """What distillation bought when each arm trains as suits it: per config and setup family with two or more setups
    on the same seeds, the teacher arm of the row with the best mean validation accuracy against the labels-only arm of
    the row with the best (a labels-only run that overfits at 60 epochs is compared at 30; one that gains from label
    smoothing, smoothed), paired by seed on test. A same-setup gain can be inflated by a weak baseline; here each arm is at its best."""
    return [(config, family, *family_gain(rows, members)) for config, family, members in setup_families(rows)]


def family_gain(rows: dict[str, dict[str, Any]], members: list[str]) -> tuple[tuple[str, str], list[float]]:
    """One family's (teacher row, labels-only row) chosen on validation, and their test difference per seed (points)."""
    teacher, labels = by_validation(rows, members, "teacher")[0], by_validation(rows, members, "labels_only")[0]
    return (teacher, labels), [100 * (t - lab) for t, lab in zip(rows[teacher]["teacher_test_accuracy"], rows[labels]["labels_only_test_accuracy"])]


def best_setup_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The page's account of `best_setup_gains`: which setup each arm's validation chose, how close the next one came,
    and the paired test gain."""
    lines = []
    for config, family, members in setup_families(rows):
        _, gain = family_gain(rows, members)
        lines += [f"Each arm at its own setup, {config}/{family} (chosen on mean validation accuracy): with teacher "
                  f"{chosen_text(rows, members, 'teacher')}, labels only {chosen_text(rows, members, 'labels_only')}; "
                  f"test gain {differences_text(gain)}.", ""]
    return lines


def chosen_text(rows: dict[str, dict[str, Any]], members: list[str], arm: str) -> str:
    """"30 epochs (pick/dist_long, val 92.22; next 60 epochs, 92.10)": the arm's chosen setup and its runner-up."""
    best, *others = [(row, 100 * statistics.mean(rows[row][f"{arm}_val_accuracy"])) for row in by_validation(rows, members, arm)]
    runner_up = f"; next {recipe_setup(others[0][0].split('/')[1])}, {others[0][1]:.2f}" if others else ""
    return f"{recipe_setup(best[0].split('/')[1])} ({best[0]}, val {best[1]:.2f}{runner_up})"


def recipe_setup(recipe: str) -> str:
    """A recipe's `SETUP_KNOBS` in words: "30 epochs", "30 epochs, label smoothing 0.1"."""
    smoothing = PIPELINES[RECIPES[recipe]["pipeline"]].get("distillation.label_smoothing", 0)
    return f"{recipe_epochs(recipe)} epochs" + (f", label smoothing {smoothing}" if smoothing else "")


def gain_over_pooled_sd(values: dict[str, Any]) -> float:
    """The gain in units of the seed-to-seed spread of one run (both arms' sd pooled); NaN where the runs do not vary."""
    pooled = math.sqrt((statistics.variance(values["teacher_test_accuracy"]) + statistics.variance(values["labels_only_test_accuracy"])) / 2)
    return values["gain_points"] / (100 * pooled) if pooled > 0 else float("nan")


def markdown(payload: dict[str, Any]) -> str:
    rows = [[row, RECIPES[row.split("/")[1]]["what"], f"{100 * statistics.mean(v['teacher_test_accuracy']):.2f}", f"{100 * statistics.mean(v['labels_only_test_accuracy']):.2f}",
             f"{v['gain_points']:+.2f}" + (f" +- {v['gain_sd_points']:.2f}" if len(v['seeds']) > 1 else ""), len(v["seeds"]), f"{v['seconds_per_run']:.0f}",
             ", ".join(commit[:7] + ("+dirty" if commit.endswith("+dirty") else "") for commit in v.get("commits", []))] for row, v in payload["rows"].items()]
    return "\n".join([
        "# What distillation buys on Fashion-MNIST, recipe by recipe", "",
        f"Measured at commit `{payload['commit']}`, {payload['measured_at']}{' (--quick smoke run)' if payload['quick'] else ''}; "
        f"teacher test accuracy {payload['setting']['teacher_test_accuracy']:.4f}. Test accuracy in %, mean over the row's seeds (0..N-1, the same for both arms); "
        "gain: mean +- sd of the paired differences. Runs of one pipeline (epochs, views, mixing) share their labels-only arm. "
        "`trained at`: the commits of the row's runs (rows whose runs are not on this machine are carried from the previous file).", "",
        format_table(["config/recipe", "recipe", "with teacher", "labels only", "gain (pt)", "seeds", "s per run", "trained at"], rows), "",
        f"Configs: {json.dumps(payload['setting']['configs'])}.", "",
        *best_setup_lines(payload["rows"]),
        *ensemble_line(payload["setting"].get("ensemble")),
        *ensemble_versus_one_teacher(payload["rows"]),
    ])


def ensemble_line(ensemble: dict[str, Any] | None) -> list[str]:
    """The ensemble recipe's teachers: each one's test accuracy and their averaged probabilities'."""
    if not ensemble:
        return []
    each = ", ".join(f"{100 * accuracy:.2f}" for accuracy in ensemble["teacher_test_accuracy"])
    return [f"Ensemble teachers (seeds 0, {', '.join(map(str, ENSEMBLE_SEEDS))}): test accuracy {each}%; their averaged probabilities "
            f"{100 * ensemble['averaged_test_accuracy']:.2f}%.", ""]


def one_teacher_recipe(recipe: str) -> str | None:
    """The recipe an ensemble one differs from only in its number of teachers (dist_long for dist_long_ensemble)."""
    spec = RECIPES[recipe]
    return next((name for name, other in RECIPES.items()
                 if other.get("teachers", 1) == 1 and other["pipeline"] == spec["pipeline"] and other["teacher"] == spec["teacher"]), None)


def ensemble_versus_one_teacher(rows: dict[str, dict[str, Any]]) -> list[str]:
    """What the extra teachers bought: each ensemble row's with-teacher arm against its one-teacher row's, paired by seed
    (the labels-only arm is the same runs, so this is the difference of the two gains)."""
    lines = []
    for row, values in rows.items():
        config, recipe = row.split("/")
        single = f"{config}/{one_teacher_recipe(recipe)}"
        if RECIPES[recipe].get("teachers", 1) == 1 or single not in rows or rows[single]["seeds"] != values["seeds"]:
            continue
        paired = {split: paired_difference(values[f"teacher_{split}_accuracy"], rows[single][f"teacher_{split}_accuracy"]) for split in ("val", "test")}
        lines += [f"Ensemble against one teacher, same pipeline and seeds: {row} - {single}, paired by seed ({len(values['seeds'])} seeds): "
                  f"validation (what choosing the number of teachers reads) {paired['val']}; test (reported) {paired['test']}.", ""]
    return lines


def paired_difference(ours: list[float], theirs: list[float]) -> str:
    """Mean +- sd of the per-seed differences of two accuracy lists in points, then each seed's."""
    return differences_text([100 * (a - b) for a, b in zip(ours, theirs)])


def differences_text(differences: list[float]) -> str:
    """Per-seed differences in points as mean +- sd, then each seed's."""
    spread = f" +- {statistics.stdev(differences):.2f}" if len(differences) > 1 else ""
    return f"{statistics.mean(differences):+.2f}{spread} pt ({', '.join(f'{d:+.2f}' for d in differences)})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--configs", default="dense,champion,compact", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1, the same for both arms of every row")
    parser.add_argument("--processes", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, at most 2 views, the 1-epoch quick teacher")
    args = parser.parse_args(argv)
    recipes, configs = args.recipes.split(","), args.configs.split(",")
    unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown recipe or config: {', '.join(unknown)}")
    payload = write_result(NAME, run(configs, recipes, list(range(args.seeds)), args.quick, args.processes), args.quick)
    write_page(NAME, markdown(payload), args.quick)
    return payload


if __name__ == "__main__":
    main()
