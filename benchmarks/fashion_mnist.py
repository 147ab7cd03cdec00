"""Fashion-MNIST end to end: the teacher, the dense student labels-only vs distilled (seeds), a sweep's front on
the measured cost of the int8 file (chosen on validation), the champion's int8 file in ONNX Runtime on the 10k
test images, and its labels-only control (what distillation bought at the champion's compression, 3 seeds).

    .venv/bin/python -m benchmarks.fashion_mnist [--quick]    # writes benchmarks/results/fashion_mnist.{json,md}

Needs the four Fashion-MNIST idx files: `apt-get install dataset-fashion-mnist` (Debian) or `--data-root`.
The teacher is trained once through the product's teacher stage and cached under runs/teachers/, or copied
there from the committed asset when the workflow still describes that teacher (benchmarks/teacher_asset.py). The
dense students run through the trial's own loop, two at a time in worker processes (teacher outputs from the sweep's
teacher cache). The sweep is the real `lepton-ray sweep` command (Ray, MLflow in a SQLite file under
the benchmark's folder); its last stage (select, export, publish) then runs here, as the command runs it.
Every trial's saved student is then re-tested in PyTorch and as an int8 file in ONNX Runtime.
"""

from __future__ import annotations

import os
import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, format_table, measured_commit, train_student, write_page, write_result
from benchmarks.teacher_asset import install_committed_teacher
from lepton_ray import metrics
from lepton_ray.tracking import uris
from lepton_ray.export.shipped_cost import file_cost
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.deploy.publish import export_weight_bits, student_loader
from lepton_ray.deploy.report import spearman
from lepton_ray.export.int8 import calibration_images, export_int8
from lepton_ray.export.metadata import artifact_metadata
from lepton_ray.export.runtime import onnx_accuracy
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.sweep.results import existing_sweep, select_export_publish
from lepton_ray.trial.epoch import evaluate
from lepton_ray.trial.teacher import Teacher, fingerprint, prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "fashion_mnist"
WORKFLOW = REPO / "workflows" / "fashion_mnist.yaml"
PUBLISHED = {
    "2 conv + pooling, < 100k parameters": 0.925, "ResNet18": 0.949, "MobileNet": 0.950,
}
"""Test accuracy of published baselines: the benchmark table of github.com/zalandoresearch/fashion-mnist (README)."""
QUICK = {"training.epochs": 1, "teacher.train.epochs": 1, "sweep.num_samples": 2, "resources.max_concurrent_trials": 1, "selection.distillation_control.seeds": 1}
CONTROL_SEEDS = 3
"""Seeds of the champion's labels-only control: each pairs a run with the teacher and one without."""
LABELS_ONLY, KD = "labels only (alpha=0)", "with teacher (the workflow's distillation)"
DENSE_PROCESSES = 2
"""Dense runs at a time: each is single-threaded, so two use the machine's 2 cores as the sweep's two trials do."""


def bench_workflow(folder: Path, quick: bool, data_root: Path | None, extra: dict[str, Any] | None = None) -> tuple[WorkflowConfig, dict[str, Any]]:
    """The shipped workflow writing under `folder` (runs, MLflow); the teacher cached in the repo's runs/teachers/."""
    teacher_file = REPO / Path(load_workflow(WORKFLOW).teacher.checkpoint).with_suffix(".quick.pt" if quick else ".pt")
    overrides = {"output_dir": str(folder), "tracking.uri": f"sqlite:///{folder}/mlflow.db", "teacher.checkpoint": str(teacher_file),
                 "selection.distillation_control.seeds": CONTROL_SEEDS,
                 **({"data.root": str(data_root)} if data_root else {}), **(QUICK if quick else {}), **(extra or {})}
    wf = load_workflow(WORKFLOW, overrides)
    # Only the workflow's own teacher is the asset's: one trained with another seed (distill_gain's ensemble) has its own file.
    uses_asset = not quick and Path(wf.teacher.checkpoint) == teacher_file
    installed = install_committed_teacher(teacher_file, fingerprint(wf.teacher, wf.data, wf.training.seed)) if uses_asset else None
    if installed:
        print(installed, flush=True)
    return wf, overrides


