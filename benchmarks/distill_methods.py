"""Student test accuracy of each distillation method against no distillation, same seeds, in-process.

Each method runs its shipped workflow (`workflows/digits_<method>.yaml`) through the trial's own
functions, without Ray. The setting where distillation matters: teachers are trained once on all
training labels (cached under runs/teachers/), while the student keeps only `--label-fraction` of the
labels; the other training images stay as an unlabeled transfer set that only distillation losses
use. The baseline is the kd workflow with alpha = 0 (hard-label CE on the labeled part only). The
hint and attention workflows pair their feature loss with kd; rows "<method> alone" drop the kd
term to show the feature loss by itself. Like a trial, each run keeps the best-validation epoch and
reports its test accuracy.

    .venv/bin/python -m benchmarks.distill_methods            # writes benchmarks/results/distill_methods.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import MEASURED_KERNELS, REPO, RESULTS, measured_commit, train_student
from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.models.saved import load_teacher_module

METHODS = ["kd", "hard", "logit_mse", "hint", "attention", "multi_teacher"]
BASELINE = "none (alpha=0)"
ALONE = " alone"
ROWS = [BASELINE, *METHODS, "hint" + ALONE, "attention" + ALONE]


def teachers_for(wf: WorkflowConfig, accuracy_by_file: dict[str, float]) -> list[torch.nn.Module]:
    """The workflow's teachers as a trial gets them (trained on all labels once, cached, frozen); notes their test accuracy."""
    prepared = prepare_teachers(wf, build_data(wf.data), log=lambda message: print(f"  {message}"))
    accuracy_by_file.update({teacher.path.name: teacher.test_accuracy for teacher in prepared})
    return [load_teacher_module(teacher.payload) for teacher in prepared]


def test_accuracy(wf: WorkflowConfig, teachers: list[torch.nn.Module]) -> float:
    """One trial's training on this process (world size 1): test accuracy at the best-val epoch."""
    return train_student(wf, build_data(wf.data), teachers)[metrics.TEST_ACCURACY]


def summary(accuracies: list[float]) -> dict[str, object]:
    return {"test_accuracy": accuracies, "mean": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}


def row_workflow(row: str) -> tuple[Path, dict[str, object]]:
    """The shipped workflow a row runs and the overrides that make it that row."""
    if row == BASELINE:
        return REPO / "workflows" / "digits_kd.yaml", {"distillation.alpha": 0.0}
    method = row.removesuffix(ALONE)
    path = REPO / "workflows" / f"digits_{method}.yaml"
    if not row.endswith(ALONE):
        return path, {}
    own = [spec.model_dump() for spec in load_workflow(path).distillation.losses if spec.name == method]
    return path, {"distillation.losses": own}


def run(seeds: list[int], label_fraction: float, epochs: int) -> dict[str, object]:
    student_overrides = {**MEASURED_KERNELS, "data.label_fraction": label_fraction, "training.epochs": epochs}
    results: dict[str, dict[str, object]] = {}
    teacher_accuracy: dict[str, float] = {}
    for row in ROWS:
        path, overrides = row_workflow(row)
        wf = load_workflow(path, {**MEASURED_KERNELS, **overrides})  # the pin reaches the teachers too
        teachers = [] if row == BASELINE else teachers_for(wf, teacher_accuracy)
        started = time.perf_counter()
        accuracies = [test_accuracy(load_workflow(path, {**student_overrides, **overrides, "training.seed": seed}), teachers) for seed in seeds]
        losses = [spec.model_dump() for spec in wf.distillation.losses] if teachers else []
        results[row] = {**summary(accuracies), "workflow": path.name, "alpha": wf.distillation.alpha if teachers else 0.0, "losses": losses, "seconds": time.perf_counter() - started}
        print(f"  {row:<16} {results[row]['mean']:.4f} +- {results[row]['std']:.4f}  ({results[row]['seconds']:.0f} s)", flush=True)
    setting = {"data": "digits", "label_fraction": label_fraction, "student_epochs": epochs, "seeds": seeds, "torch_threads": torch.get_num_threads()}
    return {"setting": setting, "commit": measured_commit(), "teacher_test_accuracy": teacher_accuracy, "methods": results}


def table(report: dict[str, object]) -> str:
    methods = report["methods"]
    baseline = methods[BASELINE]["mean"]
    lines = ["| method | test accuracy (mean +- std) | vs baseline | per seed |", "|---|---|---|---|"]
    for name, result in methods.items():
        per_seed = ", ".join(f"{a:.3f}" for a in result["test_accuracy"])
        lines.append(f"| {name} | {result['mean']:.4f} +- {result['std']:.4f} | {result['mean'] - baseline:+.4f} | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1, the same for every method")
    parser.add_argument("--label-fraction", type=float, default=0.1, help="share of training labels the student sees")
    parser.add_argument("--epochs", type=int, default=8, help="student epochs (the workflows' own value by default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill_methods.json")
    args = parser.parse_args()
    report = run(list(range(args.seeds)), args.label_fraction, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"teachers (test accuracy, all labels): {report['teacher_test_accuracy']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
