"""Int8 activation scales: calibrated on training images (the export's route) vs the ranges the trial trained with.

    .venv/bin/python -m benchmarks.activation_ranges [--quick] [--seeds 0 1 2] [--fashion-root DIR]

Each student is a QAT trial (4- and 7-bit weights, 8-bit activation fake-quant) run through the trial's own loop
in this process. Its best epoch's observers (the trial state's `best` student, before `finalize` removes them)
give the trained input range of every Conv/Linear. The finalized student (student.pt, as publish loads it) is
exported twice per calibration size (the trial's 64 images, the publish step's 512): every activation calibrated
(`export_int8`'s default), and each layer input fixed to its trained range (`input_ranges`), the rest calibrated.
Each int8 file is compared on the test split with the PyTorch student it came from: |accuracy difference|,
argmax agreement, logit RMSE. Digits always; Fashion-MNIST from the idx files in `--fashion-root` (a subset keeps
it to minutes), labels only, a few epochs. Writes benchmarks/results/activation_ranges.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import CPU, MEASURED_KERNELS, REPO, RESULTS, Figure, format_table, measured_commit, quickstart_workflow, train_student, write_result
from lepton_ray.checkpoints import load_safe
from lepton_ray.compress.quantize import trained_input_ranges
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data.datasets import DataSplits, build_data
from lepton_ray.export.int8 import calibration_images, export_int8, int8_input_qparams
from lepton_ray.export.onnx_graph import INPUT_NAME
from lepton_ray.export.runtime import dataset_images, ort_session
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.files import TRIAL_STATE_FILE, load_student, newest_student_file
from lepton_ray.trial.loop import TRIAL_CALIBRATION_SAMPLES, set_up_student
from lepton_ray.trial.teacher import prepare_teachers

NAME = "activation_ranges"
BITS = (4, 7)
CALIBRATION_SIZES = (TRIAL_CALIBRATION_SAMPLES, 512)
"""The trial's calibration images and the publish step's (`export.calibration_samples` default)."""
ROUTES = ("calibrated", "trained")
FASHION = {"training.epochs": 3, "training.batch_size": 32, "distillation.alpha": 0.0}
"""Fashion-MNIST kept to minutes: three epochs (QAT in the last), labels only (no teacher to train)."""
QUICK = {"training.epochs": 2}


def method_name(route: str, images: int) -> str:
    return f"{route}_{images}"


def trial_student(wf: WorkflowConfig, data: DataSplits, teachers: list[torch.nn.Module], folder: Path) -> tuple[torch.nn.Module, dict[str, tuple[float, float]]]:
    """Run one trial; its finalized student and its best epoch's trained input ranges (from the trial state)."""
    train_student(wf, data, teachers, run_folder=folder)
    student_file = newest_student_file(folder)
    state = load_safe(student_file.parent / TRIAL_STATE_FILE, "trial checkpoint")
    trained = set_up_student(wf, data, teachers, lambda model: model, CPU)[0]
    trained.load_state_dict(state["best"]["student"])
    return load_student(wf, load_safe(student_file, "student checkpoint")), trained_input_ranges(trained)