def dense_run(overrides: dict[str, Any], alpha: float, seed: int, teacher: Teacher, cache_folder: Path) -> dict[str, Any]:
    """One dense student (in a worker process): the data read again, the sweep's teacher as given (the teacher
    stage would train a new one: its fingerprint holds the training seed), its output cache read back from disk."""
    torch.set_num_threads(1)
    seeded = load_workflow(WORKFLOW, {**overrides, "distillation.alpha": alpha, "training.seed": seed})
    data = build_data(seeded.data)
    cache = sweep_teacher_cache(seeded, [teacher], data, cache_folder)[0] if alpha else None
    started = time.perf_counter()
    final = train_student(seeded, data, [load_teacher_module(teacher.payload)] if alpha else [], cache)
    return {"seed": seed, "seconds": time.perf_counter() - started, **{k: final[k] for k in (
        metrics.TEST_ACCURACY, metrics.INT8_VAL_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES)}}


def dense_students(overrides: dict[str, Any], teacher: Teacher, cache_folder: Path, seeds: list[int], processes: int) -> dict[str, Any]:
    """The workflow's student at full width, uncompressed (a float student ships with 7-bit int8 codes), per seed;
    `processes` runs at a time, one thread each (every run is single-threaded, as a sweep's trials are)."""
    rows = {LABELS_ONLY: 0.0, KD: load_workflow(WORKFLOW, overrides).distillation.alpha}
    jobs = [(row, alpha, seed) for row, alpha in rows.items() for seed in seeds]
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job: pool.submit(dense_run, overrides, job[1], job[2], teacher, cache_folder) for job in jobs}
        for (row, _, seed), future in futures.items():
            run = future.result()
            print(f"  {row} seed {seed}: test {run[metrics.TEST_ACCURACY]:.4f} ({run['seconds']:.0f} s)", flush=True)
    out: dict[str, Any] = {}
    for row in rows:
        runs = [futures[job].result() for job in jobs if job[0] == row]
        accuracies = [run[metrics.TEST_ACCURACY] for run in runs]
        out[row] = {"runs": runs, "mean": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}
    return out


def run_sweep(overrides: dict[str, Any], resume: bool = False) -> float:
    """`lepton-ray sweep --no-export` on the workflow (`--resume`: continue the one interrupted under its output_dir),
    as a user runs it; its wall seconds."""
    command = [str(Path(sys.executable).parent / "lepton-ray"), "sweep", str(WORKFLOW), "--no-export", *["--resume"] * resume]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env=user_environment())
    return time.perf_counter() - started


def user_environment() -> dict[str, str]:
    """This process's environment less `MLFLOW_TRACKING_URI` where a `Tracker` here wrote it (mlflow.set_tracking_uri
    does): a child `lepton-ray` would take it for the user's and log into the previous sweep's store."""
    return {key: value for key, value in os.environ.items() if not (key == "MLFLOW_TRACKING_URI" and value == uris._URI_SET_BY_TRACKER)}


def retest_trials(wf: WorkflowConfig, trials: Any, data: DataSplits, trials_root: Path, out: Path) -> list[dict[str, Any]]:
    """Each finished trial's saved student: PyTorch test accuracy next to the reported one, and its int8 file's ORT test
    accuracy and bytes (calibrated on `export.calibration_samples` images, as publish does)."""
    load = student_loader(trials_root)
    images = calibration_images(data.train, wf.export.calibration_samples, wf.data.seed)
    rows = []
    for _, row in trials[trials["status"] == "finished"].iterrows():
        student, saved = load(row.to_dict())
        pytorch_accuracy, _ = evaluate(student, data.test, 512, torch.device("cpu"))
        files = export_int8(student, data.input_shape, images, export_weight_bits(saved), out / f"trial{int(row['trial'])}",  # per-layer grids as published
                            artifact_metadata(data.contract, wf.name))  # and the input contract a trial's file carries: its bytes are the logged ones
        rows.append({
            "trial": int(row["trial"]), "reported_test_accuracy": float(row[metrics.TEST_ACCURACY]), "pytorch_test_accuracy": pytorch_accuracy,
            "int8_ort_test_accuracy": onnx_accuracy(files.int8, data.test), "int8_val_accuracy": float(row[metrics.INT8_VAL_ACCURACY]),
            **file_cost(files.int8),
        })
    return rows


