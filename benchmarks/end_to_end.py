"""end_to_end: the Fashion-MNIST workflow from an empty folder to a registered champion, timed stage by stage.

    .venv/bin/python -m benchmarks.end_to_end [--quick]    # writes benchmarks/results/end_to_end.{json,md}

Everything runs as a user's first run does, in a fresh folder under runs/: the teacher is trained by the product's
teacher stage (no cached file, no committed asset), then `lepton-ray sweep --no-export` runs the search, and its
last stage (select, the labels-only control, int8 export, checks, publish to MLflow) runs here as the command runs
it, timed on its own. The teacher's old recipe (the kernels before issue 32: contiguous weights, unfused Adam, fp32) is
timed in the same run for `OLD_RECIPE_EPOCHS` epochs and extrapolated per epoch, so the two teacher times see the
same machine. Each trial's seconds come from its MLflow run: set-up, and its compute split into epochs, BatchNorm
re-estimation (`reestimate_s`) and finish (`finish_s`: bake, test, int8 export and measurement).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from typing import Any

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, figures_table, format_table, write_result_and_page
from benchmarks.fashion_mnist import QUICK, WORKFLOW, run_sweep
from lepton_ray import metrics
from lepton_ray.config import SelectionConfig, TrainingConfig, load_workflow
from lepton_ray.deploy.pareto import Selection, select
from lepton_ray.errors import SelectionError
from lepton_ray.data.datasets import build_data
from lepton_ray.sweep.results import existing_sweep, select_export_publish
from lepton_ray.trial.teacher import prepare_teachers, train_teacher

NAME = "end_to_end"
OLD_RECIPE_EPOCHS, QUICK_OLD_RECIPE_EPOCHS = 2, 1
SIZE_GOAL_BYTES = 10_800
"""Issue 31's size: the front's most accurate student within it, chosen on validation, is reported beside the champion."""
OLD_KERNELS = TrainingConfig(**{path.removeprefix("training."): value for path, value in MEASURED_KERNELS.items()})
"""What teacher training ran before issue 32 (the same recipe: epochs, batch, learning rate, views)."""
SECONDS = (metrics.SETUP_S, metrics.COMPUTE_S, metrics.REESTIMATE_S, metrics.FINISH_S)


def trial_seconds(trials: Any) -> dict[str, Any]:
    """Per finished trial: set-up, epochs (compute less re-estimation and finish), re-estimation, finish; and the
    share of a trial spent outside its epochs, over all trials together."""
    done = trials[trials["status"] == "finished"]
    rows = [{"trial": int(row["trial"]), **{name: float(row[name]) for name in SECONDS}} for _, row in done.iterrows()]
    for row in rows:
        row["epochs_s"] = row[metrics.COMPUTE_S] - row[metrics.REESTIMATE_S] - row[metrics.FINISH_S]
    total = sum(row[metrics.SETUP_S] + row[metrics.COMPUTE_S] for row in rows)
    outside = sum(row[metrics.REESTIMATE_S] + row[metrics.FINISH_S] for row in rows)
    return {"trials": rows, "outside_epochs_share": outside / total if total else float("nan"),
            "median": {name: statistics.median(row[name] for row in rows) for name in (*SECONDS, "epochs_s")} if rows else {}}


def run(quick: bool) -> dict[str, Any]:
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    shutil.rmtree(folder, ignore_errors=True)  # the benchmark's own scratch folder: an empty folder is the point
    overrides = {"output_dir": str(folder), "tracking.uri": f"sqlite:///{folder}/mlflow.db", "teacher.checkpoint": str(folder / "teacher.pt"), **(QUICK if quick else {})}
    wf = load_workflow(WORKFLOW, overrides)
    started = time.perf_counter()
    data = build_data(wf.data)
    load_seconds = time.perf_counter() - started

    old_epochs = QUICK_OLD_RECIPE_EPOCHS if quick else OLD_RECIPE_EPOCHS
    assert wf.teacher.train is not None
    started = time.perf_counter()
    train_teacher(wf.teacher.model_copy(update={"train": wf.teacher.train.model_copy(update={"epochs": old_epochs})}), data, wf.training.seed, "-",
                  log=print, kernels=OLD_KERNELS)
    old_recipe_seconds = (time.perf_counter() - started) / old_epochs * wf.teacher.train.epochs

    started = time.perf_counter()
    (teacher,) = prepare_teachers(wf, data)
    teacher_seconds = time.perf_counter() - started

    sweep_seconds = run_sweep(overrides)
    outcome, tracker = existing_sweep(wf)
    started = time.perf_counter()
    exported = select_export_publish(wf, outcome, data, tracker, print)
    finish_seconds = time.perf_counter() - started
    champion, checks = exported.selection.row, exported.checks
    try:
        budgeted = select(outcome.trials, wf.sweep.cost_metric, float("nan"), SelectionConfig(policy="max_accuracy_under_cost", options={"budget": SIZE_GOAL_BYTES}),
                          wf.export.tolerance, len(data.val))
    except SelectionError as err:  # no trial that small: the page says so
        budgeted = Selection("max_accuracy_under_cost", {"trial": -1, metrics.SELECTION_ACCURACY: float("nan"), metrics.TEST_ACCURACY: float("nan"),
                                                         metrics.INT8_GZIP_BYTES: float("nan")}, str(err), str(err))
    return {
        "setting": {"workflow": str(WORKFLOW.relative_to(REPO)), "quick": quick, "old_recipe_epochs_timed": old_epochs,
                    "teacher_epochs": wf.teacher.train.epochs, "trials": wf.sweep.num_samples, "epochs": wf.training.epochs},
        "seconds": {"data": load_seconds, "teacher": teacher_seconds, "teacher_old_recipe_extrapolated": old_recipe_seconds,
                    "sweep": sweep_seconds, "select_control_export_publish": finish_seconds,
                    "total": load_seconds + teacher_seconds + sweep_seconds + finish_seconds},
        "teacher": {"test_accuracy": teacher.test_accuracy, "train_seconds": teacher.payload.get("train_seconds")},
        "trial_seconds": trial_seconds(outcome.trials),
        "champion": {"trial": int(champion["trial"]), "explanation": exported.selection.explanation,
                     "int8_val_accuracy": float(champion[metrics.SELECTION_ACCURACY]), "int8_ort_test_accuracy": checks.int8_test_accuracy,
                     metrics.INT8_GZIP_BYTES: float(champion[metrics.INT8_GZIP_BYTES]),
                     "gain": exported.gain.sentence() if exported.gain is not None else "distillation control off",
                     "published": exported.published.model_uri if exported.published else None},
        "within_size_goal": {"trial": int(budgeted.trial), "explanation": budgeted.explanation, "budget_bytes": SIZE_GOAL_BYTES,
                             "int8_val_accuracy": float(budgeted.row[metrics.SELECTION_ACCURACY]), "test_accuracy": float(budgeted.row[metrics.TEST_ACCURACY]),
                             metrics.INT8_GZIP_BYTES: float(budgeted.row[metrics.INT8_GZIP_BYTES])},
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    """`caveat` (written into a results file by hand, saying why) marks the teacher ratio of that run as not valid."""
    seconds = payload["seconds"]
    ratio = seconds["teacher"] / seconds["teacher_old_recipe_extrapolated"]
    return [
        Figure(NAME, "teacher test accuracy", payload["teacher"]["test_accuracy"], at_least=0.93),
        Figure(NAME, "teacher seconds / old recipe", float("nan") if payload.get("caveat") else ratio, at_most=0.5),
        Figure(NAME, "trial seconds outside epochs (re-estimation, finish) / trial seconds", payload["trial_seconds"]["outside_epochs_share"], at_most=0.15),
        Figure(NAME, "from an empty folder to a registered champion (s)", seconds["total"]),
        Figure(NAME, "champion int8 ORT test accuracy", payload["champion"]["int8_ort_test_accuracy"]),
        *([Figure(NAME, f"most accurate trial within {SIZE_GOAL_BYTES:,} gzip bytes (chosen on validation): test accuracy",
                  payload["within_size_goal"]["test_accuracy"], at_least=0.91)] if "within_size_goal" in payload else []),
    ]


def markdown(payload: dict[str, Any]) -> str:
    seconds, trials = payload["seconds"], payload["trial_seconds"]
    return "\n".join([
        "# Fashion-MNIST from an empty folder to a registered champion", "",
        f"Measured at commit `{payload['commit']}` on {payload['machine']['cpu_model']} ({payload['machine']['logical_cores']} cores), "
        f"{payload['measured_at']}{' (--quick smoke run)' if payload['quick'] else ''}.", "",
        figures_table(figures(payload)), "",
        *([f"**Caveat:** {payload['caveat']}", ""] if payload.get("caveat") else []),
        format_table(["stage", "seconds"], [[name, f"{value:,.0f}"] for name, value in seconds.items()]), "",
        "Per trial (median seconds): " + ", ".join(f"{name} {value:.1f}" for name, value in trials["median"].items()) + ".", "",
        f"Champion: trial {payload['champion']['trial']}, int8 test {payload['champion']['int8_ort_test_accuracy']:.4f} at "
        f"{payload['champion'][metrics.INT8_GZIP_BYTES]:,.0f} gzip bytes; {payload['champion']['gain']}", "",
        *([f"Within {SIZE_GOAL_BYTES:,} gzip bytes (issue 31's size, the same sweep, chosen on validation by max_accuracy_under_cost): "
           f"{payload['within_size_goal']['explanation']}; its test accuracy (the finalized student in PyTorch) "
           f"{payload['within_size_goal']['test_accuracy']:.4f}.", ""] if "within_size_goal" in payload else []),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the workflow's quick settings (1 epoch, 2 trials)")
    args = parser.parse_args(argv)
    return write_result_and_page(NAME, run(args.quick), args.quick, markdown, figures)


if __name__ == "__main__":
    main()