def compare(student: torch.nn.Module, ranges: dict[str, tuple[float, float]], data: DataSplits, wf: WorkflowConfig, folder: Path) -> dict[str, Any]:
    """PyTorch test accuracy and, per method, the int8 file's accuracy and how far its logits are from PyTorch's."""
    images, labels = dataset_images(data.test, list(range(len(data.test))))
    with torch.no_grad():
        torch_logits = student(images).numpy()
    bits, seed = wf.compression.quantization.bits, wf.training.seed
    row: dict[str, Any] = {"bits": bits, "seed": seed, "pytorch": float((torch_logits.argmax(1) == labels.numpy()).mean()), "layers": len(ranges), "methods": {}}
    for count in CALIBRATION_SIZES:
        calibration = calibration_images(data.train, count, wf.data.seed)  # the trial's and publish's sample
        for route in ROUTES:
            name = method_name(route, count)
            files = export_int8(student, data.input_shape, calibration, bits, folder / name, input_ranges=ranges if route == "trained" else None)
            logits = ort_session(files.int8).run(None, {INPUT_NAME: images.numpy()})[0]
            accuracy = float((logits.argmax(1) == labels.numpy()).mean())
            row["methods"][name] = {
                "int8": accuracy, "abs_diff_points": abs(row["pytorch"] - accuracy) * 100,
                "agreement": float((logits.argmax(1) == torch_logits.argmax(1)).mean()), "logit_rmse": float(np.sqrt(((logits - torch_logits) ** 2).mean())),
                "input_scales": {layer: scale for layer, (scale, _) in int8_input_qparams(files.int8).items()},
            }
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: mean, spread and max of |PyTorch - int8| (points), mean agreement and logit RMSE."""
    summary = {}
    for method in rows[0]["methods"]:
        diffs = [row["methods"][method]["abs_diff_points"] for row in rows]
        summary[method] = {
            "mean_abs_diff_points": statistics.mean(diffs), "std_abs_diff_points": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "max_abs_diff_points": max(diffs), "mean_agreement": statistics.mean(row["methods"][method]["agreement"] for row in rows),
            "mean_logit_rmse": statistics.mean(row["methods"][method]["logit_rmse"] for row in rows),
        }
    return summary


def run_dataset(label: str, make_workflow: Any, teachers: list[torch.nn.Module], data: DataSplits, seeds: list[int], bits: tuple[int, ...], folder: Path) -> dict[str, Any]:
    rows = []
    for weight_bits in bits:
        for seed in seeds:
            started = time.perf_counter()
            wf = make_workflow({"compression.quantization.bits": weight_bits, "training.seed": seed})
            student, ranges = trial_student(wf, data, teachers, folder / f"{label}-{weight_bits}bit-seed{seed}")
            rows.append(compare(student, ranges, data, wf, folder / f"{label}-{weight_bits}bit-seed{seed}-export"))
            print(f"{label} {weight_bits}-bit seed {seed}: PyTorch {rows[-1]['pytorch']:.4f}, "
                  + ", ".join(f"{m} {v['int8']:.4f}" for m, v in rows[-1]["methods"].items()) + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    trained, calibrated = (method_name(route, max(CALIBRATION_SIZES)) for route in ROUTES)
    ratios = [row["methods"][trained]["input_scales"][layer] / scale for row in rows for layer, scale in row["methods"][calibrated]["input_scales"].items()]
    return {"samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}, "students": rows, "summary": summarize(rows),
            "trained_over_calibrated_input_scale": {"mean": statistics.mean(ratios), "min": min(ratios), "max": max(ratios)}}


def run(quick: bool, seeds: list[int], fashion_root: Path | None) -> dict[str, Any]:
    commit = measured_commit()
    bits = BITS[:1] if quick else BITS
    extra = {**MEASURED_KERNELS, **(QUICK if quick else {})}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-ranges-") as scratch:
        folder = Path(scratch)
        base = quickstart_workflow(extra)
        data = build_data(base.data)
        (teacher,) = prepare_teachers(base, data)
        results["digits"] = {"workflow": "workflows/digits_quickstart.yaml", "overrides": extra,
                             **run_dataset("digits", lambda o: quickstart_workflow({**extra, **o}), [load_teacher_module(teacher.payload)], data, seeds, bits, folder)}
        if fashion_root is not None:
            overrides = {"output_dir": str(folder / "runs"), "data.root": str(fashion_root), **FASHION, **extra}
            data = build_data(load_workflow(REPO / "workflows" / "fashion_mnist.yaml", overrides).data)
            results["fashion_mnist"] = {"workflow": "workflows/fashion_mnist.yaml", "overrides": {k: v for k, v in overrides.items() if k != "output_dir"},
                                        **run_dataset("fashion_mnist", lambda o: load_workflow(REPO / "workflows" / "fashion_mnist.yaml", {**overrides, **o}), [], data, seeds, bits, folder)}
    every_row = [row for dataset in results.values() for row in dataset["students"]]
    return {"commit": commit, "seeds": seeds, "bits": list(bits), "calibration_images": list(CALIBRATION_SIZES), "datasets": results, "overall": summarize(every_row)}


def figures(payload: dict[str, Any]) -> list[Figure]:
    overall = payload["overall"]
    return [Figure(NAME, f"{stat} abs(PyTorch - int8) test accuracy (pt), {method}", values[f"{stat}_abs_diff_points"])
            for method, values in overall.items() for stat in ("mean", "max")]


def verdict_lines(payload: dict[str, Any]) -> list[str]:
    """Per calibration size: are trained ranges closer by the issue's rule (smaller mean, max not larger), and per-student wins."""
    overall, lines = payload["overall"], []
    rows = [row for dataset in payload["datasets"].values() for row in dataset["students"]]
    for count in payload["calibration_images"]:
        trained, calibrated = (method_name(route, count) for route in ("trained", "calibrated"))
        t, c = overall[trained], overall[calibrated]
        closer = t["mean_abs_diff_points"] < c["mean_abs_diff_points"] and t["max_abs_diff_points"] <= c["max_abs_diff_points"]
        diffs = [row["methods"][trained]["abs_diff_points"] - row["methods"][calibrated]["abs_diff_points"] for row in rows]
        lines.append(
            f"- {count} calibration images: trained ranges {'closer' if closer else 'not closer'} (smaller mean, max not larger): "
            f"mean {t['mean_abs_diff_points']:.3f} vs {c['mean_abs_diff_points']:.3f} pt, max {t['max_abs_diff_points']:.3f} vs {c['max_abs_diff_points']:.3f} pt; "
            f"per student trained closer {sum(d < -1e-9 for d in diffs)}, calibrated closer {sum(d > 1e-9 for d in diffs)}, equal {sum(abs(d) <= 1e-9 for d in diffs)}; "
            f"logit RMSE {t['mean_logit_rmse']:.4f} vs {c['mean_logit_rmse']:.4f}.")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Int8 activation scales: calibrated vs trained ranges", "",
        f"Measured at commit `{payload['commit']}` on {payload['machine']['cpu_model']} ({payload['machine']['logical_cores']} cores), "
        f"{payload['measured_at']}, by `python -m benchmarks.activation_ranges`{' --quick (smoke run)' if payload['quick'] else ''}; "
        f"seeds {payload['seeds']}, weight bits {payload['bits']}.", "",
        "`calibrated_N`: every activation's scale calibrated on N training images (the export's route; the trial uses 64, "
        "publish 512). `trained_N`: each Conv/Linear input fixed to the range its QAT observer trained with, the rest "
        "calibrated on N images. Compared with the finalized PyTorch student on the test split.", "",
        *verdict_lines(payload), "",
    ]
    headers = ["method", "mean abs(PyTorch - int8) pt", "sd", "max pt", "argmax agreement", "logit RMSE"]
    for label, summary in [*((name, dataset["summary"]) for name, dataset in payload["datasets"].items()), ("all students", payload["overall"])]:
        samples = payload["datasets"].get(label, {}).get("samples")
        lines += [f"## {label}" + (f" ({samples['train']} train / {samples['test']} test images)" if samples else ""), "", format_table(headers, [
            [method, f"{s['mean_abs_diff_points']:.3f}", f"{s['std_abs_diff_points']:.3f}", f"{s['max_abs_diff_points']:.3f}",
             f"{s['mean_agreement']:.4f}", f"{s['mean_logit_rmse']:.4f}"] for method, s in summary.items()]), ""]
        if label in payload["datasets"]:
            ratio = payload["datasets"][label]["trained_over_calibrated_input_scale"]
            lines += [f"Trained / calibrated ({max(CALIBRATION_SIZES)} images) input scale, over layers and students: mean {ratio['mean']:.3f}, "
                      f"range {ratio['min']:.3f} to {ratio['max']:.3f}.", ""]
    lines += ["## Per student (test accuracy)", "", format_table(["data", "bits", "seed", "PyTorch", *payload["overall"]], [
        [label, str(row["bits"]), str(row["seed"]), f"{row['pytorch']:.4f}", *(f"{row['methods'][m]['int8']:.4f}" for m in payload["overall"])]
        for label, dataset in payload["datasets"].items() for row in dataset["students"]]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, 4-bit, two epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fashion-root", type=Path, default=None, help="folder of Fashion-MNIST idx files (a subset keeps it short); omitted: digits only")
    args = parser.parse_args(argv)
    if args.fashion_root is not None and not args.fashion_root.is_dir():
        parser.error(f"--fashion-root {args.fashion_root}: not a folder")
    torch.set_num_threads(1)
    payload = write_result(NAME, run(args.quick, args.seeds[:1] if args.quick else args.seeds, args.fashion_root), args.quick)
    (RESULTS / f"{NAME}{'.quick' if args.quick else ''}.md").write_text(markdown(payload))
    print(format_table(["figure", "value"], [[f.name, f"{f.value:.3f}"] for f in figures(payload)]))
    return payload


if __name__ == "__main__":
    main()