def front_figures(trials: Any, cost: str, dense_accuracy: float, dense_cost: float) -> dict[str, Any]:
    """The front (drawn on validation, as the product draws it) on the measured cost; its span; the cheapest front point
    within 1 pt of the dense KD student's test accuracy (a report: both are test figures, and nothing is chosen by it)."""
    front = trials[trials["on_front"]].sort_values(cost)
    points = [{"trial": int(r["trial"]), metrics.SELECTION_ACCURACY: float(r[metrics.SELECTION_ACCURACY]), "test_accuracy": float(r[metrics.TEST_ACCURACY]), cost: float(r[cost]),
               "cheaper_than_dense": dense_cost / float(r[cost]), "loss_vs_dense_points": (dense_accuracy - float(r[metrics.TEST_ACCURACY])) * 100,
               **{k: r[k] for k in trials.columns if k.startswith(("student.", "compression.", "distillation."))}} for _, r in front.iterrows()]
    within = [p["cheaper_than_dense"] for p in points if p["loss_vs_dense_points"] <= 1.0]
    costs = [p[cost] for p in points]
    return {"points": points, "span": max(costs) / min(costs) if costs else float("nan"),
            "cheapest_within_1pt_of_dense": max(within) if within else float("nan")}


def estimate_agreement(trials: Any, measured: str) -> dict[str, float]:
    """Spearman rank correlation of each estimate with the measured cost over the finished trials."""
    done = trials[trials["status"] == "finished"]
    return {estimate: spearman(done[estimate].to_numpy(dtype=float), done[measured].to_numpy(dtype=float))
            for estimate in metrics.ESTIMATES if estimate in done.columns}


def run(quick: bool, seeds: list[int], data_root: Path | None) -> dict[str, Any]:
    commit = measured_commit()
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    shutil.rmtree(folder, ignore_errors=True)  # the benchmark's own scratch folder: every run measures a fresh sweep
    wf, overrides = bench_workflow(folder, quick, data_root, MEASURED_KERNELS)
    started = time.perf_counter()
    data = build_data(wf.data)
    load_seconds = time.perf_counter() - started
    trained_this_run = not Path(wf.teacher.checkpoint).is_file()
    started = time.perf_counter()
    (teacher,) = prepare_teachers(wf, data)
    teacher_seconds = time.perf_counter() - started
    sweep_teacher_cache(wf, [teacher], data, folder)  # built once here, read back by the dense runs
    dense = dense_students({**overrides, "output_dir": str(folder / "dense")}, teacher, folder, seeds, processes=DENSE_PROCESSES)

    sweep_seconds = run_sweep(overrides)
    outcome, tracker = existing_sweep(wf)
    started = time.perf_counter()
    exported = select_export_publish(wf, outcome, data, tracker, print)
    export_seconds = time.perf_counter() - started
    trials = outcome.trials
    cost = wf.sweep.cost_metric
    kd_runs = dense[KD]["runs"]
    dense_cost = statistics.median(r[cost] for r in kd_runs)
    checks = exported.checks
    champion = exported.selection.row
    gain = exported.gain
    return {
        "commit": commit,
        "setting": {"workflow": str(WORKFLOW.relative_to(REPO)), "overrides": {k: v for k, v in overrides.items() if k not in ("output_dir", "tracking.uri")},
                    "seeds": seeds, "train_samples": len(data.train), "val_samples": len(data.val), "test_samples": len(data.test),
                    "torch_threads": torch.get_num_threads(), "cost_metric": cost},
        "published_test_accuracy": PUBLISHED,
        "data_load_seconds": load_seconds,
        "teacher": {"test_accuracy": teacher.test_accuracy, "parameters": sum(t.numel() for k, t in teacher.payload["state_dict"].items() if "running" not in k and "tracked" not in k), "seconds_this_run": teacher_seconds,
                    "trained_this_run": trained_this_run, "train_seconds": teacher.payload.get("train_seconds")},
        "dense_student": dense,
        "kd_gain_points": (dense[KD]["mean"] - dense[LABELS_ONLY]["mean"]) * 100,
        "sweep": {"trials": len(trials), "finished": int((trials["status"] == "finished").sum()), "wall_seconds": sweep_seconds,
                  "select_export_publish_seconds": export_seconds,
                  "spearman_estimate_vs_measured": estimate_agreement(trials, cost)},
        "front": front_figures(trials, cost, dense[KD]["mean"], dense_cost),
        "dense_kd_student_cost": dense_cost,
        "champion": {"trial": int(champion["trial"]), "explanation": exported.selection.explanation, "chosen_on": metrics.SELECTION_ACCURACY,
                     "int8_val_accuracy": float(champion[metrics.SELECTION_ACCURACY]), "trial_best_val_accuracy": checks.trial_accuracy,
                     "export_int8_val_accuracy": checks.int8_accuracy, "fp32_onnx_val_accuracy": checks.fp32_accuracy, "drop_points": checks.drop_points,
                     "trial_test_accuracy": float(champion[metrics.TEST_ACCURACY]), "int8_ort_test_accuracy": checks.int8_test_accuracy,
                     **file_cost(exported.files.int8), "fp32_onnx_bytes": checks.fp32_bytes,
                     "latency_ms": {str(b): v for b, v in checks.latency_ms.items()}, "published": exported.published.model_uri if exported.published else None},
        "distillation_control": {"sentence": gain.sentence(), "gain_points": gain.gain_points, "sd_points": gain.spread_points,
                                 "pairs": [{"seed": p.seed, "with_teacher_test_accuracy": p.with_teacher[metrics.TEST_ACCURACY],
                                            "labels_only_test_accuracy": p.labels_only[metrics.TEST_ACCURACY]} for p in gain.pairs]},
        "trials": retest_trials(wf, trials, data, outcome.paths.trials, folder / "retest"),
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    trials = payload["trials"]
    champion = payload["champion"]
    return [
        Figure(NAME, "teacher test accuracy", payload["teacher"]["test_accuracy"], at_least=0.93),
        Figure(NAME, "distillation gain over labels only, dense student (pt)", payload["kd_gain_points"]),
        Figure(NAME, "champion int8 ORT test accuracy", champion["int8_ort_test_accuracy"], at_least=0.91),  # issue 31: 91.0% ...
        Figure(NAME, "champion int8 file, gzip bytes", champion[metrics.INT8_GZIP_BYTES], at_most=10_800),  # ... at <= 10.8 KB
        Figure(NAME, "champion trial minus int8 accuracy, validation (pt)", champion["drop_points"], at_most=1.0),
        Figure(NAME, f"distillation control: gain at the champion's compression (pt, {len(payload['distillation_control']['pairs'])} seeds)",
               payload["distillation_control"]["gain_points"]),
        Figure(NAME, "front measured-cost span (x)", payload["front"]["span"], at_least=3.0),
        Figure(NAME, "front point cheaper than the dense distilled student within 1 pt (x)", payload["front"]["cheapest_within_1pt_of_dense"], at_least=2.0),
        Figure(NAME, "max abs(PyTorch - reported) over trials (pt)", max(abs(t["pytorch_test_accuracy"] - t["reported_test_accuracy"]) * 100 for t in trials), at_most=0.0),
        Figure(NAME, "max reported - int8 ORT over trials (pt)", max((t["reported_test_accuracy"] - t["int8_ort_test_accuracy"]) * 100 for t in trials), at_most=1.0),
    ]


def markdown(payload: dict[str, Any]) -> str:
    """The results page: figures, dense students, front, champion, every trial re-tested."""
    dense, sweep, champion, cost = payload["dense_student"], payload["sweep"], payload["champion"], payload["setting"]["cost_metric"]
    teacher = payload["teacher"]
    lines = [
        "# Fashion-MNIST end to end", "",
        f"Measured at commit `{payload['commit']}` on {payload['machine']['cpu_model']} ({payload['machine']['logical_cores']} cores), "
        f"{payload['measured_at']}, by `python -m benchmarks.fashion_mnist`{' --quick (smoke run)' if payload['quick'] else ''}.", "",
        format_table(["figure", "value", "goal", "pass/fail"], [f.row()[1:] for f in figures(payload)]), "",
        f"## Teacher and published baselines (test accuracy, {payload['setting']['test_samples']:,} test images)", "",
        format_table(["model", "test accuracy"], [[f"this teacher: cnn_large, {teacher['parameters']} parameters", f"{teacher['test_accuracy']:.4f}"],
                                                  *[[name, f"{value:.3f}"] for name, value in payload["published_test_accuracy"].items()]]), "",
        "## Dense student (the workflow's cnn_small at width 1, no compression): labels only vs with its teacher (the workflow's distillation)", "",
        format_table(["student", "test accuracy mean +- sd", "per seed", f"{cost} (median)"], [
            [name, f"{row['mean']:.4f} +- {row['std']:.4f}", ", ".join(f"{r[metrics.TEST_ACCURACY]:.4f}" for r in row["runs"]),
             f"{statistics.median(r[cost] for r in row['runs']):,.0f}"] for name, row in dense.items()]), "",
        f"Distillation gain: {payload['kd_gain_points']:+.2f} pt (seeds {payload['setting']['seeds']}).", "",
        f"## Sweep: {sweep['trials']} trials ({sweep['finished']} finished), {sweep['wall_seconds'] / 60:.1f} min wall for `lepton-ray sweep --no-export`, "
        f"{sweep['select_export_publish_seconds']:.0f} s for select + export + publish", "",
        f"Front on `{cost}` (measured on each trial's int8 file); the dense distilled student costs {payload['dense_kd_student_cost']:,.0f}:", "",
        format_table(["trial", f"{metrics.SELECTION_ACCURACY} (ranked by)", "test accuracy (reported)", cost, "x cheaper than dense", "pt below dense (test)"], [
            [str(p["trial"]), f"{p[metrics.SELECTION_ACCURACY]:.4f}", f"{p['test_accuracy']:.4f}", f"{p[cost]:,.0f}", f"{p['cheaper_than_dense']:.2f}",
             f"{p['loss_vs_dense_points']:+.2f}"] for p in payload["front"]["points"]]), "",
        "Rank correlation (Spearman) of each estimate with the measured cost over the finished trials: "
        + ", ".join(f"{name} {value:.2f}" for name, value in sweep["spearman_estimate_vs_measured"].items()) + ".", "",
        "## Champion (chosen on validation only)", "",
        f"{champion['explanation']}", "",
        f"Validation: trial {champion['trial_best_val_accuracy']:.4f}, exported int8 file {champion['export_int8_val_accuracy']:.4f} "
        f"(fp32 ONNX {champion['fp32_onnx_val_accuracy']:.4f}). Estimate of what ships, on the {payload['setting']['test_samples']:,} test images: "
        f"int8 ONNX Runtime {champion['int8_ort_test_accuracy']:.4f} (the trial's PyTorch student {champion['trial_test_accuracy']:.4f}); int8 file {champion[metrics.INT8_FILE_BYTES]:,} bytes, gzip {champion[metrics.INT8_GZIP_BYTES]:,} bytes "
        f"(fp32 ONNX {champion['fp32_onnx_bytes']:,} bytes); latency ms fp32/int8: "
        + ", ".join(f"batch {b}: {v['fp32']:.3f}/{v['int8']:.3f}" for b, v in champion["latency_ms"].items()) + ".", "",
        "## What distillation bought at the champion's compression (labels-only control)", "",
        f"{payload['distillation_control']['sentence']}.", "",
        format_table(["seed", "test, with teacher", "test, labels only", "gain (pt)"], [
            [str(p["seed"]), f"{p['with_teacher_test_accuracy']:.4f}", f"{p['labels_only_test_accuracy']:.4f}",
             f"{100 * (p['with_teacher_test_accuracy'] - p['labels_only_test_accuracy']):+.2f}"] for p in payload["distillation_control"]["pairs"]]), "",
        "## Every trial re-tested: saved student in PyTorch and its int8 file in ONNX Runtime (test split)", "",
        format_table(["trial", "reported", "PyTorch", "int8 ORT", "int8 ORT (val, logged)", "int8 gzip bytes"], [
            [str(t["trial"]), f"{t['reported_test_accuracy']:.4f}", f"{t['pytorch_test_accuracy']:.4f}", f"{t['int8_ort_test_accuracy']:.4f}",
             f"{t['int8_val_accuracy']:.4f}", f"{t[metrics.INT8_GZIP_BYTES]:,}"] for t in payload["trials"]]), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 2 trials, 1 seed")
    parser.add_argument("--seeds", type=int, default=None, help="dense-student seeds 0..N-1 (default 3, 1 with --quick)")
    parser.add_argument("--data-root", type=Path, default=None, help="folder of the four idx files (default: the workflow's)")
    args = parser.parse_args(argv)
    payload = write_result(NAME, run(args.quick, list(range(args.seeds or (1 if args.quick else 3))), args.data_root), args.quick)
    write_page(NAME, markdown(payload), args.quick)
    return payload


if __name__ == "__main__":
    main()
